//! EventCore benchmarks: each scenario measured through the library and, on
//! the same PostgreSQL in the same invocation (one after the other, never at
//! once), as plain SQL run by pgbench, the ceiling. See docs/benchmarks.md.
//!
//! ```text
//! cargo run --release -p eventcore-bench -- [--quick] [--json PATH] [--only A,C] [--writers 16] [--duration SECS]
//! ```
//!
//! With `EVENTCORE_BENCH_POOLER_URL` set (a PgBouncer in transaction mode
//! in front of the same server, naming the database `eventcore_bench`),
//! the stores connect through it with `Pooler::Transaction`.
//!
//! The database is `DATABASE_URL`, else the project's throwaway cluster
//! (`scripts/dev-db url`); everything lives in a dedicated database,
//! `eventcore_bench`, created if missing. Nothing here asserts speed.

mod ceiling;
mod cpu;
mod ctx;
mod measure;
mod provision;
mod report;
mod scenarios;
mod workload;

use std::{path::PathBuf, time::Duration};

use anyhow::bail;
use clap::Parser;
use eventcore::RetryPolicy;
use tracing_subscriber::EnvFilter;

use crate::{
    ceiling::Ceiling, ctx::Ctx, measure::Timing, provision::BenchDb, report::Row,
    workload::ceiling_payload,
};

/// Benchmarks EventCore against PostgreSQL's own ceiling.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Smoke run: ~2 s per measurement, fewer writer counts, a 100k-event
    /// read set. Every scenario still runs.
    #[arg(long)]
    quick: bool,

    /// Also write the results as a JSON array to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,

    /// Also write the results as a Markdown table to this file.
    #[arg(long, value_name = "PATH")]
    markdown: Option<PathBuf>,

    /// Run only these scenarios (comma-separated: A, A-cmd, B, C, D, E, F, G, S).
    #[arg(long, value_delimiter = ',', value_name = "SCENARIO,...")]
    only: Vec<String>,

    /// Writer (reader) counts for the scenarios that sweep them (A, B, E),
    /// instead of their own (A: 1,4,16,64; B and E: 1,16; with --quick A:
    /// 1,16, B and E: 16). The others run at their fixed count.
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    writers: Option<Vec<usize>>,

    /// Measured seconds per run (default 10, or 2 with --quick).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,

    /// Skip the pgbench ceiling.
    #[arg(long)]
    no_ceiling: bool,

    /// Install a metrics recorder (the Prometheus exporter's, without its
    /// HTTP listener) before running: what recording costs, against a run
    /// without it (no recorder: the metrics facade's no-op).
    #[arg(long)]
    metrics_recorder: bool,

    /// The executor's retry policy in D: attempts, base delay and delay cap
    /// in ms (default 200,5,20).
    #[arg(long, value_name = "ATTEMPTS,BASE_MS,MAX_MS", value_parser = parse_retry)]
    d_retry: Option<RetryPolicy>,
}

/// `ATTEMPTS,BASE_MS,MAX_MS`, e.g. `200,5,20`.
fn parse_retry(s: &str) -> Result<RetryPolicy, String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let [attempts, base, max] = parts[..] else {
        return Err("expected ATTEMPTS,BASE_MS,MAX_MS".into());
    };
    let attempts: u32 = attempts.parse().map_err(|e| format!("attempts: {e}"))?;
    let ms = |x: &str, what: &str| -> Result<Duration, String> {
        let v: f64 = x.parse().map_err(|e| format!("{what}: {e}"))?;
        Duration::try_from_secs_f64(v / 1000.0).map_err(|e| format!("{what}: {e}"))
    };
    Ok(RetryPolicy::new()
        .max_attempts(attempts)
        .base_delay(ms(base, "base delay")?)
        .max_delay(ms(max, "max delay")?))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,sqlx=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let scenarios = scenarios::select(&args.only)?;
    if args
        .writers
        .as_ref()
        .is_some_and(|w| w.is_empty() || w.contains(&0))
    {
        bail!("--writers takes counts of at least 1");
    }
    if args.metrics_recorder {
        metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
        eventcore_postgres::describe_metrics();
    }
    let measure = args.duration.unwrap_or(if args.quick { 2.0 } else { 10.0 });
    if !(measure.is_finite() && measure > 0.0) {
        bail!("--duration must be a positive number of seconds");
    }
    let timing = Timing {
        warmup: Duration::from_millis(if args.quick { 500 } else { 1000 }),
        measure: Duration::from_secs_f64(measure),
    };

    let db = if scenarios.iter().any(|s| s.needs_postgres) {
        let url = provision::server_url()?;
        let db = BenchDb::connect(&url).await?;
        cpu::locate_server(&db.admin).await;
        Some(db)
    } else {
        None
    };
    let ceiling = match (&db, args.no_ceiling) {
        (Some(_), false) => match ceiling::find_pgbench() {
            Some(path) => {
                let (payload, meta) = ceiling_payload();
                Some(Ceiling::new(path, payload, meta))
            }
            None => {
                eprintln!("pgbench not found (set PGBENCH): running without the ceiling");
                None
            }
        },
        _ => None,
    };

    println!(
        "# EventCore benchmark{}",
        if args.quick { " (--quick)" } else { "" }
    );
    println!();
    println!(
        "cores: {}; measured {:.1} s per run after {:.1} s warm-up; metrics recorder: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        timing.measure.as_secs_f64(),
        timing.warmup.as_secs_f64(),
        if args.metrics_recorder {
            "Prometheus"
        } else {
            "none"
        }
    );
    if let Some(db) = &db {
        let settings: Vec<String> = db
            .settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("server: {}", settings.join(", "));
    }
    if let Some(c) = &ceiling {
        println!("ceiling: {}", c.pgbench().display());
    }

    let mut ctx = Ctx {
        quick: args.quick,
        timing,
        writers: args.writers,
        db,
        ceiling,
        d_retry: args.d_retry,
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut failed = Vec::new();
    for scenario in scenarios {
        match scenario.run(&mut ctx).await {
            Ok(new) => {
                report::print_table(scenario.title, &new);
                rows.extend(new);
            }
            Err(e) => {
                eprintln!("scenario {} failed: {e:#}", scenario.key);
                failed.push(scenario.key);
            }
        }
    }

    report::print_table("All scenarios", &rows);
    if let Some(path) = &args.json {
        report::write_json(path, &rows)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, report::markdown(&rows))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(db) = ctx.db.take() {
        db.admin.close().await;
    }
    if !failed.is_empty() {
        bail!("scenarios failed: {}", failed.join(", "));
    }
    if let Some(ceiling) = &ctx.ceiling
        && !ceiling.failed().is_empty()
    {
        bail!("ceiling scripts failed: {}", ceiling.failed().join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_retry_policy() {
        let p = parse_retry("200, 5, 20").unwrap();
        assert_eq!(p.max_attempts, 200);
        assert_eq!(p.base_delay, Duration::from_millis(5));
        assert_eq!(p.max_delay, Duration::from_millis(20));
        assert_eq!(
            parse_retry("10,0.5,1").unwrap().base_delay,
            Duration::from_micros(500)
        );
        assert!(parse_retry("10,1").is_err());
        assert!(parse_retry("x,1,2").is_err());
    }
}
