//! `storyline-bench`: command line, runtime, output files. The work is in the library.

use std::{io::Write as _, path::PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use storyline_bench::{
    BenchConfig, Scenario,
    config::parse_source_ips,
    plot::write_latency_plot,
    system::{self},
    worker,
};

const DEFAULT_BODY: &str = r#"{"type":"bench","data":{"seq":{seq},"sent_us":{sent_us},"pad":"{pad}"}}"#;

/// Load generator and reporter for SSE fan-out servers. Targets loopback addresses only.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Internal: hold a share of the streams for a coordinator (JSON lines on stdin/stdout).
    #[command(hide = true)]
    Worker,
    /// The readers of a soak test (scripts/soak.sh runs them next to k6's publishers): hold and resume streams,
    /// follow the log, sample the server's resources, and judge the run at the stop signal (SIGTERM/SIGINT).
    SoakReaders(Box<SoakArgs>),
    /// Print Markdown tables (publish runs, idle runs) from JSON reports written with --json.
    Table {
        /// Report files, in the order the rows should appear.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct SoakArgs {
    /// A name for the run (report and plot title).
    #[arg(long, default_value = "soak")]
    label: String,
    /// storyline's base URL (http://, loopback only).
    #[arg(long)]
    url: String,
    /// Stories are <prefix>0 .. <prefix><stories-1>; k6 publishes to the same names.
    #[arg(long, default_value = "soak-")]
    story_prefix: String,
    #[arg(long, default_value_t = 4)]
    stories: usize,
    #[arg(long, default_value_t = 4)]
    readers_per_story: usize,
    /// HS256 secret to mint reader tokens with (the server's). Not STORYLINE_*: storyline refuses unknown ones.
    #[arg(long, env = "SOAK_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// Lifetime of reader tokens: each reader gets `token-expired` about this often and reconnects with a new one.
    #[arg(long, default_value_t = 45)]
    token_ttl_secs: u64,
    /// Mean seconds between a reader's own reconnects (drawn from 0.5x to 1.5x); 0: never.
    #[arg(long, default_value_t = 20.0)]
    reconnect_secs: f64,
    /// A stream silent (no event, no heartbeat) for this long counts as stalled.
    #[arg(long, default_value_t = 20.0)]
    idle_timeout_secs: f64,
    /// How often the log follower reads the new part of each story's log.
    #[arg(long, default_value_t = 1000)]
    follow_interval_ms: u64,
    /// The server's pid, for its memory, descriptors and threads.
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long, default_value_t = 2.0)]
    sample_secs: f64,
    /// Seconds after the readers connected before the growth bounds apply.
    #[arg(long, default_value_t = 30.0)]
    warmup_secs: f64,
    /// Fail when RSS grows faster than this after the warm-up (least-squares slope, KiB per minute).
    #[arg(long, default_value_t = 1024.0)]
    max_rss_slope_kib_per_min: f64,
    /// Fail when RSS grows more than this after the warm-up (median of the last tenth minus the first), KiB.
    #[arg(long, default_value_t = 4096.0)]
    max_rss_growth_kib: f64,
    /// Fail when the open descriptors grow more than this after the warm-up (medians as for RSS).
    #[arg(long, default_value_t = 8.0)]
    max_fd_growth: f64,
    /// Fail when the thread count grows more than this after the warm-up.
    #[arg(long, default_value_t = 4.0)]
    max_thread_growth: f64,
    /// Fail when the tokio tasks grow more than this after the warm-up.
    #[arg(long, default_value_t = 16.0)]
    max_task_growth: f64,
    /// k6's ack log (JSON lines), read at the end.
    #[arg(long)]
    acks: PathBuf,
    /// k6's summary (k6/soak.js handleSummary), read at the end.
    #[arg(long)]
    k6_summary: Option<PathBuf>,
    /// Written once every reader is connected.
    #[arg(long)]
    ready_file: PathBuf,
    /// Where samples.csv and report.json go.
    #[arg(long)]
    out_dir: PathBuf,
    /// Write the resources-over-time plot (SVG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Seconds the readers get after the stop signal to catch up with the end of the log.
    #[arg(long, default_value_t = 30.0)]
    catch_up_secs: f64,
    /// Upper bound on the whole run, stop signal or not.
    #[arg(long, default_value_t = 4.0 * 3600.0)]
    max_secs: f64,
    /// Runtime threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

