//! The enrolment API's requests and answers, and the one match from a refusal to its status and
//! stable error code.
//!
//! - `POST /v1/enrolments` `{"token", "csr_pem", "contact"?, "description"?}` → `202 {"id",
//!   "status_url"}`
//! - `GET /v1/enrolments/{id}/{secret}` → `{"status", "reason"?, "certificate_pem"?,
//!   "chain_pem"?}`
//! - any refusal → `{"error": <code>, "message"}`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use rustls::pki_types::pem::PemObject as _;
use serde::Deserialize;

use super::{Shared, BODY_READ_TIMEOUT};
pub use crate::enrolment_code::Code;
use crate::lifecycle::ca::CsrError;
use crate::lifecycle::commands::{self, CommandError, Enrol};
use crate::lifecycle::registry::{CertStatus, EnrolmentStatus};
use crate::lifecycle::token;

/// The request body of `POST /v1/enrolments`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Submission {
    token: String,
    csr_pem: String,
    #[serde(default)]
    contact: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

// === impl Code ===

impl Code {
    /// The code for a refused command. Exhaustive, so a new refusal needs a code to build.
    pub(super) fn of(e: &CommandError) -> Code {
        match e {
            CommandError::InvalidToken => Self::InvalidToken,
            CommandError::TokenUsed(_) => Self::TokenUsed,
            CommandError::TokenExpired { .. } => Self::TokenExpired,
            CommandError::WrongStatus { .. } => Self::PartnerNotEnrollable,
            CommandError::FieldTooLong { .. } => Self::FieldTooLong,
            CommandError::NoEnrolment | CommandError::NotFound(_) => Self::NotFound,
            CommandError::Csr(CsrError::Parse) => Self::CsrUnparseable,
            CommandError::Csr(CsrError::BadSignature) => Self::CsrBadSignature,
            CommandError::Csr(CsrError::WeakKey(_)) => Self::CsrWeakKey,
            CommandError::Csr(CsrError::UnsupportedKey(_)) => Self::CsrUnsupportedKey,
            CommandError::Csr(CsrError::IdentityMismatch(_)) => Self::CsrIdentityMismatch,
            CommandError::NoActor
            | CommandError::BadId(_)
            | CommandError::BadOwner(_)
            | CommandError::BadIdentity(_)
            | CommandError::UnknownScopes { .. }
            | CommandError::NoScopes
            | CommandError::Taken { .. }
            | CommandError::IdentityClaimed { .. }
            | CommandError::IdentityInYaml { .. }
            | CommandError::NothingToChange(_)
            | CommandError::NothingPending(_)
            | CommandError::SameActor { .. }
            | CommandError::NoReason
            | CommandError::BadRevocationReason(_)
            | CommandError::ValidityTooLong { .. }
            | CommandError::ValidityZero
            | CommandError::NoCertificate { .. }
            | CommandError::ExpiryTooLong { .. }
            | CommandError::EnrolmentNeedsCa(_)
            | CommandError::AlreadyProduction(_)
            | CommandError::PromoterIsOwner { .. }
            | CommandError::NotPromotable { .. }
            | CommandError::Ca(_)
            | CommandError::Store(_) => Self::Internal,
        }
    }
}

/// EST's re-enrolment path (RFC 7030 section 3.2.2, no CA label).
const SIMPLEREENROLL: &str = "/.well-known/est/simplereenroll";

/// Runs one registry call on a blocking thread that drives it to completion.
///
/// The store's queries run on sqlx's `any` driver, whose futures rustc cannot prove `Send` for
/// every lifetime, so they cannot sit inside a spawned connection task. A registry call is a short
/// database transaction, and enrolments are rare, so a blocking thread per call costs nothing
/// that matters.
pub(super) async fn registry<T, F, Fut>(call: F) -> Result<T, CommandError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, CommandError>>,
{
    let runtime = tokio::runtime::Handle::current();
    // A blocking task is never cancelled, so the only join error is a panic: it goes on
    // unwinding in this connection's task, as it would have inline.
    tokio::task::spawn_blocking(move || runtime.block_on(call()))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// Answers one request. Every answer is JSON; every action leaves an audit line.
pub(super) async fn handle<B>(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    client: Option<Arc<[u8]>>,
    req: Request<B>,
) -> Response<Full<Bytes>>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let ip = peer.ip().to_canonical().to_string();
    if !shared.by_address.allow(&ip, Instant::now()) {
        if req.method() == Method::POST && req.uri().path() == "/v1/enrolments" {
            shared.metrics.enrolment_failed(Code::RateLimited);
        }
        audit("refused", &ip, None, Code::RateLimited.as_str());
        return error(
            Code::RateLimited,
            "too many requests from this address; retry in a minute",
        );
    }
    let path = req.uri().path().to_owned();
    let status = path
        .strip_prefix("/v1/enrolments/")
        .and_then(|rest| rest.split_once('/'))
        .map(|(id, secret)| (id.to_owned(), secret.to_owned()));
    match (req.method(), path.as_str(), status) {
        (&Method::POST, "/v1/enrolments", _) => {
            let response = submit(shared, &ip, req).await;
            if let Some(code) = response.extensions().get::<Code>() {
                shared.metrics.enrolment_failed(*code);
            }
            count_tokens(shared).await;
            response
        }
        (&Method::GET, _, Some((id, secret))) => status_of(shared, &ip, &id, &secret).await,
        (&Method::POST, SIMPLEREENROLL, _) => reenroll(shared, &ip, client, req).await,
        (_, SIMPLEREENROLL, _) => error(
            Code::MethodNotAllowed,
            "POST a base64 PKCS#10 request to simplereenroll",
        ),
        (_, "/v1/enrolments", _) | (_, _, Some(_)) => error(
            Code::MethodNotAllowed,
            "POST /v1/enrolments submits; GET on a status URL reads",
        ),
        _ => error(Code::NotFound, "no such resource"),
    }
}

