//! `certgate demo`: a complete, self-contained gateway on loopback for a newcomer.
//!
//! Everything it writes (CA, server and partner certificates, keys, CRL, config) goes into one
//! state folder and is demo material only: the keys are generated fresh on every run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub(super) enum DemoError {
    #[error("cannot generate demo certificates: {0}")]
    Pki(#[from] rcgen::Error),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("onboarding the demo partner through the lifecycle failed")]
    Lifecycle(#[from] crate::lifecycle::commands::CommandError),
    #[error("publishing the demo registry failed")]
    Publish(#[from] crate::lifecycle::publish::PublishError),
}

/// The partner `certgate demo` onboards through the lifecycle, and where its files are.
#[derive(Debug, Clone)]
pub(super) struct LifecycleDemo {
    pub state: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The demo's lifecycle partner.
const LIFECYCLE_PARTNER: &str = "initech";

/// Onboards `initech` the way an operator and a partner would: a CA in `dir/lifecycle`,
/// `register` by one actor, `approve` by another, a key and CSR made on the partner's side, and
/// `issue` from that CSR. The folder is demo material and is made anew on every run.
///
/// # Errors
/// Writing a file, the CA or a lifecycle command failed.
pub(super) async fn onboard_through_lifecycle(dir: &Path) -> Result<LifecycleDemo, DemoError> {
    use crate::lifecycle::commands::{self, Policy, Register};
    use crate::lifecycle::registry::Identity;
    use crate::lifecycle::{ca, publish, store::Store, StateDir};
    use commands::CommandError as E;

    let state = StateDir::new(dir.join("lifecycle"));
    if state.root().exists() {
        std::fs::remove_dir_all(state.root()).map_err(|source| DemoError::Write {
            path: state.root().to_owned(),
            source,
        })?;
    }
    std::fs::create_dir_all(state.root()).map_err(|source| DemoError::Write {
        path: state.root().to_owned(),
        source,
    })?;
    ca::init(&state, "certgate demo partner CA").map_err(E::Ca)?;
    let signer = ca::FileSigner::load(&state).map_err(E::Ca)?;
    let mut store = Store::create(&crate::config::model::Database::Sqlite(state.database()))
        .await
        .map_err(E::Store)?;
    let policy = Policy {
        known_scopes: Some(["orders:read", "payments:write"].map(String::from).into()),
        yaml_identities: Default::default(),
        max_validity_days: commands::DEFAULT_MAX_VALIDITY_DAYS,
    };
    let spiffe = format!("spiffe://partners.example.com/{LIFECYCLE_PARTNER}");
    let register = Register {
        id: LIFECYCLE_PARTNER,
        owner: "integrations@initech.example",
        scopes: &["orders:read".to_owned()],
        identity: Identity::Spiffe(spiffe.clone()),
    };
    commands::register(&mut store, &policy, "demo-requester", register).await?;
    commands::approve(&mut store, "demo-approver", LIFECYCLE_PARTNER).await?;

    // The partner's side: its key never leaves it; only the CSR is handed over.
    let key = KeyPair::generate()?;
    let mut request = CertificateParams::default();
    request.distinguished_name = rcgen::DistinguishedName::new();
    request.subject_alt_names = vec![SanType::URI(spiffe.as_str().try_into()?)];
    let csr = request.serialize_request(&key)?.pem()?;
    let paths = LifecycleDemo {
        cert: dir.join("initech.pem"),
        key: dir.join("initech-key.pem"),
        state: state.root().to_owned(),
    };
    write(&paths.key, &key.serialize_pem())?;
    write(&dir.join("initech.csr"), &csr)?;
    let issued = commands::issue(
        &mut store,
        &policy,
        &signer,
        "demo-requester",
        LIFECYCLE_PARTNER,
        csr.as_bytes(),
        30,
    )
    .await?;
    write(&paths.cert, issued.chain_pem.as_deref().unwrap_or_default())?;
    publish::publish(
        &mut store,
        &signer,
        &state,
        publish::DEFAULT_CRL_NEXT_UPDATE,
    )
    .await?;
    Ok(paths)
}

/// The files of a generated demo PKI.
#[derive(Debug, Clone)]
pub(super) struct DemoPki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub crl: PathBuf,
    /// `acme`: a partner in good standing.
    pub acme_cert: PathBuf,
    pub acme_key: PathBuf,
    /// `globex`: a partner whose certificate is listed in the CRL.
    pub globex_cert: PathBuf,
    pub globex_key: PathBuf,
}

/// How long the generated material stays valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Validity {
    /// A run of `certgate demo`: fresh keys each time, short-lived certificates.
    Demo,
    /// The example configuration's committed demo material: ten years, so the example keeps
    /// passing `certgate check`.
    LongLived,
}

/// Generates a demo CA, a server certificate for `localhost`, two partner certificates and a CRL
/// revoking the second one, into `dir`.
///
/// # Errors
/// Certificate generation or writing a file failed.
pub(super) fn generate(dir: &Path, validity: Validity) -> Result<DemoPki, DemoError> {
    let (ca_days, leaf_days, crl_days) = match validity {
        Validity::Demo => (365, 90, 7),
        Validity::LongLived => (3650, 3650, 3650),
    };
    std::fs::create_dir_all(dir).map_err(|source| DemoError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let now = OffsetDateTime::now_utc();

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name
        .push(DnType::CommonName, "certgate demo CA");
    ca.distinguished_name
        .push(DnType::OrganizationName, "certgate demo");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - Duration::hours(1);
    ca.not_after = now + Duration::days(ca_days);
    ca.key_identifier_method = KeyIdMethod::Sha256;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf = |cn: &str, serial: u64, sans: Vec<SanType>, eku: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name
            .push(DnType::OrganizationName, "certgate demo");
        p.subject_alt_names = sans;
        p.serial_number = Some(SerialNumber::from(serial));
        p.extended_key_usages = vec![eku];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = now - Duration::hours(1);
        p.not_after = now + Duration::days(leaf_days);
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &issuer)?;
        Ok::<_, rcgen::Error>((cert, key))
    };
    let localhost = SanType::DnsName("localhost".try_into()?);
    let loopback = SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let (server, server_key) = leaf(
        "localhost",
        0x1000,
        vec![localhost, loopback],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let spiffe = |name: &str| {
        format!("spiffe://partners.example.com/{name}")
            .try_into()
            .map(SanType::URI)
    };
    let (acme, acme_key) = leaf(
        "acme-billing",
        0x2001,
        vec![spiffe("acme")?],
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let (globex, globex_key) = leaf(
        "globex-sync",
        0x2002,
        vec![spiffe("globex")?],
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;

    let crl = CertificateRevocationListParams {
        this_update: now - Duration::minutes(5),
        next_update: now + Duration::days(crl_days),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from(0x2002u64),
            revocation_time: now - Duration::minutes(5),
            reason_code: Some(rcgen::RevocationReason::CessationOfOperation),
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)?;

    let pki = DemoPki {
        dir: dir.to_owned(),
        ca: dir.join("demo-ca.pem"),
        server_cert: dir.join("demo-server.pem"),
        server_key: dir.join("demo-server-key.pem"),
        crl: dir.join("demo-ca.crl"),
        acme_cert: dir.join("demo-acme.pem"),
        acme_key: dir.join("demo-acme-key.pem"),
        globex_cert: dir.join("demo-globex.pem"),
        globex_key: dir.join("demo-globex-key.pem"),
    };
    write(&pki.ca, &ca_cert.pem())?;
    write(&pki.server_cert, &server.pem())?;
    write(&pki.server_key, &server_key.serialize_pem())?;
    write(&pki.crl, &crl.pem()?)?;
    write(&pki.acme_cert, &acme.pem())?;
    write(&pki.acme_key, &acme_key.serialize_pem())?;
    write(&pki.globex_cert, &globex.pem())?;
    write(&pki.globex_key, &globex_key.serialize_pem())?;
    Ok(pki)
}

/// The demo's configuration: the same YAML a user would write, pointing at the generated files.
pub(super) fn config_yaml(
    pki: &DemoPki,
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
    lifecycle: Option<&LifecycleDemo>,
) -> String {
    let p = |path: &Path| path.display().to_string();
    let lifecycle = lifecycle
        .map(|l| format!("lifecycle:\n  state_dir: {}\n", p(&l.state)))
        .unwrap_or_default();
    format!(
        r#"# Generated by `certgate demo`. Demo material only.
server:
  listen: "{listen}"
  tls:
    certificates:
      - cert: {server_cert}
        key: {server_key}
  client_auth:
    trust_bundles:
      - name: demo-partners
        ca: {ca}
        crl:
          - path: {crl}
admin:
  listen: "{admin}"
upstreams:
  echo:
    endpoints: ["http://{upstream}"]
partners:
  - id: acme
    owner: payments-team@example.com
    trust_bundle: demo-partners
    identities:
      - spiffe: spiffe://partners.example.com/acme
    scopes: [orders:read]
  - id: globex
    owner: logistics-team@example.com
    trust_bundle: demo-partners
    identities:
      - spiffe: spiffe://partners.example.com/globex
    scopes: [orders:read]
routes:
  - name: orders-read
    path_prefix: /v1/orders
    methods: [GET, HEAD]
    scope: orders:read
    upstream: echo
  - name: payments-write
    path_prefix: /v1/payments
    methods: [POST]
    scope: payments:write
    upstream: echo
forward:
  client_cert_header: rfc9440
  partner_header: X-Partner-Id
{lifecycle}"#,
        server_cert = p(&pki.server_cert),
        server_key = p(&pki.server_key),
        ca = p(&pki.ca),
        crl = p(&pki.crl),
    )
}

/// The calls a newcomer pastes to see certgate decide, and with the lifecycle partner a revoke
/// that cuts a running loop.
pub(super) fn curl_commands(
    pki: &DemoPki,
    listen: SocketAddr,
    lifecycle: Option<(&LifecycleDemo, &Path)>,
) -> String {
    let base = format!("https://localhost:{}", listen.port());
    let ca = pki.ca.display();
    let call = |cert: &Path, key: &Path, extra: &str, path: &str| {
        format!(
            "curl -sS --cacert {ca} --cert {} --key {} {extra}{base}{path}",
            cert.display(),
            key.display()
        )
    };
    let mut text = format!(
        "# 1. acme reads an order: allowed, forwarded with its verified identity (200)\n{}\n\n\
         # 2. acme tries to create a payment: outside its scopes (403 scope_denied)\n{}\n\n\
         # 3. globex's certificate is revoked in the CRL: refused in the TLS handshake\n#    (curl reports `alert certificate revoked`; the audit log says reason=\"revoked\")\n{}\n",
        call(&pki.acme_cert, &pki.acme_key, "", "/v1/orders/42"),
        call(&pki.acme_cert, &pki.acme_key, "-X POST ", "/v1/payments"),
        call(&pki.globex_cert, &pki.globex_key, "", "/v1/orders/42"),
    );
    if let Some((l, config)) = lifecycle {
        let initech = call(&l.cert, &l.key, "", "/v1/orders/42");
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "certgate".to_owned());
        text.push_str(&format!(
            "\n# 4. initech was onboarded through the lifecycle: registered, approved by a second\n\
             #    person, issued from a CSR made on its side (`{exe} partner history initech\n\
             #    --config {config}` shows the record). Allowed (200):\n{initech}\n\n\
             # 5. keep initech calling in a loop, then revoke it: within a second its calls fail in\n\
             #    the TLS handshake (`kill %1` stops the loop)\n\
             while sleep 0.5; do {initech} -o /dev/null -w '%{{http_code}}\\n'; done &\n\
             {exe} partner revoke initech --reason keyCompromise --actor you --config {config}\n",
            config = config.display(),
        ));
    }
    text
}

fn write(path: &Path, contents: &str) -> Result<(), DemoError> {
    let err = |source| DemoError::Write {
        path: path.to_owned(),
        source,
    };
    std::fs::write(path, contents).map_err(err)?;
    #[cfg(unix)]
    if path.to_string_lossy().ends_with("-key.pem") {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    Ok(())
}
