//! Building and running the server. [`Application::build`] is the only way to make one: `main` uses it, and so
//! does every integration test (binding port 0 and reading back the real port).

use std::{
    net::{SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use actix_cors::Cors;
use actix_web::{
    App, Error, HttpMessage, HttpRequest, HttpServer,
    body::MessageBody,
    dev::{ResourceDef, Server, ServerHandle, ServiceRequest, ServiceResponse},
    http::{Method, header},
    middleware::{Condition, DefaultHeaders, Next, from_fn},
    web,
};
use metrics_exporter_prometheus::PrometheusHandle;
use storyline_core::Broker;
use storyline_hub::{Hub, HubConfig};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    auth::JwtKeys,
    config::ServerConfig,
    error::ApiError,
    jwks::Jwks,
    limits::{HOUSEKEEPING_PERIOD, Limits},
    meters,
    network::ClientIp,
    routes,
};

/// Shared by every worker.
#[derive(Debug)]
pub struct AppState {
    pub broker: Arc<dyn Broker>,
    pub config: ServerConfig,
    pub shutdown: Shutdown,
    /// The fan-out engine: one broker tail per story, frames encoded once.
    pub(crate) hub: Hub,
    /// The one signal every open stream listens to besides its story: the process-wide heartbeat tick and the
    /// drain (no timer per stream, and one wait per stream rather than two).
    pub(crate) signals: watch::Receiver<StreamSignal>,
    /// Rate and per-principal limits.
    pub(crate) limits: Limits,
    /// This instance's snapshot of the revocation list (see `revocation`).
    pub(crate) revocations: Arc<crate::revocation::RevocationGuard>,
    /// Story namespaces and event types as metric labels, capped.
    pub(crate) event_labels: Arc<meters::EventLabels>,
    pub(crate) hub_meters: Arc<meters::HubMeters>,
    pub(crate) metrics: PrometheusHandle,
    /// `/metrics` is served on a listener of its own, so the main listener answers it 404.
    pub(crate) metrics_elsewhere: bool,
    /// The background runtime, counted in `storyline_runtime_alive_tasks` while the server lives.
    pub(crate) _runtime_tasks: Option<meters::RuntimeRegistration>,
}

/// The drain: once triggered, readiness fails and new streams are refused at once, while the open streams end
/// spread over the drain window (each at its own moment, with a jittered `retry:` hint), so that a rolling
/// deploy does not send every reader of an instance to the others in the same second. It also counts the open
/// streams, which is what [`stop`] waits for before it stops the HTTP server.
#[derive(Debug, Clone)]
pub struct Shutdown(Arc<Drain>);

#[derive(Debug)]
struct Drain {
    token: CancellationToken,
    window: Duration,
    /// Streams open now (against `config.max_streams`).
    open_streams: AtomicUsize,
    /// Notified whenever a stream closes while draining.
    stream_closed: Notify,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new(Duration::ZERO)
    }
}

impl Shutdown {
    /// A drain that ends the open streams over `window`.
    pub fn new(window: Duration) -> Self {
        Self(Arc::new(Drain {
            token: CancellationToken::new(),
            window,
            open_streams: AtomicUsize::new(0),
            stream_closed: Notify::new(),
        }))
    }

    pub fn trigger(&self) {
        self.0.token.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.0.token.is_cancelled()
    }

    pub async fn drained(&self) {
        self.0.token.cancelled().await;
    }

    /// The time over which open streams are ended once the drain starts.
    pub fn window(&self) -> Duration {
        self.0.window
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.0.open_streams.load(Ordering::Acquire)
    }

    /// Takes a stream place if fewer than `max` are open.
    pub(crate) fn try_open_stream(&self, max: usize) -> bool {
        self.0
            .open_streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| (open < max).then_some(open + 1))
            .is_ok()
    }

    pub(crate) fn stream_closed(&self) {
        self.0.open_streams.fetch_sub(1, Ordering::AcqRel);
        // Only [`Shutdown::streams_closed`] listens, and only while draining: no waker work per close otherwise.
        // (It checks the count after it starts listening, so a close just before the drain is not missed.)
        if self.is_draining() {
            self.0.stream_closed.notify_waiters();
        }
    }

    /// Waits until no stream is open, or `limit` has passed. Call it once the drain is triggered: closes are only
    /// signalled while draining.
    pub async fn streams_closed(&self, limit: Duration) {
        let all_closed = async {
            loop {
                let closed = self.0.stream_closed.notified();
                if self.open_streams() == 0 {
                    return;
                }
                closed.await;
            }
        };
        let _ = tokio::time::timeout(limit, all_closed).await;
    }
}

