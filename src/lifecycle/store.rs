//! The registry database: the only code that speaks SQL.
//!
//! One set of statements serves both backends, through sqlx's `any` driver: `$N` placeholders
//! (PostgreSQL's, which SQLite reads too), TEXT and 64-bit integer columns, no backend-only
//! functions in the queries, and ids assigned by the writer rather than by an autoincrement.
//! [`Backend`] holds the few things that differ: the column type of a 64-bit integer in the
//! migrations, how a writer takes the lock, and which error codes mean "locked".
//!
//! Extending the event chain is serialised on both. On SQLite every change starts with
//! `BEGIN IMMEDIATE` (WAL mode, a busy timeout): the writer holds the database's write lock from
//! its first read of the chain's head to its commit. On PostgreSQL every change takes one
//! transaction-scoped advisory lock (`pg_advisory_xact_lock`) right after `BEGIN`, so writers on
//! any number of control-plane replicas queue on it and read the head only once they hold it;
//! it is released by the commit or the rollback, also when the connection dies. The CRL number is
//! incremented under the same lock, so it never repeats. `events.id` is the primary key on both,
//! so even a writer that skipped the lock could not fork the chain: its insert would fail.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::TryStreamExt as _;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyConnection, AnyPool, ConnectOptions as _, Executor as _, Row};

use super::registry::{
    CertStatus, Certificate, Event, Identity, Partner, PartnerStatus, Record, GENESIS,
};
use crate::config::model::Database;

/// How long one attempt waits for another writer's lock before SQLite reports busy.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts to take the write lock before giving up (each waits up to [`BUSY_TIMEOUT`]).
const LOCK_ATTEMPTS: u32 = 6;
/// How long a PostgreSQL writer waits for the advisory lock (about as long as SQLite's attempts).
const PG_LOCK_TIMEOUT: &str = "30s";
/// The advisory lock every registry writer takes: "certgate" in ASCII. Advisory locks belong to
/// one database, so registries in different databases of one server do not contend.
const PG_LOCK_KEY: i64 = 0x6365_7274_6761_7465;
/// How long opening the registry waits for a connection (PostgreSQL down, network partition).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Schema changes in order; `schema_migrations` records which have run. Append, never edit.
///
/// `INT64` is a 64-bit integer column: `INTEGER` on SQLite (so `id INT64 PRIMARY KEY` is the
/// rowid, as it always was), `BIGINT` on PostgreSQL. It is no type name on either, so a statement
/// that missed the substitution fails instead of creating a 32-bit column.
const MIGRATIONS: &[&str] = &[
    // 1: the event log, the state derived from it, and the CRL number.
    "CREATE TABLE events (
        id INT64 PRIMARY KEY,
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
    CREATE TABLE publication (id INT64 PRIMARY KEY, crl_number INT64 NOT NULL);
    INSERT INTO publication (id, crl_number) VALUES (1, 0);",
    // 2: enrolment lookups, derived from the partners' records like the tables above.
    "CREATE TABLE onboarding (
        partner TEXT PRIMARY KEY,
        token_sha256 TEXT,
        enrolment_id TEXT
    );
    CREATE INDEX onboarding_enrolment ON onboarding (enrolment_id);",
    // 3: what a registration and a publication look up, so neither reads every row: the holder
    // of an identity, and the revoked certificates the CRL lists.
    "CREATE INDEX partners_identity ON partners (identity_kind, identity_value);
    CREATE INDEX certificates_status ON certificates (status);",
    // 4: the last publication itself, written in the transaction that numbers its CRL, so every
    // control-plane replica serves the same bytes for the same generation.
    "CREATE TABLE published (
        id INT64 PRIMARY KEY,
        crl_number INT64 NOT NULL,
        ca_pem TEXT NOT NULL,
        partners TEXT NOT NULL,
        crl_base64 TEXT NOT NULL
    );",
];

