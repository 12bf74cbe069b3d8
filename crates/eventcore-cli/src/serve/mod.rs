//! `eventcore serve`: a small read-only web page over the store (axum,
//! HTML rendered on the server with maud; a dozen lines of plain
//! JavaScript only to follow `$all` live through server-sent events).
//!
//! Bound to 127.0.0.1 by default. Any other address needs a bearer token
//! (`--token`), or `--no-token` to serve it to whoever can reach it. The
//! database URL is shown with its password masked; nothing writes.

mod app;
mod pages;

use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::json;

pub(crate) use app::{AppState, router};

use crate::{
    cli::{Config, ServeArgs},
    output::Output,
};

pub(crate) async fn serve(
    store: &eventcore_postgres::PostgresEventStore,
    config: &Config,
    args: &ServeArgs,
    out: &mut Output,
) -> anyhow::Result<ExitCode> {
    let token = args.token.clone().filter(|t| !t.is_empty());
    if !args.bind.ip().is_loopback() && token.is_none() && !args.no_token {
        bail!(
            "refusing to serve {} without a token: pass --token (or EVENTCORE_SERVE_TOKEN), \
             or --no-token to let anyone who can reach it read every event",
            args.bind
        );
    }
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("cannot listen on {}", args.bind))?;
    let address = listener.local_addr()?;
    let state = AppState::new(store.clone(), config.display_url(), token.clone());
    let url = format!("http://{address}/");
    if out.json() {
        out.json_line(
            &json!({"listening": address.to_string(), "url": url, "token": token.is_some()}),
        )?;
    } else {
        out.line(&format!(
            "serving {} (schema {}) on {url}{}; Ctrl-C stops",
            config.display_url(),
            config.schema(),
            if token.is_some() {
                " (bearer token required)"
            } else {
                ""
            }
        ))?;
    }
    out.flush()?;
    // Not a graceful shutdown: live pages hold their event streams open
    // for as long as they are shown.
    tokio::select! {
        served = axum::serve(listener, router(state)) => served.context("the web server failed")?,
        signal = tokio::signal::ctrl_c() => signal.context("cannot listen for Ctrl-C")?,
    }
    Ok(ExitCode::SUCCESS)
}
