//! Typed configuration: defaults, then a TOML file (`--config`), then `STORYLINE_*` environment variables, then
//! command-line flags. Parsed once into domain types; a bad value exits 64 before anything binds.
//!
//! The environment is passed in (not read here) so tests can supply their own without touching the process
//! environment.

use std::{net::SocketAddr, num::NonZeroUsize, path::Path, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use figment::{
    Figment, Metadata, Profile, Provider,
    providers::{Format, Serialized, Toml},
    value::{Dict, Map, Value},
};
use serde::{Deserialize, Deserializer, Serialize};
use storyline_core::{LogRetention, Retention, StoryId};
use storyline_server::{
    ServerConfig,
    auth::{JwtSecret, TokenRules},
    jwks::JwksSource,
    limits::{LimitsConfig, TierRates},
    network::NetworkPolicy,
};

/// Every setting, with its default. Field names are the TOML keys; `STORYLINE_<NAME>` overrides each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Settings {
    /// Listen address `host:port`.
    pub(crate) listen: String,
    /// Redis URL; unset selects the in-memory broker.
    pub(crate) redis_url: Option<String>,
    /// HS256 secret; unset generates an ephemeral one at start and prints example tokens.
    pub(crate) jwt_secret: Option<String>,
    /// The HS256 secret being rotated out: tokens it signed still verify. Unset once they have expired.
    pub(crate) jwt_secret_previous: Option<String>,
    /// Required `iss` claim; unset: not checked.
    pub(crate) jwt_issuer: Option<String>,
    /// Required `aud` claim; unset: not checked.
    pub(crate) jwt_audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, seconds.
    pub(crate) jwt_leeway_secs: u64,
    /// JWKS file with public keys for RS/PS/ES/EdDSA tokens; unset: none.
    pub(crate) jwks_file: Option<String>,
    /// JWKS URL with public keys for RS/PS/ES/EdDSA tokens, fetched in the background; unset: none.
    pub(crate) jwks_url: Option<String>,
    /// Seconds between JWKS refreshes (file re-read, URL re-fetched).
    pub(crate) jwks_refresh_secs: u64,
    /// PEM CA certificate(s) the JWKS URL's server must chain to, instead of the system's roots; unset: the
    /// system's roots.
    pub(crate) jwks_ca_file: Option<String>,
    /// Story patterns readable without a token, as tier guest (comma-separated in the environment).
    #[serde(deserialize_with = "patterns")]
    pub(crate) public_read: Vec<String>,
    /// Heartbeat comment interval on streams, seconds.
    pub(crate) heartbeat_secs: u64,
    /// Origins allowed for browsers (comma-separated in the environment, a list or string in TOML).
    #[serde(deserialize_with = "origins")]
    pub(crate) cors_origins: Vec<String>,
    /// Events kept per story (approximate in Redis: never fewer).
    pub(crate) retention_max_events: usize,
    /// Events older than this many seconds are dropped when their story is next appended to; 0 = no age limit.
    pub(crate) retention_max_age_secs: u64,
    /// Redis Cluster only: how often the live reader polls the slots of the stories it watches, milliseconds.
    pub(crate) redis_cluster_poll_ms: u64,
    /// Per-namespace retention, `namespace=max_events[/max_age_secs]` entries (comma-separated in the
    /// environment, a list or string in TOML).
    #[serde(deserialize_with = "list")]
    pub(crate) retention_namespaces: Vec<String>,
    /// POST body limit, bytes.
    pub(crate) body_limit_bytes: usize,
    /// How long an Idempotency-Key is remembered, seconds.
    pub(crate) idempotency_window_secs: u64,
    /// A story not appended to for this many seconds is forgotten: its events and idempotency keys expire
    /// together (Redis: key expiry; memory: dropped). 0 = never (the default).
    pub(crate) story_ttl_secs: u64,
    /// Base of the `Retry-After` sent with a 503 while the broker is unavailable, seconds (1 to 300); each answer
    /// carries a value drawn uniformly from [base, 2 x base].
    pub(crate) broker_retry_after_secs: u64,
    /// Base of the jittered `retry:` hint sent to stream clients, milliseconds.
    pub(crate) retry_ms: u64,
    /// Upper bound on one broker call during a request, milliseconds (past it: 503).
    pub(crate) broker_timeout_ms: u64,
    /// Grace period for in-flight requests at shutdown, after the drain window, seconds.
    pub(crate) shutdown_grace_secs: u64,
    /// At shutdown, open streams end spread over this many seconds; 0 = all at once.
    pub(crate) drain_window_secs: u64,
    /// HTTP worker threads; 0 means one per CPU the process may use (logical CPUs, or fewer under an affinity mask).
    pub(crate) workers: usize,
    /// Seconds a stream's socket may go without draining before the stream is disconnected (slow consumer).
    pub(crate) slow_consumer_secs: u64,
    /// Open streams this instance accepts (503 + Retry-After past it); 0 = as many as the open-files limit
    /// leaves room for.
    pub(crate) max_streams: usize,
    /// Stories one `GET /v1/streams` may carry (1 to 256); more: 400 `too-many-stories`.
    pub(crate) max_stories_per_stream: usize,
    /// Largest request head (header names and values), bytes; larger: 431.
    pub(crate) max_header_bytes: usize,
    /// Time a client gets to send its request head, milliseconds; past it: 408 and close (slowloris).
    pub(crate) client_request_timeout_ms: u64,
    /// Events per second one principal (`sub`) may publish, by tier; 0 = no limit.
    pub(crate) publish_rate_guest: u32,
    pub(crate) publish_rate_member: u32,
    pub(crate) publish_rate_agent: u32,
    pub(crate) publish_rate_admin: u32,
    /// Events per second one story accepts from all writers together; 0 = no limit.
    pub(crate) publish_rate_per_story: u32,
    /// New streams per second from one client IP; 0 = no limit.
    pub(crate) stream_opens_per_ip: u32,
    /// New streams per second this instance admits, from everyone together; 0 = no limit.
    pub(crate) stream_admissions_per_sec: u32,
    /// Streams one principal may hold open at once (anonymous guests: per IP); 0 = no limit.
    pub(crate) streams_per_principal: u32,
    /// Proxies (CIDRs or addresses) whose `X-Forwarded-For` is believed.
    #[serde(deserialize_with = "patterns")]
    pub(crate) trusted_proxies: Vec<String>,
    /// When non-empty, only clients in these networks are served.
    #[serde(deserialize_with = "patterns")]
    pub(crate) ip_allow: Vec<String>,
    /// Clients in these networks are refused.
    #[serde(deserialize_with = "patterns")]
    pub(crate) ip_deny: Vec<String>,
    /// PEM certificate chain (leaf first) to serve HTTPS and HTTP/2 with; needs `tls_key_file`.
    pub(crate) tls_cert_file: Option<String>,
    /// PEM private key of `tls_cert_file`.
    pub(crate) tls_key_file: Option<String>,
    /// Distinct story namespaces with their own metric label value; the rest are `other`.
    pub(crate) metrics_max_namespaces: usize,
    /// Distinct event types with their own metric label value; the rest are `other`.
    pub(crate) metrics_max_event_types: usize,
    /// Log format: `text` (human) or `json`.
    pub(crate) log_format: LogFormat,
    /// A listener of its own for `/metrics` (`host:port`, plain HTTP); the main listener then answers it 404.
    /// Unset: `/metrics` is served on the main listener.
    pub(crate) metrics_listen: Option<String>,
    /// When set, `/metrics` needs `Authorization: Bearer <this>` (on whichever listener serves it).
    pub(crate) metrics_token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    Text,
    Json,
}

