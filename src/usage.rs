//! Least-privilege and promotion evidence: when each partner last used each scope it holds, when
//! it made its first accepted call and its last one, and per scope how many of its calls
//! succeeded, how many the gateway refused, and how many it made since the last refusal.
//!
//! The data path records into slots resolved when a generation is built ([`UsageTable`], indexed
//! by the partner and scope ids the policy already uses): a few relaxed atomic loads and, when a
//! value moves forward, stores. No lock, no map lookup, no allocation per request. The slots
//! themselves belong to the process ([`Usage`]), so a reload keeps what was recorded.
//!
//! A background task calls [`Usage::flush`] (every [`FLUSH_INTERVAL`] and at shutdown), which
//! merges the slots with the file in the state folder (`usage/scopes.json`), taking the latest
//! time per slot and the earliest first call, and replaces the file atomically. Several gateway
//! processes may share one state folder: each merges what the file holds before writing, and
//! checks afterwards that what it recorded is in the file, writing again when a concurrent writer
//! replaced it in between.
//!
//! Call counts cannot be merged by taking a maximum across processes, so each process writes its
//! own counts under a writer id of its own (process id and start time): counts only grow within
//! one process, so merging keeps, per writer, the record with more calls, and a restarted
//! gateway starts a new writer instead of counting twice what the file already holds.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::config::model::{Config, PartnerId, ScopeId};

/// How often a running gateway writes what it recorded into the state folder.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(10);

/// Attempts at a flush that a concurrent writer keeps overtaking.
const FLUSH_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    #[error("{}: cannot read the scope usage file", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a scope usage file", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: cannot write the scope usage file", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: other writers kept replacing the file; the next flush tries again", path.display())]
    Contended { path: PathBuf },
    #[error("the flush was interrupted")]
    Interrupted,
}

/// The usage file: per partner id, Unix seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageFile {
    #[serde(default)]
    pub partners: BTreeMap<String, PartnerUsageRecord>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartnerUsageRecord {
    /// The partner's first accepted request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_call: Option<u64>,
    /// Its latest accepted request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_call: Option<u64>,
    /// Per scope name, the latest accepted request whose route needed it.
    #[serde(default)]
    pub scopes: BTreeMap<String, u64>,
    /// Per scope name and writer (one gateway process), the outcomes of the calls whose route
    /// needed the scope.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub calls: BTreeMap<String, BTreeMap<String, CallRecord>>,
}

/// One writer's counts of one partner's calls on routes needing one scope.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Every call, whatever its outcome.
    pub calls: u64,
    /// Calls the upstream answered with a 1xx, 2xx or 3xx status.
    pub ok: u64,
    /// Calls the gateway refused (a policy or request refusal, not an upstream failure).
    pub refused: u64,
    /// Calls since the latest refused one (all of them when none was refused).
    pub since_refused: u64,
    /// Unix milliseconds of the first call.
    pub first_ms: u64,
    /// Unix milliseconds of the latest refused call; 0 when none was.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_refused_ms: u64,
}

/// One partner's calls on one scope, summed over every writer: what promotion checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallSummary {
    pub calls: u64,
    pub ok: u64,
    pub refused: u64,
    /// Calls made since the latest refused one; `None` when none was refused. With several
    /// writers this is a lower bound: the latest refusal's writer's own calls since, plus every
    /// call of writers that started after it. Calls of a writer running at the same time are
    /// not counted, so a gateway beside another never makes the streak look longer than it is.
    pub since_refused: Option<u64>,
}

/// How a call ended, for the promotion evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// The upstream answered with a 1xx, 2xx or 3xx status.
    Ok,
    /// The gateway refused it.
    Refused,
    /// Anything else: an upstream failure, or the upstream answered 4xx or 5xx.
    Other,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The process's usage slots, shared by every generation.
#[derive(Debug)]
pub struct Usage {
    partners: DashMap<Box<str>, Arc<PartnerSlots>>,
    scopes: DashMap<(Box<str>, Box<str>), Arc<ScopeSlots>>,
    /// This process's key under [`PartnerUsageRecord::calls`].
    writer: String,
}

/// One partner's process-wide slots for one scope.
#[derive(Debug, Default)]
struct ScopeSlots {
    /// Unix seconds of the latest accepted request; 0 means "not yet".
    last_used: AtomicU64,
    calls: AtomicU64,
    ok: AtomicU64,
    refused: AtomicU64,
    since_refused: AtomicU64,
    first_ms: AtomicU64,
    last_refused_ms: AtomicU64,
}

