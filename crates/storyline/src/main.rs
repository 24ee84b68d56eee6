//! The `storyline` binary: the one place that reads configuration and picks the broker adapter.
//!
//! - `storyline serve`: run the service (memory broker unless a Redis URL is configured).
//! - `storyline token`: mint a JWT with the configured secret.
//! - `storyline revoke`: revoke a token (`--jti`) or every token of a subject (`--sub`) through a running
//!   instance's admin endpoint (see `revoke.rs`).
//! - `storyline openapi`: print the OpenAPI document.
//! - `storyline asyncapi`: print the AsyncAPI document of the streams (YAML).
//! - `storyline config`: print the effective configuration (secrets redacted).
//! - `storyline probe`: a synthetic reader and writer that checks round trip and resume (see `probe.rs`).

mod probe;
mod revoke;
mod settings;
mod telemetry;

#[cfg(test)]
mod tests {
    #[test]
    fn the_reader_page_url_carries_the_story_and_token_uri_encoded_in_its_fragment() {
        assert_eq!(
            super::reader_page_url("http://127.0.0.1:8080", "public:tale 1", "a.b-c_d"),
            "http://127.0.0.1:8080/reader#story=public%3Atale%201&token=a.b-c_d"
        );
    }
}

use std::{net::TcpListener, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use settings::{LogFormat, Settings};
use storyline_broker_memory::MemoryBroker;
use storyline_broker_redis::{RedisBroker, RedisConfig};
use storyline_core::Broker;
use storyline_server::{
    Application,
    auth::{JwtKeys, JwtSecret, Tier, TokenRules},
    startup,
};

/// Exit status for bad configuration (EX_USAGE / EX_CONFIG family).
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "storyline", version, about = "Real-time story streams: HTTP ingress, SSE fan-out, Redis Streams log")]
struct Cli {
    /// TOML configuration file. STORYLINE_* environment variables override it.
    #[arg(long, global = true, env = "STORYLINE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service.
    Serve {
        /// Listen address host:port (overrides STORYLINE_LISTEN).
        #[arg(long)]
        listen: Option<String>,
        /// Redis URL (overrides STORYLINE_REDIS_URL); without one the in-memory broker is used.
        #[arg(long)]
        redis_url: Option<String>,
    },
    /// Mint a JWT signed with the configured secret (STORYLINE_JWT_SECRET).
    Token {
        /// The subject (`sub`): who is writing or reading.
        #[arg(long)]
        sub: String,
        /// Space-separated scopes, e.g. "read:* write:public:*".
        #[arg(long, default_value = "read:*")]
        scope: String,
        /// guest, member, agent or admin.
        #[arg(long)]
        tier: Option<Tier>,
        /// Lifetime in seconds (at most ten years).
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=315_360_000))]
        ttl_secs: u64,
    },
    /// Revoke a token (--jti) or every token of a subject (--sub) until a time, through a running instance's
    /// `POST /v1/admin/revocations` (audited there; every instance on the same Redis applies it within a heartbeat).
    Revoke(revoke::RevokeArgs),
    /// Print the OpenAPI document.
    Openapi,
    /// Print the AsyncAPI document of the streams (YAML).
    Asyncapi,
    /// Print the effective configuration as TOML (secrets redacted).
    Config,
    /// Check a running storyline end to end: stream, publish, round trip, resume. Repeats and serves /metrics,
    /// or runs once (--once) and exits 0 or 1.
    Probe(probe::ProbeArgs),
}

