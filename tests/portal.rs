//! The onboarding web portal: CSRF refusal, approver authentication (a partner certificate never
//! approves), security headers and cookie flags, and approvals landing in the event log with their
//! actor. `certgate serve` as the server, `curl` as the browser (with a cookie jar), `openssl` for
//! the CSR; the real-browser scenario drives Debian's Chromium through Selenium
//! (tests/browser/portal.py).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_types)]

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::pki::Ca;
use common::*;
use sha2::Digest as _;

const ADMIN_TOKEN: &str = "portal-admin-token-for-tests-only";

// === helpers ===

struct Setup {
    env: Env,
    config: PathBuf,
    listen: SocketAddr,
    api: SocketAddr,
    /// The approvers' CA and carol's certificate from it: (cert, key).
    carol: (PathBuf, PathBuf),
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The standard test configuration with a sandbox route, a lifecycle state folder and the
/// enrolment listener with the portal: approvers are certificates of a CA of their own, or
/// whoever holds the admin token. `approver_ca` replaces the approver CA file's name.
fn setup(upstream: SocketAddr, approver_ca: Option<&str>) -> Setup {
    let env = Env::new();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let approvers = Ca::root("approver CA");
    std::fs::write(env.path("approver-ca.pem"), &approvers.pem).unwrap();
    let carol = approvers
        .leaf("carol")
        .issue()
        .write(env.dir.path(), "carol");
    let hash = hex::encode(sha2::Sha256::digest(ADMIN_TOKEN.as_bytes()));
    let approver_ca = approver_ca.unwrap_or("approver-ca.pem");
    let extra = format!(
        "  - name: sandbox-orders\n    path_prefix: /sandbox/orders\n    scope: orders:read\n    upstream: sandbox\n    environment: sandbox\n\
         lifecycle:\n  state_dir: state\n  promotion:\n    min_calls: 3\nonboarding:\n  listen: \"{api}\"\n  per_address_per_minute: 200\n  portal:\n    approver_ca: {approver_ca}\n    admin_token_sha256: \"{hash}\"\n    gateway_url: \"https://localhost:{}\"\n",
        listen.port()
    );
    let yaml = env
        .config(upstream, &extra)
        .replacen(
            "upstreams:\n",
            &format!(
                "upstreams:\n  sandbox:\n    environment: sandbox\n    endpoints: [\"http://{upstream}\"]\n"
            ),
            1,
        )
        .replacen(
            "listen: \"127.0.0.1:0\"",
            &format!("listen: \"{listen}\""),
            1,
        );
    let config = write_file(env.dir.path(), "certgate.yaml", &yaml);
    Setup {
        env,
        config,
        listen,
        api,
        carol,
    }
}

impl Setup {
    fn ok(&self, args: &[&str]) -> String {
        common::cli::ok(&self.config, args)
    }

    /// `partner invite ID … --json` by alice; returns the token.
    fn invite(&self, id: &str) -> String {
        let spiffe = format!("spiffe://partners.example.com/{id}");
        let out = self.ok(&[
            "partner",
            "invite",
            id,
            "--owner",
            &format!("dev@{id}.example"),
            "--scopes",
            "orders:read",
            "--spiffe",
            &spiffe,
            "--json",
            "--actor",
            "alice",
        ]);
        let answer: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        answer["token"].as_str().unwrap().to_owned()
    }

    /// A P-256 key and CSR for partner `id` made by `openssl req`: (csr, key).
    fn csr(&self, id: &str) -> (PathBuf, PathBuf) {
        let key = self.env.path(&format!("{id}-key.pem"));
        let csr = self.env.path(&format!("{id}.csr"));
        common::openssl::partner_csr(
            &key,
            &csr,
            &format!("URI:spiffe://partners.example.com/{id}"),
        );
        (csr, key)
    }

    fn portal(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.api.port())
    }

