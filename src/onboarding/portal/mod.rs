//! The web portal under `/portal/` on the enrolment listener: plain server-rendered HTML for a
//! partner's developer (enrol with the invitation's token, then follow the request, download the
//! certificate, copy the commands) and for approvers (pending requests, approve, reject, revoke,
//! promote, a partner's history).
//!
//! Every change goes through [`crate::lifecycle::commands`], as the CLI's does, and is published
//! the same way; every action leaves an audit line naming its actor. Every POST carries a CSRF
//! token: the HMAC of the browser's CSRF cookie under a key made at start, so a page of another
//! site can neither read nor forge it. Every answer carries the same strict security headers.

mod approver;
mod pages;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac as _};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};

pub(crate) use approver::{Approver, ApproverError, Approvers};

use super::api::registry;
use super::{Shared, BODY_READ_TIMEOUT};
use crate::config::model;
use crate::lifecycle::ca::FileSigner;
use crate::lifecycle::commands::{self, CommandError, Enrol, Policy, RecordedUsage};
use crate::lifecycle::publish;
use crate::lifecycle::registry::REVOCATION_REASONS;
use crate::lifecycle::token;
use crate::lifecycle::StateDir;
use crate::usage::UsageFile;

/// The content security policy of every portal answer: nothing inline, nothing from elsewhere,
/// never framed, forms post only here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const CSRF_COOKIE: &str = "__Host-cg_csrf";
const ENROLMENT_COOKIE: &str = "__Host-cg_enrolment";
const APPROVER_COOKIE: &str = "__Host-cg_approver";
const STALE_FORM: &str =
    "The form expired or did not come from this portal. Reload the page and try again.";
const CSS: &str = include_str!("static/portal.css");
const JS: &str = include_str!("static/portal.js");

/// The portal's share of the listener: approvers, the CSRF key and what changes need.
pub(crate) struct Portal {
    pub(crate) approvers: Approvers,
    csrf_key: [u8; 32],
    signer: FileSigner,
    state: StateDir,
    policy: Policy,
    crl_next_update: Duration,
    gateway_url: String,
    has_certificates: bool,
    /// The sandbox calls promotion needs (`lifecycle.promotion`), shown to partners too.
    promotion: model::Promotion,
}

/// A request's parsed form and cookies.
struct Form(HashMap<String, String>);

/// What an approver action did, for the result page.
struct Done {
    message: String,
    partner: String,
}

// === impl Portal ===

impl Portal {
    /// # Errors
    /// The CSRF key cannot be drawn, the CA does not load, or the approver settings do not.
    pub(crate) fn load(
        settings: &model::Portal,
        lifecycle: &model::Lifecycle,
        state: &StateDir,
        partner_ca: &str,
    ) -> Result<
        (
            Self,
            Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
        ),
        super::StartError,
    > {
        let (approvers, verifier) = Approvers::load(settings, partner_ca)?;
        let signer = FileSigner::load(state).map_err(super::StartError::Signer)?;
        let csrf_key = token::random::<32>().map_err(super::StartError::Signer)?;
        let portal = Self {
            approvers,
            csrf_key,
            signer,
            state: state.clone(),
            policy: Policy {
                known_scopes: None,
                yaml_identities: HashMap::new(),
                max_validity_days: lifecycle.max_validity_days,
            },
            crl_next_update: lifecycle.crl_next_update,
            gateway_url: settings.gateway_url.clone(),
            has_certificates: verifier.is_some(),
            promotion: lifecycle.promotion,
        };
        Ok((portal, verifier))
    }

