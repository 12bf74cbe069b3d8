//! The pages, rendered on the server with maud (which escapes every value).

use chrono::SecondsFormat;
use eventcore::{StoredEvent, StreamId};
use eventcore_postgres::{HealthStatus, ProjectionStatus, StreamSummary};
use maud::{DOCTYPE, Markup, html};

use super::app::{AppState, PAGE};

/// The frame of every page: title, navigation, where the store is.
fn layout(state: &AppState, title: &str, current: &str, body: Markup) -> Markup {
    let nav = [
        ("/streams", "Streams"),
        ("/all", "$all (live)"),
        ("/projections", "Projections"),
        ("/health", "Health"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · eventcore" }
                link rel="stylesheet" href="/static/style.css";
            }
            body {
                header {
                    strong { "eventcore" }
                    nav {
                        @for (href, label) in nav {
                            a href=(href) class=[(label == current).then_some("current")] { (label) }
                        }
                    }
                    span.where { (state.database()) " · schema " code { (state.schema()) } }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

fn time(event: &StoredEvent) -> String {
    event
        .recorded_at
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// JSON as stored, indented for reading; text that is not JSON as it is.
fn pretty(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| text.to_owned())
}

fn metadata(event: &StoredEvent) -> String {
    serde_json::to_string_pretty(&event.metadata).unwrap_or_default()
}

fn stream_link(id: &StreamId) -> String {
    // Path segments escape `/`, `?`, `#`, `%` and spaces; the rest of a
    // stream id is safe in a path.
    let mut href = String::from("/streams/");
    for c in id.as_str().chars() {
        match c {
            '/' | '?' | '#' | '%' | ' ' | '"' | '<' | '>' | '\\' | '^' | '`' | '{' | '|' | '}' => {
                let mut buf = [0; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    href.push_str(&format!("%{b:02X}"));
                }
            }
            c => href.push(c),
        }
    }
    href
}

pub(crate) fn streams(state: &AppState, prefix: &str, list: &[StreamSummary]) -> Markup {
    let body = html! {
        form method="get" action="/streams" {
            input type="search" name="prefix" value=(prefix) placeholder="stream id prefix, e.g. account-" autofocus;
            button type="submit" { "Search" }
        }
        @if list.is_empty() {
            p.empty { "No streams" @if !prefix.is_empty() { " starting with " code { (prefix) } } "." }
        } @else {
            table {
                thead { tr { th { "stream" } th.num { "version" } th { "last written" } } }
                tbody {
                    @for s in list {
                        tr {
                            td { a href=(stream_link(&s.stream_id)) { (s.stream_id) } }
                            td.num { (s.version) }
                            td { (s.updated_at.to_rfc3339_opts(SecondsFormat::Secs, true)) }
                        }
                    }
                }
            }
            @if list.len() == PAGE as usize {
                @if let Some(last) = list.last() {
                    p { a href=(format!("/streams?prefix={}&after={}", encode(prefix), encode(last.stream_id.as_str()))) { "next " (PAGE) " →" } }
                }
            }
        }
    };
    layout(state, "Streams", "Streams", body)
}

/// A query-string value, percent-encoded.
fn encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn event_card(event: &StoredEvent, with_stream: bool) -> Markup {
    html! {
        article.event id=(format!("v{}", event.stream_version)) {
            div.head {
                @if with_stream { a href=(stream_link(&event.stream_id)) { (event.stream_id) } " " }
                span.version { "v" (event.stream_version) }
                span.type { (event.event_type) }
                span.meta { "schema " (event.schema_version) " · position " (event.position) " · " (time(event)) }
                span.id { (event.event_id) }
            }
            div.body {
                div { h3 { "data" } pre { (pretty(event.data.get())) } }
                div { h3 { "metadata" } pre { (metadata(event)) } }
            }
        }
    }
}

pub(crate) fn stream(
    state: &AppState,
    id: &StreamId,
    events: &[StoredEvent],
    page: usize,
) -> Markup {
    let body = html! {
        @if events.is_empty() {
            p.empty { "No events from this version on." }
        }
        @for e in events { (event_card(e, false)) }
        @if events.len() == page {
            @if let Some(last) = events.last() {
                p { a href=(format!("{}?from={}", stream_link(id), last.stream_version.get() + 1)) { "next " (page) " →" } }
            }
        }
    };
    layout(state, &format!("Stream {id}"), "Streams", body)
}

/// One `$all` row: also what the live page receives for each new event.
pub(crate) fn all_row(event: &StoredEvent) -> Markup {
    html! {
        tr {
            td.num { (event.position) }
            td { a href=(stream_link(&event.stream_id)) { (event.stream_id) } }
            td.num { (event.stream_version) }
            td { (event.event_type) }
            td { (time(event)) }
            td { code.payload { (event.data.to_value().map(|v| v.to_string()).unwrap_or_else(|_| event.data.get().to_owned())) } }
        }
    }
}

pub(crate) fn all(state: &AppState, events: &[StoredEvent]) -> Markup {
    let after = events.last().map_or(0, |e| e.position.get());
    let body = html! {
        p.live { span #status { "connecting…" } " The newest events; new ones appear as they are committed." }
        table #all data-after=(after) {
            thead { tr { th.num { "position" } th { "stream" } th.num { "version" } th { "type" } th { "recorded" } th { "data" } } }
            tbody { @for e in events { (all_row(e)) } }
        }
        script src="/static/live.js" {}
    };
    layout(state, "$all", "$all (live)", body)
}

pub(crate) fn projections(state: &AppState, list: &[ProjectionStatus]) -> Markup {
    let body = html! {
        @if list.is_empty() {
            p.empty { "No projections in this schema." }
        } @else {
            table {
                thead { tr {
                    th { "projection" } th.num { "checkpoint" } th.num { "lag (events)" } th.num { "lag (s)" }
                    th { "runner" } th.num { "skips" } th { "last error" }
                } }
                tbody {
                    @for p in list {
                        tr class=[p.last_error.as_ref().filter(|e| !e.passed).map(|_| "bad")] {
                            td { strong { (p.name) } @if p.rebuild_requested_at.is_some() { br; small { "rebuild requested" } } }
                            td.num { (p.checkpoint.map_or_else(|| "none".to_owned(), |c| c.to_string())) }
                            td.num { (p.lag_events) }
                            td.num { (format!("{:.1}", p.lag_seconds)) }
                            td { @match &p.runner {
                                Some(r) => { (r.application) " (pid " (r.pid) ", " (r.client) ")" br; small { "since " (r.since.to_rfc3339_opts(SecondsFormat::Secs, true)) } }
                                None => { span.warn { "none active" } }
                            } }
                            td.num { (p.skips) @if let Some(s) = p.last_skip { br; small { "last at " (s) } } }
                            td { @match &p.last_error {
                                Some(e) => {
                                    (e.message)
                                    br; small {
                                        @if let Some(at) = e.position { "event " (at) " · " }
                                        (e.at.to_rfc3339_opts(SecondsFormat::Secs, true))
                                        @if e.passed { " · passed since" }
                                    }
                                }
                                None => { "none" }
                            } }
                        }
                    }
                }
            }
            p.hint { "Reset, rebuild or skip with " code { "eventcore projections" } " (this page only reads)." }
        }
    };
    layout(state, "Projections", "Projections", body)
}

pub(crate) fn health(state: &AppState, h: &HealthStatus) -> Markup {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let rows: Vec<(&str, String)> = vec![
        (
            "database reachable",
            match &h.unreachable_reason {
                Some(r) if !h.database_reachable => format!("no ({r})"),
                _ => yes_no(h.database_reachable).to_owned(),
            },
        ),
        ("latency", format!("{:.1?}", h.database_latency)),
        (
            "schema version",
            format!(
                "{} (expected {})",
                h.schema_version.map_or("none".into(), |v| v.to_string()),
                h.expected_schema_version
            ),
        ),
        (
            "missing objects",
            if h.missing_objects.is_empty() {
                "none".into()
            } else {
                h.missing_objects.join(", ")
            },
        ),
        (
            "read horizon",
            h.read_horizon.map_or("none".into(), |p| p.to_string()),
        ),
        (
            "oldest transaction",
            h.oldest_transaction_age
                .map_or("none".into(), |d| format!("{d:.1?}")),
        ),
        (
            "pool (this page's)",
            format!(
                "{}/{} open, {} idle",
                h.pool.current_connections, h.pool.max_connections, h.pool.idle_connections
            ),
        ),
    ];
    let body = html! {
        p class=(if h.is_healthy { "verdict good" } else { "verdict bad" }) {
            @if h.is_healthy { "Healthy" } @else { "Unhealthy" }
        }
        table.rows { tbody { @for (label, value) in &rows { tr { th { (label) } td { (value) } } } } }
        @if !h.problems.is_empty() {
            h2 { "Problems" }
            ul { @for p in &h.problems { li { (p) } } }
        }
    };
    layout(state, "Health", "Health", body)
}

pub(crate) fn error(state: &AppState, title: &str, message: &str) -> Markup {
    layout(state, title, "", html! { p.verdict.bad { (message) } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_escape_what_paths_cannot_hold() {
        let id = StreamId::new("a/b?c#d e%").unwrap();
        assert_eq!(stream_link(&id), "/streams/a%2Fb%3Fc%23d%20e%25");
        assert_eq!(encode("account-1 é"), "account-1%20%C3%A9");
    }
}
