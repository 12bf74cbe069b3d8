//! `restore-check`: after a logical restore, whether writers may start, and
//! if not the `pg_resetwal` command that makes them safe.

use std::process::ExitCode;

use anyhow::{Context, bail};
use eventcore::GlobalPosition;
use eventcore_postgres::{RestoreCheck, RestoreVerdict, StoreHighWater, restore_check};
use serde_json::json;

use crate::{
    cli::Config,
    commands::UNHEALTHY,
    output::{self, Output},
};

/// Where `pg_resetwal` is told the data directory is: the operator's to fill in.
const DATA_DIR: &str = "<data directory>";

/// Prints every store and the verdict; exit 0 when writers may start, 1
/// when the counter must be moved first, an error when some database could
/// not be checked.
pub(crate) async fn run(config: &Config, out: &mut Output) -> anyhow::Result<ExitCode> {
    let check = restore_check(&config.store)
        .await
        .with_context(|| format!("cannot check the cluster of {}", config.display_url()))?;
    let verdict = check.verdict();
    if out.json() {
        out.json_line(&as_json(&check, verdict))?;
    } else {
        print_text(&check, verdict, out)?;
    }
    match verdict {
        RestoreVerdict::Ready => Ok(ExitCode::SUCCESS),
        RestoreVerdict::Incomplete => bail!(
            "cannot check every database of the cluster ({}): no verdict; \
             use a role that can connect to each and read its EventCore schemas",
            check
                .unchecked
                .iter()
                .map(|u| format!("{}: {}", u.database, u.reason))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        _ => Ok(ExitCode::from(UNHEALTHY)),
    }
}

fn resetwal(epoch: u32) -> String {
    format!("pg_resetwal -e {epoch} -D {DATA_DIR}")
}

/// `database.schema` of the store whose positions need the highest epoch.
fn newest_store(check: &RestoreCheck) -> Option<&StoreHighWater> {
    check
        .stores
        .iter()
        .max_by_key(|s| s.newest_transaction_id())
}

fn as_json(check: &RestoreCheck, verdict: RestoreVerdict) -> serde_json::Value {
    let (name, epoch, lowest_safe_epoch) = match verdict {
        RestoreVerdict::Ready => ("ready", None, None),
        RestoreVerdict::AdvanceEpoch { epoch } => ("advance_epoch", Some(epoch), Some(epoch)),
        RestoreVerdict::Exhausted { lowest_safe_epoch } => ("exhausted", None, lowest_safe_epoch),
        RestoreVerdict::Incomplete => ("incomplete", None, None),
        _ => ("unknown", None, None),
    };
    json!({
        "next_transaction_id": check.next_transaction_id,
        "newest_transaction_id": check.newest_transaction_id(),
        "max_transaction_id": eventcore_postgres::MAX_TRANSACTION_ID,
        "stores": check.stores.iter().map(|s| json!({
            "database": s.database,
            "schema": s.schema,
            "newest_position": s.newest_position.map(GlobalPosition::get),
            "newest_checkpoint": s.newest_checkpoint.map(GlobalPosition::get),
            "newest_transaction_id": s.newest_transaction_id(),
            "behind": s.newest_transaction_id().is_some_and(|id| check.next_transaction_id <= id),
        })).collect::<Vec<_>>(),
        "unchecked": check.unchecked.iter().map(|u| json!({
            "database": u.database,
            "reason": u.reason,
        })).collect::<Vec<_>>(),
        "verdict": name,
        "epoch": epoch,
        "lowest_safe_epoch": lowest_safe_epoch,
        "command": epoch.map(resetwal),
    })
}

fn print_text(
    check: &RestoreCheck,
    verdict: RestoreVerdict,
    out: &mut Output,
) -> anyhow::Result<()> {
    let next = check.next_transaction_id;
    out.line(&format!(
        "cluster transaction counter: {next} (epoch {}, 32-bit id {})",
        next >> 32,
        next & u64::from(u32::MAX)
    ))?;
    if check.stores.is_empty() {
        out.line("stores: none found")?;
    } else {
        out.line("stores:")?;
        for s in &check.stores {
            let behind = s.newest_transaction_id().is_some_and(|id| next <= id);
            out.line(&format!(
                "  {}.{}: newest position {}, newest checkpoint {}, transaction {}{}",
                s.database,
                s.schema,
                output::or_none(s.newest_position),
                output::or_none(s.newest_checkpoint),
                output::or_none(s.newest_transaction_id()),
                if behind { "  BEHIND" } else { "" }
            ))?;
        }
    }
    for u in &check.unchecked {
        out.line(&format!("  {}: NOT CHECKED: {}", u.database, u.reason))?;
    }
    match verdict {
        RestoreVerdict::Ready => {
            out.line("ready: the counter is past every store's positions; writers may start")?
        }
        RestoreVerdict::AdvanceEpoch { epoch } => {
            let newest = newest_store(check);
            out.line(&format!(
                "NOT READY: the counter is not past transaction {} of {}: new events would sort \
                 before restored ones. Before any writer starts:",
                output::or_none(check.newest_transaction_id()),
                newest.map_or_else(String::new, |s| format!("{}.{}", s.database, s.schema)),
            ))?;
            out.line("  1. stop the server cleanly: pg_ctl stop -m fast -D <data directory>")?;
            out.line(&format!(
                "  2. as the server's OS user: {}",
                resetwal(epoch)
            ))?;
            out.line(
                "  3. start the server and run `eventcore restore-check` again: it must say ready",
            )?;
        }
        RestoreVerdict::Exhausted { lowest_safe_epoch } => {
            out.line(&format!(
                "NOT READY: the counter is past the largest transaction id a global position can \
                 encode ({}), or the stores' positions leave no room below it: writes are refused.",
                eventcore_postgres::MAX_TRANSACTION_ID
            ))?;
            if let Some(epoch) = lowest_safe_epoch {
                out.line(&format!(
                    "  The lowest epoch above every store's positions is {epoch} ({}); setting it \
                     lowers the counter: read \"Backup and restore\" in docs/operations.md first.",
                    resetwal(epoch)
                ))?;
            }
        }
        RestoreVerdict::Incomplete => {
            out.line("NO VERDICT: some databases could not be checked")?
        }
        _ => out.line("NO VERDICT: unknown")?,
    }
    Ok(())
}
