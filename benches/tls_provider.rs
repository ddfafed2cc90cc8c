//! What the rustls crypto provider costs per connection and per request: aws-lc-rs (what certgate
//! ships) against ring, side by side in one run, in memory (no sockets, no scheduler).
//!
//! * `handshake`: one full TLS 1.3 mutual-TLS handshake (no resumption), a client
//!   `ClientConnection` and a server `ServerConnection` exchanging records through memory. The
//!   server verifies the client's chain with webpki (`WebPkiClientVerifier`, clientAuth EKU) as
//!   the gateway does; the partner certificate is ECDSA P-256 or RSA-2048, the server's ECDSA
//!   P-256. Key exchange: each provider's default groups (`default`: aws-lc-rs offers the hybrid
//!   X25519MLKEM768 first, ring has no ML-KEM) and X25519 alone for both (`x25519`), which
//!   separates the provider's speed from the group it picks.
//! * `keepalive`: one request (250 bytes) and its response (350 bytes) as application-data
//!   records on an established connection, what a keep-alive request costs in TLS (AES-128-GCM
//!   or AES-256-GCM/ChaCha20 as negotiated: each provider's default cipher order).
//!
//! Run: `cargo bench --bench tls_provider`. Figures and the decision: docs/performance.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::io::{Read, Write};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SignatureAlgorithm, PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256,
};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

const REQUEST: usize = 250;
const RESPONSE: usize = 350;

struct Pki {
    root: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
    /// (name, partner chain, partner key): ECDSA P-256 and RSA-2048 partners.
    partners: Vec<(&'static str, Vec<CertificateDer<'static>>, Vec<u8>)>,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

fn leaf(
    cn: &str,
    alg: &'static SignatureAlgorithm,
    eku: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
    inter: &CertificateDer<'static>,
) -> (Vec<CertificateDer<'static>>, Vec<u8>) {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.subject_alt_names = vec![SanType::DnsName("localhost".try_into().unwrap())];
    p.extended_key_usages = vec![eku];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = p.signed_by(&key, issuer).unwrap();
    (vec![cert.der().clone(), inter.clone()], key.serialize_der())
}

/// Root → intermediate → server and partner leaves, as a partner's CA would issue them.
fn pki() -> Pki {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let root_params = ca_params("bench root");
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);
    let inter_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let inter_params = ca_params("bench intermediate");
    let inter = inter_params.signed_by(&inter_key, &root_issuer).unwrap();
    let inter_der = inter.der().clone();
    let inter_issuer = Issuer::new(inter_params, inter_key);
    let (server_chain, server_key) = leaf(
        "localhost",
        &PKCS_ECDSA_P256_SHA256,
        ExtendedKeyUsagePurpose::ServerAuth,
        &inter_issuer,
        &inter_der,
    );
    let ecdsa = leaf(
        "partner-ecdsa",
        &PKCS_ECDSA_P256_SHA256,
        ExtendedKeyUsagePurpose::ClientAuth,
        &inter_issuer,
        &inter_der,
    );
    let rsa = leaf(
        "partner-rsa",
        &PKCS_RSA_SHA256,
        ExtendedKeyUsagePurpose::ClientAuth,
        &inter_issuer,
        &inter_der,
    );
    Pki {
        root: root.der().clone(),
        server_chain,
        server_key,
        partners: vec![("ecdsa-p256", ecdsa.0, ecdsa.1), ("rsa-2048", rsa.0, rsa.1)],
    }
}

fn key(der: &[u8]) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.to_vec()))
}

/// `provider` restricted to X25519 when `x25519_only`, else as its default.
fn provider(base: fn() -> CryptoProvider, x25519_only: bool) -> Arc<CryptoProvider> {
    let mut p = base();
    if x25519_only {
        p.kx_groups
            .retain(|g| g.name() == rustls::NamedGroup::X25519);
    }
    Arc::new(p)
}