    /// A browser: a cookie jar of its own, and optionally a client certificate.
    fn browser(&self, name: &str, cert: Option<(&Path, &Path)>) -> Browser {
        Browser {
            jar: self.env.path(&format!("{name}.jar")),
            ca: self.env.path("ca.pem"),
            cert: cert.map(|(c, k)| (c.to_owned(), k.to_owned())),
        }
    }

    fn history(&self, id: &str) -> String {
        self.ok(&["partner", "history", id])
    }
}

/// curl with a cookie jar, as a browser keeps cookies.
struct Browser {
    jar: PathBuf,
    ca: PathBuf,
    cert: Option<(PathBuf, PathBuf)>,
}

/// One answer: status, headers (lower-case names, every value), body.
#[derive(Debug)]
struct Page {
    status: u16,
    headers: HashMap<String, Vec<String>>,
    body: String,
}

impl Browser {
    fn curl(&self, url: &str) -> Command {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-i", "--cacert"])
            .arg(&self.ca)
            .arg("-b")
            .arg(&self.jar)
            .arg("-c")
            .arg(&self.jar);
        if let Some((cert, key)) = &self.cert {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        cmd.arg(url);
        cmd
    }

    /// The answer, or curl's error when the exchange failed (a refused handshake).
    fn try_run(&self, mut cmd: Command) -> Result<Page, String> {
        let out = cmd.output().unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let mut headers: HashMap<String, Vec<String>> = HashMap::new();
        for line in lines {
            let (k, v) = line.split_once(':').unwrap();
            headers
                .entry(k.trim().to_ascii_lowercase())
                .or_default()
                .push(v.trim().to_owned());
        }
        Ok(Page {
            status,
            headers,
            body: body.to_owned(),
        })
    }

    fn try_get(&self, url: &str) -> Result<Page, String> {
        self.try_run(self.curl(url))
    }

    fn get(&self, url: &str) -> Page {
        self.try_get(url).unwrap()
    }

    fn try_post(&self, url: &str, fields: &[(&str, &str)]) -> Result<Page, String> {
        let mut cmd = self.curl(url);
        for (k, v) in fields {
            cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        self.try_run(cmd)
    }

    fn post(&self, url: &str, fields: &[(&str, &str)]) -> Page {
        self.try_post(url, fields).unwrap()
    }
}

impl Page {
    /// The CSRF token of the page's forms.
    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token");
        let rest = &self.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map_or("", String::as_str)
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .get("set-cookie")?
            .iter()
            .find(|c| c.starts_with(&format!("{name}=")))
            .map(String::as_str)
    }
}

/// A `certgate serve` process, killed on drop; its log goes to a file.
struct Served {
    child: Child,
    log: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn serve(s: &Setup) -> Served {
    let log = s.env.path(&format!("serve-{}.log", free_port()));
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_certgate"))
        .args(["serve", "--config"])
        .arg(&s.config)
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let mut served = Served { child, log };
    let deadline = Instant::now() + Duration::from_secs(30);
    for addr in [s.listen, s.api] {
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(status) = served.child.try_wait().unwrap() {
                panic!("certgate exited ({status}): {}", served.log());
            }
            assert!(Instant::now() < deadline, "certgate did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    served
}

/// Enrols `id` through the portal's form in `browser`; returns the enrolment page.
fn enrol(s: &Setup, browser: &Browser, token: &str, csr: &Path) -> Page {
    let home = browser.get(&s.portal("/portal/"));
    let csr = std::fs::read_to_string(csr).unwrap();
    let answer = browser.post(
        &s.portal("/portal/enrol"),
        &[
            ("csrf", &home.csrf()),
            ("token", token),
            ("csr_pem", &csr),
            ("contact", "dev@example.com"),
        ],
    );
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert_eq!(answer.header("location"), "/portal/enrolment");
    browser.get(&s.portal("/portal/enrolment"))
}

fn dead_upstream() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9))
}

// === tests ===

#[test]
fn every_portal_answer_carries_strict_headers_and_cookies_are_locked_down() {
    let s = setup(dead_upstream(), None);
    s.ok(&["ca", "init"]);
    let token = s.invite("initech");
    let _served = serve(&s);
    let browser = s.browser("dev", None);

    let home = browser.get(&s.portal("/portal/"));
    assert_eq!(home.status, 200);
    let css = browser.get(&s.portal("/portal/static/portal.css"));
    let missing = browser.get(&s.portal("/portal/nothing-here"));
    assert_eq!(missing.status, 404);
    for page in [&home, &css, &missing] {
        let csp = page.header("content-security-policy");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(page.header("referrer-policy"), "no-referrer");
        assert_eq!(page.header("x-content-type-options"), "nosniff");
        assert_eq!(page.header("cache-control"), "no-store");
    }
    // No inline script or style anywhere: the CSP would block it.
    assert!(!home.body.contains("<script>") && !home.body.contains("style="));
    assert!(home.body.contains("<label for=\"token\">"), "{}", home.body);

    let flags = |c: &str| {
        assert!(c.starts_with("__Host-"), "{c}");
        for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(c.split("; ").any(|f| f == flag), "{c} lacks {flag}");
        }
    };
    flags(home.cookie("__Host-cg_csrf").expect("a CSRF cookie"));

