//! Public keys for asymmetrically signed tokens (RS/PS/ES/EdDSA), from a JWKS file and/or a JWKS URL.
//!
//! Each key is pinned to exactly one algorithm: its JWK `alg`, or, when absent, the one its type implies (RSA:
//! RS256, EC P-256: ES256, EC P-384: ES384, OKP Ed25519: EdDSA). A token is checked only against a key whose
//! algorithm is the token's `alg`, so a token cannot choose how its key is used. Symmetric (`oct`) keys and keys
//! marked `use: enc` are ignored: HS256 tokens are verified with the configured secret only, never with a public
//! key (no algorithm confusion).
//!
//! The set is bounded ([`MAX_KEYS`] keys, [`MAX_JWKS_BYTES`] bytes). A background task re-reads the file and
//! re-fetches the URL every refresh period; a token naming an unknown `kid` asks for an early refresh (at most once
//! per `min_refetch`), which is how a key rotated in at the identity provider is picked up. A failed refresh keeps
//! the keys it had.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse},
};
use tokio::sync::Notify;

/// Most keys kept from one source; the rest are ignored (with a warning).
pub const MAX_KEYS: usize = 64;
/// Largest JWKS document read, from a file or a URL.
pub const MAX_JWKS_BYTES: u64 = 256 * 1024;
/// Upper bound on one fetch of the JWKS URL.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The algorithms a JWKS key may verify. HS* are not among them.
pub const ASYMMETRIC: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Where public keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksSource {
    /// A JWKS document on disk, re-read at every refresh (so a rotated file is picked up).
    pub file: Option<PathBuf>,
    /// An `https://` (or, for tests and sidecars, `http://`) URL serving a JWKS document.
    pub url: Option<String>,
    /// Time between refreshes.
    pub refresh: Duration,
    /// Least time between two fetches asked for by tokens naming an unknown `kid`.
    pub min_refetch: Duration,
    /// PEM certificates of the CA(s) the URL's server certificate must chain to, instead of the system's roots
    /// (an identity provider behind a private CA); `None`: the system's roots (the platform verifier).
    pub ca_file: Option<PathBuf>,
}

impl JwksSource {
    pub fn new(file: Option<PathBuf>, url: Option<String>) -> Self {
        Self { file, url, refresh: Duration::from_secs(300), min_refetch: Duration::from_secs(10), ca_file: None }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read JWKS file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("JWKS from {origin} is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge { origin: String },
    #[error("JWKS from {origin} is not a JWK set: {reason}")]
    Parse { origin: String, reason: String },
    #[error("cannot fetch JWKS from {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("cannot use the JWKS CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
}

/// A public key and the one algorithm it verifies.
#[derive(Clone)]
pub(crate) struct VerifyingKey {
    pub(crate) key: DecodingKey,
    pub(crate) alg: Algorithm,
}

/// The keys in force.
#[derive(Clone, Default)]
pub struct KeySet {
    by_kid: HashMap<String, VerifyingKey>,
    /// Keys without a `kid`: tried by algorithm when a token names no `kid`.
    unnamed: Vec<VerifyingKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<_> = self.by_kid.keys().collect();
        kids.sort();
        f.debug_struct("KeySet").field("kids", &kids).field("unnamed", &self.unnamed.len()).finish()
    }
}

/// Why no key verifies a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyMiss {
    /// The token's `kid` is not in the set (it may be new: worth a refresh).
    UnknownKid,
    /// The key named is pinned to another algorithm.
    WrongAlgorithm,
    /// No `kid`, and no unnamed key of the token's algorithm.
    NoKey,
}

