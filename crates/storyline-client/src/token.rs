//! Where the bearer token comes from: a fixed string, or a [`TokenSource`] the client asks again when the server
//! says the token expired (a `token-expired` frame, or a 401).

use std::{future::Future, pin::Pin, sync::Arc};

use tokio::sync::Mutex;

use crate::error::{BoxError, Error};

/// A future returned by [`TokenSource::token`].
pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send + 'a>>;

/// Produces bearer tokens. Called once before the first request, and again whenever the server refuses the
/// current token (401) or ends a stream with `token-expired`; concurrent refusals of one token cause one call.
///
/// Any `Fn() -> impl Future<Output = Result<String, E>>` is a token source:
/// `Client::builder(url).token_source(|| async { mint().await })`.
pub trait TokenSource: Send + Sync + 'static {
    fn token(&self) -> TokenFuture<'_>;
}

impl<F, Fut, E> TokenSource for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<String, E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn token(&self) -> TokenFuture<'_> {
        let future = self();
        Box::pin(async move { future.await.map_err(Into::into) })
    }
}

/// A token that never changes: a refusal of it is final.
#[derive(Debug)]
pub(crate) struct FixedToken(pub(crate) String);

impl TokenSource for FixedToken {
    fn token(&self) -> TokenFuture<'_> {
        let token = self.0.clone();
        Box::pin(async move { Ok(token) })
    }
}

/// The current token, fetched on first use and replaced on refusal.
pub(crate) struct Tokens {
    source: Arc<dyn TokenSource>,
    current: Mutex<Option<Arc<str>>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

impl Tokens {
    pub(crate) fn new(source: Arc<dyn TokenSource>) -> Self {
        Self { source, current: Mutex::new(None) }
    }

    /// The token to send now.
    pub(crate) async fn current(&self) -> Result<Arc<str>, Error> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref() {
            return Ok(Arc::clone(token));
        }
        let token = fetch(&*self.source).await?;
        *current = Some(Arc::clone(&token));
        Ok(token)
    }

    /// A token to replace `refused`: a new one from the source, unless another request already replaced it.
    pub(crate) async fn refresh(&self, refused: &Arc<str>) -> Result<Arc<str>, Error> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref()
            && token != refused
        {
            return Ok(Arc::clone(token));
        }
        let token = fetch(&*self.source).await?;
        *current = Some(Arc::clone(&token));
        Ok(token)
    }
}

async fn fetch(source: &dyn TokenSource) -> Result<Arc<str>, Error> {
    let token = source.token().await.map_err(Error::Token)?;
    let token = token.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Token("the token source returned an empty token or one with spaces or controls".into()));
    }
    Ok(Arc::from(token))
}
