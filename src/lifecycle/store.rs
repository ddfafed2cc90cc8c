//! The registry database: the only code that speaks SQL.
//!
//! The SQL is kept portable (TEXT and INTEGER columns, no SQLite-only functions, ids assigned by
//! the writer rather than by an autoincrement), so the same statements can serve a PostgreSQL
//! control plane later. SQLite runs in WAL mode with a busy timeout, and every change to the
//! event chain starts with `BEGIN IMMEDIATE`: the writer holds the write lock from its first read
//! of the chain's head to its commit, so concurrent CLI processes queue instead of forking the
//! chain.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};

use super::registry::{Certificate, Event, Partner, Record, GENESIS};

/// How long one attempt waits for another writer's lock before SQLite reports busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts to take the write lock before giving up (each waits up to [`BUSY_TIMEOUT`]).
const LOCK_ATTEMPTS: u32 = 6;

/// Schema changes in order; `schema_migrations` records which have run. Append, never edit.
const MIGRATIONS: &[&str] = &[
    // 1: the event log, the state derived from it, and the CRL number.
    "CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        time TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        partner TEXT NOT NULL,
        reason TEXT,
        data_before TEXT NOT NULL,
        data_after TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    );
    CREATE INDEX events_partner ON events (partner);
    CREATE TABLE partners (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        status TEXT NOT NULL,
        identity_kind TEXT NOT NULL,
        identity_value TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE TABLE certificates (
        serial TEXT PRIMARY KEY,
        partner TEXT NOT NULL,
        fingerprint_sha256 TEXT NOT NULL,
        not_before TEXT NOT NULL,
        not_after TEXT NOT NULL,
        status TEXT NOT NULL,
        revocation_reason TEXT,
        data TEXT NOT NULL
    );
    CREATE INDEX certificates_partner ON certificates (partner);
    CREATE TABLE publication (id INTEGER PRIMARY KEY, crl_number INTEGER NOT NULL);
    INSERT INTO publication (id, crl_number) VALUES (1, 0);",
];

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("no registry at {}: run `certgate ca init --state DIR` first", .0.display())]
    Missing(PathBuf),
    #[error("cannot open the registry {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    #[error("registry query failed")]
    Sql(#[from] sqlx::Error),
    #[error("the registry stayed locked by other writers")]
    Busy(#[source] sqlx::Error),
    #[error("registry row {what} does not hold a valid record")]
    Corrupt {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

/// An open registry: a pool of one connection, so a CLI process holds one SQLite handle and a
/// transaction owns its connection for as long as it runs.
#[derive(Debug)]
pub(crate) struct Store {
    pool: SqlitePool,
}

/// The write lock, held until [`Writer::commit`] (or dropped: rolled back).
pub(crate) struct Writer {
    tx: sqlx::Transaction<'static, sqlx::Sqlite>,
}

/// An event as a command describes it; the writer numbers, chains and hashes it.
#[derive(Debug, Clone)]
pub(crate) struct Draft<'a> {
    pub time: &'a str,
    pub actor: &'a str,
    pub action: &'a str,
    pub partner: &'a str,
    pub reason: Option<&'a str>,
}

// === impl Store ===

impl Store {
    /// Creates the registry (or opens an existing one) and runs pending migrations.
    ///
    /// # Errors
    /// The file cannot be created or migrated.
    pub(crate) async fn create(path: &Path) -> Result<Self, StoreError> {
        Self::connect(path, true).await
    }

    /// Opens an existing registry and runs pending migrations.
    ///
    /// # Errors
    /// There is no registry at `path`, or it cannot be opened or migrated.
    pub(crate) async fn open(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.to_owned()));
        }
        Self::connect(path, false).await
    }

    async fn connect(path: &Path, create: bool) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })?;
        let mut store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&mut self) -> Result<(), StoreError> {
        let mut tx = begin_immediate(&self.pool).await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        let done: i64 = sqlx::query("SELECT COUNT(*) FROM schema_migrations")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(done.max(0) as usize) {
            sqlx::raw_sql(migration).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)")
                .bind(i as i64 + 1)
                .bind(super::commands::now_rfc3339())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Takes the write lock, waiting for other writers (retrying while SQLite reports busy).
    ///
    /// # Errors
    /// The lock could not be had after several attempts, or the database failed.
    pub(crate) async fn write(&mut self) -> Result<Writer, StoreError> {
        Ok(Writer {
            tx: begin_immediate(&self.pool).await?,
        })
    }

    /// One partner's record as it stands (empty when the ID was never registered).
    ///
    /// # Errors
    /// The database failed or a row does not parse.
    pub(crate) async fn record(&mut self, partner: &str) -> Result<Record, StoreError> {
        load_record(&mut *self.pool.acquire().await?, partner).await
    }

    /// Every partner's record, by ID.
    ///
    /// # Errors
    /// The database failed or a row does not parse.
    pub(crate) async fn records(&mut self) -> Result<Vec<Record>, StoreError> {
        load_all(&mut *self.pool.acquire().await?).await
    }

    /// Every event, in order.
    ///
    /// # Errors
    /// The database failed.
    pub(crate) async fn events(&mut self) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, time, actor, action, partner, reason, data_before, data_after, prev_hash, hash FROM events ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_of).collect()
    }

    /// One partner's events, in order.
    ///
    /// # Errors
    /// The database failed.
    pub(crate) async fn events_of(&mut self, partner: &str) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, time, actor, action, partner, reason, data_before, data_after, prev_hash, hash FROM events WHERE partner = ? ORDER BY id",
        )
        .bind(partner)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_of).collect()
    }

    /// Rebuilds the partner and certificate tables from the event log, under the write lock.
    /// Returns how many events were applied.
    ///
    /// # Errors
    /// The database failed or an event's data does not parse.
    pub(crate) async fn replay(&mut self) -> Result<usize, StoreError> {
        let events = self.events().await?;
        let mut w = self.write().await?;
        sqlx::query("DELETE FROM certificates")
            .execute(&mut *w.tx)
            .await?;
        sqlx::query("DELETE FROM partners")
            .execute(&mut *w.tx)
            .await?;
        for e in &events {
            let after = Record::from_json(&e.after).map_err(|source| StoreError::Corrupt {
                what: format!("events.id = {}", e.id),
                source,
            })?;
            apply(&mut w.tx, &e.partner, &after).await?;
        }
        w.commit().await?;
        Ok(events.len())
    }
}

