//! `eventcore verify`: each check of the store, and exit 1 on a failure.

use std::process::ExitCode;

use anyhow::Context;
use eventcore_postgres::{CheckStatus, PostgresEventStore};

use crate::{
    commands::UNHEALTHY,
    output::{Output, Tone},
};

pub(crate) async fn verify(
    store: &PostgresEventStore,
    out: &mut Output,
) -> anyhow::Result<ExitCode> {
    let report = store.verify().await.context("cannot run the checks")?;
    if out.json() {
        let mut value = serde_json::to_value(&report)?;
        value["passed"] = report.passed().into();
        out.json_line(&value)?;
    } else {
        out.line(&format!(
            "schema {} (version {}): {} streams, {} events",
            report.schema,
            report
                .schema_version
                .map_or("none".into(), |v| v.to_string()),
            report.streams.map_or("?".into(), |n| n.to_string()),
            report.events.map_or("?".into(), |n| n.to_string()),
        ))?;
        for c in &report.checks {
            let verdict = match c.status {
                CheckStatus::Pass => out.paint("ok  ", Tone::Good),
                CheckStatus::Warn => out.paint("warn", Tone::Warn),
                CheckStatus::Fail => out.paint("FAIL", Tone::Bad),
                CheckStatus::Skipped => "skip".to_owned(),
            };
            out.line(&format!("{verdict}  {}: {}", c.name, c.detail))?;
        }
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(UNHEALTHY)
    })
}
