//! The real `openssl` CLI acting for a test [`Ca`]: `openssl ca` keeps the certificate database
//! and issues CRLs, `openssl ocsp` answers OCSP requests from the same database. Both are served
//! on loopback by small hyper servers that count the requests they get.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::disallowed_types,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::pki::{Ca, Leaf};

/// Runs `openssl args…` in `dir`, panicking with its stderr on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
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

/// `openssl ca` acting as a [`Ca`] of the test PKI: its own folder with the CA's certificate and
/// key, the `index.txt` database, the CRL number and a minimal `ca.cnf`.
pub struct OpenSslCa {
    dir: tempfile::TempDir,
    next_file: AtomicUsize,
}

impl OpenSslCa {
    pub fn new(ca: &Ca) -> OpenSslCa {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("newcerts")).unwrap();
        std::fs::write(d.join("ca.pem"), &ca.pem).unwrap();
        std::fs::write(d.join("ca.key"), &ca.key_pem).unwrap();
        std::fs::write(d.join("index.txt"), "").unwrap();
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
                 default_crl_days = 7\n\
                 policy = policy_any\n\
                 unique_subject = no\n\
                 crl_extensions = crl_ext\n\
                 [ policy_any ]\n\
                 commonName = supplied\n\
                 [ crl_ext ]\n\
                 authorityKeyIdentifier = keyid:always\n",
                dir = d.display()
            ),
        )
        .unwrap();
        OpenSslCa {
            dir,
            next_file: AtomicUsize::new(0),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Records `leaf` as revoked (`openssl ca -revoke`).
    pub fn revoke(&self, leaf: &Leaf) {
        let pem = self.leaf_file(leaf);
        openssl(
            self.dir(),
            &["ca", "-config", "ca.cnf", "-revoke", pem.to_str().unwrap()],
        );
    }

    /// Records `leaf` as valid (`openssl ca -valid`), so the OCSP responder answers `good`.
    pub fn valid(&self, leaf: &Leaf) {
        let pem = self.leaf_file(leaf);
        openssl(
            self.dir(),
            &["ca", "-config", "ca.cnf", "-valid", pem.to_str().unwrap()],
        );
    }

    /// A fresh CRL (PEM) from `openssl ca -gencrl`, with `extra` arguments
    /// (e.g. `-crl_lastupdate`/`-crl_nextupdate`).
    pub fn crl(&self, extra: &[&str]) -> Vec<u8> {
        let n = self.next_file.fetch_add(1, Ordering::Relaxed);
        let out = format!("crl-{n}.pem");
        let mut args = vec!["ca", "-config", "ca.cnf", "-gencrl", "-out", &out];
        args.extend_from_slice(extra);
        openssl(self.dir(), &args);
        std::fs::read(self.dir().join(out)).unwrap()
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

    fn leaf_file(&self, leaf: &Leaf) -> PathBuf {
        let n = self.next_file.fetch_add(1, Ordering::Relaxed);
        let path = self.dir().join(format!("leaf-{n}.pem"));
        std::fs::write(&path, &leaf.pem).unwrap();
        path
    }
}

/// Writes `bytes` to a sibling temp file and renames it over `path`, as editors and `kubectl cp`
/// do: readers see the old file or the new one, never half of it.
pub fn replace_by_rename(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A loopback HTTP server; every request is answered by `answer` and counted.
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

type Answer = Arc<dyn Fn(Bytes) -> (u16, &'static str, Vec<u8>) + Send + Sync>;

impl Server {
    async fn start(answer: Answer) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let answer = answer.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let answer = answer.clone();
                        let counter = counter.clone();
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            counter.fetch_add(1, Ordering::SeqCst);
                            let (status, content_type, bytes) =
                                tokio::task::spawn_blocking(move || answer(body))
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

/// Serves whatever CRL bytes it currently holds at `http://127.0.0.1:PORT/partner-ca.crl`.
pub struct CrlServer {
    pub url: String,
    content: Arc<Mutex<Vec<u8>>>,
    server: Server,
}

impl CrlServer {
    pub async fn start(crl: Vec<u8>) -> CrlServer {
        let content = Arc::new(Mutex::new(crl));
        let current = content.clone();
        let server = Server::start(Arc::new(move |_| {
            (200, "application/pkix-crl", current.lock().unwrap().clone())
        }))
        .await;
        CrlServer {
            url: format!("http://{}/partner-ca.crl", server.addr),
            content,
            server,
        }
    }

    pub fn set(&self, crl: Vec<u8>) {
        *self.content.lock().unwrap() = crl;
    }

    pub fn requests(&self) -> usize {
        self.server.requests.load(Ordering::SeqCst)
    }
}

/// An OCSP responder on loopback: each POSTed request is answered by
/// `openssl ocsp -index index.txt -CA ca.pem -rsigner ca.pem -rkey ca.key -reqin … -respout …`
/// over the [`OpenSslCa`]'s database, read afresh per request. (OpenSSL's own `-port` server
/// listens on every interface, so it is not used.)
pub struct OcspResponder {
    pub url: String,
    server: Server,
}

impl OcspResponder {
    pub async fn start(ca: &OpenSslCa) -> OcspResponder {
        let dir = ca.dir().to_path_buf();
        let next = Arc::new(AtomicUsize::new(0));
        let server = Server::start(Arc::new(move |request: Bytes| {
            let n = next.fetch_add(1, Ordering::SeqCst);
            let (req, resp) = (format!("ocsp-req-{n}.der"), format!("ocsp-resp-{n}.der"));
            std::fs::write(dir.join(&req), &request).unwrap();
            openssl(
                &dir,
                &[
                    "ocsp",
                    "-index",
                    "index.txt",
                    "-CA",
                    "ca.pem",
                    "-rsigner",
                    "ca.pem",
                    "-rkey",
                    "ca.key",
                    "-ndays",
                    "1",
                    "-reqin",
                    &req,
                    "-respout",
                    &resp,
                ],
            );
            (
                200,
                "application/ocsp-response",
                std::fs::read(dir.join(resp)).unwrap(),
            )
        }))
        .await;
        OcspResponder {
            url: format!("http://{}/ocsp", server.addr),
            server,
        }
    }

    /// Requests received so far (a cache hit in the gateway sends none).
    pub fn requests(&self) -> usize {
        self.server.requests.load(Ordering::SeqCst)
    }
}

/// An `http://` URL on loopback where nothing listens.
pub fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}/ocsp")
}