/// One partner's process-wide slots. 0 means "not yet".
#[derive(Debug, Default)]
pub struct PartnerSlots {
    /// Unix seconds.
    first_call: AtomicU64,
    /// Unix milliseconds: time to revoke is measured against it.
    last_call_ms: AtomicU64,
}

/// One generation's slots, indexed by [`PartnerId`].
#[derive(Debug, Default)]
pub struct UsageTable {
    partners: Box<[PartnerTable]>,
}

#[derive(Debug)]
struct PartnerTable {
    slots: Arc<PartnerSlots>,
    /// The scopes the partner holds, in [`ScopeId`] order; a handful, so a scan beats a map.
    scopes: Box<[(ScopeId, Arc<ScopeSlots>)]>,
}

/// What [`UsageTable::accepted`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Unix seconds of this request.
    pub at: u64,
    /// Whether this was the partner's first accepted request that this process or the usage
    /// file knows of.
    pub first: bool,
}

// === impl UsageFile ===

impl UsageFile {
    /// Reads the file; a file that does not exist yet is empty.
    ///
    /// # Errors
    /// The file cannot be read or is not a usage file.
    pub fn read(path: &Path) -> Result<Self, UsageError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| UsageError::Parse {
                path: path.to_owned(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(UsageError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Merges `other` in: the latest time per slot, the earliest first call.
    pub fn merge(&mut self, other: &UsageFile) {
        for (id, theirs) in &other.partners {
            let mine = self.partners.entry(id.clone()).or_default();
            mine.first_call = match (mine.first_call, theirs.first_call) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            mine.last_call = mine.last_call.max(theirs.last_call);
            for (scope, at) in &theirs.scopes {
                let slot = mine.scopes.entry(scope.clone()).or_default();
                *slot = (*slot).max(*at);
            }
            for (scope, writers) in &theirs.calls {
                let mine = mine.calls.entry(scope.clone()).or_default();
                for (writer, record) in writers {
                    let slot = mine.entry(writer.clone()).or_default();
                    if record.calls > slot.calls {
                        *slot = *record;
                    }
                }
            }
        }
    }

    /// Whether this file already holds everything `other` says.
    pub fn covers(&self, other: &UsageFile) -> bool {
        let mut merged = self.clone();
        merged.merge(other);
        merged == *self
    }

    /// The latest time `partner` used `scope`, if ever.
    pub fn last_used(&self, partner: &str, scope: &str) -> Option<u64> {
        self.partners.get(partner)?.scopes.get(scope).copied()
    }

    /// The latest accepted request of `partner`, if any.
    pub fn last_call(&self, partner: &str) -> Option<u64> {
        self.partners.get(partner)?.last_call
    }

    /// `partner`'s calls on routes needing `scope` (for a sandbox route, the scope's sandbox
    /// twin), summed over every writer.
    pub fn calls(&self, partner: &str, scope: &str) -> CallSummary {
        let Some(writers) = self.partners.get(partner).and_then(|p| p.calls.get(scope)) else {
            return CallSummary::default();
        };
        let mut sum = CallSummary::default();
        for r in writers.values() {
            sum.calls += r.calls;
            sum.ok += r.ok;
            sum.refused += r.refused;
        }
        let latest = writers
            .iter()
            .filter(|(_, r)| r.last_refused_ms != 0)
            .max_by_key(|(_, r)| r.last_refused_ms);
        sum.since_refused = latest.map(|(writer, r)| {
            let later: u64 = writers
                .iter()
                .filter(|(w, o)| *w != writer && o.first_ms > r.last_refused_ms)
                .map(|(_, o)| o.calls)
                .sum();
            r.since_refused + later
        });
        sum
    }

    /// Writes to a temporary file beside `path`, syncs it, and renames it over `path`.
    fn write(&self, path: &Path) -> Result<(), UsageError> {
        static TMP: AtomicU64 = AtomicU64::new(0);
        let err = |source| UsageError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        // A usage file is maps of strings and integers: serialising it cannot fail.
        let bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        let n = TMP.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_extension(format!("{}.{n}.tmp", std::process::id()));
        let mut file = std::fs::File::create(&tmp).map_err(err)?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(err)?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(e)
        })
    }
}

// === impl Usage ===

impl Default for Usage {
    fn default() -> Self {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // Several `Usage`s in one process (tests run gateways side by side) need distinct ids.
        static INSTANCE: AtomicU64 = AtomicU64::new(0);
        let n = INSTANCE.fetch_add(1, Ordering::Relaxed);
        Self {
            partners: DashMap::new(),
            scopes: DashMap::new(),
            writer: format!("{}-{started:x}-{n}", std::process::id()),
        }
    }
}

impl Usage {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn partner(&self, id: &str) -> Arc<PartnerSlots> {
        self.partners.entry(id.into()).or_default().clone()
    }

