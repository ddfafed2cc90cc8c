//! The enrolment API's stable error codes: its answers' `error` field and the `reason` label of
//! `certgate_onboarding_enrolments_failed_total`. A leaf, so `metrics` can name them without
//! depending on the API that counts into it.

use http::StatusCode;

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
    ClientCertificateRequired,
    CertificateNotValid,
    RenewalUnavailable,
    Internal,
}

// === impl Code ===

impl Code {
    pub const ALL: [Code; 20] = [
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
        Code::ClientCertificateRequired,
        Code::CertificateNotValid,
        Code::RenewalUnavailable,
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
            Self::ClientCertificateRequired => "client_certificate_required",
            Self::CertificateNotValid => "certificate_not_valid",
            Self::RenewalUnavailable => "renewal_unavailable",
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
            Self::InvalidToken | Self::ClientCertificateRequired => StatusCode::UNAUTHORIZED,
            Self::CertificateNotValid => StatusCode::FORBIDDEN,
            Self::RenewalUnavailable => StatusCode::SERVICE_UNAVAILABLE,
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
}