/// The bookkeeping table of [`MIGRATIONS`], created before the first one runs.
const SCHEMA_MIGRATIONS: &str =
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INT64 PRIMARY KEY, applied_at TEXT NOT NULL)";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database as [`Database::redacted`] shows it.
    #[error("no registry at {0}: run `certgate ca init --state DIR` first")]
    Missing(String),
    #[error("cannot open the registry {database}")]
    Open {
        /// As [`Database::redacted`] shows it.
        database: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("registry query failed")]
    Sql(#[from] sqlx::Error),
    #[error("the registry stayed locked by other writers")]
    Busy(#[source] sqlx::Error),
    #[error("the stored publication of CRL number {crl_number} is not text and base64 where it should be")]
    BadPublication { crl_number: i64 },
    #[error("registry row {what} does not hold a valid record")]
    Corrupt {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

/// An open registry: a pool of one connection, so a CLI process holds one database connection
/// and a transaction owns it for as long as it runs.
#[derive(Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// The write lock, held until [`Writer::commit`] (or dropped: rolled back).
pub struct Writer {
    tx: sqlx::Transaction<'static, Any>,
}

/// One publication as the registry keeps it: the files a gateway mirrors, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPublication {
    pub crl_number: i64,
    /// The CA certificate file (`ca/ca.pem`).
    pub ca_pem: Vec<u8>,
    /// The partner table (`published/partners.json`).
    pub partners: Vec<u8>,
    /// The signed CRL (DER).
    pub crl: Vec<u8>,
}

/// What differs between the two databases; everything else is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// An event as a command describes it; the writer numbers, chains and hashes it.
#[derive(Debug, Clone)]
pub struct Draft<'a> {
    pub time: &'a str,
    pub actor: &'a str,
    pub action: &'a str,
    pub partner: &'a str,
    pub reason: Option<&'a str>,
}

/// A revoked certificate as the CRL lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokedCertificate {
    pub partner: String,
    /// Lower-case hex, as [`Certificate::serial`].
    pub serial: String,
    pub reason: Option<String>,
    /// RFC 3339.
    pub revoked_at: Option<String>,
}

/// A valid certificate as the partner table lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidCertificate {
    pub partner: String,
    /// Lower-case hex, as [`Certificate::serial`].
    pub serial: String,
    /// RFC 3339.
    pub not_before: String,
    /// RFC 3339.
    pub not_after: String,
}

// === impl Store ===

impl Store {
    /// Creates the registry (or opens an existing one) and runs pending migrations.
    ///
    /// # Errors
    /// The database cannot be created, reached or migrated.
    pub async fn create(database: &Database) -> Result<Self, StoreError> {
        Self::connect(database, true).await
    }

    /// Opens an existing registry and runs pending migrations.
    ///
    /// # Errors
    /// The registry was never created (`ca init`), or it cannot be reached or migrated.
    pub async fn open(database: &Database) -> Result<Self, StoreError> {
        if let Database::Sqlite(path) = database {
            if !path.exists() {
                return Err(StoreError::Missing(database.redacted()));
            }
        }
        Self::connect(database, false).await
    }