impl Default for Settings {
    fn default() -> Self {
        let defaults = LimitsConfig::default();
        Self {
            listen: "127.0.0.1:8080".into(),
            redis_url: None,
            jwt_secret: None,
            jwt_secret_previous: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_secs: 5,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_secs: 300,
            jwks_ca_file: None,
            public_read: Vec::new(),
            heartbeat_secs: 15,
            cors_origins: Vec::new(),
            retention_max_events: 10_000,
            retention_max_age_secs: 0,
            retention_namespaces: Vec::new(),
            redis_cluster_poll_ms: 50,
            body_limit_bytes: 64 * 1024,
            idempotency_window_secs: 24 * 60 * 60,
            story_ttl_secs: 0,
            broker_retry_after_secs: 2,
            retry_ms: 2_000,
            broker_timeout_ms: 3_000,
            shutdown_grace_secs: 10,
            drain_window_secs: 10,
            workers: 0,
            slow_consumer_secs: 30,
            max_streams: 0,
            max_stories_per_stream: 32,
            max_header_bytes: 16 * 1024,
            client_request_timeout_ms: 5_000,
            publish_rate_guest: defaults.publish_per_sub.guest,
            publish_rate_member: defaults.publish_per_sub.member,
            publish_rate_agent: defaults.publish_per_sub.agent,
            publish_rate_admin: defaults.publish_per_sub.admin,
            publish_rate_per_story: defaults.publish_per_story,
            stream_opens_per_ip: defaults.stream_opens_per_ip,
            stream_admissions_per_sec: defaults.stream_admissions_per_sec,
            streams_per_principal: defaults.streams_per_principal,
            trusted_proxies: Vec::new(),
            ip_allow: Vec::new(),
            ip_deny: Vec::new(),
            tls_cert_file: None,
            tls_key_file: None,
            metrics_max_namespaces: 32,
            metrics_max_event_types: 64,
            log_format: LogFormat::Text,
            metrics_listen: None,
            metrics_token: None,
        }
    }
}

/// A list: a TOML array, or one comma-separated string (as environment variables give it); items trimmed,
/// empty ones dropped.
fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        Items(Vec<String>),
        Csv(String),
    }
    let list = match List::deserialize(d)? {
        List::Items(items) => items,
        List::Csv(csv) => csv.split(',').map(str::to_owned).collect(),
    };
    Ok(list.into_iter().map(|item| item.trim().to_owned()).filter(|item| !item.is_empty()).collect())
}

fn origins<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(list(d)?.into_iter().map(|o| o.trim_end_matches('/').to_owned()).filter(|o| !o.is_empty()).collect())
}

fn patterns<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    list(d)
}

/// `STORYLINE_*` variables as a figment provider. Values stay strings for string settings; numbers are parsed
/// for numeric ones, so `STORYLINE_JWT_SECRET=12345` stays a string.
struct EnvSource(Dict);

