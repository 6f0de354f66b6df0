//! A Redis server of the test's own: `redis-server` on 127.0.0.1, on a free port, with
//! persistence off, killed when dropped. No test touches a Redis it did not start.
//!
//! `redis-server` is found on the `PATH`; when it is missing and the tests run as root, it is
//! installed from Debian's packages (`apt-get install -y redis-server`, after an
//! `apt-get update` if the first try fails).
//!
//! Shared by the tests (`tests/cluster.rs`) and the cluster benchmark (`cli/benches/cluster.rs`).

// Shared with the benchmark, which uses only part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A directory of the server's own (its log), removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("wasmpool-redis-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where `program` is on the `PATH`, if it is.
fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Runs `apt-get` with `args`, quietly; whether it succeeded.
fn apt_get(args: &[&str]) -> bool {
    Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The `redis-server` binary, installed first if it is missing and we may install it.
pub fn redis_server_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = on_path("redis-server") {
            return p;
        }
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "redis-server is not installed and these tests are not root, so they cannot \
             install it: run `apt-get install -y redis-server`"
        );
        if !apt_get(&["install", "-y", "redis-server"]) {
            assert!(apt_get(&["update"]), "apt-get update failed");
            assert!(
                apt_get(&["install", "-y", "redis-server"]),
                "apt-get install -y redis-server failed"
            );
        }
        on_path("redis-server").expect("redis-server is not on the PATH after installing it")
    })
    .clone()
}