    let (csr, _) = s.csr("initech");
    let form = browser.get(&s.portal("/portal/"));
    let csr_pem = std::fs::read_to_string(&csr).unwrap();
    let enrolled = browser.post(
        &s.portal("/portal/enrol"),
        &[
            ("csrf", &form.csrf()),
            ("token", &token),
            ("csr_pem", &csr_pem),
        ],
    );
    assert_eq!(enrolled.status, 303, "{}", enrolled.body);
    flags(
        enrolled
            .cookie("__Host-cg_enrolment")
            .expect("an enrolment cookie"),
    );

    let approver = s.browser("dave", None);
    let login = approver.get(&s.portal("/portal/approver"));
    let signed_in = approver.post(
        &s.portal("/portal/approver/login"),
        &[
            ("csrf", &login.csrf()),
            ("name", "dave"),
            ("token", ADMIN_TOKEN),
        ],
    );
    assert_eq!(signed_in.status, 303, "{}", signed_in.body);
    flags(
        signed_in
            .cookie("__Host-cg_approver")
            .expect("a session cookie"),
    );
}

#[test]
fn a_post_without_the_pages_csrf_token_changes_nothing() {
    let s = setup(dead_upstream(), None);
    s.ok(&["ca", "init"]);
    let token = s.invite("initech");
    let _served = serve(&s);
    let (csr, _) = s.csr("initech");
    let csr_pem = std::fs::read_to_string(&csr).unwrap();
    let browser = s.browser("dev", None);
    let home = browser.get(&s.portal("/portal/"));

    // A forged token, no token, another site's origin, and no CSRF cookie at all.
    let forged = browser.post(
        &s.portal("/portal/enrol"),
        &[
            ("csrf", &"0".repeat(64)),
            ("token", &token),
            ("csr_pem", &csr_pem),
        ],
    );
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(forged.body.contains("did not come from this portal"));
    let missing = browser.post(
        &s.portal("/portal/enrol"),
        &[("token", &token), ("csr_pem", &csr_pem)],
    );
    assert_eq!(missing.status, 403);
    let mut cross = browser.curl(&s.portal("/portal/enrol"));
    cross
        .args(["-H", "Origin: https://evil.example"])
        .arg("--data-urlencode")
        .arg(format!("csrf={}", home.csrf()))
        .arg("--data-urlencode")
        .arg(format!("token={token}"))
        .arg("--data-urlencode")
        .arg(format!("csr_pem={csr_pem}"));
    assert_eq!(browser.try_run(cross).unwrap().status, 403);
    let stranger = s.browser("stranger", None);
    let cookieless = stranger.post(
        &s.portal("/portal/enrol"),
        &[
            ("csrf", &home.csrf()),
            ("token", &token),
            ("csr_pem", &csr_pem),
        ],
    );
    assert_eq!(
        cookieless.status, 403,
        "another browser cannot reuse the token"
    );
    assert_eq!(s.history("initech").matches(" enrol by ").count(), 0);

    // An approver's action with a forged token is refused as well.
    let approver = s.browser("dave", None);
    let login = approver.get(&s.portal("/portal/approver"));
    approver.post(
        &s.portal("/portal/approver/login"),
        &[
            ("csrf", &login.csrf()),
            ("name", "dave"),
            ("token", ADMIN_TOKEN),
        ],
    );
    let page = approver.get(&s.portal("/portal/approver"));
    assert!(page.body.contains("initech"), "{}", page.body);
    let refused = approver.post(
        &s.portal("/portal/approver/reject"),
        &[
            ("csrf", "forged"),
            ("partner", "initech"),
            ("reason", "spam"),
        ],
    );
    assert_eq!(refused.status, 403);
    assert!(!s.history("initech").contains("reject"));

    // With the page's token, the same forms work.
    let page = enrol(&s, &browser, &token, &csr);
    assert!(page.body.contains("pending"), "{}", page.body);
    assert_eq!(s.history("initech").matches(" enrol by ").count(), 1);
}