const PREFIX: &str = "STORYLINE_";
/// The longest story TTL accepted: ten years (Redis takes expiries in milliseconds; this keeps them far from any
/// overflow).
const MAX_STORY_TTL_SECS: u64 = 10 * 365 * 24 * 60 * 60;
/// The most HTTP workers actix-server starts (it panics on more).
const MAX_WORKERS: usize = 512;
/// URL schemes fred connects with: a server (optionally over a Unix socket), a cluster, or a server found
/// through Sentinel.
const REDIS_SCHEMES: &[&str] = &["redis://", "redis+unix://", "unix://", "redis-cluster://", "redis-sentinel://"];
/// `STORYLINE_*` variables that are read elsewhere (the config file path is a command-line concern; the probe's
/// token and CA file belong to `storyline probe`, and a host running both must be able to hold them next to
/// `serve`'s settings; `STORYLINE_URL` and `STORYLINE_TOKEN` are the clients' (the agent example and the client
/// docs read them), and an agent's environment may hold them next to a local `serve` or `storyline token`).
const NOT_SETTINGS: &[&str] = &["config", "probe_token", "probe_ca_file", "url", "token"];
const NUMERIC: &[&str] = &[
    "heartbeat_secs",
    "retention_max_events",
    "retention_max_age_secs",
    "body_limit_bytes",
    "idempotency_window_secs",
    "story_ttl_secs",
    "broker_retry_after_secs",
    "retry_ms",
    "broker_timeout_ms",
    "shutdown_grace_secs",
    "drain_window_secs",
    "redis_cluster_poll_ms",
    "stream_admissions_per_sec",
    "workers",
    "slow_consumer_secs",
    "max_streams",
    "max_stories_per_stream",
    "jwt_leeway_secs",
    "jwks_refresh_secs",
    "publish_rate_guest",
    "publish_rate_member",
    "publish_rate_agent",
    "publish_rate_admin",
    "publish_rate_per_story",
    "stream_opens_per_ip",
    "streams_per_principal",
    "metrics_max_namespaces",
    "metrics_max_event_types",
    "max_header_bytes",
    "client_request_timeout_ms",
];

impl EnvSource {
    fn new(vars: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Self> {
        let known: Vec<String> = Settings::keys();
        let mut dict = Dict::new();
        for (name, raw) in vars {
            let Some(key) = name.strip_prefix(PREFIX).map(str::to_ascii_lowercase) else { continue };
            if NOT_SETTINGS.contains(&key.as_str()) {
                continue;
            }
            if !known.contains(&key) {
                bail!(
                    "unknown setting {name}; known: {}",
                    known.iter().map(|k| format!("{PREFIX}{}", k.to_ascii_uppercase())).collect::<Vec<_>>().join(", ")
                );
            }
            let value = if NUMERIC.contains(&key.as_str()) {
                let n: u64 =
                    raw.trim().parse().with_context(|| format!("{name}={raw:?} is not a non-negative integer"))?;
                Value::from(n)
            } else {
                Value::from(raw)
            };
            dict.insert(key, value);
        }
        Ok(Self(dict))
    }
}

impl Provider for EnvSource {
    fn metadata(&self) -> Metadata {
        Metadata::named("STORYLINE_* environment variables")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.0.clone()))
    }
}

