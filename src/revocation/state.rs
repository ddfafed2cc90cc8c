//! [`Revocation`]: one configuration's revocation sources — the CRL [`Checker`] and an OCSP cache
//! per bundle that asks for one — behind the two questions the data path asks: "may this chain
//! pass the handshake?" (sync, cache-only) and "what does OCSP say?" (async, once per connection).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::CertificateError;
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::sync::watch;
use x509_parser::prelude::FromDer;

use super::der::strip_leading_zeros;
use super::ocsp::{
    CertKey, OcspCache, OcspCounters, OcspError, OcspStatus, OcspVerdict, PreparedRequest,
    RefuseReason,
};
use super::{
    issuer_and_serial, BuildError, BundleSpec, Checker, CrlLoadError, FetchOptions, RefreshTasks,
    Registry, Verdict,
};
use crate::config::model::{BundleId, OcspMode, TrustBundle};
use crate::metrics::{RevocationCounters, RevocationResult, RevocationSource};

/// How often OCSP caches look for entries to refresh before they expire.
const OCSP_REFRESH_TICK: Duration = Duration::from_secs(10);

struct BundleOcsp {
    cache: OcspCache,
    mode: OcspMode,
    timeout: Duration,
    /// The configured responder URL; `None` means each leaf's AIA URL.
    responder: Option<String>,
    /// The bundle's CA certificates by subject (raw DER Name), to find a leaf's issuer when the
    /// client sent no intermediate.
    issuers: HashMap<Vec<u8>, CertificateDer<'static>>,
}

impl BundleOcsp {
    /// The leaf's issuer certificate: the chain's second certificate, or the bundle CA whose
    /// subject is the leaf's issuer when the client sent no intermediate.
    fn issuer_of<'a>(&'a self, chain: &'a [CertificateDer<'_>]) -> Option<&'a [u8]> {
        match chain.get(1) {
            Some(intermediate) => Some(intermediate.as_ref()),
            None => issuer_and_serial(chain.first()?)
                .and_then(|(issuer, _)| self.issuers.get(issuer))
                .map(|ca| ca.as_ref()),
        }
    }

    /// Asks the responder (or joins the in-flight query) under the configured timeout.
    async fn query(&self, chain: &[CertificateDer<'_>]) -> Result<OcspStatus, OcspError> {
        let (Some(leaf), Some(issuer)) = (chain.first(), self.issuer_of(chain)) else {
            return Err(OcspError::NoResponder);
        };
        tokio::time::timeout(self.timeout, self.cache.query(leaf, issuer))
            .await
            .unwrap_or(Err(OcspError::Timeout(self.timeout)))
    }
}

/// Revocation state for every trust bundle of one configuration.
pub struct Revocation {
    crl: Arc<Checker>,
    ocsp: Box<[Option<BundleOcsp>]>,
    registry: Arc<Registry>,
    counters: Arc<RevocationCounters>,
}

impl std::fmt::Debug for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocation")
            .field(
                "ocsp_bundles",
                &self.ocsp.iter().filter(|o| o.is_some()).count(),
            )
            .finish_non_exhaustive()
    }
}

/// Background work started by [`Revocation::spawn`]; stops when the shutdown signal fires.
#[derive(Debug)]
pub struct BackgroundTasks {
    crl: RefreshTasks,
    ocsp: Vec<tokio::task::JoinHandle<()>>,
}

impl BackgroundTasks {
    pub async fn join(self) {
        self.crl.join().await;
        for task in self.ocsp {
            task.abort();
        }
    }
}

