//! [`Client`] and its builder; publish and history with retries. Streams are in [`crate::stream`].

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use reqwest::{RequestBuilder, StatusCode, header};
use serde::Serialize;
use storyline_core::{IdempotencyKey, StoryId};

use crate::{
    error::{self, Error, Retry},
    event::{Event, HistoryPage, HistoryQuery, PublishBody, Receipt},
    retry::{RetryPolicy, parse_retry_after},
    tls,
    token::{FixedToken, TokenSource, Tokens},
};

/// Default bound on connecting (publish, history and stream opens).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on one publish or history attempt, answer included, and on a stream's response head.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default: a stream that delivers nothing for this long, not even a heartbeat (every 15 s by default), is
/// treated as dead and reopened.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// A storyline client. Cheap to clone (one connection pool and one token cache, shared).
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    /// The base URL without a trailing slash.
    pub(crate) base: String,
    pub(crate) tokens: Option<Tokens>,
    pub(crate) retry: RetryPolicy,
    pub(crate) request_timeout: Duration,
    pub(crate) idle_timeout: Duration,
}

/// Builds a [`Client`]: `Client::builder("http://127.0.0.1:8080").token(t).build()?`.
pub struct ClientBuilder {
    base: String,
    source: Option<Arc<dyn TokenSource>>,
    connect_timeout: Duration,
    request_timeout: Duration,
    idle_timeout: Duration,
    retry: RetryPolicy,
    /// PEM bundles of extra root certificates, parsed by `build`.
    root_pems: Vec<Vec<u8>>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder").field("base", &self.base).finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// A fixed bearer token (a refusal of it is final).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.source = Some(Arc::new(FixedToken(token.into())));
        self
    }

    /// A source asked for a token before the first request and again whenever the server refuses the current
    /// one (401, or a stream's `token-expired` frame).
    pub fn token_source(mut self, source: impl TokenSource) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bound on one publish or history attempt, and on the response head of a stream open.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long a stream may be silent (the server's heartbeats included) before it is reopened.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Trusts the CA certificates in this PEM bundle (one or more `CERTIFICATE` blocks) for `https://`, besides
    /// the system's roots: for a storyline behind a private CA. May be called more than once. A bundle that holds
    /// no certificate, or one that does not parse, makes [`ClientBuilder::build`] fail.
    pub fn add_root_certificates_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.root_pems.push(pem.as_ref().to_vec());
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        let base = self.base.trim().trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base).map_err(|e| Error::InvalidRequest(format!("base URL {base:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(Error::InvalidRequest(format!("base URL {base:?} must be http(s)://host[:port]")));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(Error::InvalidRequest(format!("base URL {base:?} must not have a query or fragment")));
        }
        if self.retry.max_attempts == 0 {
            return Err(Error::InvalidRequest("the retry policy needs at least one attempt".into()));
        }
        let mut roots = Vec::new();
        for pem in &self.root_pems {
            roots.extend(tls::parse_pem_roots(pem)?);
        }
        // Always a configuration of our own, for http:// too: reqwest has no crypto provider of its own.
        let tls = tls::client_config(roots, url.scheme() == "https")?;
        // No overall client timeout: it would cut endless streams. Calls set their own.
        let http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| Error::InvalidRequest(format!("HTTP client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                tokens: self.source.map(Tokens::new),
                retry: self.retry,
                request_timeout: self.request_timeout,
                idle_timeout: self.idle_timeout,
            }),
        })
    }
}

/// A successful answer.
pub(crate) struct Answer {
    status: StatusCode,
    body: Bytes,
}