/// An age limit in seconds as retention takes it: `0` means none.
fn max_age(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

impl Settings {
    fn keys() -> Vec<String> {
        match Serialized::defaults(Self::default()).data() {
            Ok(map) => map.into_values().flat_map(|d| d.into_keys()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Defaults → TOML file (must exist if named) → environment.
    pub(crate) fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Self::default()));
        if let Some(path) = file {
            if !path.is_file() {
                bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let mut settings: Self = figment.merge(EnvSource::new(env)?).extract().context("invalid configuration")?;
        // An empty value means "not set" (e.g. STORYLINE_REDIS_URL= in a compose file selects memory).
        settings.redis_url = settings.redis_url.filter(|u| !u.trim().is_empty());
        settings.jwt_secret = settings.jwt_secret.filter(|s| !s.is_empty());
        settings.jwt_secret_previous = settings.jwt_secret_previous.filter(|s| !s.is_empty());
        settings.jwt_issuer = settings.jwt_issuer.filter(|s| !s.is_empty());
        settings.jwt_audience = settings.jwt_audience.filter(|s| !s.is_empty());
        settings.jwks_file = settings.jwks_file.filter(|s| !s.trim().is_empty());
        settings.jwks_url = settings.jwks_url.filter(|s| !s.trim().is_empty());
        settings.jwks_ca_file = settings.jwks_ca_file.filter(|s| !s.trim().is_empty());
        settings.tls_cert_file = settings.tls_cert_file.filter(|s| !s.trim().is_empty());
        settings.tls_key_file = settings.tls_key_file.filter(|s| !s.trim().is_empty());
        settings.metrics_listen = settings.metrics_listen.filter(|s| !s.trim().is_empty());
        settings.metrics_token = settings.metrics_token.filter(|s| !s.is_empty());
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.listen_addr()?;
        if let Some(metrics) = self.metrics_listen_addr()?
            && metrics == self.listen_addr()?
        {
            bail!("metrics_listen {metrics} is the main listen address: give /metrics a port of its own, or unset it");
        }
        if let Some(token) = &self.metrics_token
            && (token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            bail!(
                "metrics_token must be at least 16 visible ASCII characters (no spaces; 32 random bytes as hex recommended)"
            );
        }
        if let Some(url) = &self.redis_url
            && !REDIS_SCHEMES.iter().any(|scheme| url.starts_with(scheme))
        {
            bail!(
                "redis_url {:?} must be a Redis URL: redis://[user:pass@]host:port[/db], \
                 redis-cluster://host:port[?node=host:port...] or redis-sentinel://host:port[/db]?sentinelServiceName=name",
                redact_url(url)
            );
        }
        if self.retention_max_events == 0 {
            bail!("retention_max_events must be at least 1");
        }
        self.namespace_retention()?;
        if self.heartbeat_secs == 0 {
            bail!("heartbeat_secs must be at least 1");
        }
        if self.body_limit_bytes < 64 {
            bail!("body_limit_bytes must be at least 64");
        }
        if !(5..=1_000).contains(&self.redis_cluster_poll_ms) {
            bail!("redis_cluster_poll_ms must be between 5 and 1000");
        }
        if self.idempotency_window_secs == 0 {
            bail!("idempotency_window_secs must be at least 1");
        }
        if self.story_ttl_secs > MAX_STORY_TTL_SECS {
            bail!("story_ttl_secs must be at most {MAX_STORY_TTL_SECS} (ten years; 0 = never)");
        }
        if !(1..=300).contains(&self.broker_retry_after_secs) {
            bail!("broker_retry_after_secs must be between 1 and 300");
        }
        if self.slow_consumer_secs == 0 {
            bail!("slow_consumer_secs must be at least 1");
        }
        // actix-server panics on more than 512 workers: refuse the value here, before anything starts.
        if self.workers > MAX_WORKERS {
            bail!("workers must be at most {MAX_WORKERS} (0 = one per CPU)");
        }
        for pattern in &self.public_read {
            if pattern.chars().any(char::is_whitespace) || pattern.strip_suffix('*').unwrap_or(pattern).contains('*') {
                bail!("public_read entry {pattern:?} must be *, a story id, or a prefix ending in * (e.g. public:*)");
            }
        }
        if self.jwt_leeway_secs > 300 {
            bail!("jwt_leeway_secs must be at most 300 (it lets expired tokens through for that long)");
        }
        if let Some(url) = &self.jwks_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            bail!("jwks_url {url:?} must be an https:// URL");
        }
        if let Some(file) = &self.jwks_file {
            storyline_server::jwks::Jwks::load(JwksSource::new(Some(file.into()), None))
                .with_context(|| format!("jwks_file {file:?}"))?;
        }
        if let Some(ca) = &self.jwks_ca_file {
            if self.jwks_url.is_none() {
                bail!("jwks_ca_file is the CA of jwks_url's server: set jwks_url too, or unset it");
            }
            let mut source = JwksSource::new(None, self.jwks_url.clone());
            source.ca_file = Some(ca.into());
            storyline_server::jwks::Jwks::load(source).with_context(|| format!("jwks_ca_file {ca:?}"))?;
        }
        if self.jwks_refresh_secs < 10 {
            bail!("jwks_refresh_secs must be at least 10");
        }
        self.network()?;
        self.tls()?;
        if !(1..=storyline_server::MAX_STORIES_PER_STREAM).contains(&self.max_stories_per_stream) {
            bail!("max_stories_per_stream must be between 1 and {}", storyline_server::MAX_STORIES_PER_STREAM);
        }
        if self.max_header_bytes < 1024 {
            bail!("max_header_bytes must be at least 1024");
        }
        // actix-http checks this deadline against a clock it refreshes every 500 ms.
        if self.client_request_timeout_ms < 1_000 {
            bail!("client_request_timeout_ms must be at least 1000");
        }
        if self.broker_timeout_ms == 0 {
            bail!("broker_timeout_ms must be at least 1");
        }
        if let Some(secret) = &self.jwt_secret
            && secret.len() < 16
        {
            bail!("jwt_secret must be at least 16 bytes (32 random bytes recommended)");
        }
        if let Some(previous) = &self.jwt_secret_previous {
            if previous.len() < 16 {
                bail!("jwt_secret_previous must be at least 16 bytes");
            }
            if self.jwt_secret.is_none() {
                bail!("jwt_secret_previous is for rotating jwt_secret: set jwt_secret (the new one) too");
            }
        }
        for origin in &self.cors_origins {
            if origin == "*" || !(origin.starts_with("http://") || origin.starts_with("https://")) {
                bail!("cors_origins entry {origin:?} must be an origin like https://app.example.com (no wildcard)");
            }
        }
        Ok(())
    }

    /// Validates again after command-line overrides.
    pub(crate) fn revalidate(&self) -> anyhow::Result<()> {
        self.validate()
    }

    pub(crate) fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listen.parse().with_context(|| format!("listen {:?} is not host:port (e.g. 127.0.0.1:8080)", self.listen))
    }

    /// The metrics listener's address, when `/metrics` has one of its own.
    pub(crate) fn metrics_listen_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        self.metrics_listen
            .as_deref()
            .map(|addr| {
                addr.trim()
                    .parse()
                    .with_context(|| format!("metrics_listen {addr:?} is not host:port (e.g. 0.0.0.0:9464)"))
            })
            .transpose()
    }

    pub(crate) fn token_rules(&self) -> TokenRules {
        TokenRules {
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            leeway: Duration::from_secs(self.jwt_leeway_secs),
            public_read: self.public_read.clone(),
        }
    }

    /// Where public keys for asymmetric tokens come from, if anywhere.
    pub(crate) fn jwks(&self) -> Option<JwksSource> {
        (self.jwks_file.is_some() || self.jwks_url.is_some()).then(|| JwksSource {
            refresh: Duration::from_secs(self.jwks_refresh_secs),
            ca_file: self.jwks_ca_file.as_ref().map(Into::into),
            ..JwksSource::new(self.jwks_file.as_ref().map(Into::into), self.jwks_url.clone())
        })
    }

    pub(crate) fn limits(&self) -> LimitsConfig {
        LimitsConfig {
            publish_per_sub: TierRates {
                guest: self.publish_rate_guest,
                member: self.publish_rate_member,
                agent: self.publish_rate_agent,
                admin: self.publish_rate_admin,
            },
            publish_per_story: self.publish_rate_per_story,
            stream_opens_per_ip: self.stream_opens_per_ip,
            stream_admissions_per_sec: self.stream_admissions_per_sec,
            streams_per_principal: self.streams_per_principal,
        }
    }

    /// The address lists, parsed: CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or single addresses.
    pub(crate) fn network(&self) -> anyhow::Result<NetworkPolicy> {
        fn nets(name: &str, list: &[String]) -> anyhow::Result<Vec<ipnet::IpNet>> {
            list.iter()
                .map(|item| {
                    item.parse::<ipnet::IpNet>()
                        .or_else(|_| item.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                        .with_context(|| format!("{name} entry {item:?} is not a CIDR (10.0.0.0/8) or an address"))
                })
                .collect()
        }
        Ok(NetworkPolicy {
            trusted_proxies: nets("trusted_proxies", &self.trusted_proxies)?,
            allow: nets("ip_allow", &self.ip_allow)?,
            deny: nets("ip_deny", &self.ip_deny)?,
        })
    }

    /// The TLS configuration, when both files are set (one without the other is an error).
    pub(crate) fn tls(&self) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(storyline_server::tls::server_config(cert.as_ref(), key.as_ref())?)),
            _ => bail!("tls_cert_file and tls_key_file go together: set both to serve HTTPS, or neither"),
        }
    }

    /// What the HTTP surface is built with: every setting that concerns it, and nothing else.
    pub(crate) fn server_config(&self, secret: JwtSecret) -> anyhow::Result<ServerConfig> {
        Ok(ServerConfig {
            limits: self.limits(),
            network: self.network()?,
            tls: self.tls()?,
            metrics_max_namespaces: self.metrics_max_namespaces,
            metrics_max_event_types: self.metrics_max_event_types,
            heartbeat: Duration::from_secs(self.heartbeat_secs),
            retry_base: Duration::from_millis(self.retry_ms),
            cors_origins: self.cors_origins.clone(),
            body_limit_bytes: self.body_limit_bytes,
            broker_timeout: Duration::from_millis(self.broker_timeout_ms),
            retry_after_secs: u32::try_from(self.broker_retry_after_secs).unwrap_or(u32::MAX),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            drain_window: Duration::from_secs(self.drain_window_secs),
            workers: (self.workers > 0).then_some(self.workers),
            slow_consumer_timeout: Duration::from_secs(self.slow_consumer_secs),
            max_streams: NonZeroUsize::new(self.max_streams)
                .or_else(storyline_server::streams_allowed_by_open_files_limit),
            max_stories_per_stream: self.max_stories_per_stream,
            max_header_bytes: self.max_header_bytes,
            client_request_timeout: Duration::from_millis(self.client_request_timeout_ms),
            token_rules: self.token_rules(),
            jwks: self.jwks(),
            jwt_previous_secret: self.jwt_secret_previous.as_ref().map(|s| JwtSecret::new(s.as_bytes())),
            metrics_token: self.metrics_token.as_ref().map(|t| storyline_server::MetricsToken::new(t.as_bytes())),
            ..ServerConfig::new(secret)
        })
    }

    pub(crate) fn retention(&self) -> anyhow::Result<Retention> {
        let defaults = Retention {
            log: LogRetention {
                max_events: NonZeroUsize::new(self.retention_max_events).unwrap_or(NonZeroUsize::MIN),
                max_age: max_age(self.retention_max_age_secs),
            },
            idempotency_window: Duration::from_secs(self.idempotency_window_secs),
            story_ttl: max_age(self.story_ttl_secs),
            ..Retention::default()
        };
        Ok(self.namespace_retention()?.into_iter().fold(defaults, |r, (ns, log)| r.with_namespace(ns, log)))
    }

    /// `retention_namespaces`, parsed: `namespace=max_events` or `namespace=max_events/max_age_secs`
    /// (`chat=500/3600`: stories `chat:*` keep 500 events, none older than an hour; `/0`: no age limit).
    fn namespace_retention(&self) -> anyhow::Result<Vec<(String, LogRetention)>> {
        let mut seen = std::collections::HashSet::new();
        self.retention_namespaces
            .iter()
            .map(|entry| {
                let bad = || anyhow::anyhow!(
                    "retention_namespaces entry {entry:?} must be namespace=max_events or namespace=max_events/max_age_secs \
                     (e.g. chat=500/3600), with max_events at least 1"
                );
                let (namespace, rule) = entry.split_once('=').ok_or_else(bad)?;
                let (namespace, rule) = (namespace.trim(), rule.trim());
                let (events, age) = rule.split_once('/').unwrap_or((rule, "0"));
                let max_events = events.trim().parse().ok().and_then(NonZeroUsize::new).ok_or_else(bad)?;
                let age_secs: u64 = age.trim().parse().map_err(|_| bad())?;
                // A namespace is a story id's part before its first `:`: it must itself be a valid story id.
                if namespace.contains(':') || StoryId::parse(namespace).is_err() {
                    bail!("retention_namespaces entry {entry:?}: {namespace:?} is not a namespace (a story id's part before its first `:`)");
                }
                if !seen.insert(namespace.to_owned()) {
                    bail!("retention_namespaces names {namespace:?} twice");
                }
                Ok((namespace.to_owned(), LogRetention { max_events, max_age: max_age(age_secs) }))
            })
            .collect()
    }

    /// The effective settings as TOML, secrets redacted.
    pub(crate) fn to_toml_redacted(&self) -> String {
        let mut shown = self.clone();
        if shown.jwt_secret.is_some() {
            shown.jwt_secret = Some("<redacted>".into());
        }
        if shown.jwt_secret_previous.is_some() {
            shown.jwt_secret_previous = Some("<redacted>".into());
        }
        if let Some(url) = &shown.redis_url {
            shown.redis_url = Some(redact_url(url));
        }
        if shown.metrics_token.is_some() {
            shown.metrics_token = Some("<redacted>".into());
        }
        toml::to_string(&shown).unwrap_or_default()
    }
}

