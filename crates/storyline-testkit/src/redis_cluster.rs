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
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    RedisServer,
    redis_server::{INSTALL_HINT, binary},
};

/// Masters in a test cluster: the smallest cluster `redis-cli --cluster create` accepts.
const MASTERS: usize = 3;
/// Where the cluster bus listens, relative to the client port (Redis's fixed default).
const BUS_PORT_OFFSET: u16 = 10_000;
/// How long a cluster may take to reach `cluster_state:ok` on every node after `--cluster create`.
const FORM_DEADLINE: Duration = Duration::from_secs(30);

/// A running three-master Redis Cluster owned by one test.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// Every node's `redis-server` options, for [`RedisCluster::restart_node`].
    options: Vec<String>,
}

/// A cluster node's options: cluster mode, no persistence.
const NODE_OPTIONS: &[&str] =
    &["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no"];

impl RedisCluster {
    /// Starts three masters on free ports and joins them into one cluster covering every slot; returns once every
    /// node reports `cluster_state:ok`.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`RedisCluster::start`] with extra `redis-server` options for every node (e.g. `--cluster-node-timeout`).
    pub fn start_with(extra: &[&str]) -> Self {
        let options: Vec<&str> = NODE_OPTIONS.iter().chain(extra).copied().collect();
        let mut last_error = String::new();
        for _ in 0..3 {
            let nodes = (0..MASTERS).map(|_| RedisServer::start_on(&options, free_port_with_bus)).collect();
            let cluster = Self { nodes, options: options.iter().map(|o| (*o).to_owned()).collect() };
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
        let others: Vec<String> = rest.iter().map(|n| format!("node=127.0.0.1:{}", n.port())).collect();
        format!("redis-cluster://127.0.0.1:{}?{}", first.port(), others.join("&"))
    }

    /// The master listening on `port` (one of [`RedisCluster::ports`]), e.g. to [`RedisServer::pause`] it.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes.iter().find(|n| n.port() == port).unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    /// Kills the master on `port` (SIGKILL): it refuses connections until [`RedisCluster::restart_node`].
    pub fn kill_node(&mut self, port: u16) {
        self.node_mut(port).kill();
    }

    /// Starts the master on `port` again, on the same port and directory: it rejoins the cluster as the same node
    /// (its `nodes.conf`), with its slots, and with an empty script cache (no persistence: no data either).
    pub fn restart_node(&mut self, port: u16) {
        let options: Vec<String> = self.options.clone();
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        self.node_mut(port).restart(&options);
    }

    fn node_mut(&mut self, port: u16) -> &mut RedisServer {
        self.nodes.iter_mut().find(|n| n.port() == port).unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    /// The client ports of the masters.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port()).collect()
    }

    /// Runs `redis-cli --cluster create` over the nodes, then waits for `cluster_state:ok` on each.
    fn form(&self) -> Result<(), String> {
        let addresses: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
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
                let info = command(node.port(), "CLUSTER INFO").unwrap_or_default();
                if info.lines().any(|l| l.trim_end() == "cluster_state:ok") {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "node 127.0.0.1:{} not cluster_state:ok within {FORM_DEADLINE:?}: {info}",
                        node.port()
                    ));
                }
                pause(Duration::from_millis(20));
            }
        }
        Ok(())
    }
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

/// A free port whose cluster bus port (`port + 10000`) is free too.
fn free_port_with_bus() -> u16 {
    for _ in 0..1_000 {
        let port = crate::free_port();
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
