//! A throwaway `redis-server` per test: its own free port, its own temporary directory, no persistence unless
//! asked, killed when the guard drops. A system Redis on 6379 is never touched.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub(crate) const INSTALL_HINT: &str = "redis-server (and, for the Redis Cluster tests, redis-cli) was not found \
     on PATH. The Redis tests need a real Redis (6.2 or newer): install it with `sudo apt-get install -y \
     redis-server` (Debian/Ubuntu) or run ./scripts/test.sh, which installs it for you.";

/// A running `redis-server` owned by one test.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server with no persistence.
    pub fn start() -> Self {
        Self::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// Starts a server with extra command-line options (e.g. AOF settings).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_on(extra, free_port)
    }

    /// Starts a server on a port `pick_port` finds free. Ports can be taken between probing and binding (a server
    /// that lost the race exits), so a few are tried.
    pub(crate) fn start_on(extra: &[&str], pick_port: fn() -> u16) -> Self {
        const ATTEMPTS: usize = 10;
        for _ in 0..ATTEMPTS {
            let dir = tempfile::tempdir().expect("temporary directory for redis-server");
            let port = pick_port();
            let child = spawn(port, dir.path(), extra);
            let mut server = Self { child: Some(child), port, dir };
            if server.wait_ready(Duration::from_secs(10)) {
                return server;
            }
            server.kill();
        }
        panic!("redis-server did not start after {ATTEMPTS} attempts");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the process (SIGKILL) and waits for it; the data directory stays for [`RedisServer::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the process (SIGSTOP): it keeps its port and connections but answers nothing, like a node hung
    /// by a long fork or a partition that drops packets. [`RedisServer::resume`] thaws it; dropping the guard
    /// still kills it.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a [`RedisServer::pause`]d process (SIGCONT): it answers what it was sent meanwhile.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let Some(child) = self.child.as_ref() else { panic!("redis-server on port {} is not running", self.port) };
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("could not run kill {signal}: {e}"));
        assert!(status.success(), "kill {signal} redis-server on port {}: {status}", self.port);
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self, extra: &[&str]) {
        self.kill();
        self.child = Some(spawn(self.port, self.dir.path(), extra));
        assert!(self.wait_ready(Duration::from_secs(10)), "redis-server did not come back on port {}", self.port);
    }

    fn wait_ready(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_exited)) = child.try_wait()
            {
                return false;
            }
            if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                use std::io::{Read, Write};
                let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 16];
                // The PONG must come from our child, not from another test's server that took the port.
                let ours_alive = self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
                if ours_alive
                    && stream.write_all(b"PING\r\n").is_ok()
                    && matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
                {
                    return true;
                }
            }
            // A process helper, synchronous by design: the exception clippy.toml names.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(port: u16, dir: &Path, extra: &[&str]) -> Child {
    let binary = binary("redis-server");
    let mut cmd = Command::new(&binary);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
        .arg(dir)
        .args(["--daemonize", "no", "--logfile", "redis.log", "--protected-mode", "yes"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.spawn().unwrap_or_else(|e| panic!("could not start {}: {e}. {INSTALL_HINT}", binary.display()))
}

/// `name` (`redis-server`, `redis-cli`) on `PATH`.
pub(crate) fn binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{INSTALL_HINT}"))
}

/// A loopback port nothing listens on right now (another process may take it before the caller binds it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}