/// `redis://user:pass@host` -> `redis://user:<redacted>@host`.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}:<redacted>{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        format!("{}/../storyline-testkit/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn tls_needs_both_files_and_readable_ones() {
        let load =
            |env: &[(&str, &str)]| Settings::load(None, env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let cert = fixture("tls-cert.pem");
        let key = fixture("tls-key.pem");
        assert!(load(&[("STORYLINE_TLS_CERT_FILE", &cert)]).is_err(), "cert without key");
        assert!(load(&[("STORYLINE_TLS_KEY_FILE", &key)]).is_err(), "key without cert");
        assert!(load(&[("STORYLINE_TLS_CERT_FILE", &key), ("STORYLINE_TLS_KEY_FILE", &key)]).is_err(), "key as cert");
        assert!(load(&[("STORYLINE_TLS_CERT_FILE", "/nonexistent.pem"), ("STORYLINE_TLS_KEY_FILE", &key)]).is_err());
        assert!(load(&[("STORYLINE_TLS_CERT_FILE", &cert), ("STORYLINE_TLS_KEY_FILE", &key)]).is_ok());
    }

    /// Every setting of the HTTP surface reaches `ServerConfig` (each set to a non-default value here).
    #[test]
    fn server_settings_reach_the_server_config() {
        let env = [
            ("STORYLINE_HEARTBEAT_SECS", "7"),
            ("STORYLINE_RETRY_MS", "1234"),
            ("STORYLINE_CORS_ORIGINS", "https://a.example"),
            ("STORYLINE_BODY_LIMIT_BYTES", "4096"),
            ("STORYLINE_BROKER_TIMEOUT_MS", "777"),
            ("STORYLINE_BROKER_RETRY_AFTER_SECS", "9"),
            ("STORYLINE_SHUTDOWN_GRACE_SECS", "3"),
            ("STORYLINE_DRAIN_WINDOW_SECS", "4"),
            ("STORYLINE_STREAM_ADMISSIONS_PER_SEC", "9"),
            ("STORYLINE_WORKERS", "3"),
            ("STORYLINE_SLOW_CONSUMER_SECS", "21"),
            ("STORYLINE_MAX_STREAMS", "99"),
            ("STORYLINE_MAX_STORIES_PER_STREAM", "20"),
            ("STORYLINE_MAX_HEADER_BYTES", "2048"),
            ("STORYLINE_CLIENT_REQUEST_TIMEOUT_MS", "2500"),
            ("STORYLINE_JWT_ISSUER", "iss"),
            ("STORYLINE_JWT_SECRET", "the-new-secret-0123456789"),
            ("STORYLINE_JWT_SECRET_PREVIOUS", "the-old-secret-0123456789"),
            ("STORYLINE_JWKS_URL", "https://idp.example/jwks.json"),
            ("STORYLINE_JWKS_REFRESH_SECS", "60"),
            ("STORYLINE_JWKS_CA_FILE", &fixture("tls-ca.pem")),
            ("STORYLINE_PUBLISH_RATE_GUEST", "2"),
            ("STORYLINE_METRICS_MAX_NAMESPACES", "5"),
            ("STORYLINE_METRICS_MAX_EVENT_TYPES", "6"),
            ("STORYLINE_PUBLISH_RATE_MEMBER", "3"),
            ("STORYLINE_PUBLISH_RATE_AGENT", "4"),
            ("STORYLINE_PUBLISH_RATE_ADMIN", "0"),
            ("STORYLINE_PUBLISH_RATE_PER_STORY", "6"),
            ("STORYLINE_STREAM_OPENS_PER_IP", "7"),
            ("STORYLINE_STREAMS_PER_PRINCIPAL", "8"),
            ("STORYLINE_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1"),
            ("STORYLINE_IP_ALLOW", "10.0.0.0/8"),
            ("STORYLINE_IP_DENY", "10.9.0.0/16,2001:db8::/32"),
            ("STORYLINE_TLS_CERT_FILE", &fixture("tls-cert.pem")),
            ("STORYLINE_TLS_KEY_FILE", &fixture("tls-key.pem")),
            ("STORYLINE_METRICS_TOKEN", "metrics-token-0123456789"),
        ];
        let s =
            Settings::load(None, env.map(|(k, v)| (k.to_owned(), v.to_owned()))).unwrap_or_else(|e| panic!("{e:#}"));
        let c = s.server_config(JwtSecret::new("0123456789abcdef")).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(c.heartbeat, Duration::from_secs(7));
        assert_eq!(c.retry_base, Duration::from_millis(1234));
        assert_eq!(c.cors_origins, ["https://a.example"]);
        assert_eq!(c.body_limit_bytes, 4096);
        assert_eq!(c.broker_timeout, Duration::from_millis(777));
        assert_eq!(c.retry_after_secs, 9);
        assert_eq!(c.shutdown_grace, Duration::from_secs(3));
        assert_eq!(c.drain_window, Duration::from_secs(4));
        assert_eq!(c.workers, Some(3));
        assert_eq!(c.slow_consumer_timeout, Duration::from_secs(21));
        assert_eq!(c.max_streams.map(NonZeroUsize::get), Some(99));
        assert_eq!(c.max_stories_per_stream, 20);
        assert_eq!(c.max_header_bytes, 2048);
        assert_eq!(c.client_request_timeout, Duration::from_millis(2500));
        assert_eq!(c.token_rules.issuer.as_deref(), Some("iss"));
        assert_eq!((c.metrics_max_namespaces, c.metrics_max_event_types), (5, 6));
        assert_eq!(c.jwt_previous_secret.map(|s| s.len()), Some(25));
        assert_eq!(
            c.limits,
            LimitsConfig {
                publish_per_sub: TierRates { guest: 2, member: 3, agent: 4, admin: 0 },
                publish_per_story: 6,
                stream_opens_per_ip: 7,
                stream_admissions_per_sec: 9,
                streams_per_principal: 8,
            }
        );
        let nets = |list: &[&str]| list.iter().map(|n| n.parse::<ipnet::IpNet>().unwrap()).collect::<Vec<_>>();
        assert_eq!(
            c.network,
            NetworkPolicy {
                trusted_proxies: nets(&["10.0.0.0/8", "192.0.2.1/32"]),
                allow: nets(&["10.0.0.0/8"]),
                deny: nets(&["10.9.0.0/16", "2001:db8::/32"]),
            }
        );
        assert_eq!(c.tls.map(|t| t.alpn_protocols.clone()), Some(vec![b"h2".to_vec(), b"http/1.1".to_vec()]));
        assert!(c.metrics_token.is_some_and(|t| t.matches(b"metrics-token-0123456789")), "the metrics token");
        let jwks = c.jwks.unwrap_or_else(|| panic!("jwks"));
        assert_eq!(
            (jwks.url.as_deref(), jwks.refresh),
            (Some("https://idp.example/jwks.json"), Duration::from_secs(60))
        );
        assert_eq!(jwks.ca_file, Some(fixture("tls-ca.pem").into()));
    }

    #[test]
    fn the_readme_configuration_table_lists_every_setting() {
        let readme = include_str!("../../../README.md");
        let mut keys = Settings::keys();
        keys.sort();
        assert!(keys.len() > 10, "settings found: {keys:?}");
        for key in keys {
            let name = format!("`{PREFIX}{}`", key.to_ascii_uppercase());
            assert!(readme.lines().any(|l| l.starts_with(&format!("| {name} |"))), "README's table lacks {name}");
        }
    }

    #[test]
    fn the_probe_token_variable_is_not_an_unknown_setting() {
        let s = Settings::load(None, env(&[("STORYLINE_PROBE_TOKEN", "a.b.c"), ("STORYLINE_HEARTBEAT_SECS", "7")]));
        assert_eq!(s.map(|s| s.heartbeat_secs).ok(), Some(7), "serve starts with STORYLINE_PROBE_TOKEN set");
    }

    #[test]
    fn the_clients_variables_are_not_unknown_settings() {
        let vars = [
            ("STORYLINE_URL", "http://127.0.0.1:8080"),
            ("STORYLINE_TOKEN", "a.b.c"),
            ("STORYLINE_HEARTBEAT_SECS", "7"),
        ];
        let s = Settings::load(None, env(&vars));
        assert_eq!(s.map(|s| s.heartbeat_secs).ok(), Some(7), "serve starts with the client's variables set");
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_match_the_documented_table() {
        let s = Settings::load(None, env(&[])).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(s, Settings::default());
        assert_eq!(s.listen, "127.0.0.1:8080");
        assert_eq!((s.heartbeat_secs, s.retention_max_events, s.body_limit_bytes), (15, 10_000, 65_536));
        assert!(s.redis_url.is_none() && s.jwt_secret.is_none() && s.cors_origins.is_empty());
    }

    #[test]
    fn environment_overrides_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("storyline.toml");
        std::fs::write(
            &path,
            "heartbeat_secs = 5\nretention_max_events = 50\ncors_origins = [\"https://a.example\"]\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let s = Settings::load(
            Some(&path),
            env(&[
                ("STORYLINE_HEARTBEAT_SECS", "7"),
                ("STORYLINE_JWT_SECRET", "1234567890123456"),
                ("STORYLINE_CORS_ORIGINS", "https://b.example, https://c.example/"),
                ("OTHER_VAR", "ignored"),
            ]),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(s.heartbeat_secs, 7, "env wins over file");
        assert_eq!(s.retention_max_events, 50, "file wins over default");
        assert_eq!(s.jwt_secret.as_deref(), Some("1234567890123456"), "numeric-looking secret stays a string");
        assert_eq!(s.cors_origins, vec!["https://b.example", "https://c.example"]);
    }

    #[test]
    fn bad_values_are_reported_by_name() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("STORYLINE_HEARTBEAT_SECS", "soon")], "STORYLINE_HEARTBEAT_SECS"),
            (&[("STORYLINE_LISTEN", "nowhere")], "listen"),
            (&[("STORYLINE_RETENTION_MAX_EVENTS", "0")], "retention_max_events"),
            (&[("STORYLINE_JWT_SECRET", "short")], "jwt_secret"),
            (&[("STORYLINE_CORS_ORIGINS", "*")], "cors_origins"),
            (&[("STORYLINE_NO_SUCH_THING", "1")], "unknown setting"),
            (&[("STORYLINE_LOG_FORMAT", "xml")], "log_format"),
            (&[("STORYLINE_REDIS_URL", "not a url")], "redis_url"),
            (&[("STORYLINE_RETENTION_NAMESPACES", "chat")], "retention_namespaces"),
            (&[("STORYLINE_RETENTION_NAMESPACES", "chat=0")], "retention_namespaces"),
            (&[("STORYLINE_RETENTION_NAMESPACES", "chat=5/soon")], "retention_namespaces"),
            (&[("STORYLINE_RETENTION_NAMESPACES", "a:b=5")], "not a namespace"),
            (&[("STORYLINE_RETENTION_NAMESPACES", "chat=5,chat=6")], "twice"),
            (&[("STORYLINE_WORKERS", "513")], "workers must be at most 512"),
            (&[("STORYLINE_MAX_STORIES_PER_STREAM", "0")], "max_stories_per_stream"),
            (&[("STORYLINE_MAX_STORIES_PER_STREAM", "257")], "max_stories_per_stream"),
            (
                &[("STORYLINE_JWKS_CA_FILE", "/nonexistent.pem"), ("STORYLINE_JWKS_URL", "https://i.example/k")],
                "jwks_ca_file",
            ),
            (
                &[("STORYLINE_JWKS_CA_FILE", &fixture("tls-key.pem")), ("STORYLINE_JWKS_URL", "https://i.example/k")],
                "jwks_ca_file",
            ),
            (&[("STORYLINE_JWKS_CA_FILE", &fixture("tls-ca.pem"))], "set jwks_url too"),
            (&[("STORYLINE_METRICS_LISTEN", "nowhere")], "metrics_listen"),
            (&[("STORYLINE_METRICS_LISTEN", "127.0.0.1:8080")], "port of its own"),
            (&[("STORYLINE_METRICS_TOKEN", "short")], "metrics_token"),
            (&[("STORYLINE_METRICS_TOKEN", "has a space in it 0123456789")], "metrics_token"),
            (&[("STORYLINE_BROKER_RETRY_AFTER_SECS", "0")], "broker_retry_after_secs"),
            (&[("STORYLINE_BROKER_RETRY_AFTER_SECS", "301")], "broker_retry_after_secs"),
            (&[("STORYLINE_STORY_TTL_SECS", "315360001")], "story_ttl_secs"),
            (&[("STORYLINE_STORY_TTL_SECS", "soon")], "STORYLINE_STORY_TTL_SECS"),
        ];
        for (vars, needle) in cases {
            let err = Settings::load(None, env(vars)).err().map(|e| format!("{e:#}")).unwrap_or_default();
            assert!(err.contains(needle), "case {vars:?}: error {err:?} should mention {needle:?}");
        }
    }

    #[test]
    fn retention_is_per_namespace_with_the_defaults_for_the_rest() {
        let s = Settings::load(
            None,
            env(&[
                ("STORYLINE_RETENTION_MAX_EVENTS", "100"),
                ("STORYLINE_RETENTION_MAX_AGE_SECS", "60"),
                ("STORYLINE_RETENTION_NAMESPACES", "chat=500/3600, archive = 1000000"),
            ]),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let r = s.retention().unwrap_or_else(|e| panic!("{e:#}"));
        let of = |id: &str| r.for_story(&StoryId::parse(id).unwrap_or_else(|e| panic!("{e}")));
        let log = |n: usize, age: Option<u64>| LogRetention {
            max_events: NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN),
            max_age: age.map(Duration::from_secs),
        };
        assert_eq!(of("chat:room-1"), log(500, Some(3600)));
        assert_eq!(of("archive:old"), log(1_000_000, None), "no age part: no age limit");
        assert_eq!(of("public:tale"), log(100, Some(60)), "other namespaces: the defaults");
        assert_eq!(of("chat"), log(500, Some(3600)), "an id without `:` is its own namespace");
    }

    #[test]
    fn the_story_ttl_is_off_by_default_and_reaches_the_retention() {
        let default = Settings::load(None, env(&[])).and_then(|s| s.retention()).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(default.story_ttl, None, "off by default");
        let set = Settings::load(None, env(&[("STORYLINE_STORY_TTL_SECS", "86400")]))
            .and_then(|s| s.retention())
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(set.story_ttl, Some(Duration::from_secs(86_400)));
        assert_eq!(ServerConfig::new(JwtSecret::new("0123456789abcdef")).retry_after_secs, 2, "Retry-After base 2 s");
    }

    #[test]
    fn cluster_and_sentinel_urls_are_accepted() {
        for url in [
            "redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001",
            "redis-sentinel://127.0.0.1:26379/0?sentinelServiceName=mymaster",
        ] {
            let s = Settings::load(None, env(&[("STORYLINE_REDIS_URL", url)]));
            assert!(s.is_ok(), "{url}: {:?}", s.err());
        }
    }

    #[test]
    fn empty_values_mean_unset() {
        let s = Settings::load(None, env(&[("STORYLINE_REDIS_URL", ""), ("STORYLINE_JWT_SECRET", "")]))
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!((s.redis_url, s.jwt_secret), (None, None), "memory broker, ephemeral secret");
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        assert!(Settings::load(Some(Path::new("/nonexistent/storyline.toml")), env(&[])).is_err());
    }

    #[test]
    fn printed_config_hides_secrets() {
        let s = Settings {
            jwt_secret: Some("super-secret-value".into()),
            jwt_secret_previous: Some("older-secret-value".into()),
            redis_url: Some("redis://app:pw@redis:6379/0".into()),
            metrics_token: Some("metrics-token-value".into()),
            ..Settings::default()
        };
        let shown = s.to_toml_redacted();
        assert!(!shown.contains("metrics-token-value"), "{shown}");
        assert!(!shown.contains("super-secret-value") && !shown.contains(":pw@"), "{shown}");
        assert!(!shown.contains("older-secret-value"), "{shown}");
        assert!(shown.contains("redis://app:<redacted>@redis:6379/0"), "{shown}");
    }
}