    fn scope(&self, partner: &str, scope: &str) -> Arc<ScopeSlots> {
        self.scopes
            .entry((partner.into(), scope.into()))
            .or_default()
            .clone()
    }

    /// What this process recorded, in the file's shape.
    pub fn recorded(&self) -> UsageFile {
        let mut file = UsageFile::default();
        for entry in &self.partners {
            let first = entry.first_call.load(Ordering::Relaxed);
            let last = entry.last_call_ms.load(Ordering::Relaxed) / 1000;
            if first == 0 && last == 0 {
                continue;
            }
            let p = file.partners.entry(entry.key().to_string()).or_default();
            p.first_call = (first != 0).then_some(first);
            p.last_call = (last != 0).then_some(last);
        }
        for entry in &self.scopes {
            let (partner, scope) = entry.key();
            let slots = entry.value();
            let at = slots.last_used.load(Ordering::Relaxed);
            let calls = slots.record();
            if at == 0 && calls.calls == 0 {
                continue;
            }
            let p = file.partners.entry(partner.to_string()).or_default();
            if at != 0 {
                p.scopes.insert(scope.to_string(), at);
            }
            if calls.calls != 0 {
                p.calls
                    .entry(scope.to_string())
                    .or_default()
                    .insert(self.writer.clone(), calls);
            }
        }
        file
    }

    /// Takes what `file` says into the slots, so a first call the file knows of is not taken for
    /// a new one, and times only move forward.
    pub fn absorb(&self, file: &UsageFile) {
        for (id, p) in &file.partners {
            let slots = self.partner(id);
            if let Some(first) = p.first_call.filter(|f| *f != 0) {
                let _ = slots
                    .first_call
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                        (v == 0 || v > first).then_some(first)
                    });
            }
            if let Some(last) = p.last_call {
                slots
                    .last_call_ms
                    .fetch_max(last.saturating_mul(1000), Ordering::Relaxed);
            }
            for (scope, at) in &p.scopes {
                self.scope(id, scope)
                    .last_used
                    .fetch_max(*at, Ordering::Relaxed);
            }
        }
    }

    /// Merges what this process recorded into the file at `path` and returns the merged content.
    /// Writes only when the file lacks something this process recorded.
    ///
    /// # Errors
    /// The file cannot be read, parsed or written (it is left as it was), or other writers kept
    /// replacing it.
    pub fn flush(&self, path: &Path) -> Result<UsageFile, UsageError> {
        for _ in 0..FLUSH_ATTEMPTS {
            let on_disk = UsageFile::read(path)?;
            self.absorb(&on_disk);
            let mine = self.recorded();
            if on_disk.covers(&mine) {
                return Ok(on_disk);
            }
            let mut merged = on_disk;
            merged.merge(&mine);
            merged.write(path)?;
            // Another process may have renamed its own file over ours in between; what it wrote
            // holds what it read, so reading back tells whether ours survived.
            let now = UsageFile::read(path)?;
            if now.covers(&mine) {
                return Ok(now);
            }
        }
        Err(UsageError::Contended {
            path: path.to_owned(),
        })
    }

    /// Unix seconds of `partner`'s first accepted request, as this process and the usage file
    /// it absorbed know it.
    pub fn first_call(&self, partner: &str) -> Option<u64> {
        self.partners
            .get(partner)
            .map(|p| p.first_call.load(Ordering::Relaxed))
            .filter(|s| *s != 0)
    }

    /// Milliseconds of `partner`'s latest accepted request, as this process knows it.
    pub fn last_call_ms(&self, partner: &str) -> Option<u64> {
        self.partners
            .get(partner)
            .map(|p| p.last_call_ms.load(Ordering::Relaxed))
            .filter(|ms| *ms != 0)
    }
}

// === impl UsageTable ===