#[test]
fn a_partner_certificate_can_never_approve() {
    let s = setup(dead_upstream(), None);
    s.ok(&["ca", "init"]);
    let initech = s.invite("initech");
    let hooli = s.invite("hooli");
    let _served = serve(&s);
    let (initech_csr, initech_key) = s.csr("initech");
    let (hooli_csr, _) = s.csr("hooli");
    enrol(&s, &s.browser("initech", None), &initech, &initech_csr);
    enrol(&s, &s.browser("hooli", None), &hooli, &hooli_csr);
    s.ok(&["partner", "approve", "initech", "--actor", "bob"]);
    let chain = s.env.path("initech-chain.pem");
    let dev = s.browser("initech", None);
    let download = dev.get(&s.portal("/portal/enrolment/certificate.pem"));
    assert_eq!(download.status, 200);
    std::fs::write(&chain, &download.body).unwrap();

    // initech's valid certificate gets through the listener's handshake (partners renew over
    // EST with it), but the portal does not take it for an approver: it is asked to sign in,
    // and an approval it posts, with a valid CSRF token, is refused and changes nothing.
    let partner = s.browser("partner-cert", Some((&chain, &initech_key)));
    let home = partner.get(&s.portal("/portal/approver"));
    assert!(home.body.contains("Admin token"), "{}", home.body);
    let refused = partner.post(
        &s.portal("/portal/approver/approve"),
        &[("csrf", &home.csrf()), ("partner", "hooli")],
    );
    assert_eq!(refused.status, 403);
    // Without a certificate or a session, the approver's actions are refused too.
    let anonymous = s.browser("anonymous", None);
    let home = anonymous.get(&s.portal("/portal/approver"));
    assert!(home.body.contains("Admin token"), "{}", home.body);
    let refused = anonymous.post(
        &s.portal("/portal/approver/approve"),
        &[("csrf", &home.csrf()), ("partner", "hooli")],
    );
    assert_eq!(refused.status, 403);
    assert!(s.ok(&["partner", "show", "hooli"]).contains("pending"));
    assert!(!s.history("hooli").contains("approve"));

    // An approver CA that issues partners is refused at start.
    let bad = setup(dead_upstream(), Some("state/ca/ca.pem"));
    bad.ok(&["ca", "init"]);
    let out = Command::new(env!("CARGO_BIN_EXE_certgate"))
        .args(["serve", "--config"])
        .arg(&bad.config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        text.contains("a partner certificate must never approve"),
        "{text}"
    );
}

