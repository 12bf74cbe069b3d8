//! Command-line arguments and their validation into a [`Config`].

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use eventcore::StreamId;
use eventcore_postgres::{PostgresConfig, PostgresConfigBuilder, redact_secrets};

/// Administer an EventCore PostgreSQL event store: create or migrate its
/// schema, check its health, inspect its streams and events, manage its
/// projections, move its data, browse it on a web page.
#[derive(Debug, Parser)]
#[command(name = "eventcore", version, about, long_about = None, after_help = examples(&[
    ("export DATABASE_URL=postgres://app@db.internal/app", ""),
    ("eventcore init", "create or migrate the schema"),
    ("eventcore health", "exit 1 if unhealthy"),
    ("eventcore projections", "every projection's checkpoint, lag, runner, errors"),
    ("eventcore --schema tenant_a stats --json", "another schema, machine-readable"),
]))]
pub(crate) struct Cli {
    /// PostgreSQL connection URL, e.g. postgres://user:password@host:5432/db.
    // Optional for clap only (global arguments cannot be required);
    // `into_config` insists on it.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    database_url: Option<String>,

    /// PostgreSQL schema holding the store's tables.
    #[arg(
        long,
        env = "EVENTCORE_SCHEMA",
        default_value = "eventcore",
        global = true
    )]
    schema: String,

    /// Give up connecting after this many seconds (default 10).
    #[arg(long, value_name = "SECONDS", global = true,
          value_parser = clap::value_parser!(u64).range(1..))]
    connect_timeout: Option<u64>,

    /// Print machine-readable JSON: one object per command, or one object
    /// per line (JSON Lines) for event listings.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

/// `Examples:` and one command per line, with what it does.
fn examples(lines: &[(&str, &str)]) -> String {
    let width = lines.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    let mut text = String::from("Examples:\n");
    for (command, what) in lines {
        if what.is_empty() {
            text.push_str(&format!("  $ {command}\n"));
        } else {
            text.push_str(&format!("  $ {command:<width$}  # {what}\n"));
        }
    }
    text
}

