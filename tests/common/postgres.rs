//! A real PostgreSQL server for the tests that run the registry on it.
//!
//! `CERTGATE_TEST_POSTGRES_URL` (a user that may `CREATE DATABASE`) is used when set. Otherwise
//! the first test that asks starts a throwaway cluster from the installed server binaries
//! (`initdb` and `postgres` in PATH or in `/usr/lib/postgresql/*/bin`): `initdb` into a temp
//! dir, `postgres` on a free loopback port. PostgreSQL refuses to run as root, so as root both
//! run as the `postgres` user (or `nobody`) through `setpriv`. A small shell supervisor started
//! beside the server waits for this test binary to exit, then stops the server by its PID and
//! removes the temp dir. Every test gets a database of its own, dropped when it ends.
//!
//! When neither works, every PostgreSQL test fails and says what to install: a test that
//! silently skipped its backend would look like a pass.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const HOW_TO_FIX: &str = "install the PostgreSQL server and client (Debian: `apt-get install postgresql`, which provides initdb, postgres and psql) or set CERTGATE_TEST_POSTGRES_URL=postgres://USER@127.0.0.1:PORT/postgres (a user that may CREATE DATABASE)";

/// A database of its own for one test, dropped when it goes out of scope.
pub struct PgDatabase {
    /// `postgres://…/<name>`: what `lifecycle.database` is set to.
    pub url: String,
    name: String,
}

/// The server every test of this binary shares: its admin URL and its `psql`.
struct Server {
    url: url::Url,
    psql: PathBuf,
}

impl PgDatabase {
    /// Creates an empty database on the shared server (starting it on first use).
    pub fn create() -> PgDatabase {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let server = server();
        let name = format!(
            "certgate_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        server.sql(server.url.as_str(), &format!("CREATE DATABASE {name}"));
        let mut url = server.url.clone();
        url.set_path(&name);
        PgDatabase {
            url: url.to_string(),
            name,
        }
    }

    /// Runs SQL in this database with `psql`: rows as `a|b`, one a line.
    pub fn psql(&self, sql: &str) -> String {
        server().sql(&self.url, sql)
    }

    /// An interactive `psql` session on this database, fed through its stdin and named
    /// `application_name` in `pg_stat_activity`: a transaction a test holds open while other
    /// processes wait on it. The caller kills it.
    pub fn session(&self, application_name: &str) -> std::process::Child {
        Command::new(&server().psql)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &self.url])
            .env("PGAPPNAME", application_name)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", server().psql.display()))
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let server = server();
        // Best effort: a failed drop must not turn a passing test into a panic while unwinding.
        let _ = server.run(
            server.url.as_str(),
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

impl Server {
    fn run(&self, url: &str, sql: &str) -> Output {
        Command::new(&self.psql)
            .args(["-X", "-q", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1"])
            .args(["-d", url, "-c", sql])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.psql.display()))
    }

    fn sql(&self, url: &str, sql: &str) -> String {
        let out = self.run(url, sql);
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
    match SERVER.get_or_init(start) {
        Ok(server) => server,
        Err(why) => panic!("PostgreSQL tests need a server: {why}; {HOW_TO_FIX}"),
    }
}

fn start() -> Result<Server, String> {
    if let Ok(given) = std::env::var("CERTGATE_TEST_POSTGRES_URL") {
        let url = url::Url::parse(&given)
            .map_err(|e| format!("CERTGATE_TEST_POSTGRES_URL is not a URL ({e})"))?;
        let psql = find("psql").ok_or("no psql found")?;
        return Ok(Server { url, psql });
    }
    let initdb = find("initdb").ok_or("no initdb found in PATH or /usr/lib/postgresql/*/bin")?;
    let bin = initdb.parent().map(Path::to_owned).unwrap_or_default();
    let postgres = [bin.join("postgres")]
        .into_iter()
        .find(|p| p.is_file())
        .or_else(|| find("postgres"))
        .ok_or("no postgres binary beside initdb")?;
    let psql = find("psql").ok_or("no psql found")?;

    let dir = tempfile::Builder::new()
        .prefix("certgate-pg-")
        .tempdir()
        .map_err(|e| format!("cannot make a temp dir: {e}"))?
        .keep();
    let data = dir.join("data");
    // As root, run the server as an unprivileged user that owns the temp dir.
    let as_user: Vec<String> = match unprivileged_user()? {
        None => Vec::new(),
        Some((uid, gid)) => {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| format!("cannot hand {} to uid {uid}: {e}", dir.display()))?;
            vec![
                "setpriv".into(),
                format!("--reuid={uid}"),
                format!("--regid={gid}"),
                "--clear-groups".into(),
                "--".into(),
            ]
        }
    };
    let init = as_user_command(&as_user, &initdb)
        .arg("-D")
        .arg(&data)
        .args(["-U", "certgate", "-A", "trust", "-E", "UTF8", "--locale=C"])
        .arg("--no-sync")
        .output()
        .map_err(|e| format!("cannot run initdb: {e}"))?;
    if !init.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        ));
    }

    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free loopback port: {e}"))?
        .port();
    let log = dir.join("postgres.log");
    let mut server: Vec<String> = as_user.clone();
    server.extend([
        postgres.display().to_string(),
        "-D".into(),
        data.display().to_string(),
        "-p".into(),
        port.to_string(),
        "-c".into(),
        "listen_addresses=127.0.0.1".into(),
        "-c".into(),
        format!("unix_socket_directories={}", dir.display()),
        // A throwaway cluster: durability across a machine crash is not what is tested.
        "-c".into(),
        "fsync=off".into(),
        "-c".into(),
        "max_connections=200".into(),
    ]);
    // The supervisor: start the server, wait for this process to end, stop the server by its
    // PID (fast shutdown), remove the temp dir.
    let script = r#"
