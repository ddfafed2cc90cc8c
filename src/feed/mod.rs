//! The control plane's HTTP feed, both ends: [`server`] (`certgate control-plane`) serves what
//! the lifecycle published into its state folder, and [`mirror`] (a gateway with
//! `lifecycle.source`) copies it into the gateway's own state folder, where the configuration
//! load, the file watcher and the CRL poller read it exactly as they read a local registry's
//! files. So a gateway on another host needs no new code path to serve a revocation: only the
//! copy.
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /generation?after=N` | `{"generation":G}` at once when G > N, else as soon as it is, at the latest after [`LONG_POLL`] (then G ≤ N) |
//! | `GET /ca.pem` | the CA certificate |
//! | `GET /partners.json` | the approved partners |
//! | `GET /crl/<bundle>.crl` | the CA's CRL (DER) |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 once the published files have been read, else 503 |
//!
//! The three files carry an `ETag` and answer `If-None-Match` with 304. The generation is the
//! CRL number of the published pair (partner table and CRL, which name the same number): it
//! comes from the registry, so every control-plane replica agrees on it, and it never repeats.
//!
//! The feed is plain HTTP and unauthenticated: the CRL is signed, but the partner table and the
//! CA certificate are not, so it belongs on a network only gateways reach (a NetworkPolicy, a
//! mesh).

pub mod mirror;
pub mod server;

use std::time::Duration;

use sha2::{Digest, Sha256};

/// How long `/generation` holds a request while nothing changes. Below the common 30 s idle
/// timeouts of proxies between the gateway and the control plane.
pub const LONG_POLL: Duration = Duration::from_secs(25);

/// The default listen address of `certgate control-plane`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9902";

const CA_PATH: &str = "/ca.pem";
const PARTNERS_PATH: &str = "/partners.json";
const GENERATION_PATH: &str = "/generation";
/// Sent with every file: the generation it belongs to.
const GENERATION_HEADER: &str = "x-certgate-generation";

fn crl_path(bundle: &str) -> String {
    format!("/crl/{bundle}.crl")
}

/// A strong validator of the content: both ends compute it the same way, so a gateway restarted
/// on a kept copy gets 304s instead of the files again.
fn etag(bytes: &[u8]) -> String {
    format!("\"{}\"", hex::encode(&Sha256::digest(bytes)[..16]))
}