// === impl Writer ===

impl Writer {
    /// See [`Store::record`].
    ///
    /// # Errors
    /// The database failed or a row does not parse.
    pub(crate) async fn record(&mut self, partner: &str) -> Result<Record, StoreError> {
        load_record(&mut self.tx, partner).await
    }

    /// See [`Store::records`].
    ///
    /// # Errors
    /// The database failed or a row does not parse.
    pub(crate) async fn records(&mut self) -> Result<Vec<Record>, StoreError> {
        load_all(&mut self.tx).await
    }

    /// Appends one event to the chain and replaces the partner's record with `after`.
    ///
    /// # Errors
    /// The database failed.
    pub(crate) async fn append(
        &mut self,
        draft: Draft<'_>,
        before: &Record,
        after: &Record,
    ) -> Result<Event, StoreError> {
        let head = sqlx::query("SELECT id, hash FROM events ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut *self.tx)
            .await?;
        let (last, prev_hash) = match head {
            Some(row) => (row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?),
            None => (0, GENESIS.to_owned()),
        };
        let mut event = Event {
            id: last + 1,
            time: draft.time.to_owned(),
            actor: draft.actor.to_owned(),
            action: draft.action.to_owned(),
            partner: draft.partner.to_owned(),
            reason: draft.reason.map(str::to_owned),
            before: before.to_json(),
            after: after.to_json(),
            prev_hash,
            hash: String::new(),
        };
        event.hash = event.compute_hash();
        sqlx::query(
            "INSERT INTO events (id, time, actor, action, partner, reason, data_before, data_after, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(event.id)
        .bind(&event.time)
        .bind(&event.actor)
        .bind(&event.action)
        .bind(&event.partner)
        .bind(&event.reason)
        .bind(&event.before)
        .bind(&event.after)
        .bind(&event.prev_hash)
        .bind(&event.hash)
        .execute(&mut *self.tx)
        .await?;
        apply(&mut self.tx, draft.partner, after).await?;
        Ok(event)
    }

    /// Takes the next CRL number (1, 2, …): every signed CRL gets a larger one than the last.
    ///
    /// # Errors
    /// The database failed.
    pub(crate) async fn next_crl_number(&mut self) -> Result<i64, StoreError> {
        sqlx::query("UPDATE publication SET crl_number = crl_number + 1 WHERE id = 1")
            .execute(&mut *self.tx)
            .await?;
        let n = sqlx::query("SELECT crl_number FROM publication WHERE id = 1")
            .fetch_one(&mut *self.tx)
            .await?
            .try_get(0)?;
        Ok(n)
    }

    /// Makes the change durable and releases the lock.
    ///
    /// # Errors
    /// The commit failed; nothing was changed.
    pub(crate) async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// `BEGIN IMMEDIATE`, retried while another writer holds the lock past the busy timeout.
async fn begin_immediate(
    pool: &SqlitePool,
) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
    let mut attempt = 1;
    loop {
        match pool.begin_with("BEGIN IMMEDIATE").await {
            Ok(tx) => return Ok(tx),
            Err(e) if is_busy(&e) && attempt < LOCK_ATTEMPTS => {}
            Err(e) if is_busy(&e) => return Err(StoreError::Busy(e)),
            Err(e) => return Err(e.into()),
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
    }
}

fn is_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("5" | "517" | "6")),
        _ => false,
    }
}

