//! Live connections per certificate, so that a revocation also ends connections already open.
//!
//! The registry is small (one entry per open connection's certificate) while a CRL can be huge, so
//! when a new CRL arrives we walk the registry and look each key up in the new set, never the
//! other way round. Connections await a [`RevokedSignal`]; dropping the [`Guard`] unregisters.
//!
//! The key is (issuer raw DN, serial) without the trust bundle: issuer name plus serial identifies a
//! certificate, and a revocation by the CA of that name applies wherever the certificate is used.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::Notify;

/// Open connections by certificate. Share one `Arc<Registry>` across configuration generations so
/// connections accepted under an old [`super::Checker`] are still cut by a new one.
#[derive(Debug, Default)]
pub struct Registry {
    by_cert: DashMap<CertKey, Vec<Entry>>,
    next_token: AtomicU64,
}

/// One registered connection: dropping it removes the registration.
#[must_use = "dropping the guard unregisters the connection at once"]
#[derive(Debug)]
pub struct Guard {
    registry: Arc<Registry>,
    keys: Vec<CertKey>,
    token: u64,
}

/// Resolves when the connection's certificate (or any certificate it was registered under) is
/// revoked. Cancel-safe.
#[derive(Debug, Clone)]
pub struct RevokedSignal {
    flag: Arc<Flag>,
}

/// One connection's revocation: set once, never cleared. A flag and a `Notify` rather than a
/// `watch` channel, whose shared state is about 350 bytes (it keeps eight `Notify`s for its
/// receivers) where this is 56, and every open connection holds one.
#[derive(Debug, Default)]
struct Flag {
    revoked: AtomicBool,
    notify: Notify,
}

/// Shared between the registry's entry and the guards of every connection registered under it:
/// a partner's many connections hold one copy of its issuer and serial, not one each.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CertKey {
    issuer: Arc<[u8]>,
    serial: Arc<[u8]>,
}

#[derive(Debug)]
struct Entry {
    token: u64,
    conn_id: u64,
    flag: Arc<Flag>,
}

// === impl Registry ===

impl Registry {
    /// An empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers connection `conn_id` under one certificate (issuer raw DN, serial with leading
    /// zeros stripped — the key [`super::issuer_and_serial`] returns).
    ///
    /// Register *before* the final revocation check (see [`super::Checker::check`]): a CRL swapped
    /// in between the check and the registration would otherwise be missed.
    pub fn register(
        self: &Arc<Self>,
        issuer: &[u8],
        serial: &[u8],
        conn_id: u64,
    ) -> (Guard, RevokedSignal) {
        self.register_chain([(issuer, serial)], conn_id)
    }

    /// Registers connection `conn_id` under several certificates (typically leaf and
    /// intermediates) with one shared signal: revoking any of them cuts the connection.
    pub fn register_chain<'a>(
        self: &Arc<Self>,
        certs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
        conn_id: u64,
    ) -> (Guard, RevokedSignal) {
        let flag = Arc::new(Flag::default());
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let certs = certs.into_iter();
        // Held for the connection's life: sized to the chain, not to a growing vector's steps.
        let (fewest, most) = certs.size_hint();
        let mut keys = Vec::with_capacity(most.unwrap_or(fewest));
        for (issuer, serial) in certs {
            let key = CertKey {
                issuer: issuer.into(),
                serial: serial.into(),
            };
            let mut entries = self.by_cert.entry(key).or_default();
            entries.push(Entry {
                token,
                conn_id,
                flag: Arc::clone(&flag),
            });
            keys.push(entries.key().clone());
        }
        let guard = Guard {
            registry: Arc::clone(self),
            keys,
            token,
        };
        (guard, RevokedSignal { flag })
    }

    /// Signals every live connection registered under (issuer, serial). Returns how many were
    /// signalled. This is the hook for OCSP and for operators; CRL swaps use [`Self::revoke_where`].
    pub fn revoke(&self, issuer: &[u8], serial: &[u8]) -> usize {
        let key = CertKey {
            issuer: issuer.into(),
            serial: serial.into(),
        };
        let Some(entries) = self.by_cert.get(&key) else {
            return 0;
        };
        for entry in entries.iter() {
            fire(entry, issuer, serial);
        }
        entries.len()
    }

    /// Signals every live connection whose (issuer, serial) satisfies `revoked`. Walks the
    /// registry once; `revoked` should be an O(1) set lookup. Returns how many were signalled.
    pub fn revoke_where(&self, mut revoked: impl FnMut(&[u8], &[u8]) -> bool) -> usize {
        let mut fired = 0;
        for item in self.by_cert.iter() {
            let key = item.key();
            if revoked(&key.issuer, &key.serial) {
                for entry in item.value() {
                    fire(entry, &key.issuer, &key.serial);
                    fired += 1;
                }
            }
        }
        fired
    }

    /// Number of registered (certificate, connection) pairs.
    pub fn len(&self) -> usize {
        self.by_cert.iter().map(|e| e.value().len()).sum()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.by_cert.is_empty()
    }
}