    async fn connect(database: &Database, create: bool) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let open = |source| StoreError::Open {
            database: database.redacted(),
            source,
        };
        let (backend, options) = match database {
            Database::Sqlite(path) => (Backend::Sqlite, sqlite_options(path, create)),
            Database::Postgres(url) => (Backend::Postgres, AnyConnectOptions::from_url(url)),
        };
        let options = options.map_err(open)?.disable_statement_logging();
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(CONNECT_TIMEOUT)
            .after_connect(move |conn, _| backend.prepare(conn))
            .connect_with(options)
            .await
            .map_err(open)?;
        let mut store = Self { pool, backend };
        if !create && !store.created().await? {
            return Err(StoreError::Missing(database.redacted()));
        }
        store.migrate().await?;
        Ok(store)
    }

    /// Whether `ca init` ever created the registry here (a PostgreSQL database exists before it).
    async fn created(&mut self) -> Result<bool, StoreError> {
        let sql = match self.backend {
            Backend::Sqlite => return Ok(true),
            Backend::Postgres => "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = 'schema_migrations'",
        };
        let n: i64 = sqlx::query(sql).fetch_one(&self.pool).await?.try_get(0)?;
        Ok(n > 0)
    }

    async fn migrate(&mut self) -> Result<(), StoreError> {
        // Under the write lock: replicas starting at once migrate one after the other.
        let mut tx = self.begin().await?;
        sqlx::raw_sql(&self.backend.ddl(SCHEMA_MIGRATIONS))
            .execute(&mut *tx)
            .await?;
        let done: i64 = sqlx::query("SELECT COUNT(*) FROM schema_migrations")
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(done.max(0) as usize) {
            sqlx::raw_sql(&self.backend.ddl(migration))
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(i as i64 + 1)
                .bind(super::commands::now_rfc3339())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Takes the write lock, waiting for other writers: up to about 30 s on either backend.
    ///
    /// # Errors
    /// The lock could not be had in that time ([`StoreError::Busy`]), or the database failed.
    pub async fn write(&mut self) -> Result<Writer, StoreError> {
        Ok(Writer {
            tx: self.begin().await?,
        })
    }

    /// A transaction holding the write lock: `BEGIN IMMEDIATE` on SQLite, retried while another
    /// writer holds the lock past the busy timeout; the advisory lock on PostgreSQL.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, Any>, StoreError> {
        match self.backend {
            Backend::Sqlite => {
                let mut attempt = 1;
                loop {
                    match self.pool.begin_with("BEGIN IMMEDIATE").await {
                        Ok(tx) => return Ok(tx),
                        Err(e) if self.backend.is_busy(&e) && attempt < LOCK_ATTEMPTS => {}
                        Err(e) if self.backend.is_busy(&e) => return Err(StoreError::Busy(e)),
                        Err(e) => return Err(e.into()),
                    }
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                }
            }
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                let lock = format!(
                    "SET LOCAL lock_timeout = '{PG_LOCK_TIMEOUT}'; SELECT pg_advisory_xact_lock({PG_LOCK_KEY})"
                );
                match sqlx::raw_sql(&lock).execute(&mut *tx).await {
                    Ok(_) => Ok(tx),
                    Err(e) if self.backend.is_busy(&e) => Err(StoreError::Busy(e)),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// One partner's record as it stands (empty when the ID was never registered).
    ///
    /// # Errors
    /// The database failed or a row does not parse.
    pub async fn record(&mut self, partner: &str) -> Result<Record, StoreError> {
        load_record(&mut *self.pool.acquire().await?, partner).await
    }

    /// Every partner's record, by ID.
    ///
    /// # Errors
    /// The database failed or a row does not parse.
    pub async fn records(&mut self) -> Result<Vec<Record>, StoreError> {
        load_all(&mut *self.pool.acquire().await?).await
    }

    /// The partner whose enrolment has this public id.
    ///
    /// # Errors
    /// The database failed.
    pub async fn partner_of_enrolment(&mut self, id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT partner FROM onboarding WHERE enrolment_id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => Some(row.try_get(0)?),
            None => None,
        })
    }

    /// The CRL number of the last stored publication: one row read by its key, cheap enough
    /// for every control-plane replica to ask a few times a second. `None` before the first.
    ///
    /// # Errors
    /// The database failed.
    pub async fn publication_number(&mut self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT crl_number FROM published WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(row) => Some(row.try_get(0)?),
            None => None,
        })
    }

    /// The last stored publication, `None` before the first.
    ///
    /// # Errors
    /// The database failed or the row does not hold a publication.
    pub async fn publication(&mut self) -> Result<Option<StoredPublication>, StoreError> {
        use base64::Engine as _;
        let row = sqlx::query(
            "SELECT crl_number, ca_pem, partners, crl_base64 FROM published WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let crl_number: i64 = row.try_get(0)?;
        let crl = base64::engine::general_purpose::STANDARD
            .decode(row.try_get::<String, _>(3)?)
            .map_err(|_| StoreError::BadPublication { crl_number })?;
        Ok(Some(StoredPublication {
            crl_number,
            ca_pem: row.try_get::<String, _>(1)?.into_bytes(),
            partners: row.try_get::<String, _>(2)?.into_bytes(),
            crl,
        }))
    }

    /// Every event, in order.
    ///
    /// # Errors
    /// The database failed.
    pub async fn events(&mut self) -> Result<Vec<Event>, StoreError> {
        load_events(&mut *self.pool.acquire().await?).await
    }

    /// One partner's events, in order.
    ///
    /// # Errors
    /// The database failed.
    pub async fn events_of(&mut self, partner: &str) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, time, actor, action, partner, reason, data_before, data_after, prev_hash, hash FROM events WHERE partner = $1 ORDER BY id",
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
    pub async fn replay(&mut self) -> Result<usize, StoreError> {
        let mut w = self.write().await?;
        // Read under the lock, so no event appended meanwhile is left out of the tables.
        let events = load_events(&mut w.tx).await?;
        sqlx::query("DELETE FROM certificates")
            .execute(&mut *w.tx)
            .await?;
        sqlx::query("DELETE FROM partners")
            .execute(&mut *w.tx)
            .await?;
        sqlx::query("DELETE FROM onboarding")
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
    pub async fn record(&mut self, partner: &str) -> Result<Record, StoreError> {
        load_record(&mut self.tx, partner).await
    }

    /// See [`Store::records`].
    ///
    /// # Errors
    /// The database failed or a row does not parse.
    pub async fn records(&mut self) -> Result<Vec<Record>, StoreError> {
        load_all(&mut self.tx).await
    }

    /// The pending or approved partner whose identity is `identity`, if any: registration keeps
    /// live identities unique, and asks this instead of reading every record.
    ///
    /// # Errors
    /// The database failed.
    pub async fn live_holder(&mut self, identity: &Identity) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT id FROM partners WHERE identity_kind = $1 AND identity_value = $2 AND status IN ($3, $4) ORDER BY id LIMIT 1",
        )
        .bind(identity.kind())
        .bind(identity.value())
        .bind(PartnerStatus::Pending.as_str())
        .bind(PartnerStatus::Approved.as_str())
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(match row {
            Some(row) => Some(row.try_get(0)?),
            None => None,
        })
    }

    /// Every revoked certificate, by serial: all a CRL needs, read from the certificates table
    /// alone (the revocation time is the only field taken from a row's JSON).
    ///
    /// # Errors
    /// The database failed or a row does not parse.
    pub async fn revoked_certificates(&mut self) -> Result<Vec<RevokedCertificate>, StoreError> {
        #[derive(serde::Deserialize)]
        struct RevokedAt {
            revoked_at: Option<String>,
        }
        let mut rows = sqlx::query(
            "SELECT serial, partner, revocation_reason, data FROM certificates WHERE status = $1",
        )
        .bind(CertStatus::Revoked.as_str())
        .fetch(&mut *self.tx);
        let mut revoked = Vec::new();
        while let Some(row) = rows.try_next().await? {
            let serial: String = row.try_get(0)?;
            let data: String = row.try_get(3)?;
            let RevokedAt { revoked_at } =
                parse(&data, || format!("certificates.serial = {serial}"))?;
            revoked.push(RevokedCertificate {
                partner: row.try_get(1)?,
                serial,
                reason: row.try_get(2)?,
                revoked_at,
            });
        }
        revoked.sort_by(|a, b| a.serial.cmp(&b.serial));
        Ok(revoked)
    }

    /// Every valid certificate, by partner and then in issue order, from the table's columns.
    ///
    /// # Errors
    /// The database failed.
    pub async fn valid_certificates(&mut self) -> Result<Vec<ValidCertificate>, StoreError> {
        let mut rows = sqlx::query(
            "SELECT partner, serial, not_before, not_after FROM certificates WHERE status = $1",
        )
        .bind(CertStatus::Valid.as_str())
        .fetch(&mut *self.tx);
        let mut valid = Vec::new();
        while let Some(row) = rows.try_next().await? {
            valid.push(ValidCertificate {
                partner: row.try_get(0)?,
                serial: row.try_get(1)?,
                not_before: row.try_get(2)?,
                not_after: row.try_get(3)?,
            });
        }
        valid.sort_by(|a, b| {
            (&a.partner, &a.not_before, &a.serial).cmp(&(&b.partner, &b.not_before, &b.serial))
        });
        Ok(valid)
    }

    /// Every partner with status `status`, by ID.
    ///
    /// # Errors
    /// The database failed or a row does not parse.
    pub async fn partners_with(
        &mut self,
        status: PartnerStatus,
    ) -> Result<Vec<Partner>, StoreError> {
        let mut rows = sqlx::query("SELECT id, data FROM partners WHERE status = $1")
            .bind(status.as_str())
            .fetch(&mut *self.tx);
        let mut partners = Vec::new();
        while let Some(row) = rows.try_next().await? {
            let id: String = row.try_get(0)?;
            let data: String = row.try_get(1)?;
            partners.push(parse::<Partner>(&data, || format!("partners.id = {id}"))?);
        }
        partners.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(partners)
    }

    /// Every invitation's token hash with its partner. A presented token is compared with each
    /// of them in constant time, rather than looked up by value.
    ///
    /// # Errors
    /// The database failed.
    pub async fn invitations(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT partner, token_sha256 FROM onboarding WHERE token_sha256 IS NOT NULL",
        )
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Appends one event to the chain and replaces the partner's record with `after`.
    ///
    /// # Errors
    /// The database failed.
    pub async fn append(
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
            "INSERT INTO events (id, time, actor, action, partner, reason, data_before, data_after, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
    pub async fn next_crl_number(&mut self) -> Result<i64, StoreError> {
        sqlx::query("UPDATE publication SET crl_number = crl_number + 1 WHERE id = 1")
            .execute(&mut *self.tx)
            .await?;
        let n = sqlx::query("SELECT crl_number FROM publication WHERE id = 1")
            .fetch_one(&mut *self.tx)
            .await?
            .try_get(0)?;
        Ok(n)
    }

    /// Replaces the stored publication with `p`, in this transaction: it becomes visible to the
    /// control-plane replicas with the CRL number it carries, or not at all.
    ///
    /// # Errors
    /// The database failed, or a file is not UTF-8 text where text is stored.
    pub async fn store_publication(&mut self, p: &StoredPublication) -> Result<(), StoreError> {
        use base64::Engine as _;
        let text = |bytes: &[u8]| {
            String::from_utf8(bytes.to_vec()).map_err(|_| StoreError::BadPublication {
                crl_number: p.crl_number,
            })
        };
        let ca_pem = text(&p.ca_pem)?;
        let partners = text(&p.partners)?;
        sqlx::query("DELETE FROM published WHERE id = 1")
            .execute(&mut *self.tx)
            .await?;
        sqlx::query(
            "INSERT INTO published (id, crl_number, ca_pem, partners, crl_base64) VALUES (1, $1, $2, $3, $4)",
        )
        .bind(p.crl_number)
        .bind(ca_pem)
        .bind(partners)
        .bind(base64::engine::general_purpose::STANDARD.encode(&p.crl))
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Makes the change durable and releases the lock.
    ///
    /// # Errors
    /// The commit failed; nothing was changed.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        Ok(())
    }
}