    fn csrf_token(&self, cookie: &str) -> String {
        // A 32-byte key is a valid HMAC key, so this cannot fail; an empty token never verifies.
        let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(&self.csrf_key) else {
            return String::new();
        };
        mac.update(cookie.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

// === impl Form ===

impl Form {
    fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", String::as_str)
    }
}

/// Answers one portal request, with the security headers on every answer.
pub(super) async fn handle<B>(
    shared: &Arc<Shared>,
    peer: SocketAddr,
    certified: Option<&Approver>,
    req: Request<B>,
) -> Response<Full<Bytes>>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let Some(portal) = shared.portal.as_ref() else {
        return secure(text(StatusCode::NOT_FOUND, "no such resource"));
    };
    let cookies = cookies(&req);
    let mut set_cookies = Vec::new();
    let csrf_cookie = match cookies.get(CSRF_COOKIE) {
        Some(c) if c.len() == 43 => c.clone(),
        _ => {
            let fresh = token::generate().map(|s| s.text).unwrap_or_default();
            set_cookies.push(cookie(CSRF_COOKIE, &fresh));
            fresh
        }
    };
    let csrf = portal.csrf_token(&csrf_cookie);
    let ip = peer.ip().to_canonical().to_string();
    let approver = certified.cloned().or_else(|| {
        cookies
            .get(APPROVER_COOKIE)
            .and_then(|c| portal.approvers.of_session(c, Instant::now()))
    });
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = if method == Method::POST {
        match same_site(req.headers(), &cookies) {
            Err((code, why)) => {
                audit("csrf", &ip, None, "-", code);
                forbidden(why)
            }
            Ok(()) => {
                let form = match read_form(shared, req).await {
                    Ok(f) => f,
                    Err((status, why)) => return finish(text(status, &why), set_cookies),
                };
                if !token::same(form.get("csrf"), &csrf) || csrf.is_empty() {
                    audit("csrf", &ip, None, "-", "bad_csrf_token");
                    forbidden(STALE_FORM)
                } else {
                    post(
                        shared,
                        portal,
                        &path,
                        &ip,
                        approver,
                        &cookies,
                        form,
                        &mut set_cookies,
                    )
                    .await
                }
            }
        }
    } else if method == Method::GET || method == Method::HEAD {
        let host = host_of(req.headers());
        get(shared, portal, &path, &ip, approver, &cookies, &csrf, &host).await
    } else {
        page(
            StatusCode::METHOD_NOT_ALLOWED,
            &pages::Outcome {
                title: "Not allowed",
                ok: false,
                message: "The portal answers GET and POST only.".to_owned(),
                back: "/portal/",
            },
        )
    };
    finish(response, set_cookies)
}

fn finish(mut response: Response<Full<Bytes>>, set_cookies: Vec<String>) -> Response<Full<Bytes>> {
    for c in set_cookies {
        if let Ok(v) = HeaderValue::from_str(&c) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    secure(response)
}

/// Refuses a POST from another site, or without the CSRF cookie, before its body is read.
fn same_site(
    headers: &http::HeaderMap,
    cookies: &HashMap<String, String>,
) -> Result<(), (&'static str, &'static str)> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin = headers.get(header::ORIGIN).and_then(|h| h.to_str().ok());
    // Under `Referrer-Policy: no-referrer` browsers send `Origin: null` for the portal's own
    // forms, so `null` is left to the token; a named other origin is refused outright, and so
    // is a request the browser itself marks as started by another site.
    let cross_origin = match (origin, host) {
        (Some(origin), Some(host)) => origin != "null" && origin != format!("https://{host}"),
        _ => false,
    };
    let fetch_site = headers.get("sec-fetch-site").and_then(|h| h.to_str().ok());
    let cross_site = fetch_site.is_some_and(|s| s != "same-origin" && s != "none");
    if cross_origin || cross_site {
        return Err(("cross_origin", "This form was sent from another site."));
    }
    if !cookies.contains_key(CSRF_COOKIE) {
        return Err(("no_csrf_cookie", STALE_FORM));
    }
    Ok(())
}

async fn read_form<B>(shared: &Arc<Shared>, req: Request<B>) -> Result<Form, (StatusCode, String)>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let limit = usize::try_from(shared.settings.max_body_bytes).unwrap_or(usize::MAX);
    let body = Limited::new(req.into_body(), limit).collect();
    let bytes = match tokio::time::timeout(BODY_READ_TIMEOUT, body).await {
        Err(_) => {
            return Err((
                StatusCode::REQUEST_TIMEOUT,
                "the form did not arrive in time".to_owned(),
            ))
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the form is over {limit} bytes"),
            ))
        }
        Ok(Err(_)) => {
            return Err((
                StatusCode::BAD_REQUEST,
                "the form could not be read".to_owned(),
            ))
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    Ok(Form(
        url::form_urlencoded::parse(&bytes)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    ))
}

