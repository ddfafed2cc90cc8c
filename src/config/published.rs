//! What the gateway reads from a lifecycle state folder: its layout, and the partner table the
//! control plane publishes there (`published/partners.json`), merged into the configuration at
//! load. The control plane (`crate::lifecycle`) writes these files; this module only reads them,
//! so loading a configuration never reaches into the registry.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::model::{self, BundleId, IdentityMatch, ScopeId};
use super::{Problem, Problems};

/// The longest validity `partner issue` grants unless `lifecycle.max_validity_days` says otherwise.
pub const DEFAULT_MAX_VALIDITY_DAYS: u32 = 90;

/// Name of the trust bundle the embedded CA becomes in the gateway, unless configured otherwise.
pub const DEFAULT_BUNDLE: &str = "lifecycle";

/// The layout of a lifecycle state folder. Every path anything reads or writes is named here, so
/// the CLI, the publisher and the gateway agree on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The CA certificate (PEM): the gateway's trust anchor for lifecycle partners.
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca").join("ca.pem")
    }

    /// The CA private key (PKCS#8 PEM, mode 0600).
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca").join("ca-key.pem")
    }

    /// The SQLite registry.
    pub fn database(&self) -> PathBuf {
        self.root.join("registry.sqlite")
    }

    /// Where the files the gateway reads are published.
    pub fn published(&self) -> PathBuf {
        self.root.join("published")
    }

    /// The CA's current CRL (DER).
    pub fn crl(&self) -> PathBuf {
        self.published().join("crl.der")
    }

    /// The approved partners, as the gateway compiles them into its partner table.
    pub fn partners(&self) -> PathBuf {
        self.published().join("partners.json")
    }

    /// How publishing has gone: failures counted by every process that publishes, and whether
    /// the last attempt failed. Written by the control plane, read by the gateways.
    pub fn publish_status(&self) -> PathBuf {
        self.root.join("publish-status.json")
    }

    /// When each partner last used each scope: written by the gateways, read by
    /// `partner report --unused-scopes`.
    pub fn usage(&self) -> PathBuf {
        self.root.join("usage").join("scopes.json")
    }
}

/// The default `nextUpdate` distance of a signed CRL: a week. `certgate registry publish` (daily,
/// from cron or a timer) re-signs it before it runs out, as does every change.
pub const DEFAULT_CRL_NEXT_UPDATE: Duration = Duration::from_secs(7 * 24 * 3600);

/// `published/partners.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPartners {
    /// The CRL number published together with this table.
    pub crl_number: i64,
    pub published_at: String,
    pub partners: Vec<PublishedPartner>,
    /// Partners (approved or offboarded) left without a valid certificate by a revocation, with
    /// the time of their latest revocation: the gateway measures time to revoke against it.
    #[serde(default)]
    pub revocations: Vec<PublishedRevocation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedRevocation {
    pub partner: String,
    /// Unix seconds (the registry's resolution).
    pub revoked_at: i64,
}

/// `publish-status.json`: the control plane's record of publication failures. A CLI process
/// lives for one command, so a failure it could only count in memory would be lost; this file
/// is what `registry publish` and the gateways read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishStatus {
    /// Publications that failed, ever (until the file is removed).
    pub failures: u64,
    /// Whether the latest publication failed: a recorded change is not yet in force.
    pub pending: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl PublishStatus {
    /// Reads the file; a missing one means nothing failed.
    ///
    /// # Errors
    /// The file cannot be read or parsed; the message names it.
    pub fn read(path: &Path) -> Result<Self, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not a publish status file: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPartner {
    pub id: String,
    pub owner: String,
    pub identity: Identity,
    pub scopes: Vec<String>,
    /// The partner's valid certificates, so the gateway can export their expiry before any of
    /// them is used. Absent in tables written before it was published.
    #[serde(default)]
    pub certificates: Vec<PublishedCertificate>,
    /// Lifecycle times (Unix seconds), for the onboarding lead-time metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_issued_at: Option<i64>,
    /// When its developer submitted the enrolment request (invited partners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolled_at: Option<i64>,
    /// When `partner promote` granted production.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_at: Option<i64>,
}

/// A valid certificate of a published partner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedCertificate {
    /// Upper-case hex of the DER INTEGER's content octets, as `openssl x509 -serial` prints it
    /// and as the gateway reads it from a presented certificate.
    pub serial: String,
    /// Unix seconds.
    pub not_after: i64,
}

/// The one identity a partner's certificates must carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Identity {
    /// A SPIFFE ID in a URI SAN.
    Spiffe(String),
    /// The subject common name.
    Cn(String),
    /// A DNS SAN (lower-case).
    Dns(String),
}

// === impl Identity ===