#[test]
fn approvals_in_the_portal_land_in_the_event_log_with_their_actor() {
    let s = setup(dead_upstream(), None);
    s.ok(&["ca", "init"]);
    let initech = s.invite("initech");
    let hooli = s.invite("hooli");
    let served = serve(&s);
    let (initech_csr, _) = s.csr("initech");
    let (hooli_csr, _) = s.csr("hooli");
    let dev = s.browser("initech", None);
    enrol(&s, &dev, &initech, &initech_csr);
    enrol(&s, &s.browser("hooli", None), &hooli, &hooli_csr);

    // carol, by her approver certificate: the pending request shows the CSR's details.
    let carol = s.browser("carol", Some((&s.carol.0, &s.carol.1)));
    let page = carol.get(&s.portal("/portal/approver"));
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("<strong id=\"who\">carol</strong>"),
        "{}",
        page.body
    );
    assert!(page
        .body
        .contains("URI:spiffe://partners.example.com/initech"));
    assert!(page.body.contains("ECDSA P-256"));
    let done = carol.post(
        &s.portal("/portal/approver/approve"),
        &[("csrf", &page.csrf()), ("partner", "initech")],
    );
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Approved initech"), "{}", done.body);
    let history = s.history("initech");
    assert!(history.contains("approve by carol"), "{history}");
    let log = served.log();
    assert!(
        log.lines().any(|l| l.contains("portal")
            && l.contains("approve")
            && l.contains("carol")
            && l.contains("certificate")),
        "{log}"
    );
    let status = dev.get(&s.portal("/portal/enrolment"));
    assert!(
        status.body.contains("id=\"status\">issued<"),
        "{}",
        status.body
    );
    assert!(status.body.contains("Download certificate"));

    // dave, by the admin token: a rejection with its reason.
    let dave = s.browser("dave", None);
    let login = dave.get(&s.portal("/portal/approver"));
    let wrong = dave.post(
        &s.portal("/portal/approver/login"),
        &[
            ("csrf", &login.csrf()),
            ("name", "dave"),
            ("token", "guess"),
        ],
    );
    assert_eq!(wrong.status, 401);
    dave.post(
        &s.portal("/portal/approver/login"),
        &[
            ("csrf", &login.csrf()),
            ("name", "dave"),
            ("token", ADMIN_TOKEN),
        ],
    );
    let page = dave.get(&s.portal("/portal/approver"));
    let done = dave.post(
        &s.portal("/portal/approver/reject"),
        &[
            ("csrf", &page.csrf()),
            ("partner", "hooli"),
            ("reason", "unknown company"),
        ],
    );
    assert_eq!(done.status, 200, "{}", done.body);
    let history = s.history("hooli");
    assert!(
        history.contains("reject by dave: unknown company"),
        "{history}"
    );
    let page = dave.get(&s.portal("/portal/approver/partners/hooli"));
    assert!(page.body.contains("unknown company"), "{}", page.body);
    s.ok(&["registry", "verify"]);
    assert!(
        !served.log().contains(ADMIN_TOKEN),
        "the token is never logged"
    );
}