#[allow(clippy::too_many_arguments)]
async fn get(
    shared: &Arc<Shared>,
    portal: &Portal,
    path: &str,
    ip: &str,
    approver: Option<Approver>,
    cookies: &HashMap<String, String>,
    csrf: &str,
    host: &str,
) -> Response<Full<Bytes>> {
    match path {
        "/portal" | "/portal/" => page(
            StatusCode::OK,
            &pages::Home {
                title: "Enrol a partner",
                csrf: csrf.to_owned(),
                error: None,
                csr: String::new(),
                contact: String::new(),
                description: String::new(),
            },
        ),
        "/portal/static/portal.css" => asset("text/css; charset=utf-8", CSS),
        "/portal/static/portal.js" => asset("text/javascript; charset=utf-8", JS),
        "/portal/enrolment" => enrolment_page(shared, portal, cookies, csrf, host).await,
        "/portal/enrolment/certificate.pem" => download(shared, ip, cookies).await,
        "/portal/approver" => match approver {
            Some(a) => approver_page(shared, &a, csrf).await,
            None => login_page(portal, csrf, None, StatusCode::OK),
        },
        _ => match path.strip_prefix("/portal/approver/partners/") {
            Some(id) => match approver {
                Some(_) => history_page(shared, id).await,
                None => login_page(portal, csrf, None, StatusCode::UNAUTHORIZED),
            },
            None => not_found(),
        },
    }
}

#[allow(clippy::too_many_arguments)]
async fn post(
    shared: &Arc<Shared>,
    portal: &Portal,
    path: &str,
    ip: &str,
    approver: Option<Approver>,
    cookies: &HashMap<String, String>,
    form: Form,
    set_cookies: &mut Vec<String>,
) -> Response<Full<Bytes>> {
    match path {
        "/portal/enrol" => enrol(shared, ip, form, set_cookies).await,
        "/portal/signout" => {
            set_cookies.push(clear_cookie(ENROLMENT_COOKIE));
            redirect("/portal/")
        }
        "/portal/approver/login" => {
            if !shared.by_address.allow(ip, Instant::now()) {
                audit("sign-in", ip, None, "-", "rate_limited");
                return login_page(
                    portal,
                    "",
                    Some("Too many attempts from this address; retry in a minute."),
                    StatusCode::TOO_MANY_REQUESTS,
                );
            }
            let name = form.get("name").trim();
            if name.is_empty()
                || name.chars().count() > approver::MAX_NAME
                || name.chars().any(char::is_control)
            {
                return login_page(
                    portal,
                    form.get("csrf"),
                    Some("Give your name (1 to 64 characters): it is recorded with every action."),
                    StatusCode::BAD_REQUEST,
                );
            }
            match portal
                .approvers
                .sign_in(form.get("token"), name, Instant::now())
            {
                Some(session) => {
                    audit("sign-in", ip, Some(name), "-", "accepted");
                    set_cookies.push(cookie(APPROVER_COOKIE, &session));
                    redirect("/portal/approver")
                }
                None => {
                    audit("sign-in", ip, Some(name), "-", "refused");
                    login_page(
                        portal,
                        form.get("csrf"),
                        Some("That admin token is not valid."),
                        StatusCode::UNAUTHORIZED,
                    )
                }
            }
        }
        "/portal/approver/logout" => {
            if let Some(c) = cookies.get(APPROVER_COOKIE) {
                portal.approvers.sign_out(c);
            }
            set_cookies.push(clear_cookie(APPROVER_COOKIE));
            redirect("/portal/approver")
        }
        _ => {
            match path.strip_prefix("/portal/approver/") {
                Some(action) => match approver {
                    Some(a) => act(shared, ip, &a, action, &form).await,
                    None => {
                        audit(action, ip, None, form.get("partner"), "not_an_approver");
                        forbidden("Approver actions need an approver certificate or a signed-in approver.")
                    }
                },
                None => not_found(),
            }
        }
    }
}

// === partner's pages ===

