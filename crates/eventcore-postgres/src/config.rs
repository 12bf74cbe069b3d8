//! Connection and store settings.

use std::time::Duration;

use eventcore::DEFAULT_MAX_EVENT_BYTES;
use sqlx::postgres::PgConnectOptions;

use crate::PostgresError;

/// Settings of a [`PostgresEventStore`](crate::PostgresEventStore).
///
/// Build one with [`PostgresConfig::new`] (defaults for everything but the
/// URL) or [`PostgresConfigBuilder`], whose `build()` validates:
///
/// ```
/// use eventcore_postgres::{PostgresConfig, PostgresConfigBuilder};
/// use std::time::Duration;
///
/// let config = PostgresConfigBuilder::new()
///     .database_url("postgres://localhost/eventcore")
///     .max_connections(30)
///     .min_connections(5)
///     .connect_timeout(Duration::from_secs(5))
///     .schema("tenant_a")
///     .build()?;
/// assert_eq!(config.max_connections, 30);
///
/// assert!(PostgresConfigBuilder::new().min_connections(50).build().is_err());
/// assert!(PostgresConfigBuilder::new().schema("bad; DROP").build().is_err());
/// # Ok::<(), eventcore_postgres::PostgresError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct PostgresConfig {
    /// Connection URL, `postgres://user:pass@host:port/db`.
    pub database_url: String,
    /// Most connections the pool opens. Default 20: enough to keep a
    /// PostgreSQL server busy while leaving room for other clients.
    pub max_connections: u32,
    /// Idle connections kept open. Default 2, so the first requests after a
    /// quiet spell do not pay for a connect.
    pub min_connections: u32,
    /// How long to wait for a pooled connection (or a new one). Default 10 s.
    pub connect_timeout: Duration,
    /// Idle connections beyond `min_connections` close after this long.
    /// Default 600 s; `None` keeps them.
    pub idle_timeout: Option<Duration>,
    /// Connections are replaced after this long, which spreads load after a
    /// failover and bounds per-connection memory. Default 1800 s; `None`
    /// keeps them forever.
    pub max_lifetime: Option<Duration>,
    /// Server-side limit on any one statement (`statement_timeout`).
    /// Default 30 s; a statement past it fails with [`eventcore::Error::Timeout`].
    pub query_timeout: Duration,
    /// Ping each connection before handing it out. Default false: the ping
    /// costs a round trip per operation, and a dead connection is retried anyway.
    pub test_before_acquire: bool,
    /// PostgreSQL schema holding the store's tables. Default `eventcore`;
    /// several stores (tenants, test runs) can share a database this way.
    pub schema: String,
    /// Per-event limit on serialized data plus metadata. Default 1 MiB.
    pub max_event_bytes: usize,
    /// Prepared statements cached per connection. Default 100.
    pub statement_cache_capacity: usize,
    /// `application_name` of every connection, shown in `pg_stat_activity`.
    /// Default `eventcore`.
    pub application_name: String,
    /// Cross-process wake-ups: after appends, a background task sends one
    /// `NOTIFY` per burst, at most one per this interval, outside the append
    /// transactions. Default 5 ms. `None` disables NOTIFY (subscribers in
    /// other processes then rely on polling; in-process ones are still woken).
    pub notify_interval: Option<Duration>,
    /// While the store has live subscribers, it keeps the events it appended
    /// in memory, up to about this many bytes (payload text plus ~256 bytes
    /// per event), so its subscribers' reads fetch positions from the server
    /// and take the bodies from memory. Default 16 MiB; 0 disables it. A
    /// payload read this way is the JSON text as appended rather than
    /// PostgreSQL's `jsonb` rendering of it (same value).
    pub recent_appends_bytes: usize,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self::new("postgres://localhost/eventcore")
    }
}

impl PostgresConfig {
    /// Defaults for everything but the URL. Validated when the store is created.
    pub fn new(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            max_connections: 20,
            min_connections: 2,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            query_timeout: Duration::from_secs(30),
            test_before_acquire: false,
            schema: "eventcore".into(),
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            statement_cache_capacity: 100,
            application_name: "eventcore".into(),
            notify_interval: Some(Duration::from_millis(5)),
            recent_appends_bytes: 16 << 20,
        }
    }

    /// A builder starting from the defaults.
    pub fn builder() -> PostgresConfigBuilder {
        PostgresConfigBuilder::new()
    }

    /// Checks every setting; the error names the first bad one.
    pub fn validate(&self) -> Result<(), PostgresError> {
        let bad = |m: String| Err(PostgresError::InvalidConfig(m));
        if self.max_connections == 0 {
            return bad("max_connections must be at least 1".into());
        }
        if self.min_connections > self.max_connections {
            return bad(format!(
                "min_connections ({}) exceeds max_connections ({})",
                self.min_connections, self.max_connections
            ));
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout must be positive".into());
        }
        if self.query_timeout.is_zero() {
            return bad("query_timeout must be positive".into());
        }
        if self.max_event_bytes == 0 {
            return bad("max_event_bytes must be positive".into());
        }
        validate_schema_name(&self.schema)?;
        self.connect_options()?;
        Ok(())
    }

    /// The sqlx connection options: the URL plus the per-session settings
    /// the store relies on.
    pub(crate) fn connect_options(&self) -> Result<PgConnectOptions, PostgresError> {
        // sqlx parses any scheme; a mysql:// URL here is a mistake to report.
        if !(self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return Err(PostgresError::InvalidConfig(
                "database_url must start with postgres:// or postgresql://".into(),
            ));
        }
        let options: PgConnectOptions = self.database_url.parse().map_err(|e| {
            PostgresError::InvalidConfig(format!("database_url is not a valid PostgreSQL URL: {e}"))
        })?;
        Ok(options
            .application_name(&self.application_name)
            .statement_cache_capacity(self.statement_cache_capacity)
            .options([(
                "statement_timeout",
                format!("{}ms", self.query_timeout.as_millis()),
            )]))
    }
}