async fn submit<B>(shared: &Arc<Shared>, ip: &str, req: Request<B>) -> Response<Full<Bytes>>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .map(str::to_owned);
    let bytes = match read_body(shared, ip, "enrol", req.into_body()).await {
        Ok(bytes) => bytes,
        Err(refused) => return refused,
    };
    let submission: Submission = match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => {
            audit("enrol", ip, None, Code::BadRequest.as_str());
            return error(
                Code::BadRequest,
                &format!(
                    "expected JSON {{\"token\", \"csr_pem\", \"contact\"?, \"description\"?}}: {e}"
                ),
            );
        }
    };
    // Keyed by the token's hash, so the limiter's memory holds no usable token.
    if !shared
        .by_token
        .allow(&token::sha256_hex(&submission.token), Instant::now())
    {
        audit("enrol", ip, None, Code::RateLimited.as_str());
        return error(
            Code::RateLimited,
            "too many submissions with this token; retry in a minute",
        );
    }
    let actor = format!("enrolment-api {ip}");
    let result = {
        let shared = Arc::clone(shared);
        registry(move || async move {
            let request = Enrol {
                token: &submission.token,
                csr: submission.csr_pem.as_bytes(),
                contact: submission.contact.as_deref(),
                description: submission.description.as_deref(),
            };
            let mut store = shared.store.lock().await;
            commands::enrol(&mut store, &actor, request).await
        })
        .await
    };
    match result {
        Ok(done) => {
            audit("enrol", ip, Some(&done.partner), "accepted");
            let path = format!("/v1/enrolments/{}/{}", done.id, done.secret);
            let status_url = match host {
                Some(host) => format!("https://{host}{path}"),
                None => path,
            };
            json(
                StatusCode::ACCEPTED,
                &serde_json::json!({"id": done.id, "status_url": status_url}),
            )
        }
        Err(e) => refusal(ip, "enrol", &e),
    }
}