/// The whole self-service path in Debian's Chromium (tests/browser/portal.py): invite (CLI) →
/// enrol in the browser with an `openssl req` CSR → approve in the approver's view → download →
/// curl through the gateway to a real upstream on the sandbox route → promotion refused with its
/// reason until the sandbox call threshold is met, then granted → revoke in the portal → curl refused. Screenshots of every page go to
/// `target/portal-screenshots/`.
#[test]
fn the_self_service_path_works_in_a_real_browser() {
    let (_rt, upstream) = std::thread::spawn(|| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let up = rt.block_on(Upstream::start());
        (rt, up)
    })
    .join()
    .unwrap();
    let s = setup(upstream.addr, None);
    s.ok(&["ca", "init"]);
    let token = s.invite("initech");
    let (csr, key) = s.csr("initech");
    let served = serve(&s);

    // The binary lives in <target>/debug/: the screenshots go beside it, under <target>.
    let target = Path::new(env!("CARGO_BIN_EXE_certgate"))
        .parent()
        .and_then(Path::parent)
        .unwrap();
    let screenshots = target.join("portal-screenshots");
    let _ = std::fs::remove_dir_all(&screenshots);
    let params = serde_json::json!({
        "portal": format!("https://localhost:{}", s.api.port()),
        "gateway": format!("https://localhost:{}", s.listen.port()),
        "server_ca": s.env.path("ca.pem"),
        "token": token,
        "csr": csr,
        "key": key,
        "admin_token": ADMIN_TOKEN,
        // `lifecycle.promotion.min_calls: 3` above: refused until three sandbox calls are counted.
        "min_calls": 3,
        "refusal": "of 3 successful sandbox calls",
        "screenshots": screenshots,
        "out": s.env.dir.path(),
    });
    let params_file = write_file(s.env.dir.path(), "browser.json", &params.to_string());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/portal.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg("--params")
        .arg(&params_file)
        .spawn()
        .unwrap_or_else(|e| panic!("python3 {}: {e}", script.display()));
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the browser scenario did not finish within 240 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        status.success(),
        "the browser scenario failed ({status}); certgate's log:\n{}",
        served.log()
    );

    // What the browser did is in the event log, each change with its actor.
    let history = s.history("initech");
    for line in [
        "enrol by portal 127.0.0.1",
        "approve by carol",
        "promote by carol",
        "revoke by carol: keyCompromise",
    ] {
        assert!(history.contains(line), "{line}:\n{history}");
    }
    assert!(
        history.contains("needed 3 successful per scope"),
        "the promotion's evidence is in its event:\n{history}"
    );
    assert!(
        upstream.count() >= 2,
        "the upstream saw the sandbox and production calls"
    );
    let shots = std::fs::read_dir(&screenshots).unwrap().count();
    assert!(
        shots >= 10,
        "{shots} screenshots in {}",
        screenshots.display()
    );
    s.ok(&["registry", "verify"]);
}

#[test]
fn portal_settings_are_checked_where_they_are_written() {
    let env = Env::new();
    let check = |portal: &str| {
        let extra = format!(
            "lifecycle:\n  state_dir: state\nonboarding:\n  listen: \"127.0.0.1:0\"\n  portal:\n{portal}"
        );
        let config = write_file(
            env.dir.path(),
            "certgate.yaml",
            &env.config(dead_upstream(), &extra),
        );
        let out = Command::new(env!("CARGO_BIN_EXE_certgate"))
            .arg("check")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, text) = check("    gateway_url: \"https://api.example.com\"\n");
    assert!(
        !ok && text.contains("onboarding.portal") && text.contains("no approver could sign in"),
        "{text}"
    );
    let (ok, text) = check("    admin_token_sha256: \"not-a-hash-but-maybe-the-token\"\n");
    assert!(
        !ok && text.contains("onboarding.portal.admin_token_sha256")
            && text.contains("expected 64 hex digits"),
        "{text}"
    );
    assert!(!text.contains("not-a-hash-but-maybe-the-token"), "{text}");
    let (ok, text) = check(&format!(
        "    admin_token_sha256: \"{}\"\n    admin_token_file: token.txt\n",
        "a".repeat(64)
    ));
    assert!(!ok && text.contains("not both"), "{text}");
    let (ok, text) = check(&format!(
        "    admin_token_sha256: \"{}\"\n    approvers: [carol]\n",
        "a".repeat(64)
    ));
    assert!(
        !ok && text.contains("onboarding.portal.approvers") && text.contains("set `approver_ca`"),
        "{text}"
    );
    let (ok, text) = check(&format!(
        "    admin_token_sha256: \"{}\"\n    gateway_url: \"http://api.example.com\"\n",
        "a".repeat(64)
    ));
    assert!(
        !ok && text.contains("onboarding.portal.gateway_url"),
        "{text}"
    );
    let valid = format!("    admin_token_sha256: \"{}\"\n", "a".repeat(64));
    let (_, text) = check(&valid);
    assert!(!text.contains("onboarding"), "{text}");
    common::cli::ok(&env.path("certgate.yaml"), &["ca", "init"]);
    let (ok, text) = check(&valid);
    assert!(ok, "{text}");
}