impl Revocation {
    /// `cas[i]` holds bundle `i`'s CA certificates, as the TLS trust store loaded them.
    /// `registry` is shared across configuration generations so a revocation also cuts
    /// connections accepted under an older one.
    ///
    /// # Errors
    /// A CA certificate the CRL verifier cannot use.
    pub fn new(
        bundles: &[TrustBundle],
        cas: &[Vec<CertificateDer<'static>>],
        registry: Arc<Registry>,
    ) -> Result<Self, BuildError> {
        let specs = bundles
            .iter()
            .zip(cas)
            .map(|(b, cas)| BundleSpec {
                name: b.name.clone(),
                cas: cas.clone(),
                crls: b.crls.clone(),
                crl_expired: b.crl_expired,
            })
            .collect();
        let crl = Arc::new(Checker::new(specs, registry.clone())?);
        let ocsp = bundles
            .iter()
            .zip(cas)
            .map(|(b, cas)| {
                let config = b.ocsp.as_ref().filter(|o| o.mode != OcspMode::Off)?;
                let cache = OcspCache::new(config);
                let hook_registry = registry.clone();
                cache.set_on_revoked(move |r| {
                    let cut = hook_registry.revoke(r.issuer_dn, strip_leading_zeros(r.serial));
                    tracing::warn!(
                        connections = cut,
                        "OCSP reports a certificate revoked; its live connections are cut"
                    );
                });
                let issuers = cas
                    .iter()
                    .filter_map(|ca| {
                        let (_, parsed) =
                            x509_parser::certificate::X509Certificate::from_der(ca).ok()?;
                        Some((parsed.subject().as_raw().to_vec(), ca.clone()))
                    })
                    .collect();
                Some(BundleOcsp {
                    cache,
                    mode: config.mode,
                    timeout: config.timeout,
                    responder: config.responder.clone(),
                    issuers,
                })
            })
            .collect();
        Ok(Self {
            crl,
            ocsp,
            registry,
            counters: RevocationCounters::detached(),
        })
    }

    /// Counts checks into `counters` (the gateway's metrics) instead of detached ones.
    #[must_use]
    pub fn with_counters(mut self, counters: Arc<RevocationCounters>) -> Self {
        self.counters = counters;
        self
    }

    /// OCSP answers cached across bundles.
    pub fn ocsp_cache_entries(&self) -> usize {
        self.ocsp.iter().flatten().map(|o| o.cache.len()).sum()
    }

    /// The OCSP caches' counters, summed across bundles.
    pub fn ocsp_counters(&self) -> OcspCounters {
        self.ocsp.iter().flatten().map(|o| o.cache.counters()).fold(
            OcspCounters::default(),
            |a, c| OcspCounters {
                queries_sent: a.queries_sent + c.queries_sent,
                cache_hits: a.cache_hits + c.cache_hits,
                errors: a.errors + c.errors,
                soft_fail_allowed: a.soft_fail_allowed + c.soft_fail_allowed,
            },
        )
    }

    /// Whether any bundle has an OCSP cache.
    pub fn has_ocsp(&self) -> bool {
        self.ocsp.iter().any(Option::is_some)
    }

    pub fn crl(&self) -> &Arc<Checker> {
        &self.crl
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Loads every CRL source once; returns every problem with its source. Until a source has
    /// loaded, certificates of its bundle fail closed.
    pub async fn load(&self) -> Vec<CrlLoadError> {
        self.crl.load_initial(&FetchOptions::default()).await
    }

    /// Starts CRL refresh (file polling, URL fetching) and OCSP pre-expiry refresh.
    pub fn spawn(&self, shutdown: watch::Receiver<bool>) -> BackgroundTasks {
        let crl = self.crl.spawn_refresh(FetchOptions::default(), shutdown);
        let ocsp = self
            .ocsp
            .iter()
            .flatten()
            .map(|o| o.cache.spawn_refresher(OCSP_REFRESH_TICK))
            .collect();
        BackgroundTasks { crl, ocsp }
    }

    /// Handshake path, per chain certificate: the CRL lookup, and for the leaf the OCSP cache.
    /// Sync, no I/O. An OCSP cache miss passes here and is settled by [`Revocation::check_ocsp`]
    /// before the connection serves any request.
    ///
    /// # Errors
    /// `Revoked`; `UnknownRevocationStatus` when a configured source cannot answer (fail closed).
    pub fn check_cert(
        &self,
        bundle: BundleId,
        cert: &[u8],
        leaf: bool,
        now: UnixTime,
    ) -> Result<(), CertificateError> {
        let (issuer, serial) = issuer_and_serial(cert).ok_or(CertificateError::BadEncoding)?;
        let count = |result| self.counters.count(RevocationSource::Crl, result);
        match self.crl.check(bundle, issuer, serial, now) {
            Verdict::NotChecked => {}
            Verdict::Good => count(RevocationResult::Good),
            Verdict::Revoked => {
                count(RevocationResult::Revoked);
                return Err(CertificateError::Revoked);
            }
            Verdict::Unknown => {
                count(RevocationResult::Unknown);
                return Err(CertificateError::UnknownRevocationStatus);
            }
        }
        if !leaf {
            return Ok(());
        }
        let Some(ocsp) = self.ocsp_for(bundle) else {
            return Ok(());
        };
        let key = ocsp_key(cert).ok_or(CertificateError::BadEncoding)?;
        match ocsp.cache.cached(&key, Instant::now()) {
            None => Ok(()),
            Some(status) => {
                self.counters
                    .count(RevocationSource::Ocsp, RevocationResult::CacheHit);
                verdict_to_result(ocsp.cache.decide(ocsp.mode, &Ok(status)))
            }
        }
    }

    /// Whether the leaf still needs an OCSP answer before the connection may serve requests.
    pub fn needs_ocsp(&self, bundle: BundleId, leaf: &[u8]) -> bool {
        let Some(ocsp) = self.ocsp_for(bundle) else {
            return false;
        };
        ocsp_key(leaf).is_none_or(|key| ocsp.cache.cached(&key, Instant::now()).is_none())
    }

    /// Connection path: asks the responder (or joins the in-flight query for the same
    /// certificate) under the configured timeout, and applies the bundle's OCSP mode.
    ///
    /// # Errors
    /// `Revoked`, or `UnknownRevocationStatus` under `hard_fail` when no valid answer came.
    pub async fn check_ocsp(
        &self,
        bundle: BundleId,
        chain: &[CertificateDer<'_>],
    ) -> Result<(), CertificateError> {
        let Some(ocsp) = self.ocsp_for(bundle) else {
            return Ok(());
        };
        if chain.is_empty() {
            return Err(CertificateError::BadEncoding);
        }
        let result = ocsp.query(chain).await;
        self.counters.count(
            RevocationSource::Ocsp,
            match &result {
                Ok(OcspStatus::Good) => RevocationResult::Good,
                Ok(OcspStatus::Revoked) => RevocationResult::Revoked,
                Ok(OcspStatus::Unknown) => RevocationResult::Unknown,
                Err(_) => RevocationResult::Error,
            },
        );
        if let Err(e) = &result {
            tracing::warn!(error = %e, mode = ?ocsp.mode, "no valid OCSP answer for a client certificate");
        }
        verdict_to_result(ocsp.cache.decide(ocsp.mode, &result))
    }

    /// What the bundle's OCSP responder says about the chain's leaf, without applying the
    /// soft/hard-fail mode: for diagnostics such as `certgate inspect`. Uses and fills the cache
    /// like [`Self::check_ocsp`]. `None` when the bundle has no OCSP configured; otherwise the
    /// responder URL asked (when one could be determined) and its answer.
    pub async fn query_ocsp(
        &self,
        bundle: BundleId,
        chain: &[CertificateDer<'_>],
    ) -> Option<(Option<String>, Result<OcspStatus, OcspError>)> {
        let ocsp = self.ocsp_for(bundle)?;
        let url = match (chain.first(), ocsp.issuer_of(chain)) {
            (Some(leaf), Some(issuer)) => {
                PreparedRequest::new(leaf.as_ref(), issuer, ocsp.responder.as_deref())
                    .ok()
                    .map(|r| r.url().to_string())
            }
            _ => None,
        };
        Some((url, ocsp.query(chain).await))
    }

    /// The live-connection keys of a chain: `(issuer, serial)` of every certificate.
    pub fn chain_keys<'a>(
        chain: &'a [CertificateDer<'_>],
    ) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        chain.iter().filter_map(|c| issuer_and_serial(c.as_ref()))
    }

    fn ocsp_for(&self, bundle: BundleId) -> Option<&BundleOcsp> {
        self.ocsp.get(bundle.0).and_then(Option::as_ref)
    }
}

/// The OCSP cache key: issuer Name and the serial exactly as encoded (what the responder is asked).
fn ocsp_key(cert: &[u8]) -> Option<CertKey> {
    let der = CertificateDer::from(cert);
    let ee = webpki::EndEntityCert::try_from(&der).ok()?;
    let (issuer, _) = issuer_and_serial(cert)?;
    Some(CertKey::new(issuer, ee.serial()))
}

fn verdict_to_result(verdict: OcspVerdict) -> Result<(), CertificateError> {
    match verdict {
        OcspVerdict::Allow => Ok(()),
        OcspVerdict::Refuse(RefuseReason::Revoked) => Err(CertificateError::Revoked),
        OcspVerdict::Refuse(RefuseReason::Unknown) => {
            Err(CertificateError::UnknownRevocationStatus)
        }
    }
}
