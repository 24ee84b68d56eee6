//! The run's report: what was asked, what happened, on which machine. Serialized as JSON (`--json`) and
//! rendered as a plain-text table.

use std::{collections::BTreeMap, fmt::Write as _};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::{config::BenchConfig, subscriber::ConnectSummary, system::Machine};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub label: String,
    pub date_utc: String,
    pub machine: Machine,
    /// The parameters, `token` left out.
    pub params: BenchConfig,
    pub streams: StreamsReport,
    pub publish: Option<PublishReport>,
    pub deliveries: Option<DeliveriesReport>,
    /// End-to-end latency: receive time minus the payload's `sent_us`.
    pub latency_ms: Option<Percentiles>,
    pub server: Option<ServerReport>,
    pub generator: GeneratorReport,
    /// Things a reader of the numbers must know (pacing trouble, failures, saturation).
    pub notes: Vec<String>,
    /// The latency histogram (µs), for plots.
    #[serde(skip)]
    pub latency_histogram: Option<Histogram<u64>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamsReport {
    pub wanted: u64,
    pub open: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// Opened, then ended before the end of the run.
    pub dropped: u64,
    pub drop_reasons: BTreeMap<String, u64>,
    /// Still open when the run ended.
    pub open_at_end: u64,
    pub connect_secs: f64,
}