/// The request body, within `max_body_bytes` and [`BODY_READ_TIMEOUT`].
async fn read_body<B>(
    shared: &Shared,
    ip: &str,
    action: &str,
    body: B,
) -> Result<Bytes, Response<Full<Bytes>>>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let limit = usize::try_from(shared.settings.max_body_bytes).unwrap_or(usize::MAX);
    let body = Limited::new(body, limit).collect();
    match tokio::time::timeout(BODY_READ_TIMEOUT, body).await {
        Err(_) => Err(error(
            Code::RequestTimeout,
            "the request body did not arrive in time",
        )),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            audit(action, ip, None, Code::BodyTooLarge.as_str());
            Err(error(
                Code::BodyTooLarge,
                &format!("the request body is over {limit} bytes"),
            ))
        }
        Ok(Err(_)) => Err(error(
            Code::BadRequest,
            "the request body could not be read",
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// What a re-enrolment found in the registry.
enum Reenrolled {
    Issued {
        partner: String,
        der: Vec<u8>,
    },
    /// The presented certificate is not a valid certificate of an approved partner.
    NotValid(String),
    /// This process cannot sign.
    Unavailable,
}

/// EST `simplereenroll`: a partner presenting a valid certificate of the embedded CA gets a new
/// one for the same identity from its CSR. The old one is revoked as superseded after
/// `onboarding.renewal_grace`.
async fn reenroll<B>(
    shared: &Arc<Shared>,
    ip: &str,
    client: Option<Arc<[u8]>>,
    req: Request<B>,
) -> Response<Full<Bytes>>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let Some(client) = client else {
        audit(
            "reenroll",
            ip,
            None,
            Code::ClientCertificateRequired.as_str(),
        );
        return error(
            Code::ClientCertificateRequired,
            "renewal needs the certificate being renewed, presented over mutual TLS",
        );
    };
    if shared.signer.is_none() {
        return unavailable(ip);
    }
    let bytes = match read_body(shared, ip, "reenroll", req.into_body()).await {
        Ok(bytes) => bytes,
        Err(refused) => return refused,
    };
    let Some(csr) = super::est::request(&bytes) else {
        audit("reenroll", ip, None, Code::CsrUnparseable.as_str());
        return error(
            Code::CsrUnparseable,
            "expected a base64-encoded PKCS#10 request (application/pkcs10)",
        );
    };
    let fingerprint = {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(&client))
    };
    let actor = format!("est {ip}");
    let result = {
        let shared = Arc::clone(shared);
        registry(move || async move {
            let mut store = shared.store.lock().await;
            let records = store.records().await?;
            let held = records.iter().find_map(|r| {
                let c = r
                    .certificates
                    .iter()
                    .find(|c| c.fingerprint_sha256 == fingerprint)?;
                Some((r.partner.as_ref()?, c))
            });
            let (partner, cert) = match held {
                None => {
                    return Ok(Reenrolled::NotValid(
                        "the certificate is not one the registry issued".into(),
                    ))
                }
                Some((_, c)) if c.status != CertStatus::Valid => {
                    return Ok(Reenrolled::NotValid(format!(
                        "certificate {} is revoked",
                        c.serial
                    )))
                }
                Some((p, _)) if p.status != crate::lifecycle::registry::PartnerStatus::Approved => {
                    return Ok(Reenrolled::NotValid(format!(
                        "partner `{}` is {}",
                        p.id, p.status
                    )))
                }
                Some((p, c)) => (p.id.clone(), c.serial.clone()),
            };
            let Some(signer) = shared.signer.as_ref() else {
                return Ok(Reenrolled::Unavailable);
            };
            let policy = commands::Policy {
                known_scopes: None,
                yaml_identities: Default::default(),
                max_validity_days: shared.max_validity_days,
            };
            let done = commands::reenroll(
                &mut store,
                &policy,
                signer,
                &format!("{actor} for {partner}"),
                &partner,
                &csr,
                shared.max_validity_days,
                shared.settings.renewal_grace,
            )
            .await?;
            publish(&mut store, &shared).await;
            let issued = done
                .record
                .certificates
                .iter()
                .rfind(|c| c.renews.as_deref() == Some(cert.as_str()))
                .map(|c| c.pem.clone())
                .unwrap_or_default();
            let der = rustls::pki_types::CertificateDer::from_pem_slice(issued.as_bytes())
                .map(|d| d.to_vec())
                .unwrap_or_default();
            Ok(Reenrolled::Issued { partner, der })
        })
        .await
    };
    match result {
        Ok(Reenrolled::Issued { partner, der }) if !der.is_empty() => {
            audit("reenroll", ip, Some(&partner), "issued");
            let mut response =
                Response::new(Full::new(Bytes::from(super::est::certs_only(&[&der]))));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/pkcs7-mime; smime-type=certs-only"),
            );
            headers.insert(
                "content-transfer-encoding",
                header::HeaderValue::from_static("base64"),
            );
            headers.insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            response
        }
        Ok(Reenrolled::Issued { partner, .. }) => {
            audit("reenroll", ip, Some(&partner), Code::Internal.as_str());
            error(
                Code::Internal,
                "the issued certificate could not be encoded",
            )
        }
        Ok(Reenrolled::Unavailable) => unavailable(ip),
        Ok(Reenrolled::NotValid(why)) => {
            audit("reenroll", ip, None, Code::CertificateNotValid.as_str());
            error(Code::CertificateNotValid, &why)
        }
        Err(e) => refusal(ip, "reenroll", &e),
    }
}

fn unavailable(ip: &str) -> Response<Full<Bytes>> {
    audit("reenroll", ip, None, Code::RenewalUnavailable.as_str());
    error(
        Code::RenewalUnavailable,
        "this server cannot sign: renew through the partner's owner",
    )
}

/// Publishes the registry's partner table and CRL after a change made here; a failure is
/// recorded in the publish status (and alerted on), and the next change or
/// `certgate registry publish` retries it.
async fn publish(store: &mut crate::lifecycle::store::Store, shared: &Shared) {
    let Some(signer) = shared.signer.as_ref() else {
        return;
    };
    if let Err(e) =
        crate::lifecycle::publish::publish(store, signer, &shared.state, shared.crl_next_update)
            .await
    {
        tracing::error!(error = %crate::error_chain(&e), "enrolment API: publishing the registry failed");
    }
}

