//! `storyline revoke`: revokes a token (by `jti`) or every token of a subject (by `sub`) until a time.
//!
//! It calls a running instance's `POST /v1/admin/revocations` rather than writing to Redis itself: the server is
//! the one place that validates an entry, writes the audit event, applies it at once to its own open streams, and
//! works the same with either broker (the memory broker's list lives in the server process, out of reach of any
//! other). Every instance sharing the Redis then applies it within one heartbeat.
//!
//! The admin token is `--admin-token`, or one minted here for a minute with the configured HS256 secret (tier
//! `admin`, `sub` `storyline-cli`): whoever holds the secret may mint admin tokens anyway.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{ArgGroup, Args};
use storyline_server::auth::{JwtKeys, JwtSecret, Tier};

use crate::settings::Settings;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["jti", "sub"])))]
#[command(group(ArgGroup::new("when").required(true).args(["until", "ttl_secs"])))]
pub(crate) struct RevokeArgs {
    /// Revoke the one token whose `jti` claim is this.
    #[arg(long)]
    jti: Option<String>,
    /// Revoke every token whose `sub` claim is this.
    #[arg(long)]
    sub: Option<String>,
    /// Until when, seconds since the Unix epoch (for a jti, the token's `exp` is enough).
    #[arg(long)]
    until: Option<u64>,
    /// For this many seconds from now.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=315_360_000))]
    ttl_secs: Option<u64>,
    /// The instance to ask (default: http://<STORYLINE_LISTEN>, with 127.0.0.1 for an unspecified address).
    #[arg(long)]
    url: Option<String>,
    /// An admin-tier token; without one, a one-minute admin token is minted with the configured secret.
    #[arg(long)]
    admin_token: Option<String>,
}

pub(crate) fn main(settings: &Settings, args: RevokeArgs) -> anyhow::Result<()> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).context("system clock before 1970")?.as_secs();
    let until = match (args.until, args.ttl_secs) {
        (Some(until), _) => until,
        (None, Some(ttl)) => now.saturating_add(ttl),
        (None, None) => bail!("give --until or --ttl-secs"),
    };
    let token = match args.admin_token {
        Some(token) => token,
        None => {
            let secret = settings
                .jwt_secret
                .as_deref()
                .context("no admin token: pass --admin-token, or configure STORYLINE_JWT_SECRET to mint one")?;
            let keys = JwtKeys::with_rules(&JwtSecret::new(secret), settings.token_rules());
            keys.mint("storyline-cli", "", Some(Tier::Admin), Duration::from_secs(60)).map_err(anyhow::Error::msg)?
        }
    };
    let base = match args.url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let addr = settings.listen_addr()?;
            let host = if addr.ip().is_unspecified() { format!("127.0.0.1:{}", addr.port()) } else { addr.to_string() };
            format!("http://{host}")
        }
    };
    let body = serde_json::json!({ "jti": args.jti, "sub": args.sub, "until": until });
    // Only the named target is sent (the endpoint refuses a null field as "both").
    let body: serde_json::Map<String, serde_json::Value> = body
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    let answer = runtime.block_on(async {
        let client = storyline_client::http_client_builder()?.timeout(Duration::from_secs(10)).build()?;
        let response = client
            .post(format!("{base}/v1/admin/revocations"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(serde_json::Value::Object(body).to_string())
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        anyhow::Ok((status, text))
    });
    let (status, text) = answer.with_context(|| format!("could not reach {base}"))?;
    if status.as_u16() != 201 {
        let detail = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|p| p["detail"].as_str().map(str::to_owned))
            .unwrap_or_else(|| text.clone());
        bail!("{base} refused the revocation ({status}): {detail}");
    }
    crate::write_stdout(&format!("{text}\n"))
}