impl StreamsReport {
    pub fn from_connect(connect: &ConnectSummary) -> StreamsReport {
        StreamsReport {
            wanted: connect.wanted,
            open: connect.open,
            failed: connect.failed,
            failures: BTreeMap::new(),
            dropped: 0,
            drop_reasons: BTreeMap::new(),
            open_at_end: 0,
            connect_secs: connect.secs,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishReport {
    pub attempted: u64,
    pub ok: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub window_secs: f64,
    pub achieved_rate: f64,
    pub latency_ms: Percentiles,
    /// How late sends left compared with their deadlines.
    pub lag_ms: Percentiles,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveriesReport {
    pub expected: u64,
    pub delivered: u64,
    pub delivered_unique: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub unexpected: u64,
    /// delivered ÷ publish window.
    pub per_sec: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// From a histogram in µs, to milliseconds.
    pub fn from_us(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerReport {
    pub pid: u32,
    /// utime + stime during the publish window (idle: during the hold).
    pub cpu_secs: Option<f64>,
    /// cpu_secs ÷ window, in % of one core.
    pub cpu_percent: Option<f64>,
    pub rss_before_bytes: Option<u64>,
    pub rss_after_connect_bytes: Option<u64>,
    pub rss_end_bytes: Option<u64>,
    /// (after connect − before) ÷ open streams.
    pub bytes_per_stream: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GeneratorReport {
    pub processes: usize,
    pub threads_per_process: usize,
    /// CPU of every generator process (coordinator and workers, publisher included) in the same window.
    pub cpu_secs: Option<f64>,
    pub cpu_percent: Option<f64>,
    /// CPU used by everything else on the machine in the same window (% of one core): interference.
    pub other_cpu_percent: Option<f64>,
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "-".into(), |b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)))
}

fn opt(value: Option<f64>, unit: &str) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.2}{unit}"))
}

fn reasons(map: &BTreeMap<String, u64>) -> String {
    map.iter().map(|(reason, n)| format!("{n}× {reason}")).collect::<Vec<_>>().join("; ")
}

impl Report {
    /// The report as an aligned two-column table.
    pub fn render_table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
        let p = &self.params;
        row("run", self.label.clone());
        row("date (UTC)", self.date_utc.clone());
        row("machine", format!("{} CPUs, {}", self.machine.nproc, self.machine.cpu_model));
        row(
            "parameters",
            match self.publish {
                Some(_) => format!(
                    "{} streams over {} stories, {}/s for {} s, {} B payload, {} publishers",
                    p.streams, p.stories, p.rate, p.duration_secs, p.payload_bytes, p.publishers
                ),
                None => format!("idle: {} streams over {} stories held {} s", p.streams, p.stories, p.duration_secs),
            },
        );
        let s = &self.streams;
        row("streams wanted / open / failed", format!("{} / {} / {}", s.wanted, s.open, s.failed));
        if !s.failures.is_empty() {
            row("  open failures", reasons(&s.failures));
        }
        row("streams open at end / dropped", format!("{} / {}", s.open_at_end, s.dropped));
        if !s.drop_reasons.is_empty() {
            row("  drop reasons", reasons(&s.drop_reasons));
        }
        row("connect phase", format!("{:.2} s", s.connect_secs));
        if let Some(publish) = &self.publish {
            row(
                "published ok / failed",
                format!("{} / {} ({:.1}/s achieved)", publish.ok, publish.failed, publish.achieved_rate),
            );
            if !publish.failures.is_empty() {
                row("  publish failures", reasons(&publish.failures));
            }
            row(
                "publish latency p50 / p99",
                format!("{:.2} / {:.2} ms", publish.latency_ms.p50, publish.latency_ms.p99),
            );
            row("publish lag p99 / max", format!("{:.2} / {:.2} ms", publish.lag_ms.p99, publish.lag_ms.max));
        }
        if let Some(d) = &self.deliveries {
            row("expected / delivered", format!("{} / {}", d.expected, d.delivered));
            row("lost / duplicated / unexpected", format!("{} / {} / {}", d.lost, d.duplicated, d.unexpected));
            row("deliveries per second", format!("{:.0}", d.per_sec));
        }
        if let Some(l) = &self.latency_ms {
            row("latency p50 / p90 / p99", format!("{:.2} / {:.2} / {:.2} ms", l.p50, l.p90, l.p99));
            row("latency p99.9 / max", format!("{:.2} / {:.2} ms", l.p999, l.max));
        }
        if let Some(server) = &self.server {
            row("server CPU", format!("{} ({} of one core)", opt(server.cpu_secs, " s"), opt(server.cpu_percent, "%")));
            row(
                "server RSS before / after connect / end",
                format!(
                    "{} / {} / {}",
                    mib(server.rss_before_bytes),
                    mib(server.rss_after_connect_bytes),
                    mib(server.rss_end_bytes)
                ),
            );
            row(
                "server memory per stream",
                server.bytes_per_stream.map_or_else(|| "-".into(), |b| format!("{b:.0} B")),
            );
        }
        let g = &self.generator;
        row(
            "generator CPU",
            format!(
                "{} ({} of one core; {} process(es) × {} thread(s) + publisher)",
                opt(g.cpu_secs, " s"),
                opt(g.cpu_percent, "%"),
                g.processes,
                g.threads_per_process
            ),
        );
        row(
            "other processes' CPU",
            format!("{} of one core (machine total: {} cores)", opt(g.other_cpu_percent, "%"), self.machine.nproc),
        );
        let width = rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
        let mut out = String::new();
        for (k, v) in &rows {
            let _ = writeln!(out, "{k:<width$}  {v}");
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }
}

/// Markdown tables for several reports: one for publish runs, one for idle runs (for BENCHMARKS.md).
pub fn markdown_tables(reports: &[Report]) -> String {
    let ms = |v: f64| format!("{v:.1}");
    let pct = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.0}%"));
    let kib = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{:.1} KiB", v / 1024.0));
    let mut out = String::new();
    let publish: Vec<&Report> = reports.iter().filter(|r| r.publish.is_some()).collect();
    if !publish.is_empty() {
        out.push_str(
            "| run | streams / stories | open / failed | published ok / failed | expected | delivered | lost | dup \
             | deliveries/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | publish p50 / p99 ms | server CPU | \
             generator CPU | other CPU | server RSS per stream |\n",
        );
        out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in publish {
            let (Some(p), Some(d), Some(l)) = (&r.publish, &r.deliveries, &r.latency_ms) else { continue };
            let server = r.server.as_ref();
            let _ = writeln!(
                out,
                "| {} | {} / {} | {} / {} | {} / {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} / {} | {} | {} \
                 | {} | {} |",
                r.label,
                r.params.streams,
                r.params.stories,
                r.streams.open,
                r.streams.failed,
                p.ok,
                p.failed,
                d.expected,
                d.delivered,
                d.lost,
                d.duplicated,
                d.per_sec,
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max),
                ms(p.latency_ms.p50),
                ms(p.latency_ms.p99),
                pct(server.and_then(|s| s.cpu_percent)),
                pct(r.generator.cpu_percent),
                pct(r.generator.other_cpu_percent),
                kib(server.and_then(|s| s.bytes_per_stream)),
            );
        }
    }
    let idle: Vec<&Report> = reports.iter().filter(|r| r.publish.is_none()).collect();
    if !idle.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(
            "| run | streams / stories | open / failed | open at end | held s | connect s | server RSS before | \
             server RSS after connect | server RSS per stream | server CPU while idle |\n",
        );
        out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
        for r in idle {
            let server = r.server.as_ref();
            let _ = writeln!(
                out,
                "| {} | {} / {} | {} / {} | {} | {} | {:.2} | {} | {} | {} | {} |",
                r.label,
                r.params.streams,
                r.params.stories,
                r.streams.open,
                r.streams.failed,
                r.streams.open_at_end,
                r.params.duration_secs,
                r.streams.connect_secs,
                mib(server.and_then(|s| s.rss_before_bytes)),
                mib(server.and_then(|s| s.rss_after_connect_bytes)),
                kib(server.and_then(|s| s.bytes_per_stream)),
                pct(server.and_then(|s| s.cpu_percent)),
            );
        }
    }
    out
}