/// A free TCP port on 127.0.0.1 (free when asked: the server may still lose a race for it,
/// which `RedisServer::start` retries).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Sends one inline command and reads what comes back (enough for `PING`).
fn inline(port: u16, command: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().ok()?,
        Duration::from_millis(200),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // The first read waits for the reply; the rest take whatever follows it quickly.
    let n = s.read(&mut buf).ok()?;
    out.extend_from_slice(&buf[..n]);
    s.set_read_timeout(Some(Duration::from_millis(50))).ok()?;
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// A `redis-server` this test started; killed (and its directory removed) when dropped.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its files (log); removed with it.
    dir: TempDir,
    /// Its flags beyond those every server of the tests gets.
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port of 127.0.0.1 with persistence off, and waits until it
    /// answers `PING`.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// As [`start`](RedisServer::start), with more flags.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let bin = redis_server_binary();
        let dir = TempDir::new();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for _ in 0..5 {
            let port = free_port();
            let mut child = spawn(&bin, port, &dir.0, &extra);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if inline(port, "PING").is_some_and(|r| r.starts_with("+PONG")) {
                    return RedisServer {
                        child: Some(child),
                        port,
                        dir,
                        extra,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // lost the race for the port: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "redis-server did not start; its log: {}",
            std::fs::read_to_string(dir.0.join("redis.log")).unwrap_or_default()
        );
    }

    /// Its URL, `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one inline command (no arguments with spaces) and returns the raw reply.
    pub fn command(&self, command: &str) -> String {
        inline(self.port, command).unwrap_or_default()
    }

    /// The keys that match `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        self.command(&format!("KEYS {pattern}"))
            .lines()
            .filter(|l| !l.starts_with(['*', '$']))
            .map(str::to_string)
            .collect()
    }

    /// The milliseconds `key` has left to live (negative: none, or no key).
    pub fn pttl(&self, key: &str) -> i64 {
        let reply = self.command(&format!("PTTL {key}"));
        reply.trim().trim_start_matches(':').parse().unwrap_or(-3)
    }

    /// Kills the server and starts a new one on the same port, with no data: a Redis
    /// restarted without persistence.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    /// Starts the server again on its port, after a [`kill`](RedisServer::kill), and waits
    /// until it answers: with no data, or with what a `SAVE` before the kill wrote in its
    /// directory (a Redis restarted with its data, as persistence would keep it).
    pub fn start_again(&mut self) {
        let bin = redis_server_binary();
        let mut child = spawn(&bin, self.port, &self.dir.0, &self.extra);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !inline(self.port, "PING").is_some_and(|r| r.starts_with("+PONG")) {
            assert!(Instant::now() < deadline, "redis-server did not restart");
            if let Ok(Some(_)) = child.try_wait() {
                child = spawn(&bin, self.port, &self.dir.0, &self.extra);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// Sends `sig` to the server (`SIGSTOP`: it answers nothing, its connections stay open,
    /// until `SIGCONT`).
    pub fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            // SAFETY: a signal to a child process of this test.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
    }

    /// Kills the server now (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(bin: &Path, port: u16, dir: &Path, extra: &[String]) -> Child {
    Command::new(bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .args(["--daemonize", "no", "--protected-mode", "yes"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start redis-server")
}

/// A Redis Cluster of the test's own on 127.0.0.1: `masters` masters, the 16384 slots split
/// evenly among them, and maybe a replica of each; killed when dropped.
pub struct RedisCluster {
    /// The masters as started (`..masters`), then the replica of each, in the same order.
    pub nodes: Vec<RedisServer>,
    masters: usize,
}

impl RedisCluster {
    /// Starts `n` masters (no replicas), gives each its slots, introduces them, and waits
    /// until every node says the cluster is up.
    pub fn start(n: usize) -> RedisCluster {
        RedisCluster::start_nodes(n, false, &[])
    }

    /// As [`start`](RedisCluster::start), with a replica of each master (`nodes[n + i]` of
    /// `nodes[i]`, in sync when this returns) and a `cluster-node-timeout` of a second: a
    /// master killed is failed over to its replica within a few seconds.
    pub fn start_with_replicas(n: usize) -> RedisCluster {
        RedisCluster::start_nodes(n, true, &["--cluster-node-timeout", "1000"])
    }

    fn start_nodes(n: usize, replicas: bool, extra: &[&str]) -> RedisCluster {
        assert!(n > 0);
        let mut flags = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ];
        flags.extend_from_slice(extra);
        let all = if replicas { 2 * n } else { n };
        let nodes: Vec<RedisServer> = (0..all).map(|_| RedisServer::start_with(&flags)).collect();
        for (i, node) in nodes[..n].iter().enumerate() {
            let (first, last) = (16384 * i / n, 16384 * (i + 1) / n - 1);
            let reply = node.command(&format!("CLUSTER ADDSLOTSRANGE {first} {last}"));
            assert!(reply.starts_with("+OK"), "ADDSLOTSRANGE: {reply}");
        }
        for node in &nodes[1..] {
            let reply = nodes[0].command(&format!("CLUSTER MEET 127.0.0.1 {}", node.port));
            assert!(reply.starts_with("+OK"), "MEET: {reply}");
        }
        let cluster = RedisCluster { nodes, masters: n };
        cluster.wait_until("did not come up", |node| {
            let info = node.command("CLUSTER INFO");
            info.contains("cluster_state:ok")
                && info.contains(&format!("cluster_known_nodes:{all}"))
        });
        if replicas {
            for i in 0..n {
                let master = cluster.id(i);
                let reply = cluster.nodes[n + i].command(&format!("CLUSTER REPLICATE {master}"));
                assert!(reply.starts_with("+OK"), "REPLICATE: {reply}");
            }
            cluster.wait_until("replicas did not get in sync", |node| {
                let info = node.command("INFO replication");
                if info.contains("role:master") {
                    info.contains("connected_slaves:1")
                } else {
                    info.contains("master_link_status:up")
                        && info.contains("master_sync_in_progress:0")
                }
            });
        }
        cluster
    }

    /// Waits up to 30 s until `ready` holds of every node, else panics with `what`.
    fn wait_until(&self, what: &str, ready: impl Fn(&RedisServer) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.nodes.iter().all(&ready) {
            assert!(Instant::now() < deadline, "the Redis Cluster {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The node id of `nodes[i]`.
    pub fn id(&self, i: usize) -> String {
        let reply = self.nodes[i].command("CLUSTER MYID");
        let id = reply.lines().nth(1).unwrap_or_default().trim().to_string();
        assert_eq!(id.len(), 40, "CLUSTER MYID: {reply}");
        id
    }

    /// Moves the slot of `key`, with its keys, from node `from` (which serves it) to node
    /// `to`, as a reshard does: `to` imports it, `from` migrates it, every key of it goes
    /// over (`MIGRATE`), then every node is told `to` serves it. Clients of `from` are then
    /// redirected (`MOVED`).
    pub fn move_slot_of(&self, key: &str, from: usize, to: usize) {
        let slot = self.nodes[0]
            .command(&format!("CLUSTER KEYSLOT {key}"))
            .trim()
            .trim_start_matches(':')
            .parse::<u16>()
            .expect("a slot");
        let (from_id, to_id) = (self.id(from), self.id(to));
        let ok = |reply: String, what: &str| assert!(reply.starts_with("+OK"), "{what}: {reply}");
        ok(
            self.nodes[to].command(&format!("CLUSTER SETSLOT {slot} IMPORTING {from_id}")),
            "IMPORTING",
        );
        ok(
            self.nodes[from].command(&format!("CLUSTER SETSLOT {slot} MIGRATING {to_id}")),
            "MIGRATING",
        );
        loop {
            let keys: Vec<String> = self.nodes[from]
                .command(&format!("CLUSTER GETKEYSINSLOT {slot} 100"))
                .lines()
                .map(|l| l.trim_end_matches('\r'))
                .filter(|l| !l.is_empty() && !l.starts_with(['*', '$']))
                .map(str::to_string)
                .collect();
            if keys.is_empty() {
                break;
            }
            let reply = self.nodes[from].command(&format!(
                "MIGRATE 127.0.0.1 {} \"\" 0 5000 REPLACE KEYS {}",
                self.nodes[to].port,
                keys.join(" ")
            ));
            assert!(
                reply.starts_with("+OK") || reply.starts_with("+NOKEY"),
                "MIGRATE: {reply}"
            );
        }
        for i in std::iter::once(to)
            .chain(std::iter::once(from))
            .chain((0..self.nodes.len()).filter(|&i| i != to && i != from))
        {
            ok(
                self.nodes[i].command(&format!("CLUSTER SETSLOT {slot} NODE {to_id}")),
                "SETSLOT NODE",
            );
        }
    }

    /// The index in `nodes` of the node that first served the slot of `key`.
    pub fn first_owner_of(&self, key: &str) -> usize {
        let reply = self.nodes[0].command(&format!("CLUSTER KEYSLOT {key}"));
        let slot: usize = reply
            .trim()
            .trim_start_matches(':')
            .parse()
            .expect("a slot");
        let n = self.masters;
        (0..n)
            .find(|&i| (16384 * i / n..16384 * (i + 1) / n).contains(&slot))
            .expect("every slot has a node")
    }

    /// The node that serves the slot of `key` (as the cluster was started).
    pub fn owner_of(&self, key: &str) -> &RedisServer {
        &self.nodes[self.first_owner_of(key)]
    }
}
