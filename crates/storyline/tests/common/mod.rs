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
        let pid = self.0.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        self.0.wait().unwrap()
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