impl Identity {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Spiffe(_) => "spiffe",
            Self::Cn(_) => "cn",
            Self::Dns(_) => "dns",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            Self::Spiffe(v) | Self::Cn(v) | Self::Dns(v) => v,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind(), self.value())
    }
}

/// Reads a published partner table.
///
/// # Errors
/// A problem naming the file.
pub fn read_partners(path: &Path) -> Result<PublishedPartners, Problem> {
    let text = std::fs::read(path).map_err(|e| {
        Problem::in_file(
            path,
            format!("cannot read the published partner table ({e}); run `certgate ca init --state DIR` or `certgate registry publish`"),
        )
    })?;
    serde_json::from_slice(&text)
        .map_err(|e| Problem::in_file(path, format!("not a published partner table: {e}")))
}

/// Adds the lifecycle trust bundle and the registry's approved partners to `config`.
///
/// # Errors
/// Every problem: an unreadable table, a bundle or partner ID that YAML already uses, an identity
/// claimed both in YAML and in the registry.
pub fn merge(config: &mut model::Config) -> Result<(), Problems> {
    let Some(lifecycle) = config.lifecycle.clone() else {
        return Ok(());
    };
    let state = StateDir::new(&lifecycle.state_dir);
    let table_path = state.partners();
    let mut problems = Vec::new();
    if config
        .trust_bundles
        .iter()
        .any(|b| b.name == lifecycle.bundle)
    {
        problems.push(Problem::in_file(
            &config.source,
            format!(
                "lifecycle.bundle: trust bundle `{}` is already defined in client_auth.trust_bundles; name the lifecycle bundle differently",
                lifecycle.bundle
            ),
        ));
    }
    let table = read_partners(&table_path).map_err(Problems::from)?;
    let bundle = BundleId(config.trust_bundles.len());
    config.trust_bundles.push(model::TrustBundle {
        name: lifecycle.bundle.clone(),
        ca: state.ca_cert(),
        crls: vec![model::CrlSource::File(state.crl())],
        crl_expired: model::CrlExpiredPolicy::Reject,
        ocsp: None,
        // The embedded CA issues leaves directly, and its own CRL covers them.
        revocation: model::RevocationScope::default(),
    });
    let yaml_ids: HashSet<String> = config.partners.iter().map(|p| p.id.clone()).collect();
    let mut claimed: HashMap<IdentityMatch, String> = HashMap::new();
    for p in &config.partners {
        for i in &p.identities {
            claimed.insert(i.clone(), p.id.clone());
        }
    }
    let mut scope_ids: HashMap<String, ScopeId> = config
        .scopes
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), ScopeId(i)))
        .collect();
    config.registry.revocations = table
        .revocations
        .into_iter()
        .map(|r| model::RegisteredRevocation {
            partner: r.partner,
            revoked_at: r.revoked_at,
        })
        .collect();
    for p in table.partners {
        if yaml_ids.contains(&p.id) {
            problems.push(Problem::in_file(
                &table_path,
                format!("partner `{}` is defined both in the YAML `partners:` and in the lifecycle registry", p.id),
            ));
            continue;
        }
        let identity = match &p.identity {
            Identity::Spiffe(v) => IdentityMatch::Spiffe(v.clone()),
            Identity::Cn(v) => IdentityMatch::SubjectCn(v.clone()),
            Identity::Dns(v) => IdentityMatch::SanDns(v.to_ascii_lowercase()),
        };
        if let Some(other) = claimed.get(&identity) {
            problems.push(Problem::in_file(
                &table_path,
                format!(
                    "identity {} of lifecycle partner `{}` is also claimed by YAML partner `{other}`",
                    p.identity, p.id
                ),
            ));
            continue;
        }
        // Registration keeps live registry identities unique; YAML ones are checked above.
        let mut scopes: Vec<ScopeId> = p
            .scopes
            .iter()
            .map(|s| {
                *scope_ids.entry(s.clone()).or_insert_with(|| {
                    config.scopes.push(s.clone());
                    ScopeId(config.scopes.len() - 1)
                })
            })
            .collect();
        scopes.sort();
        scopes.dedup();
        config.registry.partners.push(model::RegisteredPartner {
            id: p.id.clone(),
            registered_at: p.registered_at,
            approved_at: p.approved_at,
            first_issued_at: p.first_issued_at,
            enrolled_at: p.enrolled_at,
            promoted_at: p.promoted_at,
        });
        config
            .registry
            .certificates
            .extend(
                p.certificates
                    .into_iter()
                    .map(|c| model::RegisteredCertificate {
                        partner: p.id.clone(),
                        serial: c.serial,
                        not_after: c.not_after,
                    }),
            );
        config.partners.push(model::Partner {
            id: p.id,
            owner: p.owner,
            trust_bundle: bundle,
            identities: vec![identity],
            scopes,
        });
    }
    model::grant_sandbox_twins(&config.scopes, &mut config.partners);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Problems::new(problems))
    }
}
