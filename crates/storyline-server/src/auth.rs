//! Authentication and authorization: HS256 JWTs carrying `sub`, `exp`, `scope` and an optional `tier`.
//!
//! A token arrives as `Authorization: Bearer <jwt>`, as `?access_token=<jwt>` (browsers' `EventSource` cannot set
//! headers), or as the cookie `storyline_token`, in that order of precedence. Missing, malformed, badly signed or
//! expired: 401. Valid but without a scope matching the story: 403.
//!
//! Scopes are space-separated `read:<pattern>` / `write:<pattern>`, where a pattern is `*`, an exact story id, or
//! a prefix ending in `*` (`write:public:*`). Unknown scopes are ignored, so tokens may carry scopes for other
//! services.

use std::{
    collections::HashMap,
    fmt,
    future::{Ready, ready},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use actix_web::{FromRequest, HttpRequest, dev::Payload, http::header, web};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use storyline_core::StoryId;

use crate::error::ApiError;

/// Name of the cookie that may carry a token.
pub const TOKEN_COOKIE: &str = "storyline_token";
/// Name of the query parameter that may carry a token.
pub const TOKEN_QUERY: &str = "access_token";
/// Clock skew tolerated when checking `exp` and `nbf`, unless configured otherwise.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);

/// What a token must say besides carrying a valid HS256 signature, `sub` and an unexpired `exp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRules {
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud` (one of the token's audiences), when set. Unset: tokens carrying an `aud` are accepted.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// Story patterns (`*`, an exact id, or a prefix ending in `*`) that a request with no token at all may read,
    /// as tier `guest`. Empty (the default): every request needs a token.
    pub public_read: Vec<String>,
}

impl Default for TokenRules {
    fn default() -> Self {
        Self { issuer: None, audience: None, leeway: DEFAULT_LEEWAY, public_read: Vec::new() }
    }
}

/// The HS256 secret. Its `Debug` never shows the value.
#[derive(Clone)]
pub struct JwtSecret(Vec<u8>);

impl JwtSecret {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self(secret.into())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JwtSecret(<{} bytes>)", self.0.len())
    }
}

/// What a principal is, for limits and metrics; not an authorization decision by itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Guest,
    #[default]
    Member,
    Agent,
    Admin,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guest => "guest",
            Self::Member => "member",
            Self::Agent => "agent",
            Self::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "guest" => Ok(Self::Guest),
            "member" => Ok(Self::Member),
            "agent" => Ok(Self::Agent),
            "admin" => Ok(Self::Admin),
            other => Err(format!("unknown tier {other:?} (guest, member, agent, admin)")),
        }
    }
}

/// The JWT claims storyline reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default)]
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
    /// Not valid before (seconds since the epoch); checked when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// A story pattern: `*`, an exact id, or a prefix ending in `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "" => None,
            "*" => Some(Self::Any),
            _ => Some(s.strip_suffix('*').map_or_else(|| Self::Exact(s.to_owned()), |p| Self::Prefix(p.to_owned()))),
        }
    }

    fn matches(&self, story: &StoryId) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(id) => id == story.as_str(),
            Self::Prefix(prefix) => story.as_str().starts_with(prefix.as_str()),
        }
    }
}

/// The parsed `scope` claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    read: Vec<Pattern>,
    write: Vec<Pattern>,
}

impl Scopes {
    pub fn parse(scope: &str) -> Self {
        let mut scopes = Self::default();
        for item in scope.split_ascii_whitespace() {
            if let Some(p) = item.strip_prefix("read:").and_then(Pattern::parse) {
                scopes.read.push(p);
            } else if let Some(p) = item.strip_prefix("write:").and_then(Pattern::parse) {
                scopes.write.push(p);
            }
        }
        scopes
    }

    pub fn can_read(&self, story: &StoryId) -> bool {
        self.read.iter().any(|p| p.matches(story))
    }

    pub fn can_write(&self, story: &StoryId) -> bool {
        self.write.iter().any(|p| p.matches(story))
    }
}

/// An authenticated caller. Handlers take it as an argument; extraction fails with 401 when there is no valid
/// token.
#[derive(Debug, Clone)]
pub struct Principal {
    pub sub: String,
    pub tier: Tier,
    pub scopes: Scopes,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
    /// No token was presented: a guest reading a public story (see [`TokenRules::public_read`]).
    pub anonymous: bool,
}

impl Principal {
    pub fn require_read(&self, story: &StoryId) -> Result<(), ApiError> {
        if self.scopes.can_read(story) {
            Ok(())
        } else if self.anonymous {
            Err(ApiError::Unauthenticated(format!("a token is required to read story {story}")))
        } else {
            Err(ApiError::Forbidden(format!("token has no read scope for story {story}")))
        }
    }

    pub fn require_write(&self, story: &StoryId) -> Result<(), ApiError> {
        if self.scopes.can_write(story) {
            Ok(())
        } else if self.anonymous {
            Err(ApiError::Unauthenticated(format!("a token is required to write to story {story}")))
        } else {
            Err(ApiError::Forbidden(format!("token has no write scope for story {story}")))
        }
    }
}