fn main() -> ExitCode {
    // reqwest is built without a crypto provider (no aws-lc-rs C build): the OTLP/HTTP exporter's client needs the
    // process default. The server's and storyline-client's TLS name ring themselves. Err: already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    // The probe is a client of some storyline, possibly elsewhere: this machine's service settings are not its own.
    let command = match cli.command {
        Command::Probe(args) => return probe::main(args),
        other => other,
    };
    let settings = match Settings::load(cli.config.as_deref(), std::env::vars()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("storyline: {e:#}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = match command {
        Command::Serve { listen, redis_url } => {
            let mut settings = settings;
            if let Some(listen) = listen {
                settings.listen = listen;
            }
            if redis_url.is_some() {
                settings.redis_url = redis_url.filter(|u| !u.trim().is_empty());
            }
            if let Err(e) = settings.revalidate() {
                eprintln!("storyline: {e:#}");
                return ExitCode::from(EXIT_CONFIG);
            }
            serve(settings)
        }
        Command::Token { sub, scope, tier, ttl_secs } => token(&settings, &sub, &scope, tier, ttl_secs),
        Command::Revoke(args) => revoke::main(&settings, args),
        Command::Openapi => write_stdout(&storyline_server::openapi::pretty_json()),
        Command::Asyncapi => {
            storyline_server::asyncapi::yaml().map_err(anyhow::Error::from).and_then(|y| write_stdout(&y))
        }
        Command::Config => write_stdout(&settings.to_toml_redacted()),
        Command::Probe(_) => unreachable!("dispatched above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("storyline: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

fn token(settings: &Settings, sub: &str, scope: &str, tier: Option<Tier>, ttl_secs: u64) -> anyhow::Result<()> {
    let secret = settings
        .jwt_secret
        .as_deref()
        .context("no JWT secret configured: set STORYLINE_JWT_SECRET (or jwt_secret in the config file)")?;
    let keys = JwtKeys::with_rules(&JwtSecret::new(secret), settings.token_rules());
    let token = keys.mint(sub, scope, tier, Duration::from_secs(ttl_secs)).map_err(anyhow::Error::msg)?;
    write_stdout(&format!("{token}\n"))
}

/// Logs to stdout, filtered by `RUST_LOG` (default `info`). Audit events (target `storyline::audit`) are JSON
/// lines in either format, so they can be shipped and queried as structured records.
///
/// Lines written within a request or an event's fan-out carry their span's `trace_id` and `span_id` (in JSON, in
/// the `spans` list) when traces are exported. With a tracer provider, storyline's spans also go to OTLP.
///
/// Lines are formatted on the thread that logs and written to stdout by a thread of their own (tracing-appender),
/// so an HTTP worker does not wait in a `write` to a slow pipe or log collector while a burst of requests (a
/// reconnect storm: an access line per refused stream, and an audit line) queues behind it. Nothing is dropped:
/// when its buffer of 128k lines is full, logging waits as it did before. Keep the returned guard alive until
/// exit; dropping it flushes what is buffered.
fn init_logging(
    format: LogFormat,
    tracer: Option<&opentelemetry_sdk::trace::SdkTracerProvider>,
) -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::{EnvFilter, Layer, filter::filter_fn, fmt, layer::SubscriberExt, util::SubscriberInitExt};
    let (stdout, guard) =
        tracing_appender::non_blocking::NonBlockingBuilder::default().lossy(false).finish(std::io::stdout());
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let is_audit = |meta: &tracing::Metadata<'_>| meta.target() == storyline_server::audit::AUDIT_TARGET;
    let otel = tracer.map(telemetry::layer);
    match format {
        LogFormat::Json => {
            tracing_subscriber::registry()
                .with(otel)
                .with(fmt::layer().json().with_current_span(false).with_writer(stdout).with_filter(filter()))
                .init();
        }
        LogFormat::Text => {
            use std::io::IsTerminal;
            let text = fmt::layer()
                .with_ansi(std::io::stdout().is_terminal())
                .with_writer(stdout.clone())
                .with_filter(filter_fn(move |meta| !is_audit(meta)))
                .with_filter(filter());
            let audit = fmt::layer()
                .json()
                .with_current_span(false)
                .with_writer(stdout)
                .with_filter(filter_fn(is_audit))
                .with_filter(filter());
            tracing_subscriber::registry().with(otel).with(text).with(audit).init();
        }
    }
    guard
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    runtime.block_on(async {
        let tracer = telemetry::from_env()?;
        let _flush_logs_at_exit = init_logging(settings.log_format, tracer.as_ref());
        if tracer.is_some() {
            storyline_server::telemetry::enable_spans();
            tracing::info!("exporting traces over OTLP (OTEL_EXPORTER_OTLP_*)");
        }
        let result = run(settings).await;
        if let Some(tracer) = tracer {
            telemetry::shutdown(tracer).await;
        }
        result
    })
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let (secret, ephemeral) = match &settings.jwt_secret {
        Some(s) => (JwtSecret::new(s.as_bytes()), false),
        None => (ephemeral_secret()?, true),
    };
    let broker: Arc<dyn Broker> = match &settings.redis_url {
        Some(url) => {
            let config = RedisConfig {
                retention: settings.retention()?,
                command_timeout: Duration::from_millis(settings.broker_timeout_ms),
                cluster_poll_interval: Duration::from_millis(settings.redis_cluster_poll_ms),
                ..RedisConfig::new(url)
            };
            let broker = RedisBroker::connect(config)
                .await
                .with_context(|| format!("could not connect to Redis at {}", settings::redact_url(url)))?;
            tracing::info!(broker = "redis", url = %settings::redact_url(url), "broker selected");
            Arc::new(broker)
        }
        None => {
            tracing::info!(broker = "memory", "broker selected (in-memory: events are not persisted or shared)");
            Arc::new(MemoryBroker::new(settings.retention()?))
        }
    };

    let addr = settings.listen_addr()?;
    let listener = listen(addr).with_context(|| format!("could not listen on {addr}"))?;
    let metrics_listener = match settings.metrics_listen_addr()? {
        Some(addr) => Some(listen(addr).with_context(|| format!("could not listen on {addr} (metrics_listen)"))?),
        None => None,
    };
    let config = settings.server_config(secret.clone())?;
    let metrics_token = config.metrics_token.is_some();
    let app = Application::build_with_metrics_listener(config, broker, listener, metrics_listener)?;
    let bound = app.local_addr();
    tracing::info!(address = %bound, "listening");
    match app.metrics_addr() {
        Some(metrics) => {
            tracing::info!(metrics_address = %metrics, metrics_token, "/metrics served on its own address only");
        }
        None => tracing::info!(metrics_token, "metrics served on the main listener at /metrics"),
    }
    if ephemeral && settings.jwks().is_none() {
        print_quickstart(&secret, settings.token_rules(), bound)?;
    }

    let shutdown = app.shutdown();
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());
    wait_for_signal().await;
    tracing::info!("shutdown signal received: draining streams and finishing in-flight requests");
    startup::stop(&shutdown, &handle).await;
    server.await.context("server task")?.context("server")?;
    tracing::info!("stopped");
    Ok(())
}

/// Pending connections the kernel queues for us (capped by net.core.somaxconn). `TcpListener::bind` uses 128,
/// which a reconnect burst overflows: measured, 2,000 streams took a flat ~1 s to connect (SYN retransmits)
/// against 0.13 s for nginx with 4096.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)?.into_std()
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn ephemeral_secret() -> anyhow::Result<JwtSecret> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no OS randomness for the ephemeral secret: {e}"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(JwtSecret::new(hex))
}

/// Ready-to-paste commands for a first run without configuration.
fn print_quickstart(secret: &JwtSecret, rules: TokenRules, bound: std::net::SocketAddr) -> anyhow::Result<()> {
    let keys = JwtKeys::with_rules(secret, rules);
    let day = Duration::from_secs(24 * 60 * 60);
    let writer =
        keys.mint("quickstart-writer", "read:* write:*", Some(Tier::Member), day).map_err(anyhow::Error::msg)?;
    let reader = keys.mint("quickstart-reader", "read:*", Some(Tier::Member), day).map_err(anyhow::Error::msg)?;
    let host = if bound.ip().is_unspecified() { format!("127.0.0.1:{}", bound.port()) } else { bound.to_string() };
    let base = format!("http://{host}");
    write_stdout(&format!(
        "\nstoryline is up at {base}\n\
         No JWT secret is configured, so this run uses an ephemeral one (set STORYLINE_JWT_SECRET to keep tokens\n\
         valid across restarts). Tokens for the next 24 hours:\n\n\
         Read a story as it is written (leave this running):\n  \
         curl -N '{base}/v1/stories/demo/stream?access_token={reader}'\n\n\
         Write to it, from another terminal:\n  \
         curl -X POST '{base}/v1/stories/demo/events' \\\n    \
         -H 'Authorization: Bearer {writer}' \\\n    \
         -H 'Content-Type: application/json' \\\n    \
         -d '{{\"type\":\"chapter\",\"data\":{{\"text\":\"Once upon a time\"}}}}'\n\n\
         In a browser:\n  \
         new EventSource('{base}/v1/stories/demo/stream?access_token={reader}').addEventListener('chapter', e => console.log(JSON.parse(e.data)))\n\n\
         Or open the reader page, which shows the story live (the story and the token are in the URL fragment,\n\
         which the browser never sends to a server):\n  \
         {reader_page}\n\n",
        reader_page = reader_page_url(&base, "demo", &reader),
    ))
}

/// The reader page opened on `story` with `token`: `<base>/reader#story=<id>&token=<jwt>`, both URI-encoded (as
/// `encodeURIComponent` does; the page decodes them).
fn reader_page_url(base: &str, story: &str, token: &str) -> String {
    fn encode(value: &str) -> String {
        value
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z'
                | b'a'..=b'z'
                | b'0'..=b'9'
                | b'-'
                | b'_'
                | b'.'
                | b'!'
                | b'~'
                | b'*'
                | b'\''
                | b'('
                | b')' => char::from(b).to_string(),
                other => format!("%{other:02X}"),
            })
            .collect()
    }
    format!("{base}/reader#story={}&token={}", encode(story), encode(token))
}
