//! Authentication and authorization: JWTs carrying `sub`, `exp`, `scope` and an optional `tier`, signed with the
//! configured HS256 secret or with a key from the configured JWKS (RS/PS/ES/EdDSA, see [`crate::jwks`]).
//! The token's `alg` picks the verifier: HS256 only ever meets the secret, asymmetric algorithms only the JWKS
//! key of that algorithm; `none` and anything else are refused.
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
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, http::header, web};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use storyline_core::StoryId;

use crate::{
    error::ApiError,
    jwks::{ASYMMETRIC, Jwks, KeyMiss},
};

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

/// Why a request was not authenticated: the bounded `reason` of audit events and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No token where one is needed.
    Missing,
    /// Not a JWT, or an unreadable `Authorization` header.
    Malformed,
    Expired,
    /// `nbf` in the future.
    NotYetValid,
    BadSignature,
    /// `alg` not accepted, or not the algorithm of the key it names.
    BadAlgorithm,
    /// The `kid` is not a known key.
    UnknownKey,
    /// A required claim missing, or `iss`/`aud` not accepted.
    BadClaims,
    /// Valid, but revoked by its `jti` or `sub` (see `POST /v1/admin/revocations`).
    Revoked,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadSignature => "bad_signature",
            Self::BadAlgorithm => "bad_algorithm",
            Self::UnknownKey => "unknown_key",
            Self::BadClaims => "bad_claims",
            Self::Revoked => "revoked",
        }
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
    /// The token's own id, by which it can be revoked alone (`storyline token` mints one into every token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
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
    /// The token's `jti`, if it has one: what a revocation of this one token names.
    pub jti: Option<String>,
    /// No token was presented: a guest reading a public story (see [`TokenRules::public_read`]).
    pub anonymous: bool,
}

impl Principal {
    pub fn require_read(&self, story: &StoryId) -> Result<(), ApiError> {
        if self.scopes.can_read(story) {
            Ok(())
        } else if self.anonymous {
            Err(ApiError::Unauthenticated(AuthFailure::Missing, format!("a token is required to read story {story}")))
        } else {
            Err(ApiError::Forbidden(format!("token has no read scope for story {story}")))
        }
    }

    pub fn require_write(&self, story: &StoryId) -> Result<(), ApiError> {
        if self.scopes.can_write(story) {
            Ok(())
        } else if self.anonymous {
            Err(ApiError::Unauthenticated(
                AuthFailure::Missing,
                format!("a token is required to write to story {story}"),
            ))
        } else {
            Err(ApiError::Forbidden(format!("token has no write scope for story {story}")))
        }
    }
}