impl Client {
    /// A builder for a client of the storyline at `base_url` (`https://host[:port]` or `http://host:port`,
    /// optionally with a path prefix).
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base: base_url.into(),
            source: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            retry: RetryPolicy::default(),
            root_pems: Vec::new(),
        }
    }

    pub(crate) fn url(&self, story: &StoryId, leaf: &str) -> String {
        // Story ids are `[A-Za-z0-9_.:-]`: nothing to escape in a path segment.
        format!("{}/v1/stories/{story}/{leaf}", self.inner.base)
    }

    /// Appends an event to `story` and returns its receipt.
    ///
    /// Retries, with the same `Idempotency-Key` every time (the event's, or one generated here), on 503
    /// (`unconfirmed`, `unavailable`, `draining`, `at-capacity`), 429 and network errors: after `Retry-After` when
    /// the server sent one, else after a jittered backoff, within the retry policy's attempts and time. An
    /// attempt whose answer was lost may have stored the event: its retry then answers with that event's
    /// receipt ([`Receipt::replayed`]), so one call stores at most one event. A refused token (401) is replaced
    /// from the token source once. Other refusals are returned at once, as their [`Error`] variant.
    pub async fn publish<T: Serialize>(&self, story: &StoryId, event: &Event<T>) -> Result<Receipt, Error> {
        let body = serde_json::to_vec(&PublishBody { event_type: &event.event_type, data: &event.data })
            .map_err(|e| Error::InvalidRequest(format!("event data does not serialize: {e}")))?;
        let body = Bytes::from(body);
        let key = match &event.idempotency_key {
            Some(key) => key.clone(),
            None => generated_key()?,
        };
        let url = self.url(story, "events");
        let answer = self
            .call(|http| {
                http.post(&url)
                    .header(header::CONTENT_TYPE, "application/json")
                    .header("idempotency-key", key.as_str())
                    .body(body.clone())
            })
            .await?;
        let mut receipt: Receipt = decode(&answer.body, "receipt")?;
        receipt.replayed = answer.status == StatusCode::OK;
        Ok(receipt)
    }

    /// A page of `story`'s history, oldest first (follow [`HistoryPage::next`] for more). Retried like a
    /// publish: the read changes nothing.
    pub async fn history(&self, story: &StoryId, query: HistoryQuery) -> Result<HistoryPage, Error> {
        // Ids and integers: nothing to escape.
        let mut params = Vec::with_capacity(2);
        if let Some(after) = query.after {
            params.push(format!("after={after}"));
        }
        if let Some(limit) = query.limit {
            params.push(format!("limit={limit}"));
        }
        let mut url = self.url(story, "events");
        if !params.is_empty() {
            url = format!("{url}?{}", params.join("&"));
        }
        let answer = self.call(|http| http.get(&url)).await?;
        decode(&answer.body, "history page")
    }

    /// The current token, if the client has a source.
    pub(crate) async fn token(&self) -> Result<Option<Arc<str>>, Error> {
        match &self.inner.tokens {
            Some(tokens) => tokens.current().await.map(Some),
            None => Ok(None),
        }
    }

    /// A replacement for a refused token; `None` when there is none (no source, or it gave the same one back).
    pub(crate) async fn refresh(&self, refused: Option<&Arc<str>>) -> Result<Option<Arc<str>>, Error> {
        let (Some(tokens), Some(refused)) = (&self.inner.tokens, refused) else { return Ok(None) };
        let fresh = tokens.refresh(refused).await?;
        Ok((fresh != *refused).then_some(fresh))
    }

    /// Sends the request `make` builds until it succeeds or the retry policy gives up.
    async fn call(&self, make: impl Fn(&reqwest::Client) -> RequestBuilder) -> Result<Answer, Error> {
        let policy = &self.inner.retry;
        let started = Instant::now();
        let (mut attempts, mut failures, mut refreshed) = (0u32, 0u32, false);
        loop {
            attempts += 1;
            let token = self.token().await?;
            let mut request = make(&self.inner.http).timeout(self.inner.request_timeout);
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            let error = match request.send().await {
                Ok(response) => match read_answer(response, self.inner.request_timeout).await {
                    Ok(answer) => return Ok(answer),
                    Err(e) => e,
                },
                Err(e) => transport(e, self.inner.request_timeout),
            };
            if matches!(error, Error::Unauthenticated(_) | Error::TokenRevoked(_))
                && !refreshed
                && self.refresh(token.as_ref()).await?.is_some()
            {
                // A new token is not a retry of a failure: no wait, and it does not use up an attempt.
                refreshed = true;
                attempts -= 1;
                continue;
            }
            let wait = match error.retry() {
                Retry::No => return Err(error),
                Retry::After(after) => policy.after(after),
                Retry::Backoff => {
                    failures += 1;
                    policy.backoff(failures)
                }
            };
            if attempts >= policy.max_attempts || started.elapsed() + wait > policy.max_elapsed {
                return Err(error);
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// Reads a whole answer: the body of a 2xx, or the error a failed answer stands for.
pub(crate) async fn read_answer(response: reqwest::Response, timeout: Duration) -> Result<Answer, Error> {
    let status = response.status();
    let retry_after = parse_retry_after(response.headers().get(header::RETRY_AFTER));
    let is_problem = is_problem(response.headers());
    let body = response.bytes().await.map_err(|e| transport(e, timeout))?;
    if status.is_success() {
        Ok(Answer { status, body })
    } else {
        Err(error::from_answer(status.as_u16(), retry_after, is_problem, &body))
    }
}

/// A request that got no (whole) answer.
pub(crate) fn transport(e: reqwest::Error, timeout: Duration) -> Error {
    if e.is_timeout() {
        Error::TimedOut(timeout)
    } else if tls::tls_cause(&e).is_some() {
        Error::Tls(e.without_url())
    } else {
        Error::Network(e.without_url())
    }
}

fn is_problem(headers: &header::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/problem+json"))
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::Decode(format!("{what}: {e}")))
}

/// A fresh key: 128 random bits, hex, under a prefix that says who made it.
fn generated_key() -> Result<IdempotencyKey, Error> {
    let key = format!("sc-{:032x}", fastrand::u128(..));
    IdempotencyKey::parse(&key).map_err(|e| Error::InvalidRequest(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_valid_and_distinct() {
        let keys: std::collections::HashSet<String> =
            (0..1000).map(|_| generated_key().unwrap().as_str().to_owned()).collect();
        assert_eq!(keys.len(), 1000);
        assert!(keys.iter().all(|k| k.len() == 35 && k.starts_with("sc-")));
    }

    #[test]
    fn base_urls_are_checked() {
        for bad in ["", "ftp://h", "not a url", "http://h/?q=1", "http://h/#f"] {
            assert!(Client::builder(bad).build().is_err(), "{bad:?}");
        }
        let client = Client::builder("http://127.0.0.1:9/prefix/").build().unwrap();
        let story = StoryId::parse("a:b").unwrap();
        assert_eq!(client.url(&story, "stream"), "http://127.0.0.1:9/prefix/v1/stories/a:b/stream");
    }
}