impl UsageTable {
    /// Resolves the slots of every partner of `config` and the scopes it holds. Off the hot path:
    /// once per generation.
    pub fn build(usage: &Usage, config: &Config) -> Self {
        let partners = config
            .partners
            .iter()
            .map(|p| PartnerTable {
                slots: usage.partner(&p.id),
                scopes: p
                    .scopes
                    .iter()
                    .filter_map(|s| {
                        let name = config.scopes.get(s.0)?;
                        Some((*s, usage.scope(&p.id, name)))
                    })
                    .collect(),
            })
            .collect();
        Self { partners }
    }

    /// Records an accepted request of `partner` on a route that needs `scope`.
    pub fn accepted(&self, partner: PartnerId, scope: ScopeId) -> Option<Accepted> {
        let p = self.partners.get(partner.0)?;
        let now_ms = now_ms();
        let now = now_ms / 1000;
        if p.slots.last_call_ms.load(Ordering::Relaxed) < now_ms {
            p.slots.last_call_ms.fetch_max(now_ms, Ordering::Relaxed);
        }
        if let Some((_, slot)) = p.scopes.iter().find(|(s, _)| *s == scope) {
            if slot.last_used.load(Ordering::Relaxed) < now {
                slot.last_used.fetch_max(now, Ordering::Relaxed);
            }
        }
        let first = p.slots.first_call.load(Ordering::Relaxed) == 0
            && p.slots
                .first_call
                .compare_exchange(0, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        Some(Accepted { at: now, first })
    }

    /// Counts a finished call of `partner` on a route needing `scope`. Scopes the partner does
    /// not hold have no slots: a call refused for lack of the scope is not one of its calls.
    pub fn call(&self, partner: PartnerId, scope: ScopeId, outcome: CallOutcome) {
        let Some(slots) = self
            .partners
            .get(partner.0)
            .and_then(|p| p.scopes.iter().find(|(s, _)| *s == scope))
            .map(|(_, slots)| slots)
        else {
            return;
        };
        slots.count(outcome);
    }
}

// === impl ScopeSlots ===

impl ScopeSlots {
    fn count(&self, outcome: CallOutcome) {
        if self.first_ms.load(Ordering::Relaxed) == 0 {
            let _ = self.first_ms.compare_exchange(
                0,
                now_ms().max(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        match outcome {
            CallOutcome::Ok => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                self.since_refused.fetch_add(1, Ordering::Relaxed);
            }
            CallOutcome::Other => {
                self.since_refused.fetch_add(1, Ordering::Relaxed);
            }
            CallOutcome::Refused => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                self.since_refused.store(0, Ordering::Relaxed);
                self.last_refused_ms
                    .fetch_max(now_ms().max(1), Ordering::Relaxed);
            }
        }
        // Last, so a flush that sees this call also sees its outcome counted.
        self.calls.fetch_add(1, Ordering::Release);
    }

    fn record(&self) -> CallRecord {
        let calls = self.calls.load(Ordering::Acquire);
        CallRecord {
            calls,
            ok: self.ok.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            since_refused: self.since_refused.load(Ordering::Relaxed).min(calls),
            first_ms: self.first_ms.load(Ordering::Relaxed),
            last_refused_ms: self.last_refused_ms.load(Ordering::Relaxed),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(partner: &str, first: u64, last: u64, scopes: &[(&str, u64)]) -> UsageFile {
        let mut f = UsageFile::default();
        f.partners.insert(
            partner.into(),
            PartnerUsageRecord {
                first_call: Some(first),
                last_call: Some(last),
                scopes: scopes.iter().map(|(s, t)| ((*s).into(), *t)).collect(),
                calls: BTreeMap::new(),
            },
        );
        f
    }

    #[test]
    fn merging_keeps_the_latest_use_and_the_earliest_first_call() {
        let mut a = file("acme", 100, 500, &[("read", 500), ("write", 200)]);
        let b = file(
            "acme",
            50,
            400,
            &[("read", 300), ("write", 450), ("admin", 10)],
        );
        a.merge(&b);
        assert_eq!(
            a,
            file(
                "acme",
                50,
                500,
                &[("read", 500), ("write", 450), ("admin", 10)]
            )
        );
        assert!(a.covers(&b));
        assert!(!b.covers(&a));
    }

    #[test]
    fn a_flush_merges_with_what_another_writer_left_and_writes_only_news() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("usage").join("scopes.json");
        file("globex", 10, 20, &[("read", 20)])
            .write(&path)
            .unwrap();
        let usage = Usage::new();
        usage
            .scope("acme", "read")
            .last_used
            .store(1000, Ordering::Relaxed);
        usage
            .partner("acme")
            .first_call
            .store(900, Ordering::Relaxed);
        usage
            .partner("acme")
            .last_call_ms
            .store(1_000_500, Ordering::Relaxed);
        let merged = usage.flush(&path).unwrap();
        assert_eq!(merged.last_used("globex", "read"), Some(20));
        assert_eq!(merged.last_used("acme", "read"), Some(1000));
        assert_eq!(merged.last_call("acme"), Some(1000));
        assert_eq!(UsageFile::read(&path).unwrap(), merged);
        // Nothing new: the file is left alone.
        let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        usage.flush(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            modified
        );
    }

    fn calls(
        calls: u64,
        ok: u64,
        since_refused: u64,
        first_ms: u64,
        refused_ms: u64,
    ) -> CallRecord {
        CallRecord {
            calls,
            ok,
            refused: u64::from(refused_ms != 0),
            since_refused,
            first_ms,
            last_refused_ms: refused_ms,
        }
    }

    fn with_calls(writers: &[(&str, CallRecord)]) -> UsageFile {
        let mut f = UsageFile::default();
        let p = f.partners.entry("acme".into()).or_default();
        let scope = p.calls.entry("read@sandbox".into()).or_default();
        for (w, r) in writers {
            scope.insert((*w).into(), *r);
        }
        f
    }

    #[test]
    fn call_counts_merge_per_writer_by_the_newer_record_and_sum_across_writers() {
        let mut a = with_calls(&[("w1", calls(5, 5, 5, 1000, 0))]);
        let b = with_calls(&[
            ("w1", calls(3, 3, 3, 1000, 0)),
            ("w2", calls(4, 2, 1, 2000, 3000)),
        ]);
        a.merge(&b);
        assert_eq!(
            a,
            with_calls(&[
                ("w1", calls(5, 5, 5, 1000, 0)),
                ("w2", calls(4, 2, 1, 2000, 3000)),
            ])
        );
        // Merging again changes nothing: a retried flush does not count twice.
        let once = a.clone();
        a.merge(&b);
        assert_eq!(a, once);
        let sum = a.calls("acme", "read@sandbox");
        assert_eq!((sum.calls, sum.ok, sum.refused), (9, 7, 1));
        // w1 started before w2's refusal: its calls may precede it and do not count.
        assert_eq!(sum.since_refused, Some(1));
        assert_eq!(a.calls("acme", "write@sandbox"), CallSummary::default());
    }

    #[test]
    fn a_writer_started_after_the_latest_refusal_adds_all_its_calls_to_the_streak() {
        let f = with_calls(&[
            ("old", calls(10, 8, 0, 1000, 5000)),
            ("new", calls(6, 6, 6, 9000, 0)),
        ]);
        assert_eq!(f.calls("acme", "read@sandbox").since_refused, Some(6));
        let clean = with_calls(&[("new", calls(6, 6, 6, 9000, 0))]);
        assert_eq!(clean.calls("acme", "read@sandbox").since_refused, None);
    }

    #[test]
    fn counted_outcomes_reach_the_file_under_this_writer() {
        let usage = Usage::new();
        let slots = usage.scope("acme", "read@sandbox");
        for outcome in [
            CallOutcome::Ok,
            CallOutcome::Refused,
            CallOutcome::Ok,
            CallOutcome::Other,
            CallOutcome::Ok,
        ] {
            slots.count(outcome);
        }
        let file = usage.recorded();
        let sum = file.calls("acme", "read@sandbox");
        assert_eq!(
            (sum.calls, sum.ok, sum.refused, sum.since_refused),
            (5, 3, 1, Some(3))
        );
        assert_eq!(file.partners["acme"].calls["read@sandbox"].len(), 1);
        assert!(file.partners["acme"].scopes.is_empty(), "no accepted call");
    }

    #[test]
    fn an_unreadable_file_is_named_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scopes.json");
        std::fs::write(&path, "not json").unwrap();
        let usage = Usage::new();
        usage
            .scope("acme", "read")
            .last_used
            .store(1000, Ordering::Relaxed);
        let err = usage.flush(&path).unwrap_err();
        assert!(err.to_string().contains("scopes.json"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not json");
    }
}
