//! Command-line arguments and their validation into a [`Config`].

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use eventcore::StreamId;
use eventcore_postgres::{PostgresConfig, PostgresConfigBuilder, redact_secrets};

/// Administer an EventCore PostgreSQL event store: create or migrate its
/// schema, check its health, inspect its streams and events.
#[derive(Debug, Parser)]
#[command(name = "eventcore", version, about, long_about = None)]
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

/// What to do.
#[derive(Clone, Debug, Subcommand)]
pub(crate) enum Command {
    /// Create the schema, or migrate it to the current version (safe to repeat).
    Init,
    /// Check reachability, schema version, read horizon and pool; exit 1 if unhealthy.
    Health,
    /// Count streams and events and show the highest global position.
    Stats,
    /// Print the events of one stream, in version order.
    Stream(StreamArgs),
    /// Print events of all streams in global order, optionally following new ones.
    Tail(TailArgs),
    /// Print the metrics of this command's connection pool.
    Pool,
    /// After a logical restore (pg_dump/pg_restore), before any writer
    /// starts: check that the cluster's transaction counter is past the
    /// positions of every EventCore store in every database; if not, print
    /// the pg_resetwal command that advances it. Exit 1 until it is.
    RestoreCheck,
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
            // One command at a time: a small pool, nothing kept warm.
            .max_connections(2)
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
        assert!(matches!(config.command, Command::Pool));
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
