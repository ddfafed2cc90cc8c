//! CRL revocation against real material: the `openssl ca` command is the CRL authority.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use certgate::config::model::{BundleId, CrlExpiredPolicy, CrlSource};
use certgate::revocation::{
    issuer_and_serial, BundleSpec, Checker, CrlError, FetchOptions, LoadFailure, Registry, Verdict,
};
use http_body_util::Full;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::sync::watch;

// === test PKI on the openssl CLI ===

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "certgate-crl-{}-{name}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI is installed");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA run by `openssl ca`: its own directory, index and serial files.
struct OpenSslCa {
    dir: TempDir,
    next_leaf: usize,
}

/// A certificate issued by an [`OpenSslCa`]: its PEM file and revocation key.
struct Leaf {
    pem: PathBuf,
    issuer: Vec<u8>,
    serial: Vec<u8>,
}

impl OpenSslCa {
    /// A P-256 CA with keyUsage keyCertSign+cRLSign; `first_serial` (hex) seeds `openssl ca`'s
    /// serial file, so tests can pick serials with the high bit set.
    fn new(cn: &str, first_serial: &str) -> Self {
        Self::with_crl_extensions(cn, first_serial, "authorityKeyIdentifier = keyid:always\n")
    }

    fn with_crl_extensions(cn: &str, first_serial: &str, crl_ext: &str) -> Self {
        let dir = TempDir::new("ca");
        let d = dir.path();
        std::fs::create_dir_all(d.join("newcerts")).unwrap();
        std::fs::write(d.join("index.txt"), "").unwrap();
        std::fs::write(d.join("serial"), format!("{first_serial}\n")).unwrap();
        std::fs::write(d.join("crlnumber"), "01\n").unwrap();
        std::fs::write(
            d.join("ca.cnf"),
            format!(
                "[ ca ]\n\
                 default_ca = CA_default\n\
                 [ CA_default ]\n\
                 dir = {dir}\n\
                 database = $dir/index.txt\n\
                 new_certs_dir = $dir/newcerts\n\
                 certificate = $dir/ca.pem\n\
                 private_key = $dir/ca.key\n\
                 serial = $dir/serial\n\
                 crlnumber = $dir/crlnumber\n\
                 default_md = sha256\n\
                 default_days = 30\n\
                 default_crl_days = 7\n\
                 policy = policy_any\n\
                 unique_subject = no\n\
                 copy_extensions = none\n\
                 crl_extensions = crl_ext\n\
                 [ policy_any ]\n\
                 commonName = supplied\n\
                 [ crl_ext ]\n\
                 {crl_ext}",
                dir = d.display()
            ),
        )
        .unwrap();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "365",
                "-subj",
                &format!("/CN={cn}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Self { dir, next_leaf: 0 }
    }

    fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn ca_der(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(self.ca_pem())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn issue(&mut self) -> Leaf {
        self.next_leaf += 1;
        let n = self.next_leaf;
        let d = self.dir.path();
        let (key, csr, pem) = (
            format!("leaf{n}.key"),
            format!("leaf{n}.csr"),
            format!("leaf{n}.pem"),
        );
        openssl(
            d,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN=leaf{n}"),
            ],
        );
        openssl(
            d,
            &[
                "ca", "-batch", "-config", "ca.cnf", "-notext", "-in", &csr, "-out", &pem,
            ],
        );
        let der = CertificateDer::from_pem_file(d.join(&pem)).unwrap();
        let (issuer, serial) = issuer_and_serial(&der).unwrap();
        Leaf {
            pem: d.join(pem),
            issuer: issuer.to_vec(),
            serial: serial.to_vec(),
        }
    }

    fn revoke(&self, leaf: &Leaf) {
        openssl(
            self.dir.path(),
            &[
                "ca",
                "-config",
                "ca.cnf",
                "-revoke",
                leaf.pem.to_str().unwrap(),
            ],
        );
    }

    /// A fresh CRL in PEM, from `openssl ca -gencrl` with `extra` arguments.
    fn crl_pem(&self, extra: &[&str]) -> Vec<u8> {
        let d = self.dir.path();
        let mut args = vec!["ca", "-config", "ca.cnf", "-gencrl", "-out", "crl.pem"];
        args.extend_from_slice(extra);
        openssl(d, &args);
        std::fs::read(d.join("crl.pem")).unwrap()
    }

    /// The same CRL in DER, via `openssl crl -outform DER`.
    fn crl_der(&self) -> Vec<u8> {
        let d = self.dir.path();
        self.crl_pem(&[]);
        openssl(
            d,
            &[
                "crl", "-in", "crl.pem", "-outform", "DER", "-out", "crl.der",
            ],
        );
        std::fs::read(d.join("crl.der")).unwrap()
    }
}

fn checker(ca: &OpenSslCa, crls: Vec<CrlSource>, policy: CrlExpiredPolicy) -> Arc<Checker> {
    Arc::new(
        Checker::new(
            vec![
                BundleSpec {
                    name: "partners".into(),
                    cas: ca.ca_der(),
                    crls,
                    crl_expired: policy,
                },
                BundleSpec {
                    name: "no-crl".into(),
                    cas: ca.ca_der(),
                    crls: vec![],
                    crl_expired: CrlExpiredPolicy::Reject,
                },
            ],
            Registry::new(),
        )
        .unwrap(),
    )
}

const B: BundleId = BundleId(0);
const NO_CRL: BundleId = BundleId(1);

fn verdict(checker: &Checker, leaf: &Leaf) -> Verdict {
    checker.check(B, &leaf.issuer, &leaf.serial, UnixTime::now())
}

fn file_source(path: &Path) -> CrlSource {
    CrlSource::File(path.to_path_buf())
}

/// Polls `cond` every 50ms until it holds or `deadline` passes.
async fn eventually(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let give_up = tokio::time::Instant::now() + deadline;
    while tokio::time::Instant::now() < give_up {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond()
}

// === verdicts ===

#[tokio::test]
async fn revoked_serial_is_revoked_and_other_serials_are_good_from_pem_and_der() {
    // Serials with the high bit set: DER pads them with 0x00, the lookup key does not.
    let mut ca = OpenSslCa::new("Partner CA", "80000000000000A0");
    let bad = ca.issue();
    let good = ca.issue();
    assert_eq!(bad.serial[0] & 0x80, 0x80);
    ca.revoke(&bad);

    for (name, bytes) in [("crl.pem", ca.crl_pem(&[])), ("crl.der", ca.crl_der())] {
        let dir = TempDir::new("verdict");
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let checker = checker(&ca, vec![file_source(&path)], CrlExpiredPolicy::Reject);

        assert_eq!(verdict(&checker, &bad), Verdict::Unknown, "before any load");
        let problems = checker.load_initial(&FetchOptions::default()).await;
        assert!(problems.is_empty(), "{problems:?}");

        assert_eq!(verdict(&checker, &bad), Verdict::Revoked, "{name}");
        assert_eq!(verdict(&checker, &good), Verdict::Good, "{name}");
        let now = UnixTime::now();
        assert_eq!(
            checker.check(NO_CRL, &bad.issuer, &bad.serial, now),
            Verdict::NotChecked
        );
        assert_eq!(
            checker.check(BundleId(9), &bad.issuer, &bad.serial, now),
            Verdict::Unknown
        );
        // An issuer without any configured CRL: nothing to say once every source has loaded.
        assert_eq!(
            checker.check(B, b"\x30\x00", &bad.serial, now),
            Verdict::NotChecked
        );
        let status = checker.status();
        assert_eq!(status.len(), 1);
        assert!(status[0].loaded);
        assert_eq!(status[0].crls[0].entries, 1);
        assert!(serde_json::to_string(&status).is_ok());
    }
}

#[tokio::test]
async fn a_source_that_never_loaded_fails_closed_for_every_issuer() {
    let mut ca = OpenSslCa::new("Closed CA", "10");
    let leaf = ca.issue();
    let dir = TempDir::new("missing");
    let checker = checker(
        &ca,
        vec![file_source(&dir.path().join("absent.pem"))],
        CrlExpiredPolicy::Reject,
    );
    let problems = checker.load_initial(&FetchOptions::default()).await;
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].to_string().contains("absent.pem"),
        "{}",
        problems[0]
    );
    assert!(matches!(problems[0].cause, LoadFailure::Read(_)));
    assert_eq!(verdict(&checker, &leaf), Verdict::Unknown);
    assert_eq!(
        checker.check(B, b"\x30\x00", &leaf.serial, UnixTime::now()),
        Verdict::Unknown
    );
}