async fn enrol(
    shared: &Arc<Shared>,
    ip: &str,
    form: Form,
    set_cookies: &mut Vec<String>,
) -> Response<Full<Bytes>> {
    let again = |error: String, status: StatusCode, form: &Form| {
        page(
            status,
            &pages::Home {
                title: "Enrol a partner",
                csrf: form.get("csrf").to_owned(),
                error: Some(error),
                csr: form.get("csr_pem").to_owned(),
                contact: form.get("contact").to_owned(),
                description: form.get("description").to_owned(),
            },
        )
    };
    let now = Instant::now();
    if !shared.by_address.allow(ip, now)
        || !shared
            .by_token
            .allow(&token::sha256_hex(form.get("token").trim()), now)
    {
        audit("enrol", ip, None, "-", "rate_limited");
        return again(
            "Too many submissions; retry in a minute.".to_owned(),
            StatusCode::TOO_MANY_REQUESTS,
            &form,
        );
    }
    let actor = format!("portal {ip}");
    let result = {
        let shared = Arc::clone(shared);
        let token = form.get("token").trim().to_owned();
        let csr = form.get("csr_pem").to_owned();
        let contact = Some(form.get("contact").trim().to_owned()).filter(|s| !s.is_empty());
        let description = Some(form.get("description").trim().to_owned()).filter(|s| !s.is_empty());
        registry(move || async move {
            let request = Enrol {
                token: &token,
                csr: csr.as_bytes(),
                contact: contact.as_deref(),
                description: description.as_deref(),
            };
            let mut store = shared.store.lock().await;
            commands::enrol(&mut store, &actor, request).await
        })
        .await
    };
    match result {
        Ok(done) => {
            audit("enrol", ip, None, &done.partner, "accepted");
            set_cookies.push(cookie(
                ENROLMENT_COOKIE,
                &format!("{}.{}", done.id, done.secret),
            ));
            redirect("/portal/enrolment")
        }
        Err(e) => {
            let code = super::api::Code::of(&e);
            audit("enrol", ip, None, "-", code.as_str());
            let message = if code == super::api::Code::Internal {
                tracing::error!(error = %crate::error_chain(&e), "portal: enrol failed");
                "The request could not be processed; try again later.".to_owned()
            } else {
                format!("{} ({})", crate::error_chain(&e), code.as_str())
            };
            again(message, code.status(), &form)
        }
    }
}

async fn enrolment_page(
    shared: &Arc<Shared>,
    portal: &Portal,
    cookies: &HashMap<String, String>,
    csrf: &str,
    host: &str,
) -> Response<Full<Bytes>> {
    let Some((id, secret)) = cookies
        .get(ENROLMENT_COOKIE)
        .and_then(|c| c.split_once('.'))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    else {
        return redirect("/portal/");
    };
    let found = {
        let shared = Arc::clone(shared);
        let (id, secret) = (id.clone(), secret.clone());
        registry(move || async move {
            let mut store = shared.store.lock().await;
            commands::enrolment(&mut store, &id, &secret).await
        })
        .await
    };
    let (record, enrolment) = match found {
        Ok(f) => f,
        Err(_) => return redirect("/portal/"),
    };
    let Some(partner) = record.partner.as_ref() else {
        return redirect("/portal/");
    };
    let usage = UsageFile::read(&portal.state.usage()).unwrap_or_default();
    let status_url = format!("https://{host}/v1/enrolments/{id}/{secret}");
    page(
        StatusCode::OK,
        &pages::EnrolmentPage {
            title: "Your enrolment",
            csrf: csrf.to_owned(),
            v: pages::enrolment_view(&record, partner, &enrolment, &usage, portal.promotion),
            commands: pages::commands_for(partner, &portal.gateway_url, &status_url),
        },
    )
}

async fn download(
    shared: &Arc<Shared>,
    ip: &str,
    cookies: &HashMap<String, String>,
) -> Response<Full<Bytes>> {
    let Some((id, secret)) = cookies
        .get(ENROLMENT_COOKIE)
        .and_then(|c| c.split_once('.'))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    else {
        return redirect("/portal/");
    };
    let found = {
        let shared = Arc::clone(shared);
        registry(move || async move {
            let mut store = shared.store.lock().await;
            commands::enrolment(&mut store, &id, &secret).await
        })
        .await
    };
    let Ok((record, enrolment)) = found else {
        return redirect("/portal/");
    };
    let cert = record
        .certificates
        .iter()
        .find(|c| Some(&c.serial) == enrolment.serial.as_ref());
    let (Some(cert), Some(partner)) = (cert, record.partner.as_ref()) else {
        return not_found();
    };
    audit("download", ip, None, &partner.id, "accepted");
    let mut response = Response::new(Full::new(Bytes::from(format!(
        "{}{}",
        cert.pem, shared.ca_pem
    ))));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-pem-file"),
    );
    // Partner IDs are lower-case letters, digits, `.`, `_` and `-`: safe in a header as they are.
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}.pem\"", partner.id)) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

// === approver's pages ===

fn login_page(
    portal: &Portal,
    csrf: &str,
    error: Option<&str>,
    status: StatusCode,
) -> Response<Full<Bytes>> {
    page(
        status,
        &pages::Login {
            title: "Approver sign-in",
            csrf: csrf.to_owned(),
            error: error.map(str::to_owned),
            admin_token: portal.approvers.has_admin_token(),
            certificate: portal.has_certificates,
        },
    )
}

