//! `eventcore projections`: list, reset, rebuild, skip, accept-history, history.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use chrono::SecondsFormat;
use eventcore::{EventStore, GlobalPosition};
use eventcore_postgres::{
    PostgresEventStore, ProjectionOperation, ProjectionRequest, ProjectionStatus,
};
use serde_json::json;

use crate::{
    cli::{HistoryArgs, OperatorArgs, ProjectionAction, RebuildArgs, SkipArgs},
    output::{Output, Tone},
    progress,
};

/// How often `rebuild` looks at the runner's progress.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

pub(crate) async fn run(
    store: &PostgresEventStore,
    action: Option<&ProjectionAction>,
    out: &mut Output,
) -> anyhow::Result<ExitCode> {
    match action {
        None | Some(ProjectionAction::List) => list(store, out).await,
        Some(ProjectionAction::Reset(args)) => {
            let done = store
                .reset_projection(&args.projection, &request(args))
                .await
                .with_context(|| format!("cannot reset projection {}", args.projection))?;
            report(
                out,
                &done,
                "checkpoint forgotten: its next runner replays every event into the read model as it is",
            )
        }
        Some(ProjectionAction::Rebuild(args)) => rebuild(store, args, out).await,
        Some(ProjectionAction::Skip(SkipArgs { operator, position })) => {
            let done = store
                .skip_projection_event(
                    &operator.projection,
                    GlobalPosition::new(*position),
                    &request(operator),
                )
                .await
                .with_context(|| format!("cannot skip for projection {}", operator.projection))?;
            report(
                out,
                &done,
                "event recorded as skipped; its next runner starts after it",
            )
        }
        Some(ProjectionAction::AcceptHistory(args)) => {
            let done = store
                .accept_projection_history(&args.projection, &request(args))
                .await
                .with_context(|| {
                    format!(
                        "cannot accept the history for projection {}",
                        args.projection
                    )
                })?;
            report(
                out,
                &done,
                "checkpoint kept on the store's current history: its next runner resumes there",
            )
        }
        Some(ProjectionAction::History(args)) => history(store, args, out).await,
    }
}

/// The operator's request: their OS user, the reason, `--force`.
fn request(args: &OperatorArgs) -> ProjectionRequest {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown user".to_owned());
    ProjectionRequest::new(user)
        .reason(args.reason.clone())
        .force(args.force)
}

fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn or_none(p: Option<GlobalPosition>) -> String {
    p.map_or_else(|| "none".to_owned(), |p| p.to_string())
}

