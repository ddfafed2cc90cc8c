//! What revocation costs per connection, with CRLs of 0, 10 000 and 1 000 000 entries:
//!
//! * `crl_load`: `Checker::load_bytes` for the 10 000- and 1 000 000-entry CRLs: parse, signature
//!   check and set build, what start-up and every CRL refresh pay (off the handshake path).
//! * `crl_lookup`: [`Checker::check`] alone, for a certificate the CRL does not list (the common
//!   case; a listed serial is the same hash lookup).
//! * `connection_validation`: what a new connection runs on the CPU before its first request —
//!   `ClientVerifier::verify_client_cert` (webpki chain, dates, EKU, then the CRL lookup), then
//!   `PeerIdentity::from_der` and `PartnerIndex::lookup` — on a real rcgen chain, through the
//!   same `Snapshot` the gateway builds from YAML.
//!
//! The CRLs are generated with rcgen and loaded once, before any timing (a million entries take
//! seconds). Setup prints the load time and the resident-set growth of each load, read from
//! `/proc/self/status` (Linux) around `Checker::load_bytes` while the DER stays alive, so the
//! growth is the parsed set plus whatever the parser kept.
//!
//! Run: `cargo bench --bench revocation`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use certgate::config::model::BundleId;
use certgate::identity::PeerIdentity;
use certgate::revocation::{issuer_and_serial, Verdict};
use certgate::snapshot::Snapshot;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};

const SIZES: [u64; 3] = [0, 10_000, 1_000_000];

/// One gateway snapshot with a CRL of `entries` loaded, and a partner certificate it does not list.
struct Fixture {
    entries: u64,
    snapshot: Snapshot,
    leaf: CertificateDer<'static>,
    /// What the client sends after its leaf: the issuing CA.
    intermediates: Vec<CertificateDer<'static>>,
    issuer: Vec<u8>,
    serial: Vec<u8>,
    /// The CRL as loaded, DER.
    crl: Vec<u8>,
    _dir: tempfile::TempDir,
}

/// 16-byte serials with the high bit set, like real CAs' random serials; all even.
fn revoked_serial(i: u64) -> Vec<u8> {
    let mut s = vec![0x80u8; 8];
    s.extend_from_slice(&(i * 2).to_be_bytes());
    s
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.key_identifier_method = KeyIdMethod::Sha256;
    p
}

