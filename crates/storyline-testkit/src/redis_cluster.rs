//! A throwaway Redis Cluster per test: three masters (no replicas), each a `redis-server --cluster-enabled yes`
//! on its own free port with its own temporary directory and no persistence, joined with
//! `redis-cli --cluster create`, and killed when the guard drops. A system Redis on 6379 is never touched.
//!
//! Every node also listens on its cluster bus port, `port + 10000`, so a node's port is picked only where both
//! are free (and the bus port exists: `port <= 55535`). Ports can still be taken between probing and binding; a
//! node that does not come up is retried on other ports, and a cluster that does not form is rebuilt.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

const INSTALL_HINT: &str = "redis-server/redis-cli were not found on PATH. The Redis Cluster tests need a real \
     Redis (6.2 or newer): install it with `sudo apt-get install -y redis-server` (Debian/Ubuntu) or run \
     ./scripts/test.sh, which installs it for you.";

/// Masters in a test cluster: the smallest cluster `redis-cli --cluster create` accepts.
const MASTERS: usize = 3;
/// Where the cluster bus listens, relative to the client port (Redis's fixed default).
const BUS_PORT_OFFSET: u16 = 10_000;
/// How long a cluster may take to reach `cluster_state:ok` on every node after `--cluster create`.
const FORM_DEADLINE: Duration = Duration::from_secs(30);

/// A running three-master Redis Cluster owned by one test.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
}

#[derive(Debug)]
struct Node {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts three masters on free ports and joins them into one cluster covering every slot; returns once every
    /// node reports `cluster_state:ok`.
    pub fn start() -> Self {
        let mut last_error = String::new();
        for _ in 0..3 {
            let nodes: Vec<Node> = (0..MASTERS).map(|_| Node::start()).collect();
            let cluster = Self { nodes };
            match cluster.form() {
                Ok(()) => return cluster,
                // Dropping the guard kills the nodes; the next attempt starts afresh on new ports.
                Err(e) => last_error = e,
            }
        }
        panic!("Redis Cluster did not form after 3 attempts: {last_error}");
    }

    /// `redis-cluster://127.0.0.1:<p1>?node=127.0.0.1:<p2>&node=127.0.0.1:<p3>`: every node is a seed.
    pub fn url(&self) -> String {
        let (first, rest) = self.nodes.split_first().expect("a cluster has nodes");
        let others: Vec<String> = rest.iter().map(|n| format!("node=127.0.0.1:{}", n.port)).collect();
        format!("redis-cluster://127.0.0.1:{}?{}", first.port, others.join("&"))
    }

    /// The client ports of the masters.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// Runs `redis-cli --cluster create` over the nodes, then waits for `cluster_state:ok` on each.
    fn form(&self) -> Result<(), String> {
        let addresses: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let output = Command::new(binary("redis-cli"))
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("could not run redis-cli: {e}. {INSTALL_HINT}"))?;
        if !output.status.success() {
            return Err(format!(
                "redis-cli --cluster create {} failed ({}): {}{}",
                addresses.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let deadline = Instant::now() + FORM_DEADLINE;
        for node in &self.nodes {
            loop {
                let info = command(node.port, "CLUSTER INFO").unwrap_or_default();
                if info.lines().any(|l| l.trim_end() == "cluster_state:ok") {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "node 127.0.0.1:{} not cluster_state:ok within {FORM_DEADLINE:?}: {info}",
                        node.port
                    ));
                }
                pause(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

impl Node {
    /// A cluster-enabled `redis-server` answering PING, on a port whose bus port is free too.
    fn start() -> Self {
        for _ in 0..10 {
            let dir = tempfile::tempdir().expect("temporary directory for a cluster node");
            let port = free_port_with_bus();
            let child = spawn(port, dir.path());
            let mut node = Self { child: Some(child), port, _dir: dir };
            if node.wait_ready(Duration::from_secs(10)) {
                return node;
            }
            node.kill();
        }
        panic!("a Redis Cluster node did not start after 10 attempts");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn wait_ready(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !self.alive() {
                // Most often the port or the bus port was taken after probing.
                return false;
            }
            // The PONG must come from our child, not from another test's server that took the port: checked
            // alive just before, and a node that lost the port race exits.
            if command(self.port, "PING").is_some_and(|reply| reply == "PONG") && self.alive() {
                return true;
            }
            pause(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(port: u16, dir: &Path) -> Child {
    let binary = binary("redis-server");
    let mut cmd = Command::new(&binary);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
        .arg(dir)
        .args(["--daemonize", "no", "--logfile", "redis.log", "--protected-mode", "yes"])
        .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
        .args(["--save", "", "--appendonly", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.spawn().unwrap_or_else(|e| panic!("could not start {}: {e}. {INSTALL_HINT}", binary.display()))
}

/// Sends one inline command and returns the reply as text (a status line, or a bulk string's body).
fn command(port: u16, line: &str) -> Option<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    stream.write_all(format!("{line}\r\n").as_bytes()).ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some(status) = text.strip_prefix('+') {
            if let Some(status) = status.strip_suffix("\r\n") {
                return Some(status.to_owned());
            }
        } else if let Some(bulk) = text.strip_prefix('$') {
            let (len, body) = bulk.split_once("\r\n")?;
            let len: usize = len.parse().ok()?;
            if body.len() >= len + 2 {
                return Some(body[..len].to_owned());
            }
        } else if text.contains("\r\n") {
            // An error reply or anything else: not what the caller waits for.
            return None;
        }
    }
}

fn binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{INSTALL_HINT}"))
}

/// A free port whose cluster bus port (`port + 10000`) is free too.
fn free_port_with_bus() -> u16 {
    for _ in 0..1_000 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral port");
        let port = listener.local_addr().expect("local address").port();
        let Some(bus) = port.checked_add(BUS_PORT_OFFSET) else { continue };
        if TcpListener::bind((Ipv4Addr::LOCALHOST, bus)).is_ok() {
            return port;
        }
    }
    panic!("no free port with a free cluster bus port (port + {BUS_PORT_OFFSET}) after 1000 tries");
}

/// A process helper, synchronous by design: the exception clippy.toml names.
fn pause(d: Duration) {
    #[allow(clippy::disallowed_methods)]
    std::thread::sleep(d);
}
