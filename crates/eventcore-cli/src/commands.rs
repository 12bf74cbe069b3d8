//! The subcommands: each one a few library calls and some printing.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use eventcore::{EventStore, GlobalPosition, StreamVersion};
use eventcore_postgres::{PostgresEventStore, SCHEMA_VERSION};
use serde_json::json;

use crate::{
    cli::{Command, Config, StreamArgs, TailArgs},
    output::{self, Output},
};

/// Events fetched per read.
const PAGE: usize = 500;

/// How long `tail --follow` waits before asking again when it is caught up.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// `tail` says on stderr what it waits for once it has waited this long for
/// events it knows are committed...
const WAIT_NOTICE: Duration = Duration::from_secs(1);
/// ...and again at most this often.
const WAIT_NOTICE_EVERY: Duration = Duration::from_secs(10);

/// Exit status of `health` when the store is not healthy.
pub(crate) const UNHEALTHY: u8 = 1;

/// Connects, runs the subcommand, and closes the pool.
pub(crate) async fn run(config: Config) -> anyhow::Result<ExitCode> {
    let store = PostgresEventStore::new(config.store.clone())
        .await
        .with_context(|| {
            format!(
                "cannot connect to {} (schema {})",
                config.display_url(),
                config.schema()
            )
        })?;
    tracing::debug!(url = %config.display_url(), schema = config.schema(), "connected");
    let mut out = Output::new(config.json);
    let result = match &config.command {
        Command::Init => init(&store, &config, &mut out).await,
        Command::Health => health(&store, &config, &mut out).await,
        Command::Stats => stats(&store, &config, &mut out).await,
        Command::Stream(args) => stream(&store, &config, args, &mut out).await,
        Command::Tail(args) => tail(&store, &config, args, &mut out).await,
        Command::RestoreCheck => crate::restore::run(&config, &mut out).await,
        Command::Connections => connections(&store, &mut out).await,
        Command::Projections(args) => {
            // Errors and operator records live in tables of the current
            // version: an older schema would fail on a missing column.
            let version = require_initialized(&store, &config).await?;
            if version < SCHEMA_VERSION {
                bail!(
                    "schema {} is at version {version}; projections need version {SCHEMA_VERSION}: run `eventcore init` to migrate it",
                    config.schema()
                );
            }
            crate::projections::run(&store, args.action.as_ref(), &mut out).await
        }
        Command::Export(args) => {
            require_initialized(&store, &config).await?;
            crate::transfer::export(&store, args, &mut out).await
        }
        Command::Import(args) => {
            require_initialized(&store, &config).await?;
            crate::transfer::import(&store, args, &mut out).await
        }
        Command::Verify => crate::verify::verify(&store, &mut out).await,
        Command::Serve(args) => {
            require_initialized(&store, &config).await?;
            crate::serve::serve(&store, &config, args, &mut out).await
        }
    };
    // Whatever happened, print what was produced and say goodbye to the
    // server properly.
    let flushed = out.flush().context("cannot write to stdout");
    store.pool().close().await;
    let code = result?;
    flushed?;
    Ok(code)
}

