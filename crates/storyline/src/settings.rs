//! Typed configuration: defaults, then a TOML file (`--config`), then `STORYLINE_*` environment variables, then
//! command-line flags. Parsed once into domain types; a bad value exits 64 before anything binds.
//!
//! The environment is passed in (not read here) so tests can supply their own without touching the process
//! environment.

use std::{net::SocketAddr, num::NonZeroUsize, path::Path, time::Duration};

use anyhow::{Context, bail};
use figment::{
    Figment, Metadata, Profile, Provider,
    providers::{Format, Serialized, Toml},
    value::{Dict, Map, Value},
};
use serde::{Deserialize, Deserializer, Serialize};
use storyline_core::Retention;
use storyline_server::auth::TokenRules;

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
    /// Required `iss` claim; unset: not checked.
    pub(crate) jwt_issuer: Option<String>,
    /// Required `aud` claim; unset: not checked.
    pub(crate) jwt_audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, seconds.
    pub(crate) jwt_leeway_secs: u64,
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
    /// POST body limit, bytes.
    pub(crate) body_limit_bytes: usize,
    /// How long an Idempotency-Key is remembered, seconds.
    pub(crate) idempotency_window_secs: u64,
    /// Base of the jittered `retry:` hint sent to stream clients, milliseconds.
    pub(crate) retry_ms: u64,
    /// Upper bound on one broker call during a request, milliseconds (past it: 503).
    pub(crate) broker_timeout_ms: u64,
    /// Grace period for in-flight requests at shutdown, seconds.
    pub(crate) shutdown_grace_secs: u64,
    /// HTTP worker threads; 0 means one per physical core.
    pub(crate) workers: usize,
    /// Seconds a stream's socket may go without draining before the stream is disconnected (slow consumer).
    pub(crate) slow_consumer_secs: u64,
    /// Open streams this instance accepts (503 + Retry-After past it); 0 = as many as the open-files limit
    /// leaves room for.
    pub(crate) max_streams: usize,
    /// Largest request head (header names and values), bytes; larger: 431.
    pub(crate) max_header_bytes: usize,
    /// Time a client gets to send its request head, milliseconds; past it: 408 and close (slowloris).
    pub(crate) client_request_timeout_ms: u64,
    /// Log format: `text` (human) or `json`.
    pub(crate) log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    Text,
    Json,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            redis_url: None,
            jwt_secret: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_secs: 5,
            public_read: Vec::new(),
            heartbeat_secs: 15,
            cors_origins: Vec::new(),
            retention_max_events: 10_000,
            retention_max_age_secs: 0,
            body_limit_bytes: 64 * 1024,
            idempotency_window_secs: 24 * 60 * 60,
            retry_ms: 2_000,
            broker_timeout_ms: 3_000,
            shutdown_grace_secs: 10,
            workers: 0,
            slow_consumer_secs: 30,
            max_streams: 0,
            max_header_bytes: 16 * 1024,
            client_request_timeout_ms: 5_000,
            log_format: LogFormat::Text,
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
/// `STORYLINE_*` variables that are read elsewhere (the config file path is a command-line concern).
const NOT_SETTINGS: &[&str] = &["config"];
const NUMERIC: &[&str] = &[
    "heartbeat_secs",
    "retention_max_events",
    "retention_max_age_secs",
    "body_limit_bytes",
    "idempotency_window_secs",
    "retry_ms",
    "broker_timeout_ms",
    "shutdown_grace_secs",
    "workers",
    "slow_consumer_secs",
    "max_streams",
    "jwt_leeway_secs",
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
        settings.jwt_issuer = settings.jwt_issuer.filter(|s| !s.is_empty());
        settings.jwt_audience = settings.jwt_audience.filter(|s| !s.is_empty());
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.listen_addr()?;
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://") || url.starts_with("redis+unix://") || url.starts_with("unix://"))
        {
            bail!("redis_url {:?} must be a redis:// URL (redis://[user:pass@]host:port[/db])", redact_url(url));
        }
        if self.retention_max_events == 0 {
            bail!("retention_max_events must be at least 1");
        }
        if self.heartbeat_secs == 0 {
            bail!("heartbeat_secs must be at least 1");
        }
        if self.body_limit_bytes < 64 {
            bail!("body_limit_bytes must be at least 64");
        }
        if self.idempotency_window_secs == 0 {
            bail!("idempotency_window_secs must be at least 1");
        }
        if self.slow_consumer_secs == 0 {
            bail!("slow_consumer_secs must be at least 1");
        }
        for pattern in &self.public_read {
            if pattern.chars().any(char::is_whitespace) || pattern.strip_suffix('*').unwrap_or(pattern).contains('*') {
                bail!("public_read entry {pattern:?} must be *, a story id, or a prefix ending in * (e.g. public:*)");
            }
        }
        if self.jwt_leeway_secs > 300 {
            bail!("jwt_leeway_secs must be at most 300 (it lets expired tokens through for that long)");
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

    pub(crate) fn token_rules(&self) -> TokenRules {
        TokenRules {
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            leeway: Duration::from_secs(self.jwt_leeway_secs),
            public_read: self.public_read.clone(),
        }
    }

    pub(crate) fn retention(&self) -> Retention {
        Retention {
            max_events: NonZeroUsize::new(self.retention_max_events).unwrap_or(NonZeroUsize::MIN),
            max_age: (self.retention_max_age_secs > 0).then(|| Duration::from_secs(self.retention_max_age_secs)),
            idempotency_window: Duration::from_secs(self.idempotency_window_secs),
        }
    }

    /// The effective settings as TOML, secrets redacted.
    pub(crate) fn to_toml_redacted(&self) -> String {
        let mut shown = self.clone();
        if shown.jwt_secret.is_some() {
            shown.jwt_secret = Some("<redacted>".into());
        }
        if let Some(url) = &shown.redis_url {
            shown.redis_url = Some(redact_url(url));
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
        ];
        for (vars, needle) in cases {
            let err = Settings::load(None, env(vars)).err().map(|e| format!("{e:#}")).unwrap_or_default();
            assert!(err.contains(needle), "case {vars:?}: error {err:?} should mention {needle:?}");
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
            redis_url: Some("redis://app:pw@redis:6379/0".into()),
            ..Settings::default()
        };
        let shown = s.to_toml_redacted();
        assert!(!shown.contains("super-secret-value") && !shown.contains(":pw@"), "{shown}");
        assert!(shown.contains("redis://app:<redacted>@redis:6379/0"), "{shown}");
    }
}
