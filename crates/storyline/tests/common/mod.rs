//! Running the `storyline` binary from tests: one-shot commands, and long-running ones (`serve`, `probe`) whose
//! stdout is read line by line. Shared by the CLI and probe tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Output, Stdio},
    sync::mpsc::Receiver,
    time::Duration,
};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_storyline");

/// Runs `storyline` to completion with only `env` set.
pub(crate) fn storyline(args: &[&str], env: &[(&str, &str)]) -> Output {
    command(args, env).output().expect("run storyline")
}

pub(crate) fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// A child process, killed if the test fails midway.
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    pub(crate) fn terminate(mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        self.0.wait().unwrap()
    }

    /// Sends `signal` (`-TERM`, `-KILL`...) with `kill`.
    pub(crate) fn signal(&self, signal: &str) {
        let pid = self.0.id().to_string();
        assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success(), "kill {signal} {pid}");
    }
}

/// Starts `storyline <args>` with its stdout as a channel of lines.
pub(crate) fn spawn(args: &[&str], env: &[(&str, &str)]) -> (Running, Receiver<String>) {
    let mut child = command(args, env).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start storyline");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (Running(child), rx)
}

/// The base URL a `storyline` process logs (text format: `... listening address=<host:port>`).
pub(crate) fn logged_base_url(rx: &Receiver<String>) -> String {
    loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("storyline logs its address");
        if line.contains("listening")
            && let Some(address) = line.split("address=").nth(1)
        {
            return format!("http://{}", address.split_whitespace().next().unwrap());
        }
    }
}

/// The base URL `serve` logs in JSON format (`STORYLINE_LOG_FORMAT=json`) once it listens; earlier lines are
/// skipped.
pub(crate) fn logged_base_url_json(rx: &Receiver<String>) -> String {
    loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).expect("storyline logs its address");
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        if entry["fields"]["message"] == "listening" {
            return format!("http://{}", entry["fields"]["address"].as_str().unwrap());
        }
    }
}

/// A JWT minted by `storyline token <args>` with `secret` (e.g. `["--sub", "w", "--scope", "write:*"]`).
pub(crate) fn mint_token(secret: &str, args: &[&str]) -> String {
    let out = storyline(&[&["token"], args].concat(), &[("STORYLINE_JWT_SECRET", secret)]);
    assert!(out.status.success(), "storyline token {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("a token is ASCII").trim().to_owned()
}

/// Every panel of a Grafana dashboard that is not a row, across nested rows.
pub(crate) fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels is an array") {
        if panel["type"] == "row" {
            out.extend(panel["panels"].as_array().into_iter().flatten());
        } else {
            out.push(panel);
        }
    }
    out
}

/// One panel target of a dashboard under `grafana/dashboards/`, with Grafana's variables replaced by values they
/// can take: `$instance` by `.*`, `$__rate_interval` and `$__interval` by `1m`, `$__range` by the dashboard's
/// default time range. Any other variable fails the test.
#[derive(Debug)]
pub(crate) struct PanelQuery {
    /// `<dashboard file stem>: <panel title> [<refId>]`.
    pub(crate) name: String,
    pub(crate) promql: String,
}

/// Every panel target of every dashboard, in file order.
pub(crate) fn dashboard_queries() -> Vec<PanelQuery> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../grafana/dashboards");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .expect("grafana/dashboards")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut queries = Vec::new();
    for path in files {
        let file = path.file_stem().expect("a file name").to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).expect("a readable dashboard");
        let dashboard: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file} is not JSON: {e}"));
        // `$__range` is the time range the dashboard opens with (`now-6h` -> `6h`).
        let range = dashboard["time"]["from"]
            .as_str()
            .and_then(|from| from.strip_prefix("now-"))
            .unwrap_or_else(|| panic!("{file}: the default time range is not `now-<duration>`: {}", dashboard["time"]));
        for panel in panels(&dashboard) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let promql = target["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{file}: a target without expr: {target}"))
                    .replace("${instance}", ".*")
                    .replace("$instance", ".*")
                    .replace("$__rate_interval", "1m")
                    .replace("$__interval", "1m")
                    .replace("$__range", range);
                assert!(!promql.contains('$'), "{file}: a Grafana variable this test does not know in {promql:?}");
                let title = panel["title"].as_str().unwrap_or_default();
                let name = format!("{file}: {title} [{}]", target["refId"].as_str().unwrap_or_default());
                queries.push(PanelQuery { name, promql });
            }
        }
    }
    queries
}

/// The seconds of an answer's `Retry-After` (storyline sends delay-seconds), if it has one.
pub(crate) fn retry_after(answer: &reqwest::Response) -> Option<u64> {
    answer.headers().get("retry-after")?.to_str().ok()?.trim().parse().ok()
}

/// Starts `binary` (a `prometheus`) with `config_file`, its data and logs under `dir`, on a free loopback port, and
/// waits until it is ready; returns it with its base URL. The port is free when we look and may not be when
/// Prometheus binds it: then another is tried. Fails the test with install instructions when there is no such binary.
pub(crate) async fn start_prometheus(
    binary: &std::path::Path,
    config_file: &std::path::Path,
    dir: &std::path::Path,
) -> (Running, String) {
    let client = storyline_testkit::http_client_builder().timeout(Duration::from_secs(10)).build().unwrap();
    for attempt in 1..=5 {
        let port = storyline_testkit::free_port();
        let log_file = dir.join(format!("prometheus-{attempt}.log"));
        let spawned = Command::new(binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join(format!("data-{attempt}")).display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_file).unwrap())
            .spawn();
        let mut process = match spawned {
            Ok(child) => Running(child),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "{} is not on PATH. On Debian/Ubuntu `apt-get install -y prometheus` (./scripts/test.sh installs it \
                 when missing); elsewhere download Prometheus from https://prometheus.io/download/ and put its \
                 prometheus binary on PATH.",
                binary.display()
            ),
            Err(e) => panic!("running {}: {e}", binary.display()),
        };
        let base = format!("http://127.0.0.1:{port}");
        let ready = format!("{base}/-/ready");
        let started = storyline_testkit::poll_until("prometheus is ready or exits", Duration::from_secs(30), || {
            let exited = process.0.try_wait().unwrap();
            let (client, ready) = (client.clone(), ready.clone());
            async move {
                if let Some(status) = exited {
                    return Some(Err(status));
                }
                client.get(&ready).send().await.ok()?.status().is_success().then_some(Ok(()))
            }
        })
        .await;
        match started {
            Ok(()) => return (process, base),
            Err(status) => {
                let log = std::fs::read_to_string(&log_file).unwrap_or_default();
                assert!(log.contains("address already in use"), "prometheus exited ({status}):\n{log}");
            }
        }
    }
    panic!("prometheus found no free port in 5 attempts");
}