/// Replaces `partner`'s rows with `record`.
async fn apply(
    conn: &mut SqliteConnection,
    partner: &str,
    record: &Record,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM certificates WHERE partner = ?")
        .bind(partner)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM partners WHERE id = ?")
        .bind(partner)
        .execute(&mut *conn)
        .await?;
    if let Some(p) = &record.partner {
        sqlx::query(
            "INSERT INTO partners (id, owner, status, identity_kind, identity_value, data) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&p.id)
        .bind(&p.owner)
        .bind(p.status.as_str())
        .bind(p.identity.kind())
        .bind(p.identity.value())
        .bind(to_json(p))
        .execute(&mut *conn)
        .await?;
    }
    for c in &record.certificates {
        sqlx::query(
            "INSERT INTO certificates (serial, partner, fingerprint_sha256, not_before, not_after, status, revocation_reason, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&c.serial)
        .bind(&c.partner)
        .bind(&c.fingerprint_sha256)
        .bind(&c.not_before)
        .bind(&c.not_after)
        .bind(c.status.as_str())
        .bind(&c.revocation_reason)
        .bind(to_json(c))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn load_record(conn: &mut SqliteConnection, partner: &str) -> Result<Record, StoreError> {
    let row = sqlx::query("SELECT data FROM partners WHERE id = ?")
        .bind(partner)
        .fetch_optional(&mut *conn)
        .await?;
    let partner_row = match row {
        Some(row) => Some(parse::<Partner>(&row.try_get::<String, _>(0)?, || {
            format!("partners.id = {partner}")
        })?),
        None => None,
    };
    let rows =
        sqlx::query("SELECT serial, data FROM certificates WHERE partner = ? ORDER BY serial")
            .bind(partner)
            .fetch_all(&mut *conn)
            .await?;
    let mut certificates = Vec::with_capacity(rows.len());
    for row in &rows {
        let serial: String = row.try_get(0)?;
        certificates.push(parse::<Certificate>(&row.try_get::<String, _>(1)?, || {
            format!("certificates.serial = {serial}")
        })?);
    }
    sort_certificates(&mut certificates);
    Ok(Record {
        partner: partner_row,
        certificates,
    })
}

async fn load_all(conn: &mut SqliteConnection) -> Result<Vec<Record>, StoreError> {
    let ids: Vec<String> = sqlx::query("SELECT id FROM partners ORDER BY id")
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut records = Vec::with_capacity(ids.len());
    for id in ids {
        records.push(load_record(conn, &id).await?);
    }
    Ok(records)
}

/// Certificates in issue order (oldest first), so a record compares equal however it was built.
pub(crate) fn sort_certificates(certs: &mut [Certificate]) {
    certs.sort_by(|a, b| {
        a.not_before
            .cmp(&b.not_before)
            .then_with(|| a.serial.cmp(&b.serial))
    });
}

fn parse<T: serde::de::DeserializeOwned>(
    text: &str,
    what: impl FnOnce() -> String,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Corrupt {
        what: what(),
        source,
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn event_of(row: &sqlx::sqlite::SqliteRow) -> Result<Event, StoreError> {
    Ok(Event {
        id: row.try_get(0)?,
        time: row.try_get(1)?,
        actor: row.try_get(2)?,
        action: row.try_get(3)?,
        partner: row.try_get(4)?,
        reason: row.try_get(5)?,
        before: row.try_get(6)?,
        after: row.try_get(7)?,
        prev_hash: row.try_get(8)?,
        hash: row.try_get(9)?,
    })
}
