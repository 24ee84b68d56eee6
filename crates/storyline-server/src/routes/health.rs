//! Liveness, readiness, metrics and the OpenAPI document. None of these needs a user's token; `/metrics` asks
//! for the metrics bearer token when one is configured.

use actix_web::{HttpRequest, HttpResponse, get, http::header, route, web};
use utoipa::OpenApi;

use crate::{error::ApiError, openapi::ApiDoc, startup::AppState};

/// Liveness: the process is up and serving HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive", body = String, content_type = "text/plain")))]
#[route("/healthz", method = "GET", method = "HEAD")]
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; charset=utf-8").body("ok")
}

/// Readiness: 200 when the broker answers and the instance is not shutting down, else 503.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses(
    (status = 200, description = "Ready", body = String, content_type = "text/plain"),
    (status = 503, description = "Broker unreachable or shutting down", body = crate::Problem, content_type = "application/problem+json"),
))]
#[route("/readyz", method = "GET", method = "HEAD")]
pub(crate) async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if state.shutdown.is_draining() {
        return Err(ApiError::Draining { retry_after_secs: state.config.retry_after_secs });
    }
    super::with_broker(
        state.config.broker_timeout,
        state.config.retry_after_secs,
        super::Effect::Read,
        state.broker.ping(),
    )
    .await?;
    Ok(HttpResponse::Ok().content_type("text/plain; charset=utf-8").body("ready"))
}

/// Prometheus metrics in the text exposition format.
///
/// With `STORYLINE_METRICS_TOKEN` set, only for requests carrying `Authorization: Bearer <that token>`; with
/// `STORYLINE_METRICS_LISTEN` set, only on that listener (the main one answers 404).
#[utoipa::path(get, path = "/metrics", tag = "operations", responses(
    (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
    (status = 401, description = "A metrics token is configured and the request does not carry it", body = crate::Problem, content_type = "application/problem+json"),
))]
#[get("/metrics")]
pub(crate) async fn metrics(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if let Some(token) = &state.config.metrics_token {
        check_metrics_token(token, &req)?;
    }
    crate::meters::collect_process();
    crate::meters::active_stories(state.hub.stats().active_feeds);
    state.hub_meters.scrape_lag();
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(state.metrics.render()))
}

/// `Authorization: Bearer <token>` (the scheme case-insensitive, as RFC 9110 has it), compared in constant time.
/// Only the header: a token in a query string would end up in proxies' logs.
fn check_metrics_token(token: &crate::MetricsToken, req: &HttpRequest) -> Result<(), ApiError> {
    use crate::auth::AuthFailure;
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Err(ApiError::Unauthenticated(
            AuthFailure::Missing,
            "/metrics needs the metrics token: Authorization: Bearer <token>".into(),
        ));
    };
    let presented = value.as_bytes();
    let scheme = b"bearer ";
    let credentials = (presented.len() > scheme.len() && presented[..scheme.len()].eq_ignore_ascii_case(scheme))
        .then(|| &presented[scheme.len()..]);
    match credentials {
        Some(credentials) if token.matches(credentials) => Ok(()),
        _ => Err(ApiError::Unauthenticated(AuthFailure::BadSignature, "the metrics token is not accepted".into())),
    }
}

/// This API's OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1 document", body = Object, content_type = "application/json")))]
#[get("/openapi.json")]
pub(crate) async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(ApiDoc::openapi().to_json().unwrap_or_default())
}