// === impl Backend ===

impl Backend {
    /// Sets up a new connection. SQLite: WAL, full sync, a busy timeout (set first, so the
    /// switch to WAL waits for other processes too) and foreign keys. PostgreSQL: nothing.
    fn prepare(self, conn: &mut AnyConnection) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        Box::pin(async move {
            if self == Self::Sqlite {
                let pragmas = format!(
                    "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
                    BUSY_TIMEOUT.as_millis()
                );
                conn.execute(pragmas.as_str()).await?;
            }
            Ok(())
        })
    }

    /// A migration for this database: see [`MIGRATIONS`].
    fn ddl(self, migration: &str) -> String {
        let int64 = match self {
            Self::Sqlite => "INTEGER",
            Self::Postgres => "BIGINT",
        };
        migration.replace("INT64", int64)
    }

    /// Whether `e` means another writer held the lock for longer than we wait.
    fn is_busy(self, e: &sqlx::Error) -> bool {
        let sqlx::Error::Database(db) = e else {
            return false;
        };
        let code = db.code();
        match self {
            // SQLITE_BUSY, SQLITE_BUSY_RECOVERY, SQLITE_LOCKED.
            Self::Sqlite => matches!(code.as_deref(), Some("5" | "517" | "6")),
            // lock_not_available: `lock_timeout` ran out.
            Self::Postgres => code.as_deref() == Some("55P03"),
        }
    }
}

