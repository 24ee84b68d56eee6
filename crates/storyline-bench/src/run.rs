//! One run, phase by phase: connect every stream (in this process and in the workers), settle, publish for
//! the duration (or hold, for `idle`), drain, close, account. Server readings are taken at the phase edges.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    config::{BenchConfig, Plan, Scenario},
    publisher::{self, PublishResult},
    report::{DeliveriesReport, GeneratorReport, Percentiles, PublishReport, Report, ServerReport, StreamsReport},
    stats::PublishTally,
    subscriber::SubscriberSet,
    system::{self, clock_ticks_per_sec, cpu_ticks, rss_bytes},
    worker::{self, Worker},
};

/// A publisher that leaves more than this late at p99 did not offer the asked rate.
const LAG_NOTE_MS: f64 = 10.0;

/// Runs a benchmark and returns its report. Progress goes to stderr.
pub async fn run(config: BenchConfig) -> anyhow::Result<Report> {
    let plan = Arc::new(Plan::new(config)?);
    let config = &plan.config;
    if let Some(pid) = config.server_pid
        && !system::process_exists(pid)
    {
        bail!("--server-pid {pid}: no such process");
    }
    let date_utc = system::utc_now();
    let ticks_per_sec = clock_ticks_per_sec() as f64;
    let server_rss = || config.server_pid.and_then(rss_bytes);
    let rss_before = server_rss();

    let mut workers = Vec::new();
    for process in 1..config.procs {
        workers.push(Worker::spawn(config, process).await?);
    }
    let generator_pids: Vec<u32> =
        std::iter::once(std::process::id()).chain(workers.iter().filter_map(Worker::pid)).collect();
    let generator_ticks = || generator_pids.iter().filter_map(|pid| cpu_ticks(*pid)).sum::<u64>();
    let server_ticks = || config.server_pid.and_then(cpu_ticks);

    eprintln!(
        "[{}] opening {} streams over {} stories ({} process(es), {} source address(es))",
        config.label,
        config.streams,
        config.stories,
        config.procs,
        plan.source_ips.len()
    );
    let mut local = SubscriberSet::start(
        &plan,
        worker::indices(config.streams, 0, config.procs),
        worker::connect_share(config.connect_concurrency, config.procs),
    );
    let mut connect = local.connected().await;
    for worker in &mut workers {
        connect.add(&worker.connected().await?);
    }
    eprintln!("[{}] {} open, {} failed in {:.2} s", config.label, connect.open, connect.failed, connect.secs);
    let rss_after_connect = server_rss();

    tokio::time::sleep(Duration::from_secs_f64(config.settle_secs)).await;

    let (server_ticks_0, generator_ticks_0, machine_ticks_0) =
        (server_ticks(), generator_ticks(), system::machine_busy_ticks());
    let window_start = Instant::now();
    let publish = match config.scenario {
        Scenario::Publish => {
            eprintln!(
                "[{}] publishing {} events at {}/s for {} s",
                config.label,
                plan.total_events(),
                config.rate,
                config.duration_secs
            );
            // A short head start lets the publisher thread and its runtime come up before the first deadline.
            let start = Instant::now() + Duration::from_millis(50);
            let result = publisher::spawn(Arc::clone(&plan), start)?.await.context("the publisher thread died")??;
            Some(result)
        }
        Scenario::Idle => {
            eprintln!("[{}] holding the streams for {} s", config.label, config.duration_secs);
            tokio::time::sleep(Duration::from_secs_f64(config.duration_secs)).await;
            None
        }
    };
    let window_secs = window_start.elapsed().as_secs_f64();
    let (server_ticks_1, generator_ticks_1, machine_ticks_1) =
        (server_ticks(), generator_ticks(), system::machine_busy_ticks());

    if config.scenario == Scenario::Publish {
        eprintln!("[{}] draining for {} s", config.label, config.drain_secs);
        tokio::time::sleep(Duration::from_secs_f64(config.drain_secs)).await;
    }
    let rss_end = server_rss();

    let tally = publish.as_ref().map_or_else(
        || PublishTally { ok_per_story: vec![0; config.stories], failed_seqs: vec![Vec::new(); config.stories] },
        |p| p.tally.clone(),
    );
    let mut subscribers = local.finish(&tally).await;
    for worker in workers {
        subscribers.merge(&worker.finish(&tally).await?)?;
    }

    let mut streams = StreamsReport::from_connect(&connect);
    streams.failures = subscribers.failures.clone();
    streams.dropped = subscribers.dropped;
    streams.drop_reasons = subscribers.drop_reasons.clone();
    streams.open_at_end = subscribers.whole_run_per_story.iter().sum();

    let cpu = |before: Option<u64>, after: Option<u64>| {
        Some(after?.saturating_sub(before?) as f64 / ticks_per_sec).filter(|_| window_secs > 0.0)
    };
    let server = config.server_pid.map(|pid| {
        let cpu_secs = cpu(server_ticks_0, server_ticks_1);
        ServerReport {
            pid,
            cpu_secs,
            cpu_percent: cpu_secs.map(|c| 100.0 * c / window_secs),
            rss_before_bytes: rss_before,
            rss_after_connect_bytes: rss_after_connect,
            rss_end_bytes: rss_end,
            bytes_per_stream: match (rss_before, rss_after_connect) {
                (Some(before), Some(after)) if connect.open > 0 => {
                    Some((after as f64 - before as f64) / connect.open as f64)
                }
                _ => None,
            },
        }
    });
    let generator_cpu = cpu(Some(generator_ticks_0), Some(generator_ticks_1));
    // Everything else that ran meanwhile: machine busy time minus the server and the generator.
    let other_cpu = cpu(machine_ticks_0, machine_ticks_1).map(|machine| {
        let server = cpu(server_ticks_0, server_ticks_1).unwrap_or(0.0);
        (machine - server - generator_cpu.unwrap_or(0.0)).max(0.0)
    });
    let generator = GeneratorReport {
        processes: config.procs,
        threads_per_process: config.threads,
        cpu_secs: generator_cpu,
        cpu_percent: generator_cpu.map(|c| 100.0 * c / window_secs),
        other_cpu_percent: other_cpu.map(|c| 100.0 * c / window_secs),
    };

    let mut notes = Vec::new();
    if connect.failed > 0 {
        notes.push(format!("{} of {} streams failed to open", connect.failed, connect.wanted));
    }
    if subscribers.dropped > 0 {
        notes
            .push(format!("{} streams ended before the run did; they are left out of `expected`", subscribers.dropped));
    }
    let (publish_report, deliveries) = match &publish {
        Some(p) => {
            let report = publish_report(p);
            if report.lag_ms.p99 > LAG_NOTE_MS {
                notes.push(format!(
                    "the publisher fell behind its schedule (send lag p99 {:.1} ms, max {:.1} ms): the offered rate \
                     was below --rate at times",
                    report.lag_ms.p99, report.lag_ms.max
                ));
            }
            let expected = subscribers.expected(&tally);
            let lost = subscribers.lost(&tally);
            if lost > 0 {
                notes.push(format!("{lost} of {expected} expected deliveries did not arrive by the end of the drain"));
            }
            let deliveries = DeliveriesReport {
                expected,
                delivered: subscribers.delivered,
                delivered_unique: subscribers.delivered_unique,
                lost,
                duplicated: subscribers.duplicated,
                unexpected: subscribers.unexpected,
                per_sec: if p.window_secs > 0.0 { subscribers.delivered as f64 / p.window_secs } else { 0.0 },
            };
            (Some(report), Some(deliveries))
        }
        None => (None, None),
    };
    let latency_ms = publish.as_ref().map(|_| Percentiles::from_us(&subscribers.latency_us));
    let mut params = config.clone();
    params.token = String::new();
    Ok(Report {
        label: config.label.clone(),
        date_utc,
        machine: system::machine(),
        params,
        streams,
        publish: publish_report,
        deliveries,
        latency_ms,
        server,
        generator,
        notes,
        latency_histogram: publish.map(|_| subscribers.latency_us),
    })
}

fn publish_report(p: &PublishResult) -> PublishReport {
    PublishReport {
        attempted: p.attempted,
        ok: p.ok,
        failed: p.failed,
        failures: p.failures.clone(),
        window_secs: p.window_secs,
        achieved_rate: if p.window_secs > 0.0 { p.attempted as f64 / p.window_secs } else { 0.0 },
        latency_ms: Percentiles::from_us(&p.latency_us),
        lag_ms: Percentiles::from_us(&p.lag_us),
    }
}