/// Signs and verifies tokens with one HS256 secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    rules: TokenRules,
    /// Who a request without a token is, when some stories are publicly readable.
    guest: Option<Principal>,
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtKeys(HS256)")
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl JwtKeys {
    /// Keys with the default rules (no issuer or audience required, [`DEFAULT_LEEWAY`]).
    pub fn new(secret: &JwtSecret) -> Self {
        Self::with_rules(secret, TokenRules::default())
    }

    /// Keys that accept only HS256 tokens that follow `rules` (`alg: none` and every other algorithm are
    /// refused), and mint tokens that do.
    pub fn with_rules(secret: &JwtSecret, rules: TokenRules) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = rules.leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &rules.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &rules.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let guest = (!rules.public_read.is_empty()).then(|| Principal {
            sub: "anonymous".to_owned(),
            tier: Tier::Guest,
            scopes: Scopes::parse(&rules.public_read.iter().map(|p| format!("read:{p}")).collect::<Vec<_>>().join(" ")),
            expires_at: u64::MAX,
            anonymous: true,
        });
        Self {
            guest,
            encoding: EncodingKey::from_secret(&secret.0),
            decoding: DecodingKey::from_secret(&secret.0),
            validation,
            rules,
        }
    }

    /// Mints a token (used by `storyline token`, the startup hints and tests).
    pub fn mint(&self, sub: &str, scope: &str, tier: Option<Tier>, lifetime: Duration) -> Result<String, String> {
        let now = now_secs();
        let claims = Claims {
            sub: sub.to_owned(),
            exp: now.saturating_add(lifetime.as_secs()),
            iat: Some(now),
            scope: scope.to_owned(),
            tier,
            nbf: None,
            iss: self.rules.issuer.clone(),
            aud: self.rules.audience.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).map_err(|e| e.to_string())
    }

    /// Verifies a token and returns who it speaks for.
    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| {
            ApiError::Unauthenticated(match e.kind() {
                ErrorKind::ExpiredSignature => "token has expired".to_owned(),
                ErrorKind::InvalidSignature => "token signature is invalid".to_owned(),
                ErrorKind::InvalidAlgorithm => "token algorithm is not accepted (HS256 only)".to_owned(),
                ErrorKind::MissingRequiredClaim(claim) => format!("token lacks the {claim:?} claim"),
                ErrorKind::ImmatureSignature => "token is not valid yet (nbf)".to_owned(),
                ErrorKind::InvalidIssuer => "token issuer is not accepted".to_owned(),
                ErrorKind::InvalidAudience => "token audience is not accepted".to_owned(),
                _ => "token is malformed".to_owned(),
            })
        })?;
        let claims = data.claims;
        Ok(Principal {
            sub: claims.sub,
            tier: claims.tier.unwrap_or_default(),
            scopes: Scopes::parse(&claims.scope),
            expires_at: claims.exp,
            anonymous: false,
        })
    }
}

/// The token a request carries, by precedence: `Authorization: Bearer`, `?access_token=`, cookie; `None` if it
/// carries none at all (a malformed one is an error, never "no token").
fn token_from(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let value =
            value.to_str().map_err(|_| ApiError::Unauthenticated("Authorization header is not ASCII".into()))?;
        return match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
                Ok(Some(token.trim().to_owned()))
            }
            _ => Err(ApiError::Unauthenticated("Authorization header must be `Bearer <token>`".into())),
        };
    }
    if let Ok(query) = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        && let Some(token) = query.get(TOKEN_QUERY).filter(|t| !t.is_empty())
    {
        return Ok(Some(token.clone()));
    }
    if let Some(cookie) = req.cookie(TOKEN_COOKIE)
        && !cookie.value().is_empty()
    {
        return Ok(Some(cookie.value().to_owned()));
    }
    Ok(None)
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(keys) = req.app_data::<web::Data<JwtKeys>>() else {
            return ready(Err(ApiError::Internal("JwtKeys missing from app data".into())));
        };
        ready(token_from(req).and_then(|token| match token {
            Some(token) => keys.verify(&token),
            None => keys.guest.clone().ok_or_else(|| {
                ApiError::Unauthenticated(
                    "a token is required: Authorization: Bearer, ?access_token= or the storyline_token cookie".into(),
                )
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn story(s: &str) -> StoryId {
        StoryId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn scope_patterns_match_as_documented() {
        let scopes = Scopes::parse("read:* write:public:* write:exact-one other:thing write:");
        assert!(scopes.can_read(&story("anything")));
        assert!(scopes.can_write(&story("public:dragon")));
        assert!(scopes.can_write(&story("exact-one")));
        assert!(!scopes.can_write(&story("exact-one-more")), "exact pattern is not a prefix");
        assert!(!scopes.can_write(&story("private:x")));
        let none = Scopes::parse("");
        assert!(!none.can_read(&story("x")) && !none.can_write(&story("x")));
    }

    #[test]
    fn minted_tokens_verify_and_carry_their_claims() {
        let keys = JwtKeys::new(&JwtSecret::new("0123456789abcdef0123456789abcdef"));
        let token = keys.mint("ann", "read:* write:s", Some(Tier::Agent), Duration::from_secs(60));
        let principal = token.and_then(|t| keys.verify(&t).map_err(|e| e.to_string()));
        let Ok(principal) = principal else { panic!("{principal:?}") };
        assert_eq!((principal.sub.as_str(), principal.tier), ("ann", Tier::Agent));
        assert!(principal.scopes.can_write(&story("s")));
    }

    #[test]
    fn tokens_signed_with_another_secret_are_rejected() {
        let mine = JwtKeys::new(&JwtSecret::new("secret-one-secret-one-secret-one"));
        let theirs = JwtKeys::new(&JwtSecret::new("secret-two-secret-two-secret-two"));
        let token = theirs.mint("eve", "read:*", None, Duration::from_secs(60)).unwrap_or_default();
        assert!(matches!(mine.verify(&token), Err(ApiError::Unauthenticated(_))));
    }

    #[test]
    fn secret_debug_does_not_show_the_secret() {
        assert_eq!(format!("{:?}", JwtSecret::new("hunter2")), "JwtSecret(<7 bytes>)");
    }
}