async fn approver_page(
    shared: &Arc<Shared>,
    approver: &Approver,
    csrf: &str,
) -> Response<Full<Bytes>> {
    let records = {
        let shared = Arc::clone(shared);
        registry(move || async move {
            let mut store = shared.store.lock().await;
            Ok(store.records().await?)
        })
        .await
    };
    let records = match records {
        Ok(r) => r,
        Err(e) => return internal(&e),
    };
    let usage = shared
        .portal
        .as_ref()
        .and_then(|p| UsageFile::read(&p.state.usage()).ok())
        .unwrap_or_default();
    let promotion = shared
        .portal
        .as_ref()
        .map(|p| p.promotion)
        .unwrap_or_default();
    let (pending, partners, expiring, unused) =
        pages::approver_lists(&records, &usage, promotion, time::OffsetDateTime::now_utc());
    page(
        StatusCode::OK,
        &pages::ApproverPage {
            title: "Approvals",
            csrf: csrf.to_owned(),
            who: approver.name.clone(),
            via: approver.via.as_str(),
            pending,
            partners,
            expiring,
            unused,
            reasons: REVOCATION_REASONS,
            expiring_days: pages::EXPIRING_DAYS,
            unused_days: pages::UNUSED_DAYS,
        },
    )
}

async fn history_page(shared: &Arc<Shared>, id: &str) -> Response<Full<Bytes>> {
    let events = {
        let shared = Arc::clone(shared);
        let id = id.to_owned();
        registry(move || async move {
            let mut store = shared.store.lock().await;
            Ok(store.events_of(&id).await?)
        })
        .await
    };
    match events {
        Ok(events) if events.is_empty() => not_found(),
        Ok(events) => page(
            StatusCode::OK,
            &pages::History {
                title: format!("History of {id}"),
                events: events.iter().map(pages::event_view).collect(),
            },
        ),
        Err(e) => internal(&e),
    }
}

/// One approver action through the lifecycle command the CLI runs, then a publish.
async fn act(
    shared: &Arc<Shared>,
    ip: &str,
    approver: &Approver,
    action: &str,
    form: &Form,
) -> Response<Full<Bytes>> {
    let partner = form.get("partner").to_owned();
    let reason = form.get("reason").trim().to_owned();
    let action_name: &'static str = match action {
        "approve" => "approve",
        "reject" => "reject",
        "revoke" => "revoke",
        "promote" => "promote",
        _ => return not_found(),
    };
    let actor = approver.name.clone();
    let result = {
        let shared = Arc::clone(shared);
        let partner = partner.clone();
        registry(move || async move {
            let Some(portal) = shared.portal.as_ref() else {
                return Err(CommandError::NotFound(partner));
            };
            let mut store = shared.store.lock().await;
            let id = partner.as_str();
            let (outcome, message) = match action_name {
                "approve" => {
                    let days = portal.policy.max_validity_days;
                    let o = commands::approve_issuing(
                        &mut store,
                        &portal.policy,
                        &portal.signer,
                        &actor,
                        id,
                        days,
                    )
                    .await?;
                    let m = match o.event.reason.as_deref() {
                        Some(r) => format!("Approved {id} and issued its sandbox certificate ({r})."),
                        None => format!("Approved {id}."),
                    };
                    (o, m)
                }
                "reject" => {
                    let o = commands::reject(&mut store, &actor, id, &reason).await?;
                    (o, format!("Rejected {id}: {reason}."))
                }
                "revoke" => {
                    let o = commands::revoke(&mut store, &actor, id, None, &reason).await?;
                    (o, format!("Revoked the certificates of {id} ({reason})."))
                }
                _ => {
                    // Read at each promotion: the gateways keep adding to it.
                    let usage = match UsageFile::read(&portal.state.usage()) {
                        Ok(usage) => usage,
                        Err(e) => {
                            return Ok(Err(format!(
                                "The gateways' usage records cannot be read: {}",
                                crate::error_chain(&e)
                            )))
                        }
                    };
                    let evidence = RecordedUsage {
                        usage,
                        promotion: portal.promotion,
                    };
                    let o = commands::promote(
                        &mut store,
                        &actor,
                        id,
                        commands::DEFAULT_PROMOTE_MIN_DAYS,
                        &evidence,
                    )
                    .await?;
                    let m = format!(
                        "Promoted {id} to production. Evidence: {}.",
                        o.event.reason.as_deref().unwrap_or("-")
                    );
                    (o, m)
                }
            };
            let published = publish::publish(
                &mut store,
                &portal.signer,
                &portal.state,
                portal.crl_next_update,
            )
            .await;
            let message = match published {
                Ok(p) => format!(
                    "{message} Event #{} recorded; published CRL #{}.",
                    outcome.event.id, p.crl_number
                ),
                Err(e) => {
                    tracing::error!(error = %crate::error_chain(&e), "portal: publish failed");
                    format!(
                        "{message} Event #{} recorded, but publishing failed: run `certgate registry publish`.",
                        outcome.event.id
                    )
                }
            };
            Ok(Ok(Done {
                message,
                partner: outcome.event.partner,
            }))
        })
        .await
    };
    match result {
        Ok(Err(refusal)) => {
            audit_approver(action_name, ip, approver, &partner, "refused");
            page(
                StatusCode::CONFLICT,
                &pages::Outcome {
                    title: "Refused",
                    ok: false,
                    message: refusal,
                    back: "/portal/approver",
                },
            )
        }
        Ok(Ok(done)) => {
            audit_approver(action_name, ip, approver, &done.partner, "done");
            page(
                StatusCode::OK,
                &pages::Outcome {
                    title: "Done",
                    ok: true,
                    message: done.message,
                    back: "/portal/approver",
                },
            )
        }
        Err(e) => {
            let internal_error = matches!(e, CommandError::Store(_) | CommandError::Ca(_));
            audit_approver(
                action_name,
                ip,
                approver,
                &partner,
                if internal_error { "error" } else { "refused" },
            );
            if internal_error {
                return internal(&e);
            }
            page(
                StatusCode::CONFLICT,
                &pages::Outcome {
                    title: "Refused",
                    ok: false,
                    message: crate::error_chain(&e),
                    back: "/portal/approver",
                },
            )
        }
    }
}

