//! A real `redis-server` per test: its own free loopback port and temp dir, so a test can stop,
//! restart (with no data), pause and inspect it. Never the shared Redis on 6379.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind for a free port");
    l.local_addr().expect("addr").port()
}

impl RedisServer {
    /// Starts a fresh server; panics (fails the test) when `redis-server` is not installed.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = RedisServer {
            port: free_port(),
            dir,
            child: None,
        };
        // A free port can be taken by another test's process before redis-server binds it.
        for _ in 0..5 {
            if s.spawn() {
                return s;
            }
            s.port = free_port();
        }
        panic!("redis-server could not bind a free port in 5 attempts");
    }

    /// Whether the server answering on the port is this one (its own dir), not another test's.
    fn is_ours(&self) -> bool {
        let name = self.dir.path().file_name().and_then(|n| n.to_str());
        name.is_some_and(|n| self.cli(&["CONFIG", "GET", "dir"]).contains(n))
    }

    /// Starts the process; false when it exited at once (its port was taken).
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", self.dir.path().to_str().expect("utf-8")])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH (scripts/test installs Debian's redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && matches!(c.try_wait(), Ok(Some(_)))
            {
                self.child = None;
                return false;
            }
            if self.ping() && self.is_ours() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 16];
        matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
    }

    /// Stops the server (SIGKILL: as abrupt as a crash) and waits for it to go.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops it cleanly after writing its data to its own dir (`SHUTDOWN SAVE`).
    pub fn shutdown_save(&mut self) {
        let _ = self.cli(&["SHUTDOWN", "SAVE"]);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, loading what `shutdown_save` wrote.
    pub fn start_again(&mut self) {
        assert!(self.spawn(), "port {} was taken meanwhile", self.port);
    }

    /// Starts it again on the same port, empty (it keeps nothing on disk).
    pub fn restart_empty(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(self.dir.path().join("dump.rdb"));
        assert!(self.spawn(), "port {} was taken meanwhile", self.port);
    }

    /// Runs `redis-cli` against this server and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every key and the raw bytes of every value (strings, hashes, sets, zsets, streams).
    pub fn dump_everything(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for key in self.cli(&["--scan"]).lines().filter(|l| !l.is_empty()) {
            all.extend_from_slice(key.as_bytes());
            let kind = self.cli(&["TYPE", key]);
            let args: Vec<&str> = match kind.trim() {
                "string" => vec!["GET", key],
                "hash" => vec!["HGETALL", key],
                "set" => vec!["SMEMBERS", key],
                "zset" => vec!["ZRANGE", key, "0", "-1"],
                "stream" => vec!["XRANGE", key, "-", "+"],
                other => panic!("unexpected type {other} for {key}"),
            };
            let out = Command::new("redis-cli")
                .args(["-p", &self.port.to_string(), "--no-raw"])
                .args(&args)
                .output()
                .expect("redis-cli");
            all.extend_from_slice(&out.stdout);
            let raw = Command::new("redis-cli")
                .args(["-p", &self.port.to_string(), "--raw"])
                .args(&args)
                .output()
                .expect("redis-cli");
            all.extend_from_slice(&raw.stdout);
        }
        all
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