#[tokio::test]
async fn crl_signed_by_a_different_ca_with_the_same_name_is_refused_and_the_good_one_kept() {
    let mut ca = OpenSslCa::new("Twin CA", "20");
    let impostor = OpenSslCa::new("Twin CA", "20");
    let leaf = ca.issue();
    ca.revoke(&leaf);
    let checker = checker(
        &ca,
        vec![file_source(Path::new("/unused"))],
        CrlExpiredPolicy::Reject,
    );

    checker.load_bytes(B, 0, &ca.crl_pem(&[])).unwrap();
    assert_eq!(verdict(&checker, &leaf), Verdict::Revoked);

    let err = checker
        .load_bytes(B, 0, &impostor.crl_pem(&[]))
        .unwrap_err();
    assert!(err.to_string().contains("/unused"), "{err}");
    assert!(
        matches!(
            err.cause,
            LoadFailure::Crl(CrlError::AuthorityKeyMismatch { .. } | CrlError::BadSignature { .. })
        ),
        "{err:?}"
    );
    assert_eq!(verdict(&checker, &leaf), Verdict::Revoked, "good CRL kept");
    let status = &checker.status()[0];
    assert!(status.loaded);
    assert_eq!(status.consecutive_failures, 1);
    assert!(status.last_error.is_some());
}

