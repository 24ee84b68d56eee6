//! The resource sampler: every `--sample-secs`, the server's resident memory (`/proc/<pid>/status` VmRSS), open
//! file descriptors (entries of `/proc/<pid>/fd`), threads (entries of `/proc/<pid>/task`), and from its
//! `/metrics` the tokio tasks alive on its runtimes (`storyline_runtime_alive_tasks`) and its open streams
//! (`storyline_connections_active`, all tiers). Each sample is appended to a CSV file as it is taken, so a long
//! run's series survives whatever happens to the run.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinHandle};

use super::Target;
use crate::system;

/// One reading.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since sampling started.
    pub t_secs: f64,
    pub rss_kib: Option<f64>,
    pub fds: Option<f64>,
    pub threads: Option<f64>,
    pub tasks: Option<f64>,
    pub streams: Option<f64>,
}

pub const CSV_HEADER: &str = "t_secs,rss_kib,open_fds,threads,tokio_tasks,open_streams";

impl Sample {
    fn csv(&self) -> String {
        let cell = |v: Option<f64>| v.map(|v| format!("{v}")).unwrap_or_default();
        format!(
            "{:.1},{},{},{},{},{}",
            self.t_secs,
            cell(self.rss_kib),
            cell(self.fds),
            cell(self.threads),
            cell(self.tasks),
            cell(self.streams)
        )
    }
}

/// Entries of a `/proc` directory (fds, tasks).
fn count_entries(path: &Path) -> Option<f64> {
    #[allow(clippy::cast_precision_loss)] // a count of fds or threads, far below 2^52
    std::fs::read_dir(path).ok().map(|entries| entries.count() as f64)
}

/// The sum of every series of `name` in a Prometheus text exposition whose labels contain `label_filter`
/// (e.g. `reason="slow_consumer"`; empty: every series). `None` if there is no such series.
pub fn metric_sum(text: &str, name: &str, label_filter: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (labels, value) = match rest.chars().next() {
            Some('{') => match rest.split_once('}') {
                Some((labels, value)) => (labels, value),
                None => continue,
            },
            Some(' ') => ("", rest),
            _ => continue,
        };
        if !labels.contains(label_filter) {
            continue;
        }
        if let Ok(v) = value.trim().parse::<f64>() {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

async fn scrape(http: &reqwest::Client, target: &Target) -> Option<String> {
    let response = http.get(format!("{}/metrics", target.base)).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.text().await.ok()
}

/// How the server says its streams closed (`storyline_connections_closed_total` by reason), scraped at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CloseReasons {
    pub client: f64,
    pub shutdown: f64,
    pub slow_consumer: f64,
    pub token_expired: f64,
}

pub async fn scrape_close_reasons(http: &reqwest::Client, target: &Target) -> Option<CloseReasons> {
    let text = scrape(http, target).await?;
    let reason = |r: &str| metric_sum(&text, "storyline_connections_closed_total", &format!("reason=\"{r}\""));
    Some(CloseReasons {
        client: reason("client")?,
        shutdown: reason("shutdown")?,
        slow_consumer: reason("slow_consumer")?,
        token_expired: reason("token_expired")?,
    })
}

/// The sampling task.
#[derive(Debug)]
pub struct Sampler {
    task: JoinHandle<Vec<Sample>>,
    stop: watch::Sender<bool>,
}

impl Sampler {
    pub fn start(
        http: reqwest::Client,
        target: &Target,
        pid: Option<u32>,
        every: Duration,
        csv: PathBuf,
    ) -> anyhow::Result<Sampler> {
        let mut file = std::fs::File::create(&csv).with_context(|| format!("creating {}", csv.display()))?;
        writeln!(file, "{CSV_HEADER}").with_context(|| format!("writing {}", csv.display()))?;
        let (stop, mut stop_rx) = watch::channel(false);
        let target = target.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    _ = stop_rx.wait_for(|s| *s) => break,
                    _ = tick.tick() => {}
                }
                let t_secs = started.elapsed().as_secs_f64();
                let metrics = scrape(&http, &target).await;
                #[allow(clippy::cast_precision_loss)] // KiB of memory, far below 2^52
                let sample = Sample {
                    t_secs,
                    rss_kib: pid.and_then(system::rss_bytes).map(|b| b as f64 / 1024.0),
                    fds: pid.and_then(|p| count_entries(Path::new(&format!("/proc/{p}/fd")))),
                    threads: pid.and_then(|p| count_entries(Path::new(&format!("/proc/{p}/task")))),
                    tasks: metrics.as_deref().and_then(|m| metric_sum(m, "storyline_runtime_alive_tasks", "")),
                    streams: metrics.as_deref().and_then(|m| metric_sum(m, "storyline_connections_active", "")),
                };
                // A failed write loses the file copy only; the samples still reach the report.
                let _ = writeln!(file, "{}", sample.csv());
                samples.push(sample);
            }
            let _ = file.flush();
            samples
        });
        Ok(Sampler { task, stop })
    }

    pub async fn stop(self) -> Vec<Sample> {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_follow_names_and_labels() {
        let text = "# HELP storyline_connections_active Open SSE streams\n\
                    storyline_connections_active{tier=\"guest\"} 0\n\
                    storyline_connections_active{tier=\"member\"} 12\n\
                    storyline_connections_active_other 99\n\
                    storyline_runtime_alive_tasks 41\n\
                    storyline_connections_closed_total{tier=\"member\",reason=\"slow_consumer\"} 2\n\
                    storyline_connections_closed_total{tier=\"agent\",reason=\"slow_consumer\"} 1\n\
                    storyline_connections_closed_total{tier=\"member\",reason=\"client\"} 7\n";
        assert_eq!(metric_sum(text, "storyline_connections_active", ""), Some(12.0));
        assert_eq!(metric_sum(text, "storyline_runtime_alive_tasks", ""), Some(41.0));
        assert_eq!(metric_sum(text, "storyline_connections_closed_total", "reason=\"slow_consumer\""), Some(3.0));
        assert_eq!(metric_sum(text, "storyline_nothing", ""), None);
    }

    #[test]
    fn own_process_entries_are_counted() {
        let pid = std::process::id();
        assert!(count_entries(Path::new(&format!("/proc/{pid}/fd"))).is_some_and(|n| n >= 3.0));
        assert!(count_entries(Path::new(&format!("/proc/{pid}/task"))).is_some_and(|n| n >= 1.0));
    }
}
