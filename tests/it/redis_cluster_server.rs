//! A real 3-master Redis Cluster per test: three `redis-server --cluster-enabled yes` processes on
//! free loopback ports (client and bus ports both picked free), each in its own temp dir, joined
//! with `redis-cli --cluster create`. A node can be killed (SIGKILL) and started again on the same
//! port and dir: its `nodes.conf` puts it back in the cluster and its append-only file (fsync on
//! every write) brings its data back. Never the shared Redis on 6379.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ClusterNode {
    pub port: u16,
    bus_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

pub struct RedisCluster {
    pub nodes: Vec<ClusterNode>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind for a free port");
    l.local_addr().expect("addr").port()
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli must be on PATH (scripts/test installs Debian's redis-tools)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl ClusterNode {
    /// Starts the process; false when it exited at once (a port was taken).
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--cluster-port", &self.bus_port.to_string()])
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            // Fail a node after 1 s; keep serving the other slots while one master is down.
            .args(["--cluster-node-timeout", "1000"])
            .args(["--cluster-require-full-coverage", "no"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--dir", self.dir.path().to_str().expect("utf-8")])
            .args(["--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH (scripts/test installs Debian's redis-server)");
        self.child = Some(child);
        let name = self.dir.path().file_name().and_then(|n| n.to_str());
        let name = name.expect("utf-8").to_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && matches!(c.try_wait(), Ok(Some(_)))
            {
                self.child = None;
                return false;
            }
            // Answering, and from its own dir (not another test's server on a reused port).
            if self.cli(&["PING"]).starts_with("PONG")
                && self.cli(&["CONFIG", "GET", "dir"]).contains(&name)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("cluster node on port {} did not answer PING", self.port);
    }

    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// The slot ranges this node serves, from its own line of `CLUSTER NODES`.
    fn slots(&self) -> Vec<(u16, u16)> {
        let nodes = self.cli(&["CLUSTER", "NODES"]);
        let Some(me) = nodes.lines().find(|l| l.contains("myself")) else {
            return Vec::new();
        };
        me.split_whitespace()
            .skip(8)
            .filter(|r| !r.starts_with('['))
            .filter_map(|r| match r.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => r.parse().ok().map(|s| (s, s)),
            })
            .collect()
    }
}

impl RedisCluster {
    /// Starts three masters, creates the cluster and waits until every node reports it ok.
    pub fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            let mut n = ClusterNode {
                port: free_port(),
                bus_port: free_port(),
                dir: tempfile::tempdir().expect("tempdir"),
                child: None,
            };
            // A free port can be taken by another test's process before redis-server binds it.
            let mut attempts = 0;
            while !n.spawn() {
                attempts += 1;
                assert!(
                    attempts < 5,
                    "no free ports for a cluster node in 5 attempts"
                );
                (n.port, n.bus_port) = (free_port(), free_port());
            }
            nodes.push(n);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = RedisCluster { nodes };
        assert!(c.wait_ok(Duration::from_secs(20)), "cluster_state:ok");
        c
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// Waits until every running node reports `cluster_state:ok` and sees all 16384 slots.
    pub fn wait_ok(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let ok = self.nodes.iter().all(|n| {
                let info = n.cli(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
            });
            if ok {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn slot(&self, key: &str) -> u16 {
        self.nodes[0]
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT")
    }

    /// The index of the node serving `key`'s slot.
    pub fn owner(&self, key: &str) -> usize {
        let slot = self.slot(key);
        self.nodes
            .iter()
            .position(|n| n.slots().iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .expect("every slot has an owner")
    }

    /// Kills node `i` (SIGKILL: as abrupt as a crash).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `i` again on its port and dir (its nodes.conf and append-only file).
    pub fn restart(&mut self, i: usize) {
        let port = self.nodes[i].port;
        assert!(self.nodes[i].spawn(), "port {port} was taken meanwhile");
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