/// Signs tokens with the HS256 secret; verifies them with the secret or, for asymmetric algorithms, the JWKS.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The secret being rotated out: HS256 tokens it signed still verify; nothing new is signed with it.
    previous: Option<DecodingKey>,
    /// One validation per accepted algorithm, each accepting that algorithm only.
    validations: Vec<(Algorithm, Validation)>,
    rules: TokenRules,
    /// Public keys for RS/PS/ES/EdDSA tokens; `None`: HS256 only.
    jwks: Option<Arc<Jwks>>,
    /// Who a request without a token is, when some stories are publicly readable.
    guest: Option<Principal>,
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKeys").field("jwks", &self.jwks.as_ref().map(|j| j.current())).finish_non_exhaustive()
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
        let validations = std::iter::once(Algorithm::HS256)
            .chain(ASYMMETRIC.iter().copied())
            .map(|alg| (alg, Self::validation(alg, &rules)))
            .collect();
        let guest = (!rules.public_read.is_empty()).then(|| Principal {
            sub: "anonymous".to_owned(),
            tier: Tier::Guest,
            scopes: Scopes::parse(&rules.public_read.iter().map(|p| format!("read:{p}")).collect::<Vec<_>>().join(" ")),
            expires_at: u64::MAX,
            jti: None,
            anonymous: true,
        });
        Self {
            guest,
            encoding: EncodingKey::from_secret(&secret.0),
            decoding: DecodingKey::from_secret(&secret.0),
            validations,
            rules,
            jwks: None,
            previous: None,
        }
    }

    /// Also accepts HS256 tokens signed with `previous` (the secret being rotated out), so tokens issued before a
    /// rotation keep working until they expire.
    pub fn with_previous_secret(mut self, previous: &JwtSecret) -> Self {
        self.previous = Some(DecodingKey::from_secret(&previous.0));
        self
    }

    /// Also accepts tokens signed with a key of `jwks`, each with the one algorithm that key is pinned to.
    pub fn with_jwks(mut self, jwks: Arc<Jwks>) -> Self {
        self.jwks = Some(jwks);
        self
    }

    fn validation(alg: Algorithm, rules: &TokenRules) -> Validation {
        let mut validation = Validation::new(alg);
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
        validation
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
            // Unique, not secret (the signature protects it): 128 random bits.
            jti: Some(format!("{:032x}", fastrand::u128(..))),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).map_err(|e| e.to_string())
    }

    /// Verifies a token and returns who it speaks for.
    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| ApiError::Unauthenticated(AuthFailure::Malformed, "token is malformed".to_owned()))?;
        let claims = match header.alg {
            Algorithm::HS256 => match (self.decode(token, &self.decoding, Algorithm::HS256), &self.previous) {
                (Err(ApiError::Unauthenticated(AuthFailure::BadSignature, _)), Some(previous)) => {
                    self.decode(token, previous, Algorithm::HS256)?
                }
                (claims, _) => claims?,
            },
            alg if ASYMMETRIC.contains(&alg) => {
                let Some(jwks) = &self.jwks else {
                    return Err(ApiError::Unauthenticated(
                        AuthFailure::BadAlgorithm,
                        format!("token algorithm {alg:?} is not accepted: no public keys are configured (HS256 only)"),
                    ));
                };
                let keys = jwks.current();
                let key = keys.find(header.kid.as_deref(), alg).map_err(|miss| match miss {
                    KeyMiss::UnknownKid => {
                        jwks.request_refresh();
                        ApiError::Unauthenticated(
                            AuthFailure::UnknownKey,
                            "token key id (kid) is not a known key".into(),
                        )
                    }
                    KeyMiss::WrongAlgorithm => ApiError::Unauthenticated(
                        AuthFailure::BadAlgorithm,
                        format!("token algorithm {alg:?} is not the algorithm of its key"),
                    ),
                    KeyMiss::NoKey => ApiError::Unauthenticated(
                        AuthFailure::UnknownKey,
                        format!("token has no kid and no key is configured for {alg:?}"),
                    ),
                })?;
                self.decode(token, &key.key, key.alg)?
            }
            other => {
                return Err(ApiError::Unauthenticated(
                    AuthFailure::BadAlgorithm,
                    format!("token algorithm {other:?} is not accepted"),
                ));
            }
        };
        Ok(Principal {
            sub: claims.sub,
            tier: claims.tier.unwrap_or_default(),
            scopes: Scopes::parse(&claims.scope),
            expires_at: claims.exp,
            jti: claims.jti,
            anonymous: false,
        })
    }

    fn decode(&self, token: &str, key: &DecodingKey, alg: Algorithm) -> Result<Claims, ApiError> {
        let validation = self.validations.iter().find_map(|(a, v)| (*a == alg).then_some(v)).ok_or_else(|| {
            ApiError::Unauthenticated(AuthFailure::BadAlgorithm, format!("token algorithm {alg:?} is not accepted"))
        })?;
        let data = jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| {
            let (reason, detail) = match e.kind() {
                ErrorKind::ExpiredSignature => (AuthFailure::Expired, "token has expired".to_owned()),
                ErrorKind::InvalidSignature => (AuthFailure::BadSignature, "token signature is invalid".to_owned()),
                ErrorKind::InvalidAlgorithm => {
                    (AuthFailure::BadAlgorithm, "token algorithm is not accepted".to_owned())
                }
                ErrorKind::MissingRequiredClaim(claim) => {
                    (AuthFailure::BadClaims, format!("token lacks the {claim:?} claim"))
                }
                ErrorKind::ImmatureSignature => (AuthFailure::NotYetValid, "token is not valid yet (nbf)".to_owned()),
                ErrorKind::InvalidIssuer => (AuthFailure::BadClaims, "token issuer is not accepted".to_owned()),
                ErrorKind::InvalidAudience => (AuthFailure::BadClaims, "token audience is not accepted".to_owned()),
                _ => (AuthFailure::Malformed, "token is malformed".to_owned()),
            };
            ApiError::Unauthenticated(reason, detail)
        })?;
        Ok(data.claims)
    }
}