/// A server and a client configuration for one partner, both on `provider`, resumption off.
fn configs(
    pki: &Pki,
    partner: usize,
    provider: &Arc<CryptoProvider>,
) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let mut roots = RootCertStore::empty();
    roots.add(pki.root.clone()).unwrap();
    let roots = Arc::new(roots);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .unwrap();
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.server_chain.clone(), key(&pki.server_key))
        .unwrap();
    server.session_storage = Arc::new(NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    let (_, chain, partner_key) = &pki.partners[partner];
    let mut client = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain.clone(), key(partner_key))
        .unwrap();
    client.resumption = Resumption::disabled();
    (Arc::new(server), Arc::new(client))
}

/// Moves every pending TLS record from `from` to `to`, which processes them.
fn pump<A, B, DA, DB>(from: &mut A, to: &mut B, buf: &mut Vec<u8>)
where
    A: std::ops::DerefMut<Target = rustls::ConnectionCommon<DA>>,
    B: std::ops::DerefMut<Target = rustls::ConnectionCommon<DB>>,
    DA: rustls::SideData,
    DB: rustls::SideData,
{
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).unwrap();
    }
    let mut slice = &buf[..];
    while !slice.is_empty() {
        to.read_tls(&mut slice).unwrap();
        to.process_new_packets().unwrap();
    }
}

fn connect(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
) -> (ClientConnection, ServerConnection) {
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut buf = Vec::with_capacity(16 * 1024);
    while c.is_handshaking() || s.is_handshaking() {
        pump(&mut c, &mut s, &mut buf);
        pump(&mut s, &mut c, &mut buf);
    }
    assert!(
        s.peer_certificates().is_some(),
        "the client was not authenticated"
    );
    (c, s)
}

/// One keep-alive exchange: the request from client to server, the response back.
fn exchange(
    c: &mut ClientConnection,
    s: &mut ServerConnection,
    buf: &mut Vec<u8>,
    data: &mut [u8],
) {
    c.writer().write_all(&data[..REQUEST]).unwrap();
    pump(c, s, buf);
    s.reader().read_exact(&mut data[..REQUEST]).unwrap();
    s.writer().write_all(&data[..RESPONSE]).unwrap();
    pump(s, c, buf);
    c.reader().read_exact(&mut data[..RESPONSE]).unwrap();
}

/// A provider's name and its constructor.
type Provider = (&'static str, fn() -> CryptoProvider);

const PROVIDERS: [Provider; 2] = [
    ("aws-lc-rs", rustls::crypto::aws_lc_rs::default_provider),
    ("ring", rustls::crypto::ring::default_provider),
];

fn handshake(cr: &mut Criterion) {
    let pki = pki();
    let mut group = cr.benchmark_group("handshake");
    group.sample_size(30);
    for kx in ["default", "x25519"] {
        for partner in 0..pki.partners.len() {
            // Interleaved: both providers for one case, then the next case.
            for (name, base) in PROVIDERS {
                let (server, client) = configs(&pki, partner, &provider(base, kx == "x25519"));
                let (c, _) = connect(&server, &client);
                eprintln!(
                    "{name} {kx} {}: {:?} {:?}",
                    pki.partners[partner].0,
                    c.negotiated_cipher_suite().map(|s| s.suite()),
                    c.negotiated_key_exchange_group().map(|g| g.name()),
                );
                let id = BenchmarkId::new(name, format!("{kx}/{}", pki.partners[partner].0));
                group.bench_function(id, |b| b.iter(|| black_box(connect(&server, &client))));
            }
        }
    }
    group.finish();
}

fn keepalive(cr: &mut Criterion) {
    let pki = pki();
    let mut group = cr.benchmark_group("keepalive");
    for (name, base) in PROVIDERS {
        let (server, client) = configs(&pki, 0, &provider(base, false));
        let (mut c, mut s) = connect(&server, &client);
        let mut buf = Vec::with_capacity(16 * 1024);
        let mut data = vec![b'x'; REQUEST.max(RESPONSE)];
        group.bench_function(name, |b| {
            b.iter(|| exchange(&mut c, &mut s, &mut buf, &mut data))
        });
    }
    group.finish();
}

criterion_group!(benches, handshake, keepalive);
criterion_main!(benches);