/// Revokes the certificates renewed over EST whose successor this process has seen in use, or
/// whose grace period has passed, and publishes.
pub(super) async fn supersede(shared: &Arc<Shared>) {
    let result = {
        let shared = Arc::clone(shared);
        registry(move || async move {
            let mut store = shared.store.lock().await;
            let metrics = shared.metrics.clone();
            let used = move |partner: &str, serial: &str| metrics.seen_certificate(partner, serial);
            let n = commands::supersede_due(&mut store, "est renewal", &used).await?;
            if n > 0 {
                publish(&mut store, &shared).await;
            }
            Ok(n)
        })
        .await
    };
    match result {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            event = "onboarding",
            onboarding.action = "supersede",
            onboarding.actor = "est renewal",
            onboarding.outcome = n,
            "enrolment API: renewed certificates revoked as superseded"
        ),
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "enrolment API: superseding renewed certificates failed");
        }
    }
}

async fn status_of(
    shared: &Arc<Shared>,
    ip: &str,
    id: &str,
    secret: &str,
) -> Response<Full<Bytes>> {
    let result = {
        let shared = Arc::clone(shared);
        let (id, secret) = (id.to_owned(), secret.to_owned());
        registry(move || async move {
            let mut store = shared.store.lock().await;
            commands::enrolment(&mut store, &id, &secret).await
        })
        .await
    };
    let (record, enrolment) = match result {
        Ok(found) => found,
        Err(e) => return refusal(ip, "status", &e),
    };
    let partner = record.partner.as_ref().map(|p| p.id.as_str());
    audit("status", ip, partner, enrolment.status.as_str());
    let mut body = serde_json::json!({"status": enrolment.status.as_str()});
    match enrolment.status {
        EnrolmentStatus::Pending => {}
        EnrolmentStatus::Rejected => {
            body["reason"] = serde_json::json!(enrolment.reason);
        }
        EnrolmentStatus::Issued => {
            let cert = record
                .certificates
                .iter()
                .find(|c| Some(&c.serial) == enrolment.serial.as_ref());
            if let Some(c) = cert {
                body["certificate_pem"] = serde_json::json!(c.pem);
                body["chain_pem"] = serde_json::json!(shared.ca_pem);
                if c.status == CertStatus::Revoked {
                    body["reason"] = serde_json::json!(format!(
                        "the certificate was revoked: {}",
                        c.revocation_reason.as_deref().unwrap_or("unspecified")
                    ));
                }
            }
        }
    }
    json(StatusCode::OK, &body)
}

fn refusal(ip: &str, action: &str, e: &CommandError) -> Response<Full<Bytes>> {
    let code = Code::of(e);
    let partner = match e {
        CommandError::TokenUsed(id) | CommandError::TokenExpired { id, .. } => Some(id.as_str()),
        _ => None,
    };
    audit(action, ip, partner, code.as_str());
    if code == Code::Internal {
        tracing::error!(error = %crate::error_chain(e), "enrolment API: {action} failed");
        return error(code, "the request could not be processed; try again later");
    }
    error(code, &crate::error_chain(e))
}

fn audit(action: &str, ip: &str, partner: Option<&str>, outcome: &str) {
    tracing::info!(
        event = "onboarding",
        onboarding.action = action,
        onboarding.actor = %format_args!("enrolment-api {ip}"),
        onboarding.partner = partner.unwrap_or("-"),
        onboarding.outcome = outcome,
        "enrolment API"
    );
}

/// A refusal; its code rides along in the response's extensions, so the caller counts it.
fn error(code: Code, message: &str) -> Response<Full<Bytes>> {
    let mut response = json(
        code.status(),
        &serde_json::json!({"error": code.as_str(), "message": message}),
    );
    response.extensions_mut().insert(code);
    response
}

/// Recounts the registry's enrolment tokens into the metrics. A failure only leaves the counts
/// as they were: the next submission or the periodic recount tries again.
pub(super) async fn count_tokens(shared: &Arc<Shared>) {
    let records = {
        let shared = Arc::clone(shared);
        registry(move || async move {
            let mut store = shared.store.lock().await;
            Ok(store.records().await?)
        })
        .await
    };
    match records {
        Ok(records) => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            shared
                .metrics
                .set_tokens(super::token_counts(&records, now));
        }
        Err(e) => {
            tracing::warn!(error = %crate::error_chain(&e), "enrolment API: cannot count tokens");
        }
    }
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    // Status answers carry certificates and the URL carries a secret: never cache either.
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    response
}
