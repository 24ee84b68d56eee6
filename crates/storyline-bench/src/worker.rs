//! Splitting the subscribers over several processes (`--procs P`), to go past one process's open-files limit.
//!
//! The coordinator starts P-1 copies of its own executable as `storyline-bench worker`. Process `k` holds the
//! streams whose global index `i` has `i % P == k`. The protocol is one JSON object per line:
//!
//! 1. coordinator → worker, stdin: `{"start":{"config":{..},"process":k}}`
//! 2. worker → coordinator, stdout: `{"connected":{"wanted","open","failed","secs"}}` once every stream has
//!    opened or failed
//! 3. coordinator → worker: `{"finish":{"tally":{..}}}` after the drain (or EOF: the coordinator is gone)
//! 4. worker → coordinator: `{"result":{..}}` (its [`SubscriberResult`], histogram in HdrHistogram V2 + base64),
//!    then the worker exits.
//!
//! Worker stdout carries nothing else; diagnostics go to stderr, which the coordinator shares.

use std::process::Stdio;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines},
    process::{Child, ChildStdin, ChildStdout, Command},
};

use crate::{
    config::{BenchConfig, Plan},
    stats::{PublishTally, SubscriberResult},
    subscriber::{ConnectSummary, SubscriberSet},
};

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToWorker {
    Start { config: Box<BenchConfig>, process: usize },
    Finish { tally: PublishTally },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromWorker {
    Connected(ConnectSummary),
    Result(Box<SubscriberResult>),
}

/// The global stream indices process `process` of `procs` holds.
pub fn indices(streams: u64, process: usize, procs: usize) -> impl Iterator<Item = u64> {
    (process as u64..streams).step_by(procs.max(1))
}

/// Connects per process: the global bound shared out, at least one each.
pub fn connect_share(connect_concurrency: usize, procs: usize) -> usize {
    (connect_concurrency / procs.max(1)).max(1)
}

/// The `worker` subcommand: speaks the protocol above on stdin/stdout.
pub async fn serve() -> anyhow::Result<()> {
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    let mut output = tokio::io::stdout();
    let Some(line) = input.next_line().await.context("reading the worker's start line")? else {
        bail!("no start line on stdin");
    };
    let ToWorker::Start { config, process } = serde_json::from_str(&line).context("parsing the start line")? else {
        bail!("the first line must be a start message");
    };
    let plan = Plan::new(*config)?;
    let (streams, procs) = (plan.config.streams, plan.config.procs);
    let mut set = SubscriberSet::start(
        &plan,
        indices(streams, process, procs),
        connect_share(plan.config.connect_concurrency, procs),
    );
    let connected = set.connected().await;
    send(&mut output, &FromWorker::Connected(connected)).await?;
    // EOF here means the coordinator is gone: close the streams and report to nobody in particular.
    let tally = match input.next_line().await.context("reading the finish line")? {
        Some(line) => match serde_json::from_str(&line).context("parsing the finish line")? {
            ToWorker::Finish { tally } => tally,
            ToWorker::Start { .. } => bail!("unexpected second start message"),
        },
        None => PublishTally::default(),
    };
    let result = set.finish(&tally).await;
    send(&mut output, &FromWorker::Result(Box::new(result))).await
}

async fn send(output: &mut (impl tokio::io::AsyncWrite + Unpin), message: &impl Serialize) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    output.write_all(&line).await?;
    output.flush().await?;
    Ok(())
}

/// A worker process, seen from the coordinator.
#[derive(Debug)]
pub struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    pub async fn spawn(config: &BenchConfig, process: usize) -> anyhow::Result<Worker> {
        let exe = std::env::current_exe().context("finding this executable to start workers")?;
        let mut child = Command::new(exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker process")?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("worker pipes missing");
        };
        send(&mut stdin, &ToWorker::Start { config: Box::new(config.clone()), process }).await?;
        Ok(Worker { child, stdin, stdout: BufReader::new(stdout).lines() })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    async fn receive(&mut self) -> anyhow::Result<FromWorker> {
        let line = self.stdout.next_line().await.context("reading from a worker")?;
        let line = line.context("a worker exited early (see its errors above)")?;
        serde_json::from_str(&line).with_context(|| format!("a worker sent something unexpected: {line:.200}"))
    }

    pub async fn connected(&mut self) -> anyhow::Result<ConnectSummary> {
        match self.receive().await? {
            FromWorker::Connected(summary) => Ok(summary),
            FromWorker::Result(_) => bail!("a worker sent its result before connecting"),
        }
    }

    pub async fn finish(mut self, tally: &PublishTally) -> anyhow::Result<SubscriberResult> {
        send(&mut self.stdin, &ToWorker::Finish { tally: tally.clone() }).await?;
        let result = match self.receive().await? {
            FromWorker::Result(result) => *result,
            FromWorker::Connected(_) => bail!("a worker sent a second connect summary"),
        };
        drop(self.stdin);
        let _ = self.child.wait().await;
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_split_the_streams_without_overlap() {
        let mut all: Vec<u64> = (0..3).flat_map(|p| indices(10, p, 3)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(indices(10, 1, 3).collect::<Vec<_>>(), vec![1, 4, 7]);
        assert_eq!(connect_share(200, 3), 66);
        assert_eq!(connect_share(2, 3), 1);
    }

    #[test]
    fn protocol_messages_are_single_json_lines() {
        let message = ToWorker::Finish { tally: PublishTally { ok_per_story: vec![3], failed_seqs: vec![vec![1]] } };
        let line = serde_json::to_string(&message).unwrap();
        assert_eq!(line, r#"{"finish":{"tally":{"ok_per_story":[3],"failed_seqs":[[1]]}}}"#);
        let back: ToWorker = serde_json::from_str(&line).unwrap();
        assert!(matches!(back, ToWorker::Finish { tally } if tally.ok_per_story == [3]));
    }
}