/// What to do.
#[derive(Clone, Debug, Subcommand)]
pub(crate) enum Command {
    /// Create the schema, or migrate it to the current version (safe to repeat).
    #[command(after_help = examples(&[
        ("eventcore init", "initialized schema eventcore at version 3"),
        ("eventcore --schema tenant_a init --json", ""),
    ]))]
    Init,
    /// Check reachability, schema version, read horizon and pool; exit 1 if unhealthy.
    #[command(after_help = examples(&[
        ("eventcore health", "exit status 0 if healthy, 1 if not"),
        ("eventcore health --json | jq .problems", ""),
    ]))]
    Health,
    /// Count streams and events and show the highest global position.
    #[command(after_help = examples(&[
        ("eventcore stats", ""),
        ("eventcore stats --json", ""),
    ]))]
    Stats,
    /// Print the events of one stream, in version order.
    #[command(after_help = examples(&[
        ("eventcore stream account-42", ""),
        ("eventcore stream account-42 --from 10 --limit 5 --json", "JSON Lines"),
    ]))]
    Stream(StreamArgs),
    /// Print events of all streams in global order, optionally following new ones.
    #[command(after_help = examples(&[
        ("eventcore tail --after 123456 --limit 100", ""),
        ("eventcore tail --follow --json", "until Ctrl-C, JSON Lines"),
        ("eventcore tail --timeout 30", "give up when held back 30 s"),
    ]))]
    Tail(TailArgs),
    /// Show the server's client connections by database, application and
    /// state: every pool using the store, not just this command's.
    #[command(visible_alias = "pool", after_help = examples(&[
        ("eventcore connections", ""),
        ("eventcore pool --json", "the same (`pool` is an alias)"),
    ]))]
    Connections,
    /// After a logical restore (pg_dump/pg_restore), before any writer
    /// starts: check that the cluster's transaction counter is past the
    /// positions of every EventCore store in every database; if not, print
    /// the pg_resetwal command that advances it. Exit 1 until it is.
    #[command(after_help = examples(&[
        ("eventcore restore-check", "exit 0: writers may start; 1: run the pg_resetwal it prints"),
        ("eventcore restore-check --json", ""),
    ]))]
    RestoreCheck,
    /// List projections and reset, rebuild or skip an event for one.
    #[command(after_help = examples(&[
        ("eventcore projections", "checkpoint, lag, runner, skips, last error"),
        ("eventcore projections reset balances --reason 'replay after fix'", ""),
        ("eventcore projections rebuild balances", "progress until the runner caught up"),
        ("eventcore projections skip balances 4711 --reason 'bad amount'", ""),
        ("eventcore projections history balances", "what operators did"),
    ]))]
    Projections(ProjectionsArgs),
    /// Write events as JSON Lines: $all, a category or some streams.
    #[command(after_help = examples(&[
        ("eventcore export --output all.jsonl", "every event, in global order"),
        ("eventcore export --category account- > accounts.jsonl", ""),
        ("eventcore export --stream account-1 --stream account-2", ""),
        ("eventcore --schema old export | eventcore --schema new import", "copy a schema"),
    ]))]
    Export(ExportArgs),
    /// Append the events of a JSON Lines export (idempotent: by event id).
    #[command(after_help = examples(&[
        ("eventcore import --input all.jsonl", ""),
        ("DATABASE_URL=postgres://app@new-cluster/app eventcore import < all.jsonl", "migrate clusters"),
    ]))]
    Import(ImportArgs),
    /// Check what the store relies on; exit 1 if any check fails.
    #[command(after_help = examples(&[
        ("eventcore verify", "ledger, objects, constraints, trigger, versions, ids"),
        ("eventcore verify --json", ""),
    ]))]
    Verify,
    /// Serve a read-only web page to browse streams, events, projections and health.
    #[command(after_help = examples(&[
        ("eventcore serve", "http://127.0.0.1:8080/"),
        ("eventcore serve --bind 0.0.0.0:8080 --token \"$TOKEN\"", "elsewhere: a bearer token"),
    ]))]
    Serve(ServeArgs),
}

/// Arguments of `eventcore projections`.
#[derive(Clone, Debug, Args)]
pub(crate) struct ProjectionsArgs {
    /// What to do (default: list).
    #[command(subcommand)]
    pub(crate) action: Option<ProjectionAction>,
}

/// A projection subcommand.
#[derive(Clone, Debug, Subcommand)]
pub(crate) enum ProjectionAction {
    /// Every projection: checkpoint, lag, active runner, skips, last error.
    #[command(after_help = examples(&[("eventcore projections list --json", "")]))]
    List,
    /// Forget a projection's checkpoint: its next runner replays every
    /// event into the read model as it is (for idempotent projections;
    /// `rebuild` also clears the read model).
    #[command(after_help = examples(&[
        ("eventcore projections reset balances --reason 'replay after fix'", ""),
        ("eventcore projections reset balances --force", "even while a runner is active"),
    ]))]
    Reset(OperatorArgs),
    /// Ask for a projection to be rebuilt: its runner resets the read model
    /// and replays every event. Then follows the runner's progress (a bar
    /// with the rate on a terminal) until it reaches the events there were.
    #[command(after_help = examples(&[
        ("eventcore projections rebuild balances", "then (re)start the application's runner"),
        ("eventcore projections rebuild balances --no-wait", ""),
    ]))]
    Rebuild(RebuildArgs),
    /// Pass a poison event a runner stopped on: record it as skipped and
    /// move the checkpoint to it.
    #[command(after_help = examples(&[
        ("eventcore projections skip balances 4711 --reason 'amount is a string'", ""),
    ]))]
    Skip(SkipArgs),
    /// Keep a projection's checkpoint after a failover or restore stopped
    /// its runner ("recorded on store history ..."): only when the new
    /// history holds every event the checkpoint covers (a switchover, a
    /// synchronous standby, a checked restore); otherwise `rebuild`.
    #[command(after_help = examples(&[
        ("eventcore projections accept-history balances --reason 'switchover to node b, synchronous'", ""),
    ]))]
    AcceptHistory(OperatorArgs),
    /// What operators did to projections, newest first.
    #[command(after_help = examples(&[("eventcore projections history balances --limit 5", "")]))]
    History(HistoryArgs),
}