async fn list(store: &PostgresEventStore, out: &mut Output) -> anyhow::Result<ExitCode> {
    let all = store
        .projections()
        .await
        .context("cannot list projections")?;
    if out.json() {
        for p in &all {
            out.json_line(&serde_json::to_value(p)?)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        eprintln!("no projections in schema {}", store.config().schema);
    }
    for p in &all {
        print_status(out, p)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(out: &mut Output, p: &ProjectionStatus) -> anyhow::Result<()> {
    let state = match (&p.runner, &p.last_error) {
        (Some(_), _) => out.paint("running", Tone::Good),
        (None, Some(e)) if !e.passed => out.paint("stopped on an error", Tone::Bad),
        (None, _) => out.paint("no runner", Tone::Warn),
    };
    out.line(&format!("{}  ({state})", p.name))?;
    let mut rows = vec![
        (
            "checkpoint",
            format!(
                "{}{}",
                or_none(p.checkpoint),
                p.updated_at
                    .map(|t| format!(" (updated {})", time(t)))
                    .unwrap_or_default()
            ),
        ),
        (
            "lag",
            format!("{} events, {:.1} s", p.lag_events, p.lag_seconds),
        ),
        (
            "runner",
            p.runner
                .as_ref()
                .map_or_else(|| "none active".to_owned(), ToString::to_string),
        ),
        (
            "skips",
            match p.last_skip {
                Some(last) => format!("{} (last at {last})", p.skips),
                None => p.skips.to_string(),
            },
        ),
        (
            "last error",
            match &p.last_error {
                None => "none".to_owned(),
                Some(e) => format!(
                    "{}{} at {}{}",
                    e.message,
                    e.position
                        .map(|p| format!(" (event {p})"))
                        .unwrap_or_default(),
                    time(e.at),
                    if e.passed { " [passed since]" } else { "" }
                ),
            },
        ),
    ];
    if let Some(at) = p.rebuild_requested_at {
        rows.push((
            "rebuild",
            format!("requested at {}, waiting for a runner", time(at)),
        ));
    }
    let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 1;
    for (label, value) in rows {
        out.line(&format!("  {:<width$} {value}", format!("{label}:")))?;
    }
    Ok(())
}

/// Prints what an operator action did.
fn report(out: &mut Output, done: &ProjectionOperation, what: &str) -> anyhow::Result<ExitCode> {
    if out.json() {
        out.json_line(&serde_json::to_value(done)?)?;
    } else {
        out.line(&format!(
            "{} {}: {what} (checkpoint {} -> {}; recorded as operation {})",
            done.action,
            done.projection,
            or_none(done.checkpoint_before),
            or_none(done.checkpoint_after),
            done.id
        ))?;
        if let Some(runner) = &done.displaced_runner {
            let warning = out.paint("forced", Tone::Warn);
            out.line(&format!(
                "{warning}: the active runner ({runner}) is fenced out and stops at its next checkpoint; restart it"
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn history(
    store: &PostgresEventStore,
    args: &HistoryArgs,
    out: &mut Output,
) -> anyhow::Result<ExitCode> {
    let ops = store
        .projection_operations(args.projection.as_deref(), args.limit)
        .await
        .context("cannot read the operations")?;
    for op in &ops {
        if out.json() {
            out.json_line(&serde_json::to_value(op)?)?;
            continue;
        }
        out.line(&format!(
            "#{} {} {} {}{} by {}: checkpoint {} -> {}{}; {}",
            op.id,
            time(op.performed_at),
            op.action,
            op.projection,
            if op.forced { " (forced)" } else { "" },
            op.performed_by,
            or_none(op.checkpoint_before),
            or_none(op.checkpoint_after),
            op.event_position
                .map(|p| format!(", event {p} skipped"))
                .unwrap_or_default(),
            op.reason
        ))?;
    }
    if ops.is_empty() && !out.json() {
        eprintln!("no operations recorded");
    }
    Ok(ExitCode::SUCCESS)
}

/// Requests the rebuild, then follows it: first until a runner takes the
/// request, then the checkpoint up to the head as it was.
async fn rebuild(
    store: &PostgresEventStore,
    args: &RebuildArgs,
    out: &mut Output,
) -> anyhow::Result<ExitCode> {
    let name = &args.operator.projection;
    let target = store.head_position().await?;
    let done = store
        .request_projection_rebuild(name, &request(&args.operator))
        .await
        .with_context(|| format!("cannot request a rebuild of projection {name}"))?;
    if args.no_wait {
        return report(
            out,
            &done,
            "rebuild requested: its next runner resets the read model and replays every event",
        );
    }
    if !out.json() {
        report(out, &done, "rebuild requested")?;
        out.flush()?;
    }
    let total = store
        .count_events_between(GlobalPosition::START, target)
        .await?;
    let bar = progress::events_bar(Some(total), out.json(), name);
    let started = Instant::now();
    let deadline = args.timeout.map(Duration::from_secs);
    let follow = async {
        let mut said_waiting = false;
        let mut counted_to = GlobalPosition::START;
        let mut counted = 0;
        loop {
            let status = store
                .projection(name)
                .await?
                .with_context(|| format!("projection {name} is gone"))?;
            if status.rebuild_requested_at.is_some() {
                if !said_waiting {
                    said_waiting = true;
                    bar.set_message(format!("{name}: waiting for a runner"));
                    if bar.is_hidden() && !out.json() {
                        eprintln!(
                            "waiting for a runner of {name} to start the rebuild (start the application; Ctrl-C stops waiting, the request stays)"
                        );
                    }
                }
            } else {
                bar.set_message(name.clone());
                let at = status.checkpoint.unwrap_or(GlobalPosition::START);
                if at < counted_to {
                    counted_to = GlobalPosition::START;
                    counted = 0;
                }
                if at > counted_to {
                    counted += store
                        .count_events_between(counted_to, at.min(target))
                        .await?;
                    counted_to = at;
                }
                bar.set_position(counted.min(total));
                if at >= target {
                    return anyhow::Ok(counted);
                }
            }
            if deadline.is_some_and(|d| started.elapsed() >= d) {
                bail!(
                    "stopped following after {} s (checkpoint {} of {target}); the rebuild goes on",
                    started.elapsed().as_secs(),
                    or_none(status.checkpoint)
                );
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    };
    let events = tokio::select! {
        result = follow => result,
        signal = tokio::signal::ctrl_c() => {
            signal.context("cannot listen for Ctrl-C")?;
            bar.abandon();
            eprintln!("stopped following; the rebuild goes on (see `eventcore projections`)");
            return Ok(ExitCode::SUCCESS);
        }
    };
    bar.finish_and_clear();
    let events = events?;
    let seconds = started.elapsed().as_secs_f64();
    if out.json() {
        out.json_line(&json!({
            "projection": name,
            "operation": serde_json::to_value(&done)?,
            "target": target.get(),
            "events": events,
            "seconds": seconds,
        }))?;
    } else {
        out.line(&format!(
            "{}: {name} replayed {events} events up to position {target} in {seconds:.1} s",
            out.paint("rebuilt", Tone::Good)
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