fn crl_der(issuer: &Issuer<'_, KeyPair>, entries: u64) -> Vec<u8> {
    let now = time::OffsetDateTime::now_utc();
    CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + time::Duration::days(30),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: (0..entries)
            .map(|i| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&revoked_serial(i)),
                revocation_time: now - time::Duration::minutes(1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(issuer)
    .unwrap()
    .der()
    .to_vec()
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn fixture(entries: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, contents: &[u8]| std::fs::write(dir.path().join(name), contents);

    let root_key = KeyPair::generate().unwrap();
    let root_params = ca_params("bench partner root CA");
    let root_cert = root_params.self_signed(&root_key).unwrap();
    let root = Issuer::new(root_params, root_key);
    let int_key = KeyPair::generate().unwrap();
    let mut int_params = ca_params("bench partner issuing CA");
    int_params.use_authority_key_identifier_extension = true;
    let int = int_params.signed_by(&int_key, &root).unwrap();
    let int_issuer = Issuer::new(int_params, int_key);

    let leaf_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(DnType::CommonName, "acme-billing");
    p.subject_alt_names = vec![SanType::URI(
        "spiffe://partners.example.com/acme".try_into().unwrap(),
    )];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.serial_number = Some(SerialNumber::from_slice(&[0x7f, 0x01, 0x02, 0x03, 0x05]));
    p.use_authority_key_identifier_extension = true;
    let leaf = p.signed_by(&leaf_key, &int_issuer).unwrap();

    let server_key = KeyPair::generate().unwrap();
    let mut sp = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = sp.signed_by(&server_key, &root).unwrap();

    // The bundle holds the root (the anchor) and the issuing CA (so its CRL is accepted).
    write(
        "ca.pem",
        format!("{}{}", root_cert.pem(), int.pem()).as_bytes(),
    )
    .unwrap();
    write("server.pem", server.pem().as_bytes()).unwrap();
    write("server-key.pem", server_key.serialize_pem().as_bytes()).unwrap();
    write("issuing.crl", &crl_der(&int_issuer, 0)).unwrap();
    write(
        "certgate.yaml",
        br#"
server:
  listen: "127.0.0.1:0"
  tls:
    certificates:
      - cert: server.pem
        key: server-key.pem
  client_auth:
    trust_bundles:
      - name: partner-ca
        ca: ca.pem
        crl:
          - path: issuing.crl
admin:
  listen: "127.0.0.1:0"
upstreams:
  orders:
    endpoints: ["http://127.0.0.1:9"]
partners:
  - id: acme
    owner: payments-team@example.com
    trust_bundle: partner-ca
    identities:
      - spiffe: spiffe://partners.example.com/acme
    scopes: [orders:read]
routes:
  - name: orders-read
    path_prefix: /v1/orders
    scope: orders:read
    upstream: orders
"#,
    )
    .unwrap();
    let config = certgate::config::load(&dir.path().join("certgate.yaml")).unwrap();
    let snapshot = Snapshot::build(
        Arc::new(config),
        &certgate::revocation::RevocationService::detached(),
        &certgate::metrics::Metrics::new(),
    )
    .unwrap();

    let started = Instant::now();
    let der = crl_der(&int_issuer, entries);
    let generated = started.elapsed();
    let before = rss_kib();
    let started = Instant::now();
    let report = snapshot
        .revocation
        .crl()
        .load_bytes(BundleId(0), 0, &der)
        .unwrap();
    let loaded = started.elapsed();
    let after = rss_kib();
    assert_eq!(report.entries as u64, entries);
    eprintln!(
        "setup: CRL with {entries} entries ({} bytes DER): generated in {generated:.2?}, \
         loaded (parsed, signature verified, set built) in {loaded:.2?}, RSS +{:.1} MiB",
        der.len(),
        after.saturating_sub(before) as f64 / 1024.0
    );

    let leaf = CertificateDer::from(leaf.der().to_vec());
    let (issuer, serial) = issuer_and_serial(&leaf).unwrap();
    let (issuer, serial) = (issuer.to_vec(), serial.to_vec());
    let fixture = Fixture {
        entries,
        snapshot,
        leaf,
        intermediates: vec![CertificateDer::from(int.der().to_vec())],
        issuer,
        serial,
        crl: der,
        _dir: dir,
    };
    // Sanity: the certificate passes, a listed serial is revoked.
    let now = UnixTime::now();
    let crl = fixture.snapshot.revocation.crl();
    assert_eq!(
        crl.check(BundleId(0), &fixture.issuer, &fixture.serial, now),
        Verdict::Good
    );
    if entries > 0 {
        assert_eq!(
            crl.check(
                BundleId(0),
                &fixture.issuer,
                &revoked_serial(entries - 1),
                now
            ),
            Verdict::Revoked
        );
    }
    fixture
}

fn revocation(c: &mut Criterion) {
    // Built once, outside every timed loop, and shared by both groups.
    let fixtures: Vec<Fixture> = SIZES.iter().map(|&n| fixture(n)).collect();
    let now = UnixTime::now();

    let mut group = c.benchmark_group("crl_load");
    group.sample_size(10);
    for f in fixtures.iter().filter(|f| f.entries > 0) {
        let crl = f.snapshot.revocation.crl();
        group.bench_with_input(BenchmarkId::from_parameter(f.entries), f, |b, f| {
            b.iter(|| crl.load_bytes(BundleId(0), 0, black_box(&f.crl)).unwrap());
        });
    }
    group.finish();

    let mut group = c.benchmark_group("crl_lookup");
    for f in &fixtures {
        let crl = f.snapshot.revocation.crl();
        group.bench_with_input(BenchmarkId::from_parameter(f.entries), f, |b, f| {
            b.iter(|| crl.check(BundleId(0), black_box(&f.issuer), black_box(&f.serial), now));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("connection_validation");
    for f in &fixtures {
        group.bench_with_input(BenchmarkId::from_parameter(f.entries), f, |b, f| {
            b.iter(|| {
                let verified = f
                    .snapshot
                    .verifier
                    .verify_client_cert(black_box(&f.leaf), &f.intermediates, now)
                    .unwrap();
                let identity = PeerIdentity::from_der(black_box(&f.leaf)).unwrap();
                let partner = f.snapshot.partners.lookup(&identity);
                black_box((verified, partner))
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = revocation
}
criterion_main!(benches);