/// A built, not yet running, server.
pub struct Application {
    server: Server,
    addr: SocketAddr,
    shutdown: Shutdown,
    /// The metrics listener's server and address, when `/metrics` has a listener of its own.
    metrics: Option<(Server, SocketAddr)>,
}

/// Route templates, used to tell "wrong method" (405) from "no such resource" (404).
const ROUTES: &[(&str, &str)] = &[
    ("/v1/stories/{story}/events", "GET, POST"),
    ("/v1/stories/{story}/stream", "GET"),
    ("/v1/streams", "GET"),
    ("/v1/admin/revocations", "GET, POST"),
    ("/healthz", "GET, HEAD"),
    ("/readyz", "GET, HEAD"),
    ("/metrics", "GET"),
    ("/openapi.json", "GET"),
    ("/", "GET"),
    ("/reader", "GET"),
    ("/reader/storyline.js", "GET"),
    ("/reader/reader.js", "GET"),
    ("/reader/reader.css", "GET"),
];

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Application {
    /// Builds the server on an already bound listener (port 0 in tests). Signals are not handled here: the
    /// caller decides when to [`Application::stop`].
    pub fn build(config: ServerConfig, broker: Arc<dyn Broker>, listener: TcpListener) -> std::io::Result<Self> {
        Self::build_with_metrics_listener(config, broker, listener, None)
    }

    /// [`Application::build`], with `/metrics` served on `metrics_listener` (plain HTTP, nothing else on it) when
    /// one is given: the main listener then answers `/metrics` with 404, so the port readers and writers reach
    /// does not expose the instance's internals. The metrics listener stops with the server, after the drain
    /// (Prometheus keeps scraping a draining instance).
    pub fn build_with_metrics_listener(
        config: ServerConfig,
        broker: Arc<dyn Broker>,
        listener: TcpListener,
        metrics_listener: Option<TcpListener>,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let shutdown = Shutdown::new(config.drain_window);
        let mut keys = JwtKeys::with_rules(&config.jwt_secret, config.token_rules.clone());
        if let Some(previous) = &config.jwt_previous_secret {
            keys = keys.with_previous_secret(previous);
        }
        if let Some(source) = &config.jwks {
            let jwks = Arc::new(Jwks::load(source.clone()).map_err(std::io::Error::other)?);
            let runtime = runtime()?;
            let stop = shutdown.clone();
            jwks.spawn_refresher(&runtime, async move { stop.drained().await });
            keys = keys.with_jwks(jwks);
        }
        let keys = web::Data::new(keys);
        let workers = config.workers;
        let grace = config.shutdown_grace;
        let client_request_timeout = config.client_request_timeout;
        let tls = config.tls.clone();
        // Before metering: the store's calls are rate-limit checks, not broker operations.
        let limits = Limits::new(config.limits).with_global(broker.rate_limits());
        let broker: Arc<dyn Broker> = Arc::new(crate::metered::MeteredBroker::new(broker));
        let event_labels = Arc::new(meters::EventLabels {
            namespaces: meters::CappedLabel::new(config.metrics_max_namespaces),
            event_types: meters::CappedLabel::new(config.metrics_max_event_types),
        });
        let hub_meters = Arc::new(meters::HubMeters::new(Arc::clone(&event_labels)));
        let hub = Hub::with_observer(Arc::clone(&broker), HubConfig::default(), hub_meters.clone());
        let revocations = Arc::new(crate::revocation::RevocationGuard::new(&*broker));
        let stop = shutdown.clone();
        revocations.spawn_refresher(&runtime()?, config.heartbeat, config.broker_timeout, async move {
            stop.drained().await;
        });
        let signals = stream_signals(config.heartbeat, shutdown.clone(), Arc::clone(&revocations))?;
        let state = web::Data::new(AppState {
            broker,
            shutdown: shutdown.clone(),
            hub,
            signals,
            limits,
            revocations,
            event_labels,
            hub_meters,
            metrics: meters::handle(),
            metrics_elsewhere: metrics_listener.is_some(),
            _runtime_tasks: meters::RuntimeRegistration::current(),
            config,
        });
        spawn_housekeeping(&state, shutdown.clone())?;
        let metrics = match metrics_listener {
            Some(metrics_listener) => Some(metrics_server(&state, metrics_listener)?),
            None => None,
        };

        let mut server = HttpServer::new(move || {
            let cors_origins = &state.config.cors_origins;
            App::new()
                // Runs on each worker's own runtime: counts its tasks for as long as the worker lives.
                .app_data(meters::RuntimeRegistration::current())
                .app_data(state.clone())
                .app_data(keys.clone())
                .app_data(web::QueryConfig::default().error_handler(|e, _| ApiError::BadQuery(e.to_string()).into()))
                .app_data(web::PathConfig::default().error_handler(|e, _| ApiError::BadPath(e.to_string()).into()))
                .wrap(Condition::new(!cors_origins.is_empty(), cors(cors_origins)))
                .wrap(from_fn(credentials_only_with_a_granted_origin))
                .wrap(from_fn(limit_headers))
                .wrap(from_fn(network_gate))
                .wrap(from_fn(crate::audit::audit))
                .wrap(security_headers())
                .wrap(from_fn(access_log))
                .service(routes::publish::publish)
                .service(routes::history::history)
                .service(routes::stream::stream)
                .service(routes::streams::streams)
                .service(routes::admin::revoke)
                .service(routes::admin::revocations)
                .service(routes::health::healthz)
                .service(routes::health::readyz)
                .configure(|app| {
                    if !state.metrics_elsewhere {
                        app.service(routes::health::metrics);
                    }
                })
                .service(routes::health::openapi)
                .service(routes::reader::root)
                .service(routes::reader::page)
                .service(routes::reader::client)
                .service(routes::reader::script)
                .service(routes::reader::styles)
                .default_service(web::to(fallback))
        })
        // Remember each connection's fd, for the slow-consumer sweeper (see `slow`). Over TLS the socket under the
        // session; with HTTP/2 every stream of the connection shares it, and a connection that stopped draining is
        // cut for all of them (each resumes with Last-Event-ID).
        .on_connect(|conn, data| {
            use std::os::fd::AsRawFd;
            type TlsStream = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
            if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                data.insert(crate::slow::ConnFd(tcp.as_raw_fd()));
            } else if let Some(tls) = conn.downcast_ref::<TlsStream>() {
                data.insert(crate::slow::ConnFd(tls.get_ref().0.as_raw_fd()));
            }
        })
        .client_request_timeout(client_request_timeout)
        .disable_signals()
        .shutdown_timeout(grace.as_secs().max(1));
        if let Some(n) = workers {
            server = server.workers(n.max(1));
        }
        let server = match tls {
            Some(tls) => server.listen_rustls_0_23(listener, (*tls).clone())?,
            None => server.listen(listener)?,
        }
        .run();
        Ok(Self { server, addr, shutdown, metrics })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address `/metrics` is served on when it has a listener of its own.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, addr)| *addr)
    }

    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Runs until stopped (the metrics listener, if any, stops right after the server).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let metrics = self.metrics.map(|(server, _)| (server.handle(), tokio::spawn(server)));
        let served = self.server.await;
        if let Some((handle, task)) = metrics {
            handle.stop(true).await;
            if let Ok(Err(e)) = task.await {
                tracing::warn!(error = %e, "metrics listener");
            }
        }
        served
    }
}