impl KeySet {
    /// Parses a JWKS document, keeping the usable signature keys (at most [`MAX_KEYS`]).
    pub fn parse(json: &[u8], origin: &str) -> Result<Self, JwksError> {
        let set: JwkSet = serde_json::from_slice(json)
            .map_err(|e| JwksError::Parse { origin: origin.to_owned(), reason: e.to_string() })?;
        let mut keys = Self::default();
        for jwk in &set.keys {
            if keys.len() == MAX_KEYS {
                tracing::warn!(
                    origin,
                    kept = MAX_KEYS,
                    total = set.keys.len(),
                    "JWKS has too many keys; the rest are ignored"
                );
                break;
            }
            match usable(jwk) {
                Ok(key) => match &jwk.common.key_id {
                    Some(kid) => {
                        keys.by_kid.insert(kid.clone(), key);
                    }
                    None => keys.unnamed.push(key),
                },
                Err(why) => tracing::warn!(origin, kid = ?jwk.common.key_id, why, "JWKS key ignored"),
            }
        }
        Ok(keys)
    }

    pub fn len(&self) -> usize {
        self.by_kid.len() + self.unnamed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key for a token with this `kid` and `alg`.
    pub(crate) fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<&VerifyingKey, KeyMiss> {
        match kid {
            Some(kid) => {
                let key = self.by_kid.get(kid).ok_or(KeyMiss::UnknownKid)?;
                if key.alg == alg { Ok(key) } else { Err(KeyMiss::WrongAlgorithm) }
            }
            None => self.unnamed.iter().find(|key| key.alg == alg).ok_or(KeyMiss::NoKey),
        }
    }

    /// This set with `other`'s keys added (a `kid` in both keeps this set's key).
    fn merged(mut self, other: Self) -> Self {
        for (kid, key) in other.by_kid {
            self.by_kid.entry(kid).or_insert(key);
        }
        self.unnamed.extend(other.unnamed);
        self
    }
}

/// The key a JWK stands for, pinned to its algorithm, or why it cannot be used.
fn usable(jwk: &Jwk) -> Result<VerifyingKey, &'static str> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("use is enc, not sig");
    }
    let implied = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Algorithm::ES256,
            EllipticCurve::P384 => Algorithm::ES384,
            _ => return Err("unsupported EC curve"),
        },
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
        AlgorithmParameters::OctetKey(_) => return Err("symmetric (oct) keys are never taken from a JWKS"),
        _ => return Err("unsupported key type"),
    };
    let alg = match jwk.common.key_algorithm {
        None => implied,
        Some(KeyAlgorithm::UNKNOWN_ALGORITHM) => return Err("unknown alg"),
        Some(alg) => alg.to_string().parse::<Algorithm>().map_err(|_| "unsupported alg")?,
    };
    if !ASYMMETRIC.contains(&alg) {
        return Err("alg is not an asymmetric signature algorithm");
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "malformed key material")?;
    if !key.family().algorithms().contains(&alg) {
        return Err("alg does not match the key type");
    }
    Ok(VerifyingKey { key, alg })
}

/// The live key set and its refresher's controls.
#[derive(Debug)]
pub struct Jwks {
    source: JwksSource,
    /// The HTTPS client for the URL, built once with the roots it trusts.
    agent: ureq::Agent,
    keys: RwLock<Arc<KeySet>>,
    refresh_now: Notify,
    last_fetch: Mutex<Option<Instant>>,
}

impl Jwks {
    /// Reads the file now (an unreadable or malformed file is an error: the service must not start without the
    /// keys it was told to trust), and the CA file if one is named. URL keys arrive with the first refresh.
    pub fn load(source: JwksSource) -> Result<Self, JwksError> {
        let keys = match &source.file {
            Some(path) => read_file(path)?,
            None => KeySet::default(),
        };
        let agent = agent(source.ca_file.as_deref())?;
        Ok(Self {
            source,
            agent,
            keys: RwLock::new(Arc::new(keys)),
            refresh_now: Notify::new(),
            last_fetch: Mutex::new(None),
        })
    }

    pub fn source(&self) -> &JwksSource {
        &self.source
    }

