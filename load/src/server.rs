//! `--spawn-server`: runs `navis-auth serve` as a child process on 127.0.0.1:0 ports with a
//! temporary data dir, learns its bound addresses from its log line, reads the admin token it
//! generated, and kills it (and removes the dir) at the end.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};

/// How long the child may take to log that it is serving.
const STARTUP: Duration = Duration::from_secs(30);
/// Log lines kept to explain a failure.
const TAIL: usize = 30;

/// A running child server.
pub struct Spawned {
    child: Child,
    dir: PathBuf,
    /// Validator address (`127.0.0.1:port`).
    pub validator: String,
    /// TokenAdmin address.
    pub admin: String,
    /// HTTP address (health, metrics).
    pub http: String,
    /// The admin token it generated into its data dir.
    pub admin_token: String,
    tail: Arc<Mutex<VecDeque<String>>>,
}

/// The binary to run: `--server-bin`, else `navis-auth` next to this binary.
///
/// # Errors
/// When it does not exist, with what to do about it.
pub fn binary(explicit: Option<PathBuf>) -> Result<PathBuf> {
    let path = match explicit {
        Some(p) => p,
        None => std::env::current_exe()
            .context("cannot locate this binary")?
            .with_file_name(format!("navis-auth{}", std::env::consts::EXE_SUFFIX)),
    };
    if !path.is_file() {
        bail!(
            "the navis-auth server binary is not at {}: run `cargo build --release` first (same profile as this harness), or pass --server-bin PATH",
            path.display()
        );
    }
    Ok(path)
}

/// Removes ANSI colour sequences (in case the child decides its stderr is a terminal).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `(validator, admin, http)` from the `navis-auth serving validator=… admin=… http=…` line.
pub fn parse_serving(line: &str) -> Option<(String, String, String)> {
    let line = strip_ansi(line);
    let rest = &line[line.find("navis-auth serving")?..];
    let field = |name: &str| {
        rest.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(str::to_owned)
    };
    Some((field("validator=")?, field("admin=")?, field("http=")?))
}

/// Starts the server and waits until it serves.
///
/// # Errors
/// When it cannot start, exits early, or does not serve within 30 s (its last log lines are
/// included).
pub fn spawn(bin: &PathBuf) -> Result<Spawned> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir =
        std::env::temp_dir().join(format!("navis-auth-load-{}-{nanos:x}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut cmd = Command::new(bin);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .args([
        "--http-listen",
        "127.0.0.1:0",
        "--log",
        "info",
        "--data-dir",
    ])
    .arg(&dir)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    // The child must use its own temp store and token, whatever this shell exports.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("NAVIS_AUTH_") {
            cmd.env_remove(k);
        }
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(anyhow!("cannot start {}: {e}", bin.display()));
        }
    };
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow!("no stderr pipe"))?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let (tx, rx) = mpsc::channel();
    {
        let tail = Arc::clone(&tail);
        // Keeps draining the pipe for the child's whole life so it never blocks on logging.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addrs) = parse_serving(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(addrs);
                }
                let mut t = tail.lock().unwrap_or_else(PoisonError::into_inner);
                if t.len() == TAIL {
                    t.pop_front();
                }
                t.push_back(strip_ansi(&line));
            }
        });
    }
    let mut s = Spawned {
        child,
        dir,
        validator: String::new(),
        admin: String::new(),
        http: String::new(),
        admin_token: String::new(),
        tail,
    };
    let (validator, admin, http) = match rx.recv_timeout(STARTUP) {
        Ok(a) => a,
        Err(_) => bail!(
            "navis-auth did not report serving within {}s ({}); its last log lines:\n{}",
            STARTUP.as_secs(),
            s.exit_status().unwrap_or_else(|| "still running".into()),
            s.tail()
        ),
    };
    s.validator = validator;
    s.admin = admin;
    s.http = http;
    let token_file = s.dir.join("admin-token");
    s.admin_token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("read {}", token_file.display()))?
        .trim()
        .to_owned();
    Ok(s)
}

impl Spawned {
    /// `Some(description)` when the child has exited.
    pub fn exit_status(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(st)) => Some(format!("exited: {st}")),
            Ok(None) => None,
            Err(e) => Some(format!("unknown state: {e}")),
        }
    }

    /// Its last log lines.
    pub fn tail(&self) -> String {
        let t = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        t.iter().map(|l| format!("  | {l}\n")).collect()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_bound_addresses() {
        let plain = "2026-12-04T20:00:00.000000Z  INFO navis_auth::server: navis-auth serving validator=127.0.0.1:40001 admin=127.0.0.1:40002 http=127.0.0.1:40003";
        assert_eq!(
            parse_serving(plain),
            Some((
                "127.0.0.1:40001".into(),
                "127.0.0.1:40002".into(),
                "127.0.0.1:40003".into()
            ))
        );
        let coloured = "\u{1b}[32m INFO\u{1b}[0m navis-auth serving \u{1b}[3mvalidator\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:1 \u{1b}[3madmin\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:2 \u{1b}[3mhttp\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:3";
        assert_eq!(
            parse_serving(coloured).map(|a| a.2),
            Some("127.0.0.1:3".into())
        );
        assert_eq!(parse_serving("INFO something else"), None);
    }
}