impl SoakArgs {
    fn config(&self) -> storyline_bench::soak::SoakConfig {
        storyline_bench::soak::SoakConfig {
            label: self.label.clone(),
            url: self.url.clone(),
            story_prefix: self.story_prefix.clone(),
            stories: self.stories,
            readers_per_story: self.readers_per_story,
            jwt_secret: self.jwt_secret.clone(),
            token_ttl_secs: self.token_ttl_secs,
            reconnect_secs: self.reconnect_secs,
            idle_timeout_secs: self.idle_timeout_secs,
            follow_interval_ms: self.follow_interval_ms,
            server_pid: self.server_pid,
            sample_secs: self.sample_secs,
            warmup_secs: self.warmup_secs,
            bounds: storyline_bench::soak::LeakBounds {
                rss_slope_kib_per_min: self.max_rss_slope_kib_per_min,
                rss_growth_kib: self.max_rss_growth_kib,
                fd_growth: self.max_fd_growth,
                thread_growth: self.max_thread_growth,
                task_growth: self.max_task_growth,
            },
            acks: self.acks.clone(),
            k6_summary: self.k6_summary.clone(),
            ready_file: self.ready_file.clone(),
            out_dir: self.out_dir.clone(),
            plot: self.plot.clone(),
            catch_up_secs: self.catch_up_secs,
            max_secs: self.max_secs,
        }
    }
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// What to do: publish and measure deliveries, or hold idle streams and measure memory.
    #[arg(long, value_enum, default_value = "publish")]
    scenario: Scenario,
    /// A name for the run (report and plot title).
    #[arg(long, default_value = "bench")]
    label: String,
    /// Stream URL template; placeholders {story}, {token}, {index}. http:// and loopback only.
    #[arg(long, default_value = "http://127.0.0.1:8080/v1/stories/{story}/stream?access_token={token}")]
    stream_url: String,
    /// Extra header on stream requests, 'Name: value' (repeatable; placeholders as in --stream-url).
    #[arg(long)]
    stream_header: Vec<String>,
    /// Publish URL template; placeholders {story}, {token}.
    #[arg(long, default_value = "http://127.0.0.1:8080/v1/stories/{story}/events")]
    publish_url: String,
    /// Publish body template; needs {seq} and {sent_us}; {pad} fills up to --payload-bytes; {story}, {token}.
    #[arg(long, default_value = DEFAULT_BODY)]
    publish_body: String,
    /// Header on publish requests, 'Name: value' (repeatable; giving any replaces the defaults).
    #[arg(long, default_values = ["Content-Type: application/json", "Authorization: Bearer {token}"])]
    publish_header: Vec<String>,
    /// Value of {token}. (Not STORYLINE_*: storyline refuses unknown STORYLINE_* variables.)
    #[arg(long, env = "BENCH_TOKEN", default_value = "", hide_env_values = true)]
    token: String,
    /// Subscriber streams, spread round-robin over the stories.
    #[arg(long, default_value_t = 100)]
    streams: u64,
    #[arg(long, default_value_t = 1)]
    stories: usize,
    #[arg(long, default_value = "bench-")]
    story_prefix: String,
    /// Events per second in total, across stories.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Seconds of publishing (idle: of holding).
    #[arg(long, default_value_t = 15.0)]
    duration: f64,
    /// Seconds to wait between the connect phase and publishing.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// Seconds to wait for deliveries after the last publish.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    /// Body size that {pad} fills up to.
    #[arg(long, default_value_t = 200)]
    payload_bytes: usize,
    /// Concurrent keep-alive publish connections.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Streams connecting at once (shared among processes).
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Seconds one stream may take to connect and get its response head.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Loopback source addresses: a count (4 = 127.0.0.1..127.0.0.4) or a comma-separated list.
    #[arg(long, default_value = "4")]
    source_ips: String,
    /// Processes holding streams (the coordinator plus procs-1 workers).
    #[arg(long, default_value_t = 1)]
    procs: usize,
    /// Runtime threads of the coordinator for its subscribers (workers use one; the publisher has its own).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The server's pid, for its CPU time and resident memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a latency plot (SVG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
}

impl RunArgs {
    fn config(&self) -> anyhow::Result<BenchConfig> {
        Ok(BenchConfig {
            scenario: self.scenario,
            label: self.label.clone(),
            stream_url: self.stream_url.clone(),
            stream_headers: self.stream_header.clone(),
            publish_url: self.publish_url.clone(),
            publish_body: self.publish_body.clone(),
            publish_headers: self.publish_header.clone(),
            token: self.token.clone(),
            streams: self.streams,
            stories: self.stories,
            story_prefix: self.story_prefix.clone(),
            rate: self.rate,
            duration_secs: self.duration,
            settle_secs: self.settle,
            drain_secs: self.drain,
            payload_bytes: self.payload_bytes,
            publishers: self.publishers,
            connect_concurrency: self.connect_concurrency,
            connect_timeout_secs: self.connect_timeout,
            source_ips: parse_source_ips(&self.source_ips)?,
            procs: self.procs,
            threads: self.threads,
            server_pid: self.server_pid,
        })
    }
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match system::raise_open_files_limit() {
        Ok((soft, _)) if soft < 4096 => eprintln!("warning: open-files limit is only {soft}"),
        Ok(_) => {}
        Err(e) => eprintln!("warning: could not read or raise the open-files limit: {e}"),
    }
    match cli.command {
        // One thread per worker: more processes, not more threads, is how a run scales out.
        Some(Command::Worker) => return runtime(1)?.block_on(worker::serve()),
        Some(Command::Table { reports }) => return print_tables(&reports),
        Some(Command::SoakReaders(args)) => {
            let report = runtime(args.threads)?.block_on(storyline_bench::soak::run(args.config()))?;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(report.render().as_bytes())?;
            stdout.flush()?;
            if !report.ok {
                std::process::exit(1);
            }
            return Ok(());
        }
        None => {}
    }
    let config = cli.run.config()?;
    let report = runtime(config.threads)?.block_on(storyline_bench::run(config))?;
    if let Some(path) = &cli.run.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &cli.run.plot {
        match &report.latency_histogram {
            Some(histogram) => write_latency_plot(path, &plot_title(&report), histogram)
                .with_context(|| format!("writing {}", path.display()))?,
            None => eprintln!("no latency plot for an idle run"),
        }
    }
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(report.render_table().as_bytes())?;
    stdout.flush()?;
    Ok(())
}

fn print_tables(paths: &[PathBuf]) -> anyhow::Result<()> {
    let reports = paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        })
        .collect::<anyhow::Result<Vec<storyline_bench::Report>>>()?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(storyline_bench::report::markdown_tables(&reports).as_bytes())?;
    stdout.flush()?;
    Ok(())
}

fn plot_title(report: &storyline_bench::Report) -> String {
    let p = &report.params;
    format!(
        "{}: {} streams / {} stories, {}/s, {} B ({})",
        report.label, p.streams, p.stories, p.rate, p.payload_bytes, report.date_utc
    )
}
