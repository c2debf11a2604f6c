//! A replica as a separate `navis-auth serve` process, for tests that must stop and continue a
//! whole process (SIGSTOP / SIGCONT). The process runs the code under test (see `exe`), never
//! `target/debug/navis-auth`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Replica {
    pub validator_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Every line the process wrote to stderr so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    child: Child,
    dir: tempfile::TempDir,
}

fn addr_after(line: &str, key: &str) -> Option<SocketAddr> {
    let start = line.find(key)? + key.len();
    line[start..].split_whitespace().next()?.parse().ok()
}

impl Replica {
    pub fn start(store_url: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--store",
            store_url,
            "--data-dir",
            dir.path().to_str().expect("utf-8"),
        ];
        args.extend_from_slice(extra);
        let mut child = crate::exe::navis_auth(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn navis-auth");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("navis-auth serving") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().expect("log lock").push(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("replica reports its addresses");
        // Plain logs write `validator=ADDR`, JSON logs `"validator":"ADDR"`.
        let flat = line.replace("\":\"", "=").replace('"', " ");
        let validator_addr = addr_after(&flat, "validator=").expect("validator addr");
        let admin_addr = addr_after(&flat, "admin=").expect("admin addr");
        let http_addr = addr_after(&flat, "http=").expect("http addr");
        Replica {
            validator_addr,
            admin_addr,
            http_addr,
            log,
            child,
            dir,
        }
    }

    /// The admin token the process generated in its data dir.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("admin-token"))
            .expect("admin token")
            .trim()
            .to_owned()
    }

    /// Stops the process with SIGTERM and waits for it.
    pub fn terminate(&mut self) {
        self.signal("-TERM");
        let _ = self.child.wait();
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    }

    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(mut s) = std::net::TcpStream::connect(self.http_addr) {
                use std::io::{Read, Write};
                let _ =
                    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                let mut buf = String::new();
                let _ = s.read_to_string(&mut buf);
                if buf.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("replica did not become ready");
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
