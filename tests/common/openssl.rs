//! The real `openssl` CLI acting for a test CA: `openssl ca` keeps the certificate database,
//! issues certificates and CRLs, `openssl ocsp` answers OCSP requests from the same database.
//! Both are served on loopback by small hyper servers that count the requests they get.

use std::convert::Infallible;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;

use super::pki::{Ca, Leaf};

/// Runs `openssl args…` in `dir`, panicking with its stderr on failure; returns its stdout.
pub fn openssl(dir: &Path, args: &[&str]) -> String {
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
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `openssl req` in `dir` with a fresh P-256 key written to `key_file` and `subject` (e.g.
/// `/CN=…`); `args` say what to make of it (`-x509 …` or `-new …`) and where to write it.
fn req_with_new_p256_key(dir: &Path, key_file: &str, subject: &str, args: &[&str]) {
    let mut all = vec![
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        key_file,
        "-subj",
        subject,
    ];
    all.extend_from_slice(args);
    openssl(dir, &all);
}

/// What a partner does before enrolling: a fresh P-256 key written to `key` and a CSR for it
/// written to `csr`, with the subject `/O=partner` and `san` (e.g. `URI:spiffe://…`) as its
/// subjectAltName. The key never leaves the partner's files.
pub fn partner_csr(key: &Path, csr: &Path, san: &str) {
    let dir = csr.parent().unwrap();
    let san = format!("subjectAltName={san}");
    req_with_new_p256_key(
        dir,
        key.to_str().unwrap(),
        "/O=partner",
        &["-new", "-out", csr.to_str().unwrap(), "-addext", &san],
    );
}

/// A number for the next file written into a CA's folder, unique in this test binary.
fn next_file() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The CRL extensions `openssl ca` adds unless told otherwise.
const AUTHORITY_KEY_ID: &str = "authorityKeyIdentifier = keyid:always\n";

/// A certificate `openssl ca` can record in its database: anything with a PEM.
pub trait CertPem {
    fn cert_pem(&self) -> &str;
}

impl CertPem for Leaf {
    fn cert_pem(&self) -> &str {
        &self.pem
    }
}

impl CertPem for str {
    fn cert_pem(&self) -> &str {
        self
    }
}

/// A certificate issued by `openssl ca`, with the (issuer, serial) key revocation looks it up by.
pub struct IssuedLeaf {
    pub pem: String,
    pub issuer: Vec<u8>,
    pub serial: Vec<u8>,
}

impl CertPem for IssuedLeaf {
    fn cert_pem(&self) -> &str {
        &self.pem
    }
}

/// `openssl ca` acting as a certificate authority: its own folder with the CA's certificate and
/// key, the `index.txt` database, the serial and CRL numbers and a minimal `ca.cnf`.
pub struct OpenSslCa {
    dir: tempfile::TempDir,
}

impl OpenSslCa {
    /// `openssl ca` acting for a [`Ca`] of the test PKI.
    pub fn new(ca: &Ca) -> OpenSslCa {
        OpenSslCa::from_pem(&ca.pem, &ca.key_pem)
    }

    /// `openssl ca` acting for the CA whose certificate and private key are given in PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> OpenSslCa {
        let ca = OpenSslCa::folder("01", AUTHORITY_KEY_ID);
        std::fs::write(ca.dir().join("ca.pem"), cert_pem).unwrap();
        std::fs::write(ca.dir().join("ca.key"), key_pem).unwrap();
        ca
    }

    /// A P-256 CA made by `openssl req -x509`, with keyUsage keyCertSign+cRLSign; `first_serial`
    /// (hex) seeds `openssl ca`'s serial file, so tests can pick serials with the high bit set.
    pub fn generate(cn: &str, first_serial: &str) -> OpenSslCa {
        OpenSslCa::generate_with_crl_extensions(cn, first_serial, AUTHORITY_KEY_ID)
    }

    /// [`OpenSslCa::generate`] with `crl_ext` (lines of `ca.cnf`) as the CRL extensions.
    pub fn generate_with_crl_extensions(cn: &str, first_serial: &str, crl_ext: &str) -> OpenSslCa {
        let ca = OpenSslCa::folder(first_serial, crl_ext);
        req_with_new_p256_key(
            ca.dir(),
            "ca.key",
            &format!("/CN={cn}"),
            &[
                "-x509",
                "-out",
                "ca.pem",
                "-days",
                "365",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        ca
    }

    /// The folder `openssl ca` works in, without the CA's certificate and key.
    fn folder(first_serial: &str, crl_ext: &str) -> OpenSslCa {
        let dir = tempfile::tempdir().unwrap();
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
        OpenSslCa { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The CA's certificate, as a trust bundle holds it.
    pub fn ca_der(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(self.dir().join("ca.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A P-256 client certificate from `openssl req -new` and `openssl ca`, recorded as valid.
    pub fn issue(&self) -> IssuedLeaf {
        let n = next_file();
        let (key, csr, pem) = (
            format!("leaf{n}.key"),
            format!("leaf{n}.csr"),
            format!("leaf{n}.pem"),
        );
        req_with_new_p256_key(
            self.dir(),
            &key,
            &format!("/CN=leaf{n}"),
            &["-new", "-out", &csr],
        );
        openssl(
            self.dir(),
            &[
                "ca", "-batch", "-config", "ca.cnf", "-notext", "-in", &csr, "-out", &pem,
            ],
        );
        let pem = std::fs::read_to_string(self.dir().join(pem)).unwrap();
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let (issuer, serial) = certgate::revocation::issuer_and_serial(&der).unwrap();
        IssuedLeaf {
            issuer: issuer.to_vec(),
            serial: serial.to_vec(),
            pem,
        }
    }

    /// Records `cert` as revoked (`openssl ca -revoke`).
    pub fn revoke(&self, cert: &(impl CertPem + ?Sized)) {
        let pem = self.cert_file(cert);
        openssl(self.dir(), &["ca", "-config", "ca.cnf", "-revoke", &pem]);
    }

    /// Records `cert` as valid (`openssl ca -valid`), so the OCSP responder answers `good`.
    pub fn valid(&self, cert: &(impl CertPem + ?Sized)) {
        let pem = self.cert_file(cert);
        openssl(self.dir(), &["ca", "-config", "ca.cnf", "-valid", &pem]);
    }

    /// A fresh CRL (PEM) from `openssl ca -gencrl`, with `extra` arguments
    /// (e.g. `-crl_lastupdate`/`-crl_nextupdate`).
    pub fn crl(&self, extra: &[&str]) -> Vec<u8> {
        std::fs::read(self.dir().join(self.gencrl(extra))).unwrap()
    }

    /// A fresh CRL in DER, via `openssl crl -outform DER`.
    pub fn crl_der(&self) -> Vec<u8> {
        let pem = self.gencrl(&[]);
        let der = pem.replace(".pem", ".der");
        openssl(
            self.dir(),
            &["crl", "-in", &pem, "-outform", "DER", "-out", &der],
        );
        std::fs::read(self.dir().join(der)).unwrap()
    }

    /// An expired CRL: lastUpdate and nextUpdate both in January 2020.
    pub fn expired_crl(&self) -> Vec<u8> {
        self.crl(&[
            "-crl_lastupdate",
            "200101000000Z",
            "-crl_nextupdate",
            "200102000000Z",
        ])
    }

    /// `openssl ocsp`'s DER answer to the DER `request`, from this CA's database, signed by
    /// `signer` and valid for a day (`-ndays 1`).
    pub fn ocsp_response(&self, request: &[u8], signer: &OcspSigner) -> Vec<u8> {
        ocsp_response(self.dir(), request, signer)
    }

    /// Runs `openssl ca -gencrl` into a new file and returns its name.
    fn gencrl(&self, extra: &[&str]) -> String {
        let out = format!("crl-{}.pem", next_file());
        let mut args = vec!["ca", "-config", "ca.cnf", "-gencrl", "-out", &out];
        args.extend_from_slice(extra);
        openssl(self.dir(), &args);
        out
    }

    /// Writes `cert` into the folder for `openssl ca` to read; returns the file's name.
    fn cert_file(&self, cert: &(impl CertPem + ?Sized)) -> String {
        let name = format!("cert-{}.pem", next_file());
        std::fs::write(self.dir().join(&name), cert.cert_pem()).unwrap();
        name
    }
}

/// Who signs an OCSP responder's answers: a certificate and key in the [`OpenSslCa`]'s folder,
/// named in the answer by subject or, with `by_key_id`, by the hash of its key.
#[derive(Clone, Copy, Debug)]
pub struct OcspSigner {
    pub cert: &'static str,
    pub key: &'static str,
    pub by_key_id: bool,
}

impl OcspSigner {
    /// The CA itself.
    pub const CA: OcspSigner = OcspSigner {
        cert: "ca.pem",
        key: "ca.key",
        by_key_id: false,
    };
}

/// `openssl ocsp -index index.txt -CA ca.pem -rsigner … -rkey … -ndays 1 -reqin … -respout …` in
/// `dir`, the folder of an [`OpenSslCa`].
fn ocsp_response(dir: &Path, request: &[u8], signer: &OcspSigner) -> Vec<u8> {
    let n = next_file();
    let (req, resp) = (format!("ocsp-req-{n}.der"), format!("ocsp-resp-{n}.der"));
    std::fs::write(dir.join(&req), request).unwrap();
    let mut args = vec![
        "ocsp",
        "-index",
        "index.txt",
        "-CA",
        "ca.pem",
        "-rsigner",
        signer.cert,
        "-rkey",
        signer.key,
        "-ndays",
        "1",
    ];
    if signer.by_key_id {
        args.push("-resp_key_id");
    }
    args.extend_from_slice(&["-reqin", &req, "-respout", &resp]);
    openssl(dir, &args);
    std::fs::read(dir.join(resp)).unwrap()
}

/// Writes `bytes` to a sibling temp file and renames it over `path`, as editors and `kubectl cp`
/// do: readers see the old file or the new one, never half of it.
pub fn replace_by_rename(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A loopback HTTP server; every request is counted, then after `delay` answered by `answer`.
struct Server {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Answer =
    Arc<dyn Fn(http::request::Parts, Bytes) -> (u16, &'static str, Vec<u8>) + Send + Sync>;

impl Server {
    fn serve(listener: TcpListener, delay: Duration, answer: Answer) -> Server {
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        // Connections live in the accept task's JoinSet, so dropping the server also ends the
        // keep-alive connections a client pooled: the server is down, not just its listener.
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                let answer = answer.clone();
                let counter = counter.clone();
                connections.spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let answer = answer.clone();
                        let counter = counter.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            counter.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(delay).await;
                            let (status, content_type, bytes) =
                                tokio::task::spawn_blocking(move || answer(parts, body))
                                    .await
                                    .unwrap();
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", content_type)
                                    .body(Full::new(Bytes::from(bytes)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Server {
            addr,
            requests,
            task,
        }
    }
}

/// A listener on a free loopback port.
async fn bind_loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// Serves whatever it currently holds (a CRL, or a failure) at
/// `http://127.0.0.1:PORT/partner-ca.crl`.
pub struct CrlServer {
    pub url: String,
    content: Arc<Mutex<(u16, Vec<u8>)>>,
    server: Server,
}

impl CrlServer {
    pub async fn start(crl: Vec<u8>) -> CrlServer {
        let content = Arc::new(Mutex::new((200, crl)));
        let current = content.clone();
        let server = Server::serve(
            bind_loopback().await,
            Duration::ZERO,
            Arc::new(move |_, _| {
                let (status, bytes) = current.lock().unwrap().clone();
                (status, "application/pkix-crl", bytes)
            }),
        );
        CrlServer {
            url: format!("http://{}/partner-ca.crl", server.addr),
            content,
            server,
        }
    }

    /// Serves `crl` from now on.
    pub fn set(&self, crl: Vec<u8>) {
        self.answer(200, crl);
    }

    /// Answers `status` with `body` from now on.
    pub fn answer(&self, status: u16, body: Vec<u8>) {
        *self.content.lock().unwrap() = (status, body);
    }

    pub fn requests(&self) -> usize {
        self.server.requests.load(Ordering::SeqCst)
    }
}

/// An OCSP responder on loopback: each POSTed `application/ocsp-request` is answered by
/// `openssl ocsp` over the [`OpenSslCa`]'s database, read afresh per request (see
/// [`OpenSslCa::ocsp_response`]). (OpenSSL's own `-port` server listens on every interface, so
/// it is not used.)
pub struct OcspResponder {
    pub url: String,
    server: Server,
}

/// A bound loopback listener and the URL an [`OcspResponder`] on it answers at, so certificates
/// can name the URL before the responder runs.
pub async fn ocsp_listener() -> (TcpListener, String) {
    let listener = bind_loopback().await;
    let url = ocsp_url(&listener);
    (listener, url)
}

fn ocsp_url(listener: &TcpListener) -> String {
    format!("http://{}/ocsp", listener.local_addr().unwrap())
}

impl OcspResponder {
    /// A responder signing with the CA's own key, answering at once.
    pub async fn start(ca: &OpenSslCa) -> OcspResponder {
        OcspResponder::serve(bind_loopback().await, ca, OcspSigner::CA, Duration::ZERO)
    }

    /// A responder on `listener` (see [`ocsp_listener`]) signing with `signer`, answering each
    /// request `delay` after it arrived.
    pub fn serve(
        listener: TcpListener,
        ca: &OpenSslCa,
        signer: OcspSigner,
        delay: Duration,
    ) -> OcspResponder {
        let url = ocsp_url(&listener);
        let dir = ca.dir().to_path_buf();
        let server = Server::serve(
            listener,
            delay,
            Arc::new(move |parts, request| {
                assert_eq!(parts.method, http::Method::POST, "responder got {parts:?}");
                assert_eq!(
                    parts.headers[http::header::CONTENT_TYPE],
                    "application/ocsp-request",
                    "responder got {parts:?}"
                );
                let response = ocsp_response(&dir, &request, &signer);
                (200, "application/ocsp-response", response)
            }),
        );
        OcspResponder { url, server }
    }

    /// Requests received so far (a cache hit in the gateway sends none).
    pub fn requests(&self) -> usize {
        self.server.requests.load(Ordering::SeqCst)
    }
}