#[tokio::test]
async fn crl_from_a_ca_outside_the_bundle_is_refused() {
    let ca = OpenSslCa::new("Bundle CA", "30");
    let stranger = OpenSslCa::new("Stranger CA", "30");
    let checker = checker(
        &ca,
        vec![file_source(Path::new("/unused"))],
        CrlExpiredPolicy::Reject,
    );
    let err = checker
        .load_bytes(B, 0, &stranger.crl_pem(&[]))
        .unwrap_err();
    assert!(
        matches!(err.cause, LoadFailure::Crl(CrlError::UnknownIssuer { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn garbage_is_refused_and_the_previous_crl_kept() {
    let mut ca = OpenSslCa::new("Garbage CA", "40");
    let leaf = ca.issue();
    ca.revoke(&leaf);
    let checker = checker(
        &ca,
        vec![file_source(Path::new("/unused"))],
        CrlExpiredPolicy::Reject,
    );
    checker.load_bytes(B, 0, &ca.crl_der()).unwrap();

    let mut truncated = ca.crl_der();
    truncated.truncate(truncated.len() - 10);
    let pem = ca.crl_pem(&[]);
    for garbage in [
        &b"hello, world"[..],
        &b""[..],
        &truncated[..],
        &pem[..pem.len() / 2],
    ] {
        assert!(checker.load_bytes(B, 0, garbage).is_err());
        assert_eq!(verdict(&checker, &leaf), Verdict::Revoked);
    }
}

#[tokio::test]
async fn unknown_critical_crl_extension_is_refused() {
    let ca = OpenSslCa::with_crl_extensions(
        "Critical CA",
        "50",
        "authorityKeyIdentifier = keyid:always\n1.3.6.1.4.1.99999.1 = critical,ASN1:NULL\n",
    );
    let checker = checker(
        &ca,
        vec![file_source(Path::new("/unused"))],
        CrlExpiredPolicy::Reject,
    );
    let err = checker.load_bytes(B, 0, &ca.crl_pem(&[])).unwrap_err();
    assert!(
        matches!(
            err.cause,
            LoadFailure::Crl(CrlError::UnsupportedCriticalExtension { ref oid }) if oid == "1.3.6.1.4.1.99999.1"
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_older_crl_does_not_replace_a_newer_one() {
    let mut ca = OpenSslCa::new("Replay CA", "60");
    let leaf = ca.issue();
    let old = ca.crl_pem(&[]);
    ca.revoke(&leaf);
    let new = ca.crl_pem(&[]);
    let checker = checker(
        &ca,
        vec![file_source(Path::new("/unused"))],
        CrlExpiredPolicy::Reject,
    );
    checker.load_bytes(B, 0, &new).unwrap();
    let err = checker.load_bytes(B, 0, &old).unwrap_err();
    assert!(matches!(err.cause, LoadFailure::Rollback { .. }), "{err:?}");
    assert_eq!(verdict(&checker, &leaf), Verdict::Revoked);
}

#[tokio::test]
async fn expired_crl_is_refused_under_reject_and_used_under_allow_with_warning() {
    let mut ca = OpenSslCa::new("Expired CA", "70");
    let bad = ca.issue();
    let good = ca.issue();
    ca.revoke(&bad);
    let expired = ca.crl_pem(&[
        "-crl_lastupdate",
        "200101000000Z",
        "-crl_nextupdate",
        "200102000000Z",
    ]);

    let strict = checker(
        &ca,
        vec![file_source(Path::new("/unused"))],
        CrlExpiredPolicy::Reject,
    );
    strict.load_bytes(B, 0, &expired).unwrap();
    assert_eq!(verdict(&strict, &bad), Verdict::Unknown);
    assert_eq!(verdict(&strict, &good), Verdict::Unknown);
    assert!(strict.status()[0].crls[0].expired);

    let lenient = checker(
        &ca,
        vec![file_source(Path::new("/unused"))],
        CrlExpiredPolicy::AllowWithWarning,
    );
    lenient.load_bytes(B, 0, &expired).unwrap();
    assert_eq!(verdict(&lenient, &bad), Verdict::Revoked);
    assert_eq!(verdict(&lenient, &good), Verdict::Good);
    assert_eq!(lenient.status()[0].expired_crl_uses, 2);

    // The same CRL is current at a time before its nextUpdate.
    let jan_1_2020_noon = UnixTime::since_unix_epoch(Duration::from_secs(1_577_880_000));
    assert_eq!(
        strict.check(B, &good.issuer, &good.serial, jan_1_2020_noon),
        Verdict::Good
    );
}

// === keeping CRLs fresh ===

/// Writes `bytes` to a sibling temp file and renames it over `path`, as editors and `kubectl cp` do.
fn replace_by_rename(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn file_replaced_by_rename_is_picked_up_and_garbage_in_between_is_ignored() {
    let mut ca = OpenSslCa::new("Rename CA", "80");
    let leaf = ca.issue();
    let dir = TempDir::new("rename");
    let path = dir.path().join("crl.pem");
    std::fs::write(&path, ca.crl_pem(&[])).unwrap();
    let checker = checker(&ca, vec![file_source(&path)], CrlExpiredPolicy::Reject);
    assert!(checker
        .load_initial(&FetchOptions::default())
        .await
        .is_empty());
    let (stop, shutdown) = watch::channel(false);
    let tasks = checker.spawn_refresh(FetchOptions::default(), shutdown);
    assert_eq!(tasks.len(), 1);
    assert_eq!(verdict(&checker, &leaf), Verdict::Good);

    replace_by_rename(&path, b"garbage");
    let c = Arc::clone(&checker);
    assert!(
        eventually(Duration::from_secs(10), || c.status()[0]
            .last_error
            .is_some())
        .await,
        "garbage noticed"
    );
    assert_eq!(verdict(&checker, &leaf), Verdict::Good, "last good kept");

    ca.revoke(&leaf);
    replace_by_rename(&path, &ca.crl_der());
    let c = Arc::clone(&checker);
    assert!(
        eventually(Duration::from_secs(10), || verdict(&c, &leaf)
            == Verdict::Revoked)
        .await,
        "renamed CRL picked up"
    );
    assert!(checker.status()[0].last_error.is_none());

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), tasks.join())
        .await
        .expect("refresh tasks stop on shutdown");
}

#[cfg(unix)]
#[tokio::test]
async fn kubernetes_style_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;

    let mut ca = OpenSslCa::new("Symlink CA", "90");
    let leaf = ca.issue();
    // /mount/crl.pem -> ..data/crl.pem, ..data -> ..v1: the layout of a Secret volume.
    let dir = TempDir::new("symlink");
    let mount = dir.path();
    std::fs::create_dir(mount.join("..v1")).unwrap();
    std::fs::write(mount.join("..v1/crl.pem"), ca.crl_pem(&[])).unwrap();
    symlink("..v1", mount.join("..data")).unwrap();
    symlink("..data/crl.pem", mount.join("crl.pem")).unwrap();

    let checker = checker(
        &ca,
        vec![file_source(&mount.join("crl.pem"))],
        CrlExpiredPolicy::Reject,
    );
    assert!(checker
        .load_initial(&FetchOptions::default())
        .await
        .is_empty());
    let (stop, shutdown) = watch::channel(false);
    let tasks = checker.spawn_refresh(FetchOptions::default(), shutdown);
    assert_eq!(verdict(&checker, &leaf), Verdict::Good);

    ca.revoke(&leaf);
    std::fs::create_dir(mount.join("..v2")).unwrap();
    std::fs::write(mount.join("..v2/crl.pem"), ca.crl_pem(&[])).unwrap();
    symlink("..v2", mount.join("..data_tmp")).unwrap();
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).unwrap();
    std::fs::remove_dir_all(mount.join("..v1")).unwrap();

    let c = Arc::clone(&checker);
    assert!(
        eventually(Duration::from_secs(10), || verdict(&c, &leaf)
            == Verdict::Revoked)
        .await,
        "swapped CRL picked up"
    );
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), tasks.join())
        .await
        .unwrap();
}

/// A loopback HTTP server answering every request with the current `(status, body)`.
async fn serve_crl(content: Arc<Mutex<(u16, Vec<u8>)>>) -> String {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let content = Arc::clone(&content);
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let (status, body) = content.lock().unwrap().clone();
                    async move {
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/ca.crl")
}

#[tokio::test]
async fn url_source_is_refreshed_and_failures_keep_the_last_good_crl() {
    let mut ca = OpenSslCa::new("Url CA", "A0");
    let leaf = ca.issue();
    let content = Arc::new(Mutex::new((200, ca.crl_der())));
    let url = serve_crl(Arc::clone(&content)).await;
    let checker = checker(
        &ca,
        vec![CrlSource::Url {
            url: url.clone(),
            refresh: Duration::from_millis(300),
        }],
        CrlExpiredPolicy::Reject,
    );
    let opts = FetchOptions {
        http_timeout: Duration::from_secs(5),
        min_refresh: Duration::from_millis(100),
        retry_after_failure: Duration::from_millis(100),
        ..FetchOptions::default()
    };
    assert!(checker.load_initial(&opts).await.is_empty());
    assert_eq!(verdict(&checker, &leaf), Verdict::Good);
    let (stop, shutdown) = watch::channel(false);
    let tasks = checker.spawn_refresh(opts, shutdown);

    // Server errors and garbage: recorded, last good kept.
    *content.lock().unwrap() = (500, b"oops".to_vec());
    let c = Arc::clone(&checker);
    assert!(
        eventually(Duration::from_secs(10), || c.status()[0]
            .last_error
            .is_some())
        .await
    );
    *content.lock().unwrap() = (200, b"not a CRL".to_vec());
    let c = Arc::clone(&checker);
    assert!(
        eventually(Duration::from_secs(10), || c.status()[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("invalid CRL")))
        .await
    );
    assert!(checker.status()[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains(&url));
    assert_eq!(verdict(&checker, &leaf), Verdict::Good);

    ca.revoke(&leaf);
    *content.lock().unwrap() = (200, ca.crl_pem(&[]));
    let c = Arc::clone(&checker);
    assert!(
        eventually(Duration::from_secs(10), || verdict(&c, &leaf)
            == Verdict::Revoked)
        .await,
        "refreshed CRL picked up"
    );

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), tasks.join())
        .await
        .unwrap();
}

#[tokio::test]
async fn unreachable_url_is_reported_with_its_source() {
    let ca = OpenSslCa::new("Down CA", "B0");
    // A port nothing listens on: bind, read the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/ca.crl");
    let checker = checker(
        &ca,
        vec![CrlSource::Url {
            url: url.clone(),
            refresh: Duration::from_secs(60),
        }],
        CrlExpiredPolicy::Reject,
    );
    let problems = checker.load_initial(&FetchOptions::default()).await;
    assert_eq!(problems.len(), 1);
    assert!(problems[0].to_string().contains(&url));
    assert!(matches!(problems[0].cause, LoadFailure::Fetch(_)));
}

// === live connections ===

#[tokio::test]
async fn a_new_crl_cuts_only_the_live_connections_it_newly_revokes() {
    let mut ca = OpenSslCa::new("Live CA", "C0");
    let doomed = ca.issue();
    let spared = ca.issue();
    let checker = checker(
        &ca,
        vec![file_source(Path::new("/unused"))],
        CrlExpiredPolicy::Reject,
    );
    checker.load_bytes(B, 0, &ca.crl_pem(&[])).unwrap();

    let registry = Arc::clone(checker.registry());
    let (_g1, mut doomed_signal) = registry.register(&doomed.issuer, &doomed.serial, 1);
    let (_g2, spared_signal) = registry.register(&spared.issuer, &spared.serial, 2);
    let gone = {
        let (guard, signal) = registry.register(&doomed.issuer, &doomed.serial, 3);
        drop(guard);
        signal
    };
    assert_eq!(registry.len(), 2);

    ca.revoke(&doomed);
    let report = checker.load_bytes(B, 0, &ca.crl_pem(&[])).unwrap();
    assert_eq!(report.connections_cut, 1);
    tokio::time::timeout(Duration::from_secs(1), doomed_signal.revoked())
        .await
        .expect("the doomed connection is signalled");
    assert!(!spared_signal.is_revoked());
    assert!(
        !gone.is_revoked(),
        "an unregistered connection is not signalled"
    );

    // The OCSP hook cuts through the same registry.
    assert_eq!(registry.revoke(&spared.issuer, &spared.serial), 1);
    assert!(spared_signal.is_revoked());
}

// === scale ===

#[test]
fn a_million_entry_crl_loads_and_answers_lookups() {
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
        KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
    };
    const N: u64 = 1_000_000;

    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "Big CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let ca_der = params.self_signed(&key).unwrap().der().clone();
    let issuer = Issuer::new(params, key);

    let serial = |i: u64| -> Vec<u8> {
        // 16-byte serials with the high bit set, like real CAs' random serials.
        let mut s = vec![0x80u8; 8];
        s.extend_from_slice(&(i * 2).to_be_bytes());
        s
    };
    let now = rcgen::date_time_ymd(2025, 1, 1);
    let crl = CertificateRevocationListParams {
        this_update: now,
        next_update: now + Duration::from_secs(365 * 86_400 * 100),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: (0..N)
            .map(|i| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial(i)),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap();
    let der = crl.der().to_vec();

    let checker = Checker::new(
        vec![BundleSpec {
            name: "big".into(),
            cas: vec![ca_der.clone()],
            crls: vec![CrlSource::File("/unused".into())],
            crl_expired: CrlExpiredPolicy::Reject,
        }],
        Registry::new(),
    )
    .unwrap();
    let rss_before = rss_kib();
    let started = std::time::Instant::now();
    let report = checker.load_bytes(B, 0, &der).unwrap();
    let load_time = started.elapsed();
    // Measured while `der` is still alive, so the growth is the set plus parser leftovers.
    let rss_after = rss_kib();
    drop(der);
    assert_eq!(report.entries, N as usize);
    eprintln!(
        "1M-entry CRL: loaded in {load_time:?} (debug build); RSS grew {} MiB",
        rss_after.saturating_sub(rss_before) / 1024
    );

    let (ca_name, _) = issuer_and_serial(&ca_der).unwrap();
    let now = UnixTime::now();
    for i in [0, 1, N / 2, N - 1] {
        assert_eq!(checker.check(B, ca_name, &serial(i), now), Verdict::Revoked);
        let mut odd = serial(i);
        *odd.last_mut().unwrap() |= 1;
        assert_eq!(checker.check(B, ca_name, &odd, now), Verdict::Good);
    }
    assert_eq!(checker.status()[0].crls[0].entries, N as usize);
}

/// Resident set size from /proc (Linux), 0 elsewhere: an indication, not an assertion.
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