/// `init`: creates or migrates the schema, then reports its version.
async fn init(
    store: &PostgresEventStore,
    config: &Config,
    out: &mut Output,
) -> anyhow::Result<ExitCode> {
    let schema = config.schema();
    let before = store
        .schema_version()
        .await
        .with_context(|| format!("cannot read the version of schema {schema}"))?;
    store
        .initialize()
        .await
        .with_context(|| format!("cannot initialize schema {schema}"))?;
    let after = store
        .schema_version()
        .await
        .with_context(|| format!("cannot read the version of schema {schema}"))?
        .with_context(|| format!("schema {schema} has no version after initialization"))?;
    if out.json() {
        out.json_line(&json!({
            "schema": schema,
            "schema_version": after,
            "previous_schema_version": before,
            "changed": before != Some(after),
        }))?;
    } else {
        out.line(&match before {
            None => format!("initialized schema {schema} at version {after}"),
            Some(v) if v == after => format!("schema {schema} is already at version {after}"),
            Some(v) => format!("migrated schema {schema} from version {v} to {after}"),
        })?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `health`: every field of the health check; exit 1 if unhealthy.
async fn health(
    store: &PostgresEventStore,
    config: &Config,
    out: &mut Output,
) -> anyhow::Result<ExitCode> {
    let h = store.health_check().await.context("health check failed")?;
    if out.json() {
        out.json_line(&json!({
            "database": config.display_url(),
            "schema": config.schema(),
            "is_healthy": h.is_healthy,
            "database_reachable": h.database_reachable,
            "database_latency_ms": output::millis(h.database_latency),
            "unreachable_reason": h.unreachable_reason,
            "pool_exhausted": h.pool_exhausted,
            "missing_objects": h.missing_objects,
            "schema_version": h.schema_version,
            "expected_schema_version": h.expected_schema_version,
            "read_horizon": h.read_horizon.map(GlobalPosition::get),
            "oldest_transaction_age_ms": h.oldest_transaction_age.map(output::millis),
            "transaction_counter": h.transaction_counter.map(|c| json!({
                "next_transaction_id": c.next_transaction_id,
                "newest_transaction_id": c.newest_transaction_id(),
                "ids_left": c.ids_left(),
                "behind": c.is_behind(),
            })),
            "pool": output::pool_json(&h.pool),
            "problems": h.problems,
        }))?;
    } else {
        out.rows(&[
            ("database", config.display_url()),
            ("schema", config.schema().to_owned()),
            ("healthy", output::yes_no(h.is_healthy)),
            (
                "database reachable",
                match &h.unreachable_reason {
                    Some(reason) if !h.database_reachable => format!("no ({reason})"),
                    _ => output::yes_no(h.database_reachable),
                },
            ),
            ("database latency", output::duration(h.database_latency)),
            ("pool exhausted", output::yes_no(h.pool_exhausted)),
            (
                "schema version",
                format!(
                    "{} (expected {})",
                    output::or_none(h.schema_version),
                    h.expected_schema_version
                ),
            ),
            (
                "missing objects",
                if h.missing_objects.is_empty() {
                    "none".to_owned()
                } else {
                    h.missing_objects.join(", ")
                },
            ),
            ("read horizon", output::or_none(h.read_horizon)),
            (
                "oldest transaction",
                output::or_none(h.oldest_transaction_age.map(output::duration)),
            ),
            (
                "next transaction",
                output::or_none(h.transaction_counter.map(|c| {
                    format!(
                        "{} (newest event's: {}; {} ids left for positions)",
                        c.next_transaction_id,
                        output::or_none(c.newest_transaction_id()),
                        c.ids_left()
                    )
                })),
            ),
        ])?;
        out.line("pool:")?;
        indent_rows(out, &output::pool_rows(&h.pool))?;
        if h.problems.is_empty() {
            out.line("problems: none")?;
        } else {
            out.line("problems:")?;
            for p in &h.problems {
                out.line(&format!("  - {p}"))?;
            }
        }
    }
    if h.database_reachable {
        let schema = config.schema();
        match h.schema_version {
            Some(v) if v > h.expected_schema_version => eprintln!(
                "hint: schema {schema} was migrated by a newer release; upgrade eventcore"
            ),
            _ if h
                .transaction_counter
                .is_some_and(|c| c.is_behind() || c.is_exhausted()) =>
            {
                eprintln!(
                    "hint: stop all writers and run `eventcore restore-check` (docs/operations.md, Backup and restore)"
                )
            }
            _ if !h.missing_objects.is_empty() => eprintln!(
                "hint: schema {schema} is damaged; restore it from a backup (see docs/operations.md)"
            ),
            v if v.is_none_or(|v| v < h.expected_schema_version) => eprintln!(
                "hint: run `eventcore init --schema {schema}` to create or migrate the schema"
            ),
            _ => {}
        }
    }
    Ok(if h.is_healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(UNHEALTHY)
    })
}

/// Writes rows indented under a heading.
fn indent_rows(out: &mut Output, rows: &[(&str, String)]) -> anyhow::Result<()> {
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 1;
    for (label, value) in rows {
        out.line(&format!("  {:<width$} {value}", format!("{label}:")))?;
    }
    Ok(())
}

/// `stats`: counts and the highest position, plus the schema version.
async fn stats(
    store: &PostgresEventStore,
    config: &Config,
    out: &mut Output,
) -> anyhow::Result<ExitCode> {
    let version = require_initialized(store, config).await?;
    let s = store
        .stats()
        .await
        .with_context(|| format!("cannot count the events of schema {}", config.schema()))?;
    if out.json() {
        out.json_line(&json!({
            "schema": config.schema(),
            "schema_version": version,
            "streams": s.streams,
            "events": s.events,
            "max_position": s.max_position.map(GlobalPosition::get),
        }))?;
    } else {
        out.rows(&[
            ("schema", format!("{} (version {version})", config.schema())),
            ("streams", s.streams.to_string()),
            ("events", s.events.to_string()),
            ("max position", output::or_none(s.max_position)),
        ])?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `stream`: one stream's events from a version on, page by page.
async fn stream(
    store: &PostgresEventStore,
    config: &Config,
    args: &StreamArgs,
    out: &mut Output,
) -> anyhow::Result<ExitCode> {
    require_initialized(store, config).await?;
    let id = &args.stream_id;
    let mut from = StreamVersion::new(args.from);
    let mut remaining = args.limit;
    let mut printed = 0u64;
    loop {
        let want = page_size(remaining);
        if want == 0 {
            break;
        }
        let page = store
            .read_stream(id, from, want)
            .await
            .with_context(|| format!("cannot read stream '{id}' from version {from}"))?;
        for event in &page {
            out.event(event, false)?;
        }
        printed += page.len() as u64;
        if let Some(r) = remaining.as_mut() {
            *r -= page.len() as u64;
        }
        match page.last() {
            Some(last) if page.len() == want => from = last.stream_version.next(),
            _ => break,
        }
    }
    if printed == 0 && !out.json() {
        // Not an error, but an empty stdout deserves a word on stderr.
        eprintln!("stream '{id}' has no events from version {}", args.from);
    }
    Ok(ExitCode::SUCCESS)
}

/// `tail`: events in global order after a position; with `--follow`,
/// keeps polling until Ctrl-C.
async fn tail(
    store: &PostgresEventStore,
    config: &Config,
    args: &TailArgs,
    out: &mut Output,
) -> anyhow::Result<ExitCode> {
    require_initialized(store, config).await?;
    if !args.follow {
        read_all_pages(store, args, out).await?;
        return Ok(ExitCode::SUCCESS);
    }
    tokio::select! {
        result = read_all_pages(store, args, out) => result?,
        signal = tokio::signal::ctrl_c() => {
            signal.context("cannot listen for Ctrl-C")?;
            tracing::debug!("interrupted; stopping");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints pages of `read_all` until caught up (or, following, forever),
/// flushing after every page. Returns when `--limit` events were printed.
///
/// Events committed before the start may be unreadable for a while: an
/// open transaction holds the read horizon back (see
/// docs/adr/0001-global-order.md). Waiting for them, it says on stderr
/// which transaction it waits for, and gives up after `--timeout`.
async fn read_all_pages(
    store: &PostgresEventStore,
    args: &TailArgs,
    out: &mut Output,
) -> anyhow::Result<()> {
    let mut after = GlobalPosition::new(args.after);
    let mut remaining = args.limit;
    let timeout = args.timeout.map(Duration::from_secs);
    // Everything committed before the command started is printed, even if a
    // transaction elsewhere still holds the read horizon below it for a
    // moment (see docs/adr/0001-global-order.md).
    let head = store
        .head_position()
        .await
        .context("cannot read the newest position")?;
    let mut waiting_since: Option<Instant> = None;
    let mut noticed_at: Option<Instant> = None;
    loop {
        let want = page_size(remaining);
        if want == 0 {
            return Ok(());
        }
        let page = store.read_all(after, want).await.map_err(|e| {
            let hint = match e.position() {
                Some(p) => {
                    format!("; the event at {p} cannot be read: `--after {p}` starts after it")
                }
                None => String::new(),
            };
            anyhow::Error::new(e)
                .context(format!("cannot read events after position {after}{hint}"))
        })?;
        for event in &page {
            out.event(event, true)?;
        }
        out.flush().context("cannot write to stdout")?;
        if let Some(r) = remaining.as_mut() {
            *r -= page.len() as u64;
        }
        if let Some(last) = page.last() {
            after = last.position;
            waiting_since = None;
        }
        if page.len() < want {
            let behind = after < head;
            if !args.follow && !behind {
                return Ok(());
            }
            if behind {
                let waited = waiting_since.get_or_insert_with(Instant::now).elapsed();
                let expired = timeout.is_some_and(|t| waited >= t);
                if expired || waited >= WAIT_NOTICE {
                    let held = match store.read_blocker().await {
                        Ok(Some(blocker)) => format!("held back by {blocker}"),
                        Ok(None) => "nothing known holds them back".to_owned(),
                        Err(e) => format!("cannot tell what holds them back: {e}"),
                    };
                    if expired {
                        bail!(
                            "gave up after {:.1} s waiting for events up to position {head} (read up to {after}): {held}",
                            waited.as_secs_f64()
                        );
                    }
                    if noticed_at.is_none_or(|at| at.elapsed() >= WAIT_NOTICE_EVERY) {
                        noticed_at = Some(Instant::now());
                        eprintln!(
                            "waiting for events up to position {head} (read up to {after}) to become readable: {held}"
                        );
                    }
                }
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

/// `connections` (`pool`): every client connection of the server, by
/// database, application and state: the pools of every process using the
/// store (this command's own is of no interest).
async fn connections(store: &PostgresEventStore, out: &mut Output) -> anyhow::Result<ExitCode> {
    let c = store
        .connections()
        .await
        .context("cannot list the server's connections")?;
    if out.json() {
        out.json_line(&serde_json::to_value(&c)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    out.line(&format!(
        "{} client connections of max_connections {}",
        c.total, c.max_connections
    ))?;
    let rows: Vec<[String; 6]> = c
        .groups
        .iter()
        .map(|g| {
            [
                g.database.clone(),
                if g.application.is_empty() {
                    "-".into()
                } else {
                    g.application.clone()
                },
                if g.state.is_empty() {
                    "-".into()
                } else {
                    g.state.clone()
                },
                g.count.to_string(),
                g.waiting_on_locks.to_string(),
                g.oldest_transaction_seconds
                    .map_or("-".into(), |s| format!("{s:.1} s")),
            ]
        })
        .collect();
    let header = [
        "database",
        "application",
        "state",
        "count",
        "waiting on locks",
        "oldest transaction",
    ]
    .map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.line(cells.join("  ").trim_end())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The next read's size: a full page, or what is left of `--limit`.
fn page_size(remaining: Option<u64>) -> usize {
    remaining.map_or(PAGE, |r| usize::try_from(r).unwrap_or(PAGE).min(PAGE))
}

/// The schema version, or a clear error if `init` never ran on this schema.
pub(crate) async fn require_initialized(
    store: &PostgresEventStore,
    config: &Config,
) -> anyhow::Result<i32> {
    let schema = config.schema();
    let version = store
        .schema_version()
        .await
        .with_context(|| format!("cannot read the version of schema {schema}"))?;
    match version {
        None => bail!(
            "schema {schema} is not initialized in {}; run `eventcore init` first",
            config.display_url()
        ),
        Some(v) => {
            if v != SCHEMA_VERSION {
                tracing::warn!(
                    schema,
                    found = v,
                    expected = SCHEMA_VERSION,
                    "schema version differs from this release's; run `eventcore init` or upgrade"
                );
            }
            Ok(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_respect_the_limit() {
        assert_eq!(page_size(None), PAGE);
        assert_eq!(page_size(Some(3)), 3);
        assert_eq!(page_size(Some(0)), 0);
        assert_eq!(page_size(Some(10_000)), PAGE);
    }
}
