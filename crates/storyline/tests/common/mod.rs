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