/// Connection options for a SQLite file: `mode=rwc` creates it, `mode=rw` insists it exists.
fn sqlite_options(path: &Path, create: bool) -> Result<AnyConnectOptions, sqlx::Error> {
    let absolute = std::path::absolute(path).map_err(|e| sqlx::Error::Configuration(e.into()))?;
    // A file URL percent-encodes the path (`?`, `#`, spaces); sqlx decodes it again.
    let file = url::Url::from_file_path(&absolute).map_err(|()| {
        sqlx::Error::Configuration(format!("{} is not a usable path", absolute.display()).into())
    })?;
    let mode = if create { "rwc" } else { "rw" };
    format!("sqlite://{}?mode={mode}", file.path()).parse()
}

/// Replaces `partner`'s rows with `record`.
async fn apply(conn: &mut AnyConnection, partner: &str, record: &Record) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM certificates WHERE partner = $1")
        .bind(partner)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM partners WHERE id = $1")
        .bind(partner)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM onboarding WHERE partner = $1")
        .bind(partner)
        .execute(&mut *conn)
        .await?;
    if let Some(p) = &record.partner {
        if p.invitation.is_some() || p.enrolment.is_some() {
            sqlx::query(
                "INSERT INTO onboarding (partner, token_sha256, enrolment_id) VALUES ($1, $2, $3)",
            )
            .bind(&p.id)
            .bind(p.invitation.as_ref().map(|i| &i.token_sha256))
            .bind(p.enrolment.as_ref().map(|e| &e.id))
            .execute(&mut *conn)
            .await?;
        }
        sqlx::query(
            "INSERT INTO partners (id, owner, status, identity_kind, identity_value, data) VALUES ($1, $2, $3, $4, $5, $6)",
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
            "INSERT INTO certificates (serial, partner, fingerprint_sha256, not_before, not_after, status, revocation_reason, data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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

async fn load_record(conn: &mut AnyConnection, partner: &str) -> Result<Record, StoreError> {
    let row = sqlx::query("SELECT data FROM partners WHERE id = $1")
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
        sqlx::query("SELECT serial, data FROM certificates WHERE partner = $1 ORDER BY serial")
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

async fn load_events(conn: &mut AnyConnection) -> Result<Vec<Event>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, time, actor, action, partner, reason, data_before, data_after, prev_hash, hash FROM events ORDER BY id",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(event_of).collect()
}

/// Two queries, not one per partner: a registry of 100 000 partners is read in one pass over
/// each table. Records come back in ID order (byte order, whatever the database's collation).
async fn load_all(conn: &mut AnyConnection) -> Result<Vec<Record>, StoreError> {
    let mut by_id: BTreeMap<String, Record> = BTreeMap::new();
    {
        let mut rows = sqlx::query("SELECT id, data FROM partners").fetch(&mut *conn);
        while let Some(row) = rows.try_next().await? {
            let id: String = row.try_get(0)?;
            let data: String = row.try_get(1)?;
            let partner = parse::<Partner>(&data, || format!("partners.id = {id}"))?;
            by_id.insert(
                id,
                Record {
                    partner: Some(partner),
                    certificates: Vec::new(),
                },
            );
        }
    }
    let mut rows = sqlx::query("SELECT serial, partner, data FROM certificates").fetch(&mut *conn);
    while let Some(row) = rows.try_next().await? {
        let partner: String = row.try_get(1)?;
        // As for one record: only the certificates of partners that exist.
        let Some(record) = by_id.get_mut(&partner) else {
            continue;
        };
        let serial: String = row.try_get(0)?;
        let data: String = row.try_get(2)?;
        record.certificates.push(parse::<Certificate>(&data, || {
            format!("certificates.serial = {serial}")
        })?);
    }
    Ok(by_id
        .into_values()
        .map(|mut r| {
            sort_certificates(&mut r.certificates);
            r
        })
        .collect())
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

fn event_of(row: &AnyRow) -> Result<Event, StoreError> {
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