parent=$1; dir=$2; log=$3; shift 3
"$@" >"$log" 2>&1 &
pg=$!
echo "$pg" >"$dir/server.pid"
while kill -0 "$parent" 2>/dev/null && kill -0 "$pg" 2>/dev/null; do sleep 1; done
kill -INT "$pg" 2>/dev/null
wait "$pg"
rm -rf "$dir"
"#;
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(std::process::id().to_string())
        .arg(&dir)
        .arg(&log)
        .args(&server)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the server's supervisor: {e}"))?;

    let url = url::Url::parse(&format!("postgres://certgate@127.0.0.1:{port}/postgres"))
        .map_err(|e| e.to_string())?;
    let server = Server { url, psql };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let probe = server.run(server.url.as_str(), "SELECT 1");
        if probe.status.success() {
            return Ok(server);
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!(
                "postgres on 127.0.0.1:{port} did not accept connections within 60 s: {}\n{log}",
                String::from_utf8_lossy(&probe.stderr)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `program`, run through `as_user` (`setpriv …`) when that is not empty.
fn as_user_command(as_user: &[String], program: &Path) -> Command {
    match as_user.split_first() {
        None => Command::new(program),
        Some((setpriv, args)) => {
            let mut cmd = Command::new(setpriv);
            cmd.args(args).arg(program);
            cmd
        }
    }
}

/// `Some((uid, gid))` of the user to run the server as when this process is root.
fn unprivileged_user() -> Result<Option<(u32, u32)>, String> {
    use std::os::unix::fs::MetadataExt;
    let me = std::fs::metadata("/proc/self").map_err(|e| format!("/proc/self: {e}"))?;
    if me.uid() != 0 {
        return Ok(None);
    }
    let id = |flag: &str, user: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, user]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    for user in ["postgres", "nobody"] {
        if let (Some(uid), Some(gid)) = (id("-u", user), id("-g", user)) {
            return Ok(Some((uid, gid)));
        }
    }
    Err(
        "running as root, and neither a `postgres` nor a `nobody` user exists to run the server as"
            .into(),
    )
}

/// A PostgreSQL program: in PATH, else in the newest `/usr/lib/postgresql/*/bin`.
fn find(program: &str) -> Option<PathBuf> {
    let in_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    });
    in_path.or_else(|| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse().ok()?;
                Some((version, e.path().join("bin").join(program)))
            })
            .filter(|(_, p)| p.is_file())
            .collect();
        versions.sort();
        versions.pop().map(|(_, p)| p)
    })
}