/// Schema names are spliced into SQL, so only plain lower-case identifiers
/// pass: no quoting games, no injection.
fn validate_schema_name(name: &str) -> Result<(), PostgresError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(PostgresError::InvalidConfig(format!(
            "schema {name:?} must be 1-63 characters of a-z, 0-9 and _, start with a letter or _, and not start with pg_"
        )))
    }
}

/// Builds a validated [`PostgresConfig`]. Setters take and return `self`.
#[derive(Clone, Debug, Default)]
pub struct PostgresConfigBuilder {
    config: PostgresConfig,
}

impl PostgresConfigBuilder {
    /// Starts from [`PostgresConfig`]'s defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the connection URL.
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.config.database_url = url.into();
        self
    }

    /// Sets the pool's maximum size.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.config.max_connections = n;
        self
    }

    /// Sets the number of idle connections kept open.
    pub fn min_connections(mut self, n: u32) -> Self {
        self.config.min_connections = n;
        self
    }

    /// Sets how long to wait for a connection.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.config.connect_timeout = d;
        self
    }

    /// Sets the idle timeout (`None` keeps idle connections).
    pub fn idle_timeout(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.config.idle_timeout = d.into();
        self
    }

    /// Sets the maximum connection lifetime (`None`: unlimited).
    pub fn max_lifetime(mut self, d: impl Into<Option<Duration>>) -> Self {
        self.config.max_lifetime = d.into();
        self
    }

    /// Sets the per-statement timeout.
    pub fn query_timeout(mut self, d: Duration) -> Self {
        self.config.query_timeout = d;
        self
    }

    /// Pings connections before use.
    pub fn test_before_acquire(mut self, yes: bool) -> Self {
        self.config.test_before_acquire = yes;
        self
    }

    /// Sets the PostgreSQL schema.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.config.schema = schema.into();
        self
    }

    /// Sets the per-event size limit.
    pub fn max_event_bytes(mut self, n: usize) -> Self {
        self.config.max_event_bytes = n;
        self
    }

    /// Sets the `application_name` reported to the server.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.config.application_name = name.into();
        self
    }

    /// Sets the NOTIFY interval (`None` disables NOTIFY).
    pub fn notify_interval(mut self, interval: impl Into<Option<Duration>>) -> Self {
        self.config.notify_interval = interval.into();
        self
    }

    /// Sets the memory for the store's recent appends (0 disables it); see
    /// [`PostgresConfig::recent_appends_bytes`].
    pub fn recent_appends_bytes(mut self, bytes: usize) -> Self {
        self.config.recent_appends_bytes = bytes;
        self
    }

    /// Settings for throughput: a pool sized to keep the server's cores busy
    /// even while connections wait on commit flushes, all of it kept warm,
    /// no ping before use, a larger statement cache.
    pub fn performance_optimized(mut self) -> Self {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get() as u32);
        self.config.max_connections = self.config.max_connections.max(cores * 8).min(100);
        self.config.min_connections = self.config.max_connections;
        self.config.test_before_acquire = false;
        self.config.idle_timeout = None;
        self.config.statement_cache_capacity = 256;
        self
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<PostgresConfig, PostgresError> {
        self.config.validate()?;
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documentation() {
        let c = PostgresConfig::new("postgres://localhost/db");
        assert_eq!(c.max_connections, 20);
        assert_eq!(c.min_connections, 2);
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(600)));
        assert_eq!(c.max_lifetime, Some(Duration::from_secs(1800)));
        assert_eq!(c.query_timeout, Duration::from_secs(30));
        assert!(!c.test_before_acquire);
        assert_eq!(c.schema, "eventcore");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn invalid_settings_are_refused() {
        let b = || PostgresConfigBuilder::new().database_url("postgres://localhost/db");
        for (builder, needle) in [
            (b().max_connections(0), "max_connections"),
            (b().min_connections(21), "min_connections"),
            (b().database_url("mysql://nope"), "database_url"),
            (b().database_url("not a url"), "database_url"),
            (b().schema("Robert'); DROP"), "schema"),
            (b().schema("pg_catalog"), "schema"),
            (b().schema(""), "schema"),
            (b().query_timeout(Duration::ZERO), "query_timeout"),
        ] {
            match builder.build() {
                Err(PostgresError::InvalidConfig(m)) => assert!(m.contains(needle), "{m}"),
                other => panic!("expected InvalidConfig({needle}), got {other:?}"),
            }
        }
        assert!(b().performance_optimized().build().is_ok());
    }
}