/// The server of the metrics listener: `GET /metrics` and nothing else (404 problem+json for every other path),
/// behind the same address gate, headers and access log as the main listener. Plain HTTP on one worker: it is
/// scraped, not browsed.
fn metrics_server(state: &web::Data<AppState>, listener: TcpListener) -> std::io::Result<(Server, SocketAddr)> {
    let addr = listener.local_addr()?;
    let state = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(from_fn(network_gate))
            .wrap(security_headers())
            .wrap(from_fn(access_log))
            .service(routes::health::metrics)
            .default_service(web::to(|| async { actix_web::ResponseError::error_response(&ApiError::NotFound) }))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    Ok((server, addr))
}

/// The runtime the server's background tasks (stream signals, JWKS refresh, limiter housekeeping) run on.
fn runtime() -> std::io::Result<tokio::runtime::Handle> {
    tokio::runtime::Handle::try_current()
        .map_err(|e| std::io::Error::other(format!("Application::build needs a tokio runtime: {e}")))
}

/// Streams still open this long after the drain window (a reader that is not reading, a frame being written) do
/// not hold the stop back any further: the server's own shutdown timeout ends them.
const DRAIN_SLACK: Duration = Duration::from_secs(1);

/// Graceful stop: readiness fails and new streams are refused at once; open streams end spread over the drain
/// window while the server keeps answering (in-flight and new POSTs, history, probes: a load balancer takes a
/// moment to notice readiness); then the server stops accepting connections and in-flight requests get the
/// shutdown grace period to finish.
pub async fn stop(shutdown: &Shutdown, handle: &ServerHandle) {
    shutdown.trigger();
    shutdown.streams_closed(shutdown.window() + DRAIN_SLACK).await;
    handle.stop(true).await;
}