// === answers ===

fn page(status: StatusCode, template: &impl askama::Template) -> Response<Full<Bytes>> {
    match template.render() {
        Ok(html) => {
            let mut response = Response::new(Full::new(Bytes::from(html)));
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "portal: a page did not render");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
        }
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn redirect(to: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SEE_OTHER;
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    response
}

fn forbidden(message: &str) -> Response<Full<Bytes>> {
    page(
        StatusCode::FORBIDDEN,
        &pages::Outcome {
            title: "Refused",
            ok: false,
            message: message.to_owned(),
            back: "/portal/",
        },
    )
}

fn not_found() -> Response<Full<Bytes>> {
    page(
        StatusCode::NOT_FOUND,
        &pages::Outcome {
            title: "Not found",
            ok: false,
            message: "There is nothing at this address.".to_owned(),
            back: "/portal/",
        },
    )
}

fn internal(e: &CommandError) -> Response<Full<Bytes>> {
    tracing::error!(error = %crate::error_chain(e), "portal: the registry failed");
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        &pages::Outcome {
            title: "Error",
            ok: false,
            message: "The registry could not be read or changed; try again later.".to_owned(),
            back: "/portal/",
        },
    )
}

/// The headers every portal answer carries.
fn secure(mut response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Pages carry certificates, CSRF tokens and approver lists: never cached.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// A `__Host-` cookie: only over HTTPS, for this host and every path, never to scripts, never
/// sent on a request another site starts.
fn cookie(name: &str, value: &str) -> String {
    format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict")
}

fn clear_cookie(name: &str) -> String {
    format!("{name}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The request's Host when it is a plain host name or address (it goes into shown commands).
fn host_of(headers: &http::HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("HOST")
        .to_owned()
}

fn cookies<B>(req: &Request<B>) -> HashMap<String, String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn audit(action: &str, ip: &str, actor: Option<&str>, partner: &str, outcome: &str) {
    tracing::info!(
        event = "onboarding",
        onboarding.action = action,
        onboarding.actor = %format_args!("portal {}", actor.unwrap_or(ip)),
        onboarding.source = ip,
        onboarding.partner = partner,
        onboarding.outcome = outcome,
        "portal"
    );
}

fn audit_approver(action: &str, ip: &str, approver: &Approver, partner: &str, outcome: &str) {
    tracing::info!(
        event = "onboarding",
        onboarding.action = action,
        onboarding.actor = approver.name.as_str(),
        onboarding.auth = approver.via.as_str(),
        onboarding.source = ip,
        onboarding.partner = partner,
        onboarding.outcome = outcome,
        "portal"
    );
}
