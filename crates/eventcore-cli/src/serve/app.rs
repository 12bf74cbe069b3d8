//! The routes, the token check and the handlers: each a library call or
//! two and a page.

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{
        IntoResponse, Redirect, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
    routing::get,
};
use eventcore::{EventStore, GlobalPosition, StreamId, StreamVersion, SubscriptionOptions};
use eventcore_postgres::{PostgresEventStore, redact_secrets};
use futures::{Stream, StreamExt};
use serde::Deserialize;

use super::pages;

/// Rows per page of streams and events.
pub(crate) const PAGE: u32 = 100;
/// Events the `$all` page shows before following live.
const RECENT: u32 = 50;
/// The cookie a `?token=` visit sets.
const COOKIE: &str = "eventcore_token";

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    store: PostgresEventStore,
    /// The database URL, password masked.
    database: Arc<str>,
    token: Option<Arc<str>>,
}

impl AppState {
    pub(crate) fn new(store: PostgresEventStore, database: String, token: Option<String>) -> Self {
        Self {
            store,
            database: redact_secrets(&database).into(),
            token: token.map(Into::into),
        }
    }

    pub(crate) fn database(&self) -> &str {
        &self.database
    }

    pub(crate) fn schema(&self) -> &str {
        &self.store.config().schema
    }
}

/// Every page, read-only (GET only), behind the token check when there is
/// a token, with headers that keep the page to itself.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/streams") }))
        .route("/streams", get(streams))
        .route("/streams/{id}", get(stream))
        .route("/all", get(all))
        .route("/all/live", get(all_live))
        .route("/projections", get(projections))
        .route("/health", get(health))
        .route("/static/live.js", get(live_js))
        .route("/static/style.css", get(style_css))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// The token check (when a token is set) and the security headers.
async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let headers = request.headers();
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let cookie = cookie(headers, COOKIE);
        let query = Query::<TokenQuery>::try_from_uri(request.uri())
            .ok()
            .and_then(|q| q.0.token);
        let ok = |given: Option<&str>| given.is_some_and(|g| same(g.as_bytes(), token.as_bytes()));
        if let Some(given) = &query {
            if !ok(Some(given)) {
                return unauthorized();
            }
            // Trade the token in the address for a cookie, and drop it
            // from the address (and so from history and referrers).
            let path = request.uri().path().to_owned();
            let mut response = Redirect::to(&path).into_response();
            let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            return response;
        }
        if !ok(bearer) && !ok(cookie.as_deref()) {
            return unauthorized();
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a token is required: send `Authorization: Bearer TOKEN`, or open this page once with ?token=TOKEN\n",
    )
        .into_response()
}

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The `?token=` of a first visit.
#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// A failed page: the error (password masked), 500.
fn failure(state: &AppState, title: &str, e: impl std::fmt::Display) -> Response {
    let message = redact_secrets(&e.to_string());
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        pages::error(state, title, &message),
    )
        .into_response()
}

#[derive(Deserialize)]
struct StreamsQuery {
    #[serde(default)]
    prefix: String,
    after: Option<String>,
}

async fn streams(State(state): State<AppState>, Query(q): Query<StreamsQuery>) -> Response {
    let after = match q
        .after
        .as_deref()
        .filter(|a| !a.is_empty())
        .map(StreamId::new)
    {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(e)) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match state.store.streams(&q.prefix, after.as_ref(), PAGE).await {
        Ok(list) => pages::streams(&state, &q.prefix, &list).into_response(),
        Err(e) => failure(&state, "Streams", e),
    }
}

#[derive(Deserialize)]
struct StreamQuery {
    from: Option<u64>,
}

async fn stream(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<StreamQuery>,
) -> Response {
    let id = match StreamId::new(&id) {
        Ok(id) => id,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let from = StreamVersion::new(q.from.unwrap_or(1).max(1));
    match state.store.read_stream(&id, from, PAGE as usize).await {
        Ok(events) if events.is_empty() && from.get() == 1 => (
            StatusCode::NOT_FOUND,
            pages::error(&state, "Stream", &format!("stream '{id}' has no events")),
        )
            .into_response(),
        Ok(events) => pages::stream(&state, &id, &events, PAGE as usize).into_response(),
        Err(e) => failure(&state, "Stream", e),
    }
}

async fn all(State(state): State<AppState>) -> Response {
    let events = async {
        let start = state.store.recent_start(RECENT).await?;
        Ok::<_, anyhow::Error>(state.store.read_all(start, RECENT as usize).await?)
    };
    match events.await {
        Ok(events) => pages::all(&state, &events).into_response(),
        Err(e) => failure(&state, "$all", e),
    }
}

#[derive(Deserialize)]
struct LiveQuery {
    #[serde(default)]
    after: u64,
}

/// `$all` after a position, live: one server-sent event per stored event,
/// its table row rendered here (`row`), or an `error` event.
async fn all_live(
    State(state): State<AppState>,
    Query(q): Query<LiveQuery>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let options = SubscriptionOptions::default().after(GlobalPosition::new(q.after));
    let events = eventcore::subscribe(state.store.clone(), options).map(|item| {
        Ok(match item {
            Ok(event) => SseEvent::default()
                .event("row")
                .data(pages::all_row(&event).into_string()),
            Err(e) => SseEvent::default()
                .event("failure")
                .data(redact_secrets(&e.to_string())),
        })
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

async fn projections(State(state): State<AppState>) -> Response {
    match state.store.projections().await {
        Ok(list) => pages::projections(&state, &list).into_response(),
        Err(e) => failure(&state, "Projections", e),
    }
}

/// The health check; 503 when unhealthy, so probes can use it too.
async fn health(State(state): State<AppState>) -> Response {
    match state.store.health_check().await {
        Ok(h) => {
            let code = if h.is_healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (code, pages::health(&state, &h)).into_response()
        }
        Err(e) => failure(&state, "Health", e),
    }
}

async fn live_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("live.js"),
    )
}

async fn style_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("style.css"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secre"));
        assert!(!same(b"", b"x"));
    }
}
