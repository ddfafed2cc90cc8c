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
use serde::Deserialize;

use super::{Shared, BODY_READ_TIMEOUT};
use crate::lifecycle::ca::CsrError;
use crate::lifecycle::commands::{self, CommandError, Enrol};
use crate::lifecycle::registry::{CertStatus, EnrolmentStatus};
use crate::lifecycle::token;

/// Every error code the API answers with: stable, machine-readable, documented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BadRequest,
    BodyTooLarge,
    RequestTimeout,
    RateLimited,
    NotFound,
    MethodNotAllowed,
    InvalidToken,
    TokenUsed,
    TokenExpired,
    PartnerNotEnrollable,
    FieldTooLong,
    CsrUnparseable,
    CsrBadSignature,
    CsrWeakKey,
    CsrUnsupportedKey,
    CsrIdentityMismatch,
    Internal,
}

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
    pub const ALL: [Code; 17] = [
        Code::BadRequest,
        Code::BodyTooLarge,
        Code::RequestTimeout,
        Code::RateLimited,
        Code::NotFound,
        Code::MethodNotAllowed,
        Code::InvalidToken,
        Code::TokenUsed,
        Code::TokenExpired,
        Code::PartnerNotEnrollable,
        Code::FieldTooLong,
        Code::CsrUnparseable,
        Code::CsrBadSignature,
        Code::CsrWeakKey,
        Code::CsrUnsupportedKey,
        Code::CsrIdentityMismatch,
        Code::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::BodyTooLarge => "body_too_large",
            Self::RequestTimeout => "request_timeout",
            Self::RateLimited => "rate_limited",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::InvalidToken => "invalid_token",
            Self::TokenUsed => "token_used",
            Self::TokenExpired => "token_expired",
            Self::PartnerNotEnrollable => "partner_not_enrollable",
            Self::FieldTooLong => "field_too_long",
            Self::CsrUnparseable => "csr_unparseable",
            Self::CsrBadSignature => "csr_bad_signature",
            Self::CsrWeakKey => "csr_weak_key",
            Self::CsrUnsupportedKey => "csr_unsupported_key",
            Self::CsrIdentityMismatch => "csr_identity_mismatch",
            Self::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest | Self::FieldTooLong => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::TokenUsed | Self::PartnerNotEnrollable => StatusCode::CONFLICT,
            Self::TokenExpired => StatusCode::GONE,
            Self::CsrUnparseable
            | Self::CsrBadSignature
            | Self::CsrWeakKey
            | Self::CsrUnsupportedKey
            | Self::CsrIdentityMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The code for a refused command. Exhaustive, so a new refusal needs a code to build.
    fn of(e: &CommandError) -> Code {
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

/// Runs one registry call on a blocking thread that drives it to completion.
///
/// The store's queries run on sqlx's `any` driver, whose futures rustc cannot prove `Send` for
/// every lifetime, so they cannot sit inside a spawned connection task. A registry call is a short
/// database transaction, and enrolments are rare, so a blocking thread per call costs nothing
/// that matters.
async fn registry<T, F, Fut>(call: F) -> Result<T, CommandError>
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
    let limit = usize::try_from(shared.settings.max_body_bytes).unwrap_or(usize::MAX);
    let body = Limited::new(req.into_body(), limit).collect();
    let bytes = match tokio::time::timeout(BODY_READ_TIMEOUT, body).await {
        Err(_) => {
            return error(
                Code::RequestTimeout,
                "the request body did not arrive in time",
            )
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            audit("enrol", ip, None, Code::BodyTooLarge.as_str());
            return error(
                Code::BodyTooLarge,
                &format!("the request body is over {limit} bytes"),
            );
        }
        Ok(Err(_)) => return error(Code::BadRequest, "the request body could not be read"),
        Ok(Ok(collected)) => collected.to_bytes(),
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