/// What open streams are told, all at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamSignal {
    /// The n-th heartbeat period passed: write a keep-alive comment.
    Tick(u64),
    /// The server drains, and this share of the drain window (in thousandths) has passed: a stream whose own
    /// moment ([`drain_moment`]) is at or below it ends, at the next frame boundary.
    Drain(u16),
    /// The revocation list changed: a stream whose token it revokes ends (streams also check at every tick).
    Revocations,
}

/// The end of the drain window, in [`StreamSignal::Drain`]'s thousandths.
pub(crate) const DRAIN_COMPLETE: u16 = 1000;

/// A stream's moment within the drain window, drawn at random when it opens: streams end spread evenly over it.
pub(crate) fn drain_moment() -> u16 {
    fastrand::u16(1..=DRAIN_COMPLETE)
}

/// How often the drain's progress is published: streams end in this many waves over the window.
const DRAIN_STEPS: u32 = 100;

/// Starts the shared stream signal: one task ticking a watch channel that every open stream listens to. Once the
/// shutdown is triggered it also publishes the drain's progress through the window ([`StreamSignal::Drain`],
/// heartbeats continuing for the streams still open), then ends (and the closed channel means the drain is
/// complete). It also stops when the last receiver (the app state) is dropped.
fn stream_signals(
    period: Duration,
    shutdown: Shutdown,
    revocations: Arc<crate::revocation::RevocationGuard>,
) -> std::io::Result<watch::Receiver<StreamSignal>> {
    let runtime = runtime()?;
    let (tx, rx) = watch::channel(StreamSignal::Tick(0));
    runtime.spawn(async move {
        let mut heartbeat = tokio::time::interval(period);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await; // the first tick is immediate; streams start with their retry: frame instead
        let mut tick = 0u64;
        let mut next_tick = move || {
            tick = tick.wrapping_add(1);
            StreamSignal::Tick(tick)
        };
        loop {
            tokio::select! {
                () = shutdown.drained() => break,
                _ = heartbeat.tick() => if tx.send(next_tick()).is_err() { return },
                () = revocations.changed() => if tx.send(StreamSignal::Revocations).is_err() { return },
            }
        }
        let window = shutdown.window();
        let started = tokio::time::Instant::now();
        let mut progress = tokio::time::interval((window / DRAIN_STEPS).max(Duration::from_millis(1)));
        loop {
            let signal = tokio::select! {
                _ = progress.tick() => {
                    let share = started.elapsed().as_micros().saturating_mul(u128::from(DRAIN_COMPLETE))
                        / window.as_micros().max(1);
                    StreamSignal::Drain(u16::try_from(share).unwrap_or(DRAIN_COMPLETE).min(DRAIN_COMPLETE))
                }
                _ = heartbeat.tick() => next_tick(),
                () = revocations.changed() => StreamSignal::Revocations,
            };
            if tx.send(signal).is_err() || signal == StreamSignal::Drain(DRAIN_COMPLETE) {
                return;
            }
        }
    });
    Ok(rx)
}

fn cors(origins: &[String]) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods([Method::GET, Method::POST])
        .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT, header::CACHE_CONTROL])
        .allowed_header("last-event-id")
        .allowed_header("idempotency-key")
        .expose_headers([header::RETRY_AFTER])
        .supports_credentials()
        .max_age(3600)
        // Answer without CORS headers rather than 400: the browser enforces the policy, and same-origin or
        // non-browser callers must not be broken by an Origin header.
        .block_on_origin_mismatch(false);
    for origin in origins {
        cors = cors.allowed_origin(origin);
    }
    cors
}

/// actix-cors sends `Access-Control-Allow-Credentials: true` whatever the origin; it means nothing without an
/// `Access-Control-Allow-Origin`, but "credentials for listed origins only" should hold on the wire too.
async fn credentials_only_with_a_granted_origin(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let mut res = next.call(req).await?;
    if !res.headers().contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        res.headers_mut().remove(header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
    }
    Ok(res)
}

/// Headers on every response, errors and CORS preflights included. storyline serves data, and one page (the reader,
/// `routes::reader`, whose responses set a policy of their own, which this middleware then leaves alone): nothing
/// it answers may be sniffed into something executable, framed, or leak the page's URL as a referrer.
const SECURITY_HEADERS: &[(&str, &str)] = &[
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
    ("referrer-policy", "no-referrer"),
];