    /// The keys in force now.
    pub fn current(&self) -> Arc<KeySet> {
        self.keys.read().map_or_else(|poisoned| Arc::clone(&poisoned.into_inner()), |keys| Arc::clone(&keys))
    }

    /// Asks the refresher for an early fetch (a token named a `kid` not in the set). Cheap; rate-limited by the
    /// refresher.
    pub(crate) fn request_refresh(&self) {
        if self.source.url.is_some() || self.source.file.is_some() {
            self.refresh_now.notify_one();
        }
    }

    /// Re-reads the file and fetches the URL (blocking I/O, off the async workers), then swaps the set in. On
    /// error the previous keys stay.
    pub async fn refresh(self: &Arc<Self>) -> Result<usize, JwksError> {
        if let Ok(mut last) = self.last_fetch.lock() {
            *last = Some(Instant::now());
        }
        let source = self.source.clone();
        let agent = self.agent.clone();
        let keys = tokio::task::spawn_blocking(move || load_all(&source, &agent))
            .await
            .map_err(|e| JwksError::Fetch { url: String::new(), reason: format!("refresh task failed: {e}") })??;
        let count = keys.len();
        if let Ok(mut current) = self.keys.write() {
            *current = Arc::new(keys);
        }
        Ok(count)
    }

    /// Keeps the set fresh until `stop` resolves: a refresh now (the URL's first fetch), then every refresh period,
    /// or earlier when a token names an unknown `kid` (at most once per `min_refetch`). Failures are logged, counted
    /// and retried with backoff up to the refresh period.
    pub fn spawn_refresher(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let jwks = Arc::clone(self);
        runtime.spawn(async move {
            tokio::pin!(stop);
            let mut backoff = Duration::from_secs(1);
            loop {
                let wait = match jwks.refresh().await {
                    Ok(count) => {
                        tracing::debug!(keys = count, "JWKS refreshed");
                        backoff = Duration::from_secs(1);
                        jwks.source.refresh
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "JWKS refresh failed; keeping the keys in force");
                        crate::meters::counter(crate::meters::JWKS_REFRESH_FAILURES);
                        let wait = backoff.min(jwks.source.refresh);
                        backoff = (backoff * 2).min(jwks.source.refresh);
                        wait
                    }
                };
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(wait) => {}
                    () = jwks.refresh_now.notified() => {
                        // Rate-limit fetches asked for by unknown kids: wait out the rest of min_refetch.
                        let since = jwks.last_fetch.lock().ok().and_then(|last| *last).map(|t| t.elapsed());
                        if let Some(rest) = since.and_then(|s| jwks.source.min_refetch.checked_sub(s)) {
                            tokio::select! {
                                () = &mut stop => return,
                                () = tokio::time::sleep(rest) => {}
                            }
                        }
                    }
                }
            }
        });
    }
}

fn read_file(path: &std::path::Path) -> Result<KeySet, JwksError> {
    let origin = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| JwksError::Read { path: path.to_owned(), source })?;
    if meta.len() > MAX_JWKS_BYTES {
        return Err(JwksError::TooLarge { origin });
    }
    let bytes = std::fs::read(path).map_err(|source| JwksError::Read { path: path.to_owned(), source })?;
    KeySet::parse(&bytes, &origin)
}

/// The client for the JWKS URL: the system's roots (platform verifier), or only the CA certificates in
/// `ca_file` (PEM), which must hold at least one.
fn agent(ca_file: Option<&std::path::Path>) -> Result<ureq::Agent, JwksError> {
    let roots = match ca_file {
        None => ureq::tls::RootCerts::PlatformVerifier,
        Some(path) => {
            let fail = |reason: String| JwksError::CaFile { path: path.to_owned(), reason };
            let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(&pem) {
                if let ureq::tls::PemItem::Certificate(cert) = item.map_err(|e| fail(e.to_string()))? {
                    certs.push(cert);
                }
            }
            if certs.is_empty() {
                return Err(fail("no CERTIFICATE in the file".into()));
            }
            ureq::tls::RootCerts::new_with_certs(&certs)
        }
    };
    Ok(ureq::Agent::config_builder()
        .timeout_global(Some(FETCH_TIMEOUT))
        .max_redirects(3)
        .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
        .build()
        .new_agent())
}