/// The token a request carries, by precedence: `Authorization: Bearer`, `?access_token=`, cookie; `None` if it
/// carries none at all (a malformed one is an error, never "no token").
pub(crate) fn token_from(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| {
            ApiError::Unauthenticated(AuthFailure::Malformed, "Authorization header is not ASCII".into())
        })?;
        return match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
                Ok(Some(token.trim().to_owned()))
            }
            _ => Err(ApiError::Unauthenticated(
                AuthFailure::Malformed,
                "Authorization header must be `Bearer <token>`".into(),
            )),
        };
    }
    if let Ok(query) = web::Query::<HashMap<String, String>>::from_query(req.query_string())
        && let Some(token) = query.get(TOKEN_QUERY).map(|t| t.trim()).filter(|t| !t.is_empty())
    {
        return Ok(Some(token.to_owned()));
    }
    if let Some(cookie) = req.cookie(TOKEN_COOKIE)
        && !cookie.value().trim().is_empty()
    {
        return Ok(Some(cookie.value().trim().to_owned()));
    }
    Ok(None)
}

/// The 401 of a revoked token: says whether the token alone or every token of its `sub` was revoked.
pub(crate) fn revoked_error(entry: &storyline_core::Revocation) -> ApiError {
    let what = match entry.target {
        storyline_core::RevocationTarget::Jti(_) => "this token has been revoked (by its jti)",
        storyline_core::RevocationTarget::Sub(_) => "every token of this subject has been revoked (by its sub)",
    };
    ApiError::Unauthenticated(AuthFailure::Revoked, format!("{what}; do not retry with it"))
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(keys) = req.app_data::<web::Data<JwtKeys>>() else {
            return ready(Err(ApiError::Internal("JwtKeys missing from app data".into())));
        };
        let principal = token_from(req).and_then(|token| match token {
            Some(token) => keys.verify(&token),
            None => keys.guest.clone().ok_or_else(|| {
                ApiError::Unauthenticated(
                    AuthFailure::Missing,
                    "a token is required: Authorization: Bearer, ?access_token= or the storyline_token cookie".into(),
                )
            }),
        });
        // A revoked token is refused like an invalid one, on every request (an in-memory check: see `revocation`).
        let principal = principal.and_then(|principal| {
            let revoked =
                req.app_data::<web::Data<crate::startup::AppState>>().and_then(|s| s.revocations.revoking(&principal));
            match revoked {
                Some(entry) => Err(revoked_error(&entry)),
                None => Ok(principal),
            }
        });
        // Admin-tier requests are audited whatever their outcome (see `audit`).
        if let Ok(admin) = principal.as_ref()
            && admin.tier == Tier::Admin
        {
            req.extensions_mut().insert(admin.clone());
        }
        ready(principal)
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
        assert!(matches!(mine.verify(&token), Err(ApiError::Unauthenticated(AuthFailure::BadSignature, _))));
    }

    #[test]
    fn tokens_of_the_previous_secret_verify_during_a_rotation() {
        let old = JwtKeys::new(&JwtSecret::new("secret-old-secret-old-secret-old"));
        let token = old.mint("ann", "read:*", None, Duration::from_secs(60)).unwrap_or_default();
        let new = JwtSecret::new("secret-new-secret-new-secret-new");
        assert!(JwtKeys::new(&new).verify(&token).is_err(), "without the previous secret");
        let rotating = JwtKeys::new(&new).with_previous_secret(&JwtSecret::new("secret-old-secret-old-secret-old"));
        assert!(rotating.verify(&token).is_ok(), "with it");
        let fresh = rotating.mint("bob", "read:*", None, Duration::from_secs(60)).unwrap_or_default();
        assert!(JwtKeys::new(&new).verify(&fresh).is_ok(), "new tokens are signed with the new secret");
        let stranger = JwtKeys::new(&JwtSecret::new("secret-odd-secret-odd-secret-odd"));
        let forged = stranger.mint("eve", "read:*", None, Duration::from_secs(60)).unwrap_or_default();
        assert!(matches!(rotating.verify(&forged), Err(ApiError::Unauthenticated(AuthFailure::BadSignature, _))));
    }

    #[test]
    fn secret_debug_does_not_show_the_secret() {
        assert_eq!(format!("{:?}", JwtSecret::new("hunter2")), "JwtSecret(<7 bytes>)");
    }
}
