//! What the HTTP surface needs to run. The binary builds this from defaults, a TOML file and `STORYLINE_*`
//! variables; tests build it directly.

use std::{num::NonZeroUsize, time::Duration};

use crate::{
    auth::{JwtSecret, TokenRules},
    jwks::JwksSource,
    limits::LimitsConfig,
    network::NetworkPolicy,
};

/// Settings of the HTTP/SSE surface.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Verifies (and, for `storyline token`, signs) HS256 tokens.
    pub jwt_secret: JwtSecret,
    /// The HS256 secret being rotated out: tokens it signed still verify until it is removed.
    pub jwt_previous_secret: Option<JwtSecret>,
    /// Issuer, audience and clock leeway every token is checked against.
    pub token_rules: TokenRules,
    /// Public keys for RS/PS/ES/EdDSA tokens (a JWKS file and/or URL); `None`: HS256 tokens only.
    pub jwks: Option<JwksSource>,
    /// Interval between heartbeat comments on idle streams.
    pub heartbeat: Duration,
    /// Base of the `retry:` hint sent first on every stream; each connection gets this plus up to 50% jitter so a
    /// mass reconnect spreads out.
    pub retry_base: Duration,
    /// Origins allowed to call the API from browsers. Empty: no CORS headers at all.
    pub cors_origins: Vec<String>,
    /// Maximum POST body size in bytes.
    pub body_limit_bytes: usize,
    /// Upper bound on one broker call made while answering a request; past it the request gets 503.
    pub broker_timeout: Duration,
    /// Base of the `Retry-After` (seconds) sent when the broker is unavailable (or did not confirm an append): each
    /// such response carries a value drawn uniformly from `[base, 2 * base]`, so clients do not return in
    /// lockstep. Draining and at-capacity answers send the base as it is.
    pub retry_after_secs: u32,
    /// After the drain window, how long in-flight requests get to finish before the server stops.
    pub shutdown_grace: Duration,
    /// At shutdown, open streams end spread over this window (each at a random moment, with a jittered `retry:`
    /// hint) while the instance keeps answering other requests; zero ends them all at once.
    pub drain_window: Duration,
    /// Worker threads; `None` means actix's default: one per CPU the process may use
    /// (`std::thread::available_parallelism`: logical CPUs, or fewer under an affinity mask).
    pub workers: Option<usize>,
    /// A stream whose socket has not drained for this long is disconnected (reason `slow_consumer`); the
    /// client resumes with Last-Event-ID and loses nothing. Never less than twice the heartbeat.
    pub slow_consumer_timeout: Duration,
    /// Open streams this instance accepts; past it, a new stream gets 503 with `Retry-After` before any broker
    /// work, so a reconnect storm or one greedy client cannot exhaust file descriptors that publishers and the
    /// broker connection need. `None`: no limit.
    pub max_streams: Option<NonZeroUsize>,
    /// Stories one `GET /v1/streams` may carry (1 to [`MAX_STORIES_PER_STREAM`]); more: 400 `too-many-stories`.
    /// Each story costs a stream a cursor into its feed, and every frame's `id:` line names every story.
    pub max_stories_per_stream: usize,
    /// Publish and stream-open rates, concurrent streams per principal.
    pub limits: LimitsConfig,
    /// Client IP resolution (trusted proxies) and the allow/deny lists.
    pub network: NetworkPolicy,
    /// Serve HTTPS (and HTTP/2) with this configuration; `None`: plain HTTP (behind a TLS-terminating proxy).
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Distinct story namespaces (the part of a story id before the first `:`) that get their own metric label
    /// value; the rest are counted as `other`.
    pub metrics_max_namespaces: usize,
    /// Distinct event types that get their own metric label value; the rest are `other`.
    pub metrics_max_event_types: usize,
    /// Largest request head accepted (the sum of header names and values); larger: 431. Keeps oversized cookies
    /// or junk headers from being carried through every handler.
    pub max_header_bytes: usize,
    /// Time a client gets to send its request head; past it the connection is answered 408 and closed
    /// (slowloris protection: a connection that trickles its head cannot hold a worker's slot).
    pub client_request_timeout: Duration,
    /// When set, `/metrics` answers only requests with `Authorization: Bearer <this token>` (others: 401), on
    /// whichever listener serves it. `None`: anyone who reaches the listener may read it.
    pub metrics_token: Option<MetricsToken>,
}

/// The bearer token `/metrics` asks for. Compared in constant time; never printed.
#[derive(Clone)]
pub struct MetricsToken(Vec<u8>);

impl MetricsToken {
    pub fn new(token: impl Into<Vec<u8>>) -> Self {
        Self(token.into())
    }

    /// Whether `presented` is this token. The comparison takes the same time whatever the bytes are (subtle), so
    /// the answer's timing tells a guesser nothing about how much of a guess was right; only the length may
    /// differ in time.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq as _;
        self.0.as_slice().ct_eq(presented).into()
    }
}

impl std::fmt::Debug for MetricsToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsToken(<redacted>)")
    }
}

impl ServerConfig {
    /// Defaults, with the given secret.
    pub fn new(jwt_secret: JwtSecret) -> Self {
        Self {
            jwt_secret,
            jwt_previous_secret: None,
            token_rules: TokenRules::default(),
            jwks: None,
            heartbeat: Duration::from_secs(15),
            retry_base: Duration::from_millis(2_000),
            cors_origins: Vec::new(),
            body_limit_bytes: 64 * 1024,
            broker_timeout: Duration::from_secs(3),
            retry_after_secs: 2,
            shutdown_grace: Duration::from_secs(10),
            drain_window: Duration::from_secs(10),
            workers: None,
            slow_consumer_timeout: Duration::from_secs(30),
            max_streams: None,
            max_stories_per_stream: 32,
            limits: LimitsConfig::default(),
            tls: None,
            metrics_max_namespaces: 32,
            metrics_max_event_types: 64,
            network: NetworkPolicy::default(),
            max_header_bytes: 16 * 1024,
            client_request_timeout: Duration::from_secs(5),
            metrics_token: None,
        }
    }
}

/// The most stories one stream may be configured to carry: its `id:` cursor is up to 41 bytes per story, on
/// every frame.
pub const MAX_STORIES_PER_STREAM: usize = 256;

/// File descriptors kept free for everything but streams: listeners, broker connections, POSTs, logs.
pub const RESERVED_FILE_DESCRIPTORS: u64 = 256;

/// The most streams the process's open-files limit (soft `RLIMIT_NOFILE`) leaves room for, keeping
/// [`RESERVED_FILE_DESCRIPTORS`] free (or half the limit, if it is that small). `None` if the limit is unlimited
/// or cannot be read.
pub fn streams_allowed_by_open_files_limit() -> Option<NonZeroUsize> {
    let (soft, _hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()?;
    if soft == nix::sys::resource::RLIM_INFINITY {
        return None;
    }
    let streams = soft.saturating_sub(RESERVED_FILE_DESCRIPTORS).max(soft / 2);
    NonZeroUsize::new(usize::try_from(streams).unwrap_or(usize::MAX))
}