/// The projection and the operator's word, for an action.
#[derive(Clone, Debug, Args)]
pub(crate) struct OperatorArgs {
    /// The projection's name.
    pub(crate) projection: String,
    /// Why, for the record (`projections history`).
    #[arg(long, default_value = "")]
    pub(crate) reason: String,
    /// Act even while a runner is active: the runner is fenced out (its
    /// next checkpoint write fails and it stops; restart it).
    #[arg(long)]
    pub(crate) force: bool,
}

/// Arguments of `eventcore projections rebuild`.
#[derive(Clone, Debug, Args)]
pub(crate) struct RebuildArgs {
    #[command(flatten)]
    pub(crate) operator: OperatorArgs,
    /// Return once the rebuild is requested, without following it.
    #[arg(long)]
    pub(crate) no_wait: bool,
    /// Stop following after this many seconds (exit 2; the rebuild goes on).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) timeout: Option<u64>,
}

/// Arguments of `eventcore projections skip`.
#[derive(Clone, Debug, Args)]
pub(crate) struct SkipArgs {
    #[command(flatten)]
    pub(crate) operator: OperatorArgs,
    /// The global position of the event to pass.
    pub(crate) position: u64,
}

/// Arguments of `eventcore projections history`.
#[derive(Clone, Debug, Args)]
pub(crate) struct HistoryArgs {
    /// Only this projection's.
    pub(crate) projection: Option<String>,
    /// At most this many records.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) limit: u32,
}

/// Arguments of `eventcore export`.
#[derive(Clone, Debug, Args)]
pub(crate) struct ExportArgs {
    /// Only streams whose ids start with this prefix, e.g. `account-`.
    #[arg(long, value_name = "PREFIX", conflicts_with = "stream")]
    pub(crate) category: Option<String>,
    /// Only this stream (repeat for several).
    #[arg(long, value_name = "STREAM_ID")]
    pub(crate) stream: Vec<StreamId>,
    /// Write to this file instead of stdout.
    #[arg(long, short, value_name = "PATH")]
    pub(crate) output: Option<std::path::PathBuf>,
}

/// Arguments of `eventcore import`.
#[derive(Clone, Debug, Args)]
pub(crate) struct ImportArgs {
    /// Read this file instead of stdin.
    #[arg(long, short, value_name = "PATH")]
    pub(crate) input: Option<std::path::PathBuf>,
}

/// Arguments of `eventcore serve`.
#[derive(Clone, Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on. Anything but a loopback address needs
    /// `--token` (or `--no-token`, to serve it to anyone who can reach it).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
    pub(crate) bind: std::net::SocketAddr,
    /// Require `Authorization: Bearer TOKEN` (or a `?token=TOKEN` visit,
    /// which sets a cookie) on every request.
    #[arg(long, env = "EVENTCORE_SERVE_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Serve a non-loopback address without a token.
    #[arg(long, conflicts_with = "token")]
    pub(crate) no_token: bool,
}

/// Arguments of `eventcore stream`.
#[derive(Clone, Debug, Args)]
pub(crate) struct StreamArgs {
    /// The stream to print, e.g. account-42.
    pub(crate) stream_id: StreamId,

    /// First stream version to print (versions start at 1).
    #[arg(long, value_name = "VERSION", default_value_t = 1)]
    pub(crate) from: u64,

    /// Print at most this many events (default: to the end of the stream).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) limit: Option<u64>,
}

/// Arguments of `eventcore tail`.
#[derive(Clone, Debug, Args)]
pub(crate) struct TailArgs {
    /// Print events after this global position (0: from the start).
    #[arg(long, value_name = "POSITION", default_value_t = 0)]
    pub(crate) after: u64,

    /// Print at most this many events, then stop (even with --follow).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) limit: Option<u64>,

    /// Keep polling for new events (every 200 ms) until Ctrl-C.
    #[arg(long, short = 'f')]
    pub(crate) follow: bool,