fn security_headers() -> DefaultHeaders {
    SECURITY_HEADERS.iter().fold(DefaultHeaders::new(), |headers, &(name, value)| headers.add((name, value)))
}

/// 431 for a request head over `max_header_bytes`, before any handler (and so any broker work) runs.
async fn limit_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::EitherBody<impl MessageBody>>, Error> {
    let limit = req.app_data::<web::Data<AppState>>().map_or(usize::MAX, |state| state.config.max_header_bytes);
    let size: usize = req.headers().iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    if size > limit {
        let response = actix_web::HttpResponse::from_error(ApiError::HeadersTooLarge { size, limit });
        return Ok(req.into_response(response).map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// Resolves the client IP (through trusted proxies only), records it for the handlers, and refuses addresses
/// the allow/deny lists keep out, before anything else runs.
async fn network_gate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::EitherBody<impl MessageBody>>, Error> {
    if let (Some(state), Some(peer)) = (req.app_data::<web::Data<AppState>>(), req.peer_addr()) {
        let policy = &state.config.network;
        let ip = policy.client_ip(peer.ip(), req.headers());
        req.extensions_mut().insert(ClientIp(ip));
        if !policy.admits(ip) {
            return Ok(req
                .into_response(actix_web::HttpResponse::from_error(ApiError::IpDenied))
                .map_into_right_body());
        }
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// Prunes idle keys from the rate limiters every [`HOUSEKEEPING_PERIOD`] until shutdown.
fn spawn_housekeeping(state: &web::Data<AppState>, shutdown: Shutdown) -> std::io::Result<()> {
    let runtime = runtime()?;
    let state = state.clone();
    runtime.spawn(async move {
        let mut interval = tokio::time::interval(HOUSEKEEPING_PERIOD);
        loop {
            tokio::select! {
                () = shutdown.drained() => return,
                _ = interval.tick() => state.limits.housekeeping(),
            }
        }
    });
    Ok(())
}

/// 405 with `Allow` for known paths, 404 otherwise; always problem+json.
async fn fallback(req: HttpRequest) -> actix_web::HttpResponse {
    // With a metrics listener of its own, `/metrics` is no resource of this listener at all.
    let metrics_elsewhere = req.app_data::<web::Data<AppState>>().is_some_and(|state| state.metrics_elsewhere);
    let allow = ROUTES
        .iter()
        .filter(|(pattern, _)| !(metrics_elsewhere && *pattern == "/metrics"))
        .find(|(pattern, _)| ResourceDef::new(*pattern).is_match(req.path()))
        .map(|(_, a)| *a);
    match allow {
        Some(allow) => {
            let mut res = actix_web::ResponseError::error_response(&ApiError::MethodNotAllowed);
            if let Ok(value) = header::HeaderValue::from_str(allow) {
                res.headers_mut().insert(header::ALLOW, value);
            }
            res
        }
        None => actix_web::ResponseError::error_response(&ApiError::NotFound),
    }
}

/// The routes whose answer is a stream.
const STREAM_ROUTES: &[&str] = &["/v1/stories/{story}/stream", "/v1/streams"];

/// One log line and one metric sample per request. Logs the path only: query strings can carry tokens.
async fn access_log(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    use tracing::Instrument;
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.path().to_owned();
    // A span is named after its route template, which the resource map can tell before routing; but that is a
    // second walk of the routes' regexes (measured: 3 µs of a POST's 23), so only when spans are recorded.
    let early_route = crate::telemetry::spans_enabled().then(|| req.match_pattern()).flatten();
    let span = crate::telemetry::request_span(req.headers(), method.as_str(), early_route.as_deref(), &path);
    let res = next.call(req).instrument(span.clone()).await?;
    let status = res.status().as_u16();
    let elapsed = started.elapsed();
    crate::telemetry::finish_request_span(&span, status);
    let route = early_route.or_else(|| res.request().match_pattern()).unwrap_or_else(|| "unmatched".to_owned());
    // Stream opens are counted by the stream meters (opened, or failed by reason), not as requests: a stream's
    // "duration" would be its whole life.
    if !STREAM_ROUTES.contains(&route.as_str()) {
        meters::http_request(&route, method.as_str(), status, elapsed.as_secs_f64());
    } else if let Some(error) = res.response().error().and_then(|e| e.as_error::<ApiError>()) {
        meters::stream_open_failed(error);
    }
    span.in_scope(|| {
        tracing::info!(target: "storyline::access", %method, %path, status, elapsed_ms = elapsed.as_secs_f64() * 1000.0, "request");
    });
    Ok(res)
}