fn fire(entry: &Entry, issuer: &[u8], serial: &[u8]) {
    // Firing twice is harmless: only the first logs, and waking nobody is cheap.
    let first = !entry.flag.revoked.swap(true, Ordering::AcqRel);
    entry.flag.notify.notify_waiters();
    if first {
        tracing::info!(
            conn.id = entry.conn_id,
            cert.serial = %hex::encode(serial),
            cert.issuer_len = issuer.len(),
            "certificate of live connection revoked: closing it"
        );
    }
}

// === impl Guard ===

impl Drop for Guard {
    fn drop(&mut self) {
        for key in &self.keys {
            self.registry.by_cert.remove_if_mut(key, |_, entries| {
                entries.retain(|e| e.token != self.token);
                entries.is_empty()
            });
        }
    }
}

// === impl RevokedSignal ===

impl RevokedSignal {
    /// Waits until the certificate is revoked. Never resolves if the registry goes away without a
    /// revocation (that is not a revocation).
    pub async fn revoked(&mut self) {
        let notified = self.flag.notify.notified();
        tokio::pin!(notified);
        // Registered before the flag is read: a revocation between the two still wakes it.
        notified.as_mut().enable();
        if !self.is_revoked() {
            notified.await;
        }
    }

    /// Whether the revocation has fired already.
    pub fn is_revoked(&self) -> bool {
        self.flag.revoked.load(Ordering::Acquire)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn revoke_fires_only_the_matching_connection_and_guard_unregisters() {
        let reg = Registry::new();
        let (g1, mut s1) = reg.register(b"ca", b"\x01", 1);
        let (g2, s2) = reg.register(b"ca", b"\x02", 2);
        assert_eq!(reg.len(), 2);
        assert_eq!(reg.revoke(b"ca", b"\x01"), 1);
        tokio::time::timeout(Duration::from_secs(1), s1.revoked())
            .await
            .unwrap();
        assert!(!s2.is_revoked());
        drop(g1);
        drop(g2);
        assert!(reg.is_empty());
        assert_eq!(reg.revoke(b"ca", b"\x01"), 0);
    }

    #[tokio::test]
    async fn a_connection_already_waiting_is_woken_and_an_unrevoked_one_is_not() {
        let reg = Registry::new();
        let (_g1, s1) = reg.register(b"ca", b"\x01", 1);
        let (_g2, s2) = reg.register(b"ca", b"\x02", 2);
        let waiting = |mut s: RevokedSignal| tokio::spawn(async move { s.revoked().await });
        let (w1, w2) = (waiting(s1.clone()), waiting(s2.clone()));
        // Both tasks are parked on the signal before anything fires.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!w1.is_finished() && !w2.is_finished());
        assert_eq!(reg.revoke(b"ca", b"\x01"), 1);
        tokio::time::timeout(Duration::from_secs(1), w1)
            .await
            .unwrap()
            .unwrap();
        assert!(s1.is_revoked() && !s2.is_revoked());
        assert!(!w2.is_finished());
        w2.abort();
    }

    #[tokio::test]
    async fn chain_registration_fires_on_intermediate() {
        let reg = Registry::new();
        let (_g, s) = reg.register_chain([(&b"int"[..], &b"\x07"[..]), (b"root", b"\x09")], 5);
        assert_eq!(reg.revoke_where(|i, s| i == b"root" && s == b"\x09"), 1);
        assert!(s.is_revoked());
    }

    #[tokio::test]
    async fn same_cert_two_connections_unregister_independently() {
        let reg = Registry::new();
        let (g1, _s1) = reg.register(b"ca", b"\x01", 1);
        let (_g2, s2) = reg.register(b"ca", b"\x01", 2);
        drop(g1);
        assert_eq!(reg.len(), 1);
        assert_eq!(reg.revoke(b"ca", b"\x01"), 1);
        assert!(s2.is_revoked());
    }
}