fn fetch(url: &str, agent: &ureq::Agent) -> Result<KeySet, JwksError> {
    let fail = |reason: String| JwksError::Fetch { url: url.to_owned(), reason };
    let mut response = agent.get(url).header("accept", "application/json").call().map_err(|e| fail(e.to_string()))?;
    let body = response.body_mut().with_config().limit(MAX_JWKS_BYTES).read_to_vec().map_err(|e| match e {
        ureq::Error::BodyExceedsLimit(_) => JwksError::TooLarge { origin: url.to_owned() },
        other => fail(other.to_string()),
    })?;
    KeySet::parse(&body, url)
}

fn load_all(source: &JwksSource, agent: &ureq::Agent) -> Result<KeySet, JwksError> {
    let from_file = source.file.as_deref().map(read_file).transpose()?.unwrap_or_default();
    let from_url = source.url.as_deref().map(|url| fetch(url, agent)).transpose()?.unwrap_or_default();
    Ok(from_file.merged(from_url))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_N: &str = "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw";

    fn set(keys: serde_json::Value) -> KeySet {
        KeySet::parse(serde_json::json!({ "keys": keys }).to_string().as_bytes(), "test")
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn keys_are_pinned_to_one_algorithm() {
        let keys = set(serde_json::json!([
            {"kty": "RSA", "kid": "r", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "p", "alg": "PS256", "n": RSA_N, "e": "AQAB"},
        ]));
        assert!(keys.find(Some("r"), Algorithm::RS256).is_ok(), "RSA without alg means RS256");
        assert_eq!(keys.find(Some("r"), Algorithm::RS512).err(), Some(KeyMiss::WrongAlgorithm));
        assert_eq!(keys.find(Some("r"), Algorithm::HS256).err(), Some(KeyMiss::WrongAlgorithm));
        assert!(keys.find(Some("p"), Algorithm::PS256).is_ok());
        assert_eq!(keys.find(Some("p"), Algorithm::RS256).err(), Some(KeyMiss::WrongAlgorithm));
        assert_eq!(keys.find(Some("nope"), Algorithm::RS256).err(), Some(KeyMiss::UnknownKid));
        assert_eq!(keys.find(None, Algorithm::RS256).err(), Some(KeyMiss::NoKey));
    }

    #[test]
    fn symmetric_encryption_and_mismatched_keys_are_ignored() {
        let keys = set(serde_json::json!([
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "hs-on-rsa", "alg": "HS256", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "kid": "es-on-rsa", "alg": "ES256", "n": RSA_N, "e": "AQAB"},
            {"kty": "RSA", "n": RSA_N, "e": "AQAB"},
        ]));
        assert_eq!(keys.len(), 1, "only the unnamed RSA key is usable: {keys:?}");
        assert!(keys.find(None, Algorithm::RS256).is_ok());
    }

    #[test]
    fn the_set_is_bounded() {
        let many: Vec<_> = (0..MAX_KEYS + 10)
            .map(|i| serde_json::json!({"kty": "RSA", "kid": format!("k{i}"), "n": RSA_N, "e": "AQAB"}))
            .collect();
        assert_eq!(set(serde_json::Value::Array(many)).len(), MAX_KEYS);
    }

    #[test]
    fn malformed_documents_are_errors() {
        for doc in [&b"not json"[..], b"{}", b"{\"keys\": 1}"] {
            assert!(matches!(KeySet::parse(doc, "t"), Err(JwksError::Parse { .. })), "{doc:?}");
        }
    }
}