    /// Give up (exit 2) when events committed before the start stay
    /// unreadable this long: an open transaction elsewhere holds readers
    /// back. Without it, tail waits, saying on stderr which transaction it
    /// waits for.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) timeout: Option<u64>,
}

/// Validated settings for one run.
#[derive(Debug)]
pub(crate) struct Config {
    /// Store settings, already validated by [`PostgresConfigBuilder::build`].
    pub(crate) store: PostgresConfig,
    /// Whether to print JSON.
    pub(crate) json: bool,
    /// The subcommand.
    pub(crate) command: Command,
}

impl Config {
    /// The database URL with any password masked, for messages.
    pub(crate) fn display_url(&self) -> String {
        redact_secrets(&self.store.database_url)
    }

    /// The PostgreSQL schema.
    pub(crate) fn schema(&self) -> &str {
        &self.store.schema
    }
}

impl Cli {
    /// Checks the arguments and builds the store configuration.
    pub(crate) fn into_config(self) -> anyhow::Result<Config> {
        let url = self
            .database_url
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| anyhow!("no database URL: pass --database-url or set DATABASE_URL"))?;
        // sqlx would try to connect with any scheme; refuse others up front.
        if !["postgres://", "postgresql://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            bail!(
                "invalid settings: the database URL must start with postgres:// or postgresql://, got {}",
                redact_secrets(&url)
            );
        }
        let mut builder = PostgresConfigBuilder::new();
        if let Some(secs) = self.connect_timeout {
            builder = builder.connect_timeout(Duration::from_secs(secs));
        }
        let store = builder
            .database_url(url)
            .schema(self.schema)
            .application_name("eventcore-cli")
            // One command at a time: a small pool, nothing kept warm. The
            // web page serves a few requests at once.
            .max_connections(if matches!(self.command, Command::Serve(_)) {
                4
            } else {
                2
            })
            .min_connections(0)
            .build()
            .context("invalid settings")?;
        Ok(Config {
            store,
            json: self.json,
            command: self.command,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("eventcore").chain(args.iter().copied()))
    }

    fn config_error(args: &[&str]) -> String {
        let e = parse(args).unwrap().into_config().unwrap_err();
        format!("{e:#}")
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_anywhere() {
        let cli = parse(&["stats", "--json", "--database-url", "postgres://h/db"]).unwrap();
        let config = cli.into_config().unwrap();
        assert!(config.json);
        assert_eq!(config.store.database_url, "postgres://h/db");
        assert!(matches!(config.command, Command::Stats));
        assert_eq!(config.store.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.store.application_name, "eventcore-cli");

        let cli = parse(&[
            "--connect-timeout",
            "3",
            "--database-url",
            "postgres://h/db",
            "pool",
        ]);
        let config = cli.unwrap().into_config().unwrap();
        assert_eq!(config.store.connect_timeout, Duration::from_secs(3));
        assert!(matches!(config.command, Command::Connections));
    }

    #[test]
    fn invalid_input_is_refused_before_connecting() {
        let err = parse(&["stream", ""]).unwrap_err().to_string();
        assert!(err.contains("stream id is empty"), "{err}");
        assert!(parse(&["tail", "--limit", "0"]).is_err());
        assert!(parse(&["tail", "--timeout", "0"]).is_err());
        assert!(parse(&["--connect-timeout", "0", "pool"]).is_err());

        let bad_schema = config_error(&[
            "--database-url",
            "postgres://h/db",
            "--schema",
            "Bad;",
            "init",
        ]);
        assert!(
            bad_schema.contains("schema \"Bad;\" must be"),
            "{bad_schema}"
        );

        let bad_url = config_error(&["--database-url", "mysql://u:pw@h/db", "init"]);
        assert!(bad_url.contains("must start with postgres://"), "{bad_url}");
        assert!(bad_url.contains("mysql://u:***@h/db"), "{bad_url}");

        let not_a_url = config_error(&["--database-url", "postgres://h:notaport/db", "init"]);
        assert!(not_a_url.contains("database_url"), "{not_a_url}");
    }
}
