//! # `eventcore`: the admin command for an EventCore PostgreSQL store
//!
//! A thin shell over [`eventcore_postgres`]: the arguments are parsed and
//! validated into a configuration, then each subcommand makes a few library
//! calls and prints the result.
//!
//! ```text
//! $ export DATABASE_URL=postgres://app:secret@db.internal:5432/app
//! $ eventcore init                          # create or migrate the schema (idempotent)
//! initialized schema eventcore at version 1
//! $ eventcore health                        # exit status 0 if healthy, 1 if not
//! $ eventcore stats --json                  # streams, events, max position, schema version
//! $ eventcore stream account-42 --from 10 --limit 5
//! $ eventcore tail --after 123456 --follow  # all streams in global order, until Ctrl-C
//! $ eventcore tail --timeout 30             # give up if an open transaction holds readers back 30 s
//! $ eventcore connections                   # the server's clients by application and state (alias: pool)
//! $ eventcore projections                   # checkpoint, lag, runner, skips, last error of each
//! $ eventcore projections skip balances 4711 --reason 'bad amount'
//! $ eventcore projections rebuild balances  # then follows the runner with a progress bar
//! $ eventcore export > all.jsonl            # JSON Lines; `import` reads them back, idempotently
//! $ eventcore verify                        # exit 1 if a check fails
//! $ eventcore serve                         # the event browser on http://127.0.0.1:8080/
//! $ eventcore restore-check                 # after pg_restore: may writers start? (exit 1: not yet)
//! $ eventcore --schema tenant_a stats       # a store in another schema
//! ```
//!
//! Every subcommand's `--help` ends with examples.
//!
//! ## Options
//!
//! * `--database-url URL` (or `DATABASE_URL`, required): where the store is.
//!   Passwords are masked wherever the URL is printed, and `--help` does not
//!   show the variable's value.
//! * `--schema NAME` (or `EVENTCORE_SCHEMA`, default `eventcore`): the
//!   PostgreSQL schema holding the store's tables.
//! * `--connect-timeout SECONDS` (default 10): how long to keep trying to
//!   connect before giving up.
//! * `--json`: machine-readable output: one JSON object for `init`, `health`,
//!   `stats`, `connections`, `verify`, `import`, `serve` (its address) and
//!   each projection action; one object per line (JSON Lines) for the events
//!   of `stream` and `tail` (the field names of
//!   [`StoredEvent`](eventcore::StoredEvent)), for `projections` and
//!   `projections history`. `export` always writes JSON Lines.
//!
//! Options may come before or after the subcommand. Results go to stdout,
//! errors, diagnostics and progress bars to stderr (log level via
//! `RUST_LOG`, default `warn`). Colour only ever goes to a terminal, and
//! never while `NO_COLOR` is set; progress bars only to a terminal.
//!
//! ## Exit status
//!
//! `0` on success, `1` when `health` finds the store unhealthy, a `verify`
//! check fails or `restore-check` finds that writers must not start yet,
//! `2` on any error (bad arguments, unreachable database, uninitialized
//! schema, a projection action refused, a database `restore-check` cannot
//! look into, ...).

mod cli;
mod commands;
mod output;
mod progress;
mod projections;
mod restore;
mod serve;
mod transfer;
mod verify;

use std::{io, process::ExitCode};

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::Cli;

/// Exit status for errors (as for bad arguments, which clap reports).
const ERROR: u8 = 2;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(io::stderr)
        // Escape codes only for a terminal, never with NO_COLOR.
        .with_ansi(output::stderr_colour())
        .init();
    let result = match cli.into_config() {
        Ok(config) => commands::run(config).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(code) => code,
        // `eventcore tail | head`: the reader has all it wanted.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // Library errors redact passwords themselves; causes from
            // elsewhere (sqlx, I/O) are redacted here too, to be sure.
            eprintln!(
                "error: {}",
                eventcore_postgres::redact_secrets(&error_chain(&e))
            );
            ExitCode::from(ERROR)
        }
    }
}

/// The error and its causes, joined by `: `. Many errors already include
/// their cause in their own message; such a cause is not repeated.
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let message = cause.to_string();
        if !text.ends_with(&message) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&message);
        }
    }
    text
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[derive(Debug)]
    struct Outer(io::Error);

    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "cannot connect to the database: {}", self.0)
        }
    }

    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let e = Err::<(), _>(Outer(io::Error::other("connection refused")))
            .context("cannot connect to postgres://h/db")
            .unwrap_err();
        assert_eq!(
            error_chain(&e),
            "cannot connect to postgres://h/db: cannot connect to the database: connection refused"
        );
    }

    #[test]
    fn broken_pipes_are_recognised() {
        let e = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe)).context("writing");
        assert!(is_broken_pipe(&e));
        assert!(!is_broken_pipe(&anyhow::anyhow!("other")));
    }
}
