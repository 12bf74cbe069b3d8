//! Connection and store settings, their validation, and the redaction of
//! secrets wherever settings are printed.

use std::{fmt, time::Duration};

use eventcore::DEFAULT_MAX_EVENT_BYTES;
use sqlx::postgres::PgConnectOptions;

use crate::{PostgresError, PostgresEventStore, notify};

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
/// assert!(PostgresConfigBuilder::new().query_timeout(Duration::MAX).build().is_err());
/// # Ok::<(), eventcore_postgres::PostgresError>(())
/// ```
///
/// Durations must lie in these ranges (outside them PostgreSQL, sqlx or
/// Tokio would misread or panic on them, so `validate` refuses them):
///
/// | setting            | range                                                       |
/// |--------------------|-------------------------------------------------------------|
/// | `query_timeout`    | 1 ms ..= 2<sup>31</sup>-1 ms (about 24.8 days), sent in whole ms rounded up |
/// | `connect_timeout`  | 1 ms ..= 1 day                                              |
/// | `idle_timeout`     | 1 s ..= 1 day, or `None`                                    |
/// | `max_lifetime`     | 1 s ..= 1 day, or `None`                                    |
/// | `notify_interval`  | 0 ..= 1 min, or `None`                                      |
///
/// `{:?}` never shows the password of `database_url` or `notify_url` (see
/// [`redact_secrets`]).
///
/// ## Behind PgBouncer in transaction mode
///
/// [`pooler(Pooler::Transaction)`](PostgresConfigBuilder::pooler) makes the
/// store work through a pooler that hands each transaction to any server
/// connection ([`Pooler::Transaction`] says what changes), and
/// [`notify_url`](PostgresConfigBuilder::notify_url) names a direct
/// connection for the cross-process wake-ups a pooler cannot carry:
///
/// ```
/// use eventcore_postgres::{PostgresConfig, Pooler};
///
/// let config = PostgresConfig::builder()
///     .database_url("postgres://app@pgbouncer:6432/app")
///     .pooler(Pooler::Transaction)
///     .notify_url("postgres://app@db-primary:5432/app")
///     .build()?;
/// assert_eq!(config.pooler, Pooler::Transaction);
/// # Ok::<(), eventcore_postgres::PostgresError>(())
/// ```
#[derive(Clone, PartialEq)]
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
    /// `a-z`, `0-9` and `_`, starting with a letter or `_`, at most 53
    /// bytes (its NOTIFY channel, `eventcore_` + name, must fit PostgreSQL's
    /// 63), not `pg_*` or `information_schema`. Reserved words such as
    /// `user` work: the name is quoted in every statement.
    pub schema: String,
    /// Per-event limit on serialized data plus custom metadata. Default 1 MiB.
    pub max_event_bytes: usize,
    /// Prepared statements cached per connection. Default 100; at least 1
    /// (sqlx reads 0 as "prepare a new named statement per query and never
    /// close it", a leak on the server). Unused with
    /// [`Pooler::Transaction`], whose statements are unnamed.
    pub statement_cache_capacity: usize,
    /// `application_name` of every connection, shown in `pg_stat_activity`.
    /// Default `eventcore`.
    pub application_name: String,
    /// Cross-process wake-ups: after appends, a background task sends one
    /// `NOTIFY` per burst, at most one per this interval, outside the append
    /// transactions. Default 5 ms. `None` disables NOTIFY (subscribers in
    /// other processes then rely on polling; in-process ones are still woken).
    pub notify_interval: Option<Duration>,
    /// Hot standbys (streaming replicas) of the primary at `database_url`,
    /// by URL, for reads: `read_stream`, `read_all`, and so subscriptions
    /// and projection catch-up. Default none. Appends, the reads a command
    /// decides on (`read_streams_to_end`, `stream_version`), checkpoints,
    /// wake-ups (`LISTEN`, refused by a standby) and the read blocker stay
    /// on the primary. Each replica gets a pool of its own with the
    /// primary's settings; calls take them in turn. A replica read sees
    /// what the standby has replayed: see
    /// [`commit_token`](crate::PostgresEventStore::commit_token) for
    /// reading one's own writes.
    pub read_replicas: Vec<String>,
    /// Replication lag past which [`health_check`](crate::PostgresEventStore::health_check)
    /// reports a replica unhealthy. Default 30 s.
    pub max_replica_lag: Duration,
    /// What sits between the store and PostgreSQL. Default
    /// [`Pooler::Direct`].
    pub pooler: Pooler,
    /// A connection URL for `LISTEN` (and the store's `NOTIFY`) that
    /// reaches PostgreSQL directly. Default `None`: the wake-ups use
    /// `database_url`, except with [`Pooler::Transaction`], where a
    /// `LISTEN` through the pooler would never hear anything; subscribers
    /// to other processes' appends then find them by polling (every event
    /// still arrives, one poll interval later).
    pub notify_url: Option<String>,
}

/// What sits between the store and PostgreSQL
/// ([`PostgresConfig::pooler`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pooler {
    /// Connections reach PostgreSQL directly, or through a pooler in
    /// session mode (a client keeps its server connection). Sessions carry
    /// the store's settings, statements are prepared once per connection,
    /// a projection runner's lease is a session advisory lock and
    /// subscribers are woken by `LISTEN`.
    #[default]
    Direct,
    /// A pooler in transaction mode (PgBouncer's `pool_mode = transaction`),
    /// where consecutive transactions of one client may run on different
    /// server connections and nothing may outlive a transaction. The store
    /// then keeps no state in sessions:
    ///
    /// * no startup `options`: `query_timeout` is sent as `SET LOCAL
    ///   statement_timeout` in each transaction, and `extra_float_digits`
    ///   is not sent (PgBouncer 1.18 does not track it);
    /// * every statement runs inside an explicit transaction (one per store
    ///   call) as an unnamed statement: a named one may be missing, or
    ///   another client's, on the next server connection, and an unnamed
    ///   one outside a transaction may even run another client's statement;
    /// * a projection runner's lease is a row with an expiry that the runner
    ///   renews, instead of a session advisory lock (which a pooler hands to
    ///   whichever client next uses that server connection); the generation
    ///   fence stays as it is;
    /// * `LISTEN` goes to [`PostgresConfig::notify_url`], or is not used.
    ///
    /// Connections you take from [`PostgresEventStore::pool`] are the
    /// pooler's too: run your statements inside a transaction with
    /// `.persistent(false)`, and `SET LOCAL` rather than `SET`.
    Transaction,
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
            read_replicas: Vec::new(),
            max_replica_lag: Duration::from_secs(30),
            pooler: Pooler::Direct,
            notify_url: None,
        }
    }

    /// A builder starting from the defaults.
    pub fn builder() -> PostgresConfigBuilder {
        PostgresConfigBuilder::new()
    }

    /// Checks every setting; the error ([`PostgresError::InvalidConfig`])
    /// names the first bad one and, for a duration, its allowed range.
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
        QUERY_TIMEOUT.check(self.query_timeout)?;
        CONNECT_TIMEOUT.check(self.connect_timeout)?;
        if let Some(d) = self.idle_timeout {
            IDLE_TIMEOUT.check(d)?;
        }
        if let Some(d) = self.max_lifetime {
            MAX_LIFETIME.check(d)?;
        }
        if let Some(d) = self.notify_interval {
            NOTIFY_INTERVAL.check(d)?;
        }
        if self.max_event_bytes == 0 {
            return bad("max_event_bytes must be positive".into());
        }
        if self.statement_cache_capacity == 0 {
            return bad(
                "statement_cache_capacity must be at least 1 (with 0, sqlx prepares a \
                 new named statement for every query and never closes it)"
                    .into(),
            );
        }
        validate_schema_name(&self.schema)?;
        self.connect_options()?;
        for url in &self.read_replicas {
            self.connect_options_for("read_replicas", url)?;
        }
        self.notify_options()?;
        Ok(())
    }

    /// Whether the store runs behind a transaction-mode pooler.
    pub(crate) fn transaction_pooled(&self) -> bool {
        self.pooler == Pooler::Transaction
    }

    /// The connect options of the wake-up connections (`LISTEN`, the
    /// store's `NOTIFY`): `notify_url`'s, else the pool's unless a
    /// transaction pooler sits in between (`None`: no `LISTEN`).
    pub(crate) fn notify_options(&self) -> Result<Option<PgConnectOptions>, PostgresError> {
        match (&self.notify_url, self.pooler) {
            (Some(url), _) => {
                let direct = Self {
                    database_url: url.clone(),
                    pooler: Pooler::Direct,
                    ..self.clone()
                };
                direct.connect_options().map(Some).map_err(|e| match e {
                    PostgresError::InvalidConfig(m) => {
                        PostgresError::InvalidConfig(m.replacen("database_url", "notify_url", 1))
                    }
                    other => other,
                })
            }
            (None, Pooler::Direct) => self.connect_options().map(Some),
            (None, Pooler::Transaction) => Ok(None),
        }
    }

    /// The sqlx connection options: the URL plus the per-session settings
    /// the store relies on.
    pub(crate) fn connect_options(&self) -> Result<PgConnectOptions, PostgresError> {
        self.connect_options_for("database_url", &self.database_url)
    }

    /// [`connect_options`](Self::connect_options) for `url`, the setting
    /// `field` (the primary's or a replica's).
    pub(crate) fn connect_options_for(
        &self,
        field: &str,
        url: &str,
    ) -> Result<PgConnectOptions, PostgresError> {
        // sqlx parses any scheme; a mysql:// URL here is a mistake to report.
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(PostgresError::InvalidConfig(format!(
                "{field} must start with postgres:// or postgresql://"
            )));
        }
        let options: PgConnectOptions = url.parse().map_err(|e| {
            PostgresError::InvalidConfig(redact_secrets(&format!(
                "{field} is not a valid PostgreSQL URL: {e}"
            )))
        })?;
        QUERY_TIMEOUT.check(self.query_timeout)?;
        let options = options
            .application_name(&self.application_name)
            .statement_cache_capacity(self.statement_cache_capacity);
        Ok(match self.pooler {
            Pooler::Direct => options.options([("statement_timeout", self.statement_timeout())]),
            // PgBouncer refuses `options` and does not track
            // `extra_float_digits` (sqlx reads results in binary, so the
            // server's default is harmless).
            Pooler::Transaction => options.extra_float_digits(None),
        })
    }

    /// `query_timeout` as a `statement_timeout` value.
    pub(crate) fn statement_timeout(&self) -> String {
        format!("{}ms", statement_timeout_ms(self.query_timeout))
    }
}

/// `query_timeout` in whole milliseconds, rounded up: PostgreSQL reads
/// `statement_timeout = 0` as "no timeout", so a sub-millisecond remainder
/// must never round a limit away.
fn statement_timeout_ms(d: Duration) -> u128 {
    d.as_nanos().div_ceil(1_000_000)
}

/// The allowed range of one duration setting.
struct DurationRange {
    field: &'static str,
    min: Duration,
    max: Duration,
    /// How the upper bound reads in messages.
    max_text: &'static str,
    /// Checked in whole milliseconds rounded up (what is sent to PostgreSQL).
    whole_ms: bool,
}

impl DurationRange {
    fn check(&self, d: Duration) -> Result<(), PostgresError> {
        let too_big = if self.whole_ms {
            statement_timeout_ms(d) > self.max.as_millis()
        } else {
            d > self.max
        };
        if d < self.min || too_big {
            return Err(PostgresError::InvalidConfig(format!(
                "{} must be between {:?} and {}, got {}",
                self.field,
                self.min,
                self.max_text,
                show_duration(d)
            )));
        }
        Ok(())
    }
}

fn show_duration(d: Duration) -> String {
    if d == Duration::MAX {
        "Duration::MAX".into()
    } else {
        format!("{d:?}")
    }
}

/// PostgreSQL's `statement_timeout` is an `int` of milliseconds.
const PG_MAX_TIMEOUT: Duration = Duration::from_millis(i32::MAX as u64);
const ONE_DAY: Duration = Duration::from_secs(24 * 60 * 60);

const QUERY_TIMEOUT: DurationRange = DurationRange {
    field: "query_timeout",
    min: Duration::from_millis(1),
    max: PG_MAX_TIMEOUT,
    max_text: "2147483647ms (PostgreSQL's limit, about 24.8 days)",
    whole_ms: true,
};
const CONNECT_TIMEOUT: DurationRange = DurationRange {
    field: "connect_timeout",
    min: Duration::from_millis(1),
    max: ONE_DAY,
    max_text: "1 day",
    whole_ms: false,
};
// sqlx's pool maintenance runs every min(idle_timeout, max_lifetime): a
// zero period would spin, and a huge one overflows its clock.
const IDLE_TIMEOUT: DurationRange = DurationRange {
    field: "idle_timeout",
    min: Duration::from_secs(1),
    max: ONE_DAY,
    max_text: "1 day (None keeps idle connections)",
    whole_ms: false,
};
const MAX_LIFETIME: DurationRange = DurationRange {
    field: "max_lifetime",
    min: Duration::from_secs(1),
    max: ONE_DAY,
    max_text: "1 day (None keeps connections forever)",
    whole_ms: false,
};
const NOTIFY_INTERVAL: DurationRange = DurationRange {
    field: "notify_interval",
    min: Duration::ZERO,
    max: Duration::from_secs(60),
    max_text: "1 min (None disables NOTIFY)",
    whole_ms: false,
};

/// The longest schema name whose NOTIFY channel still fits PostgreSQL's
/// 63-byte identifier limit (longer channels are refused by `pg_notify`
/// and truncated by `LISTEN`, so the two would never meet).
pub(crate) const MAX_SCHEMA_LEN: usize = notify::MAX_CHANNEL_LEN - notify::CHANNEL_PREFIX.len();

/// Schema names are quoted wherever they appear in SQL, so reserved words
/// (`user`, `select`, ...) work. Only plain lower-case identifiers pass (an
/// unquoted reference by an operator then means the same schema), short
/// enough for the NOTIFY channel, and not PostgreSQL's own schemas.
fn validate_schema_name(name: &str) -> Result<(), PostgresError> {
    let plain = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    let problem = if !plain {
        "must be of a-z, 0-9 and _ and start with a letter or _"
    } else if name.len() > MAX_SCHEMA_LEN {
        // Compile-time text would drift from the constant; say it here.
        return Err(PostgresError::InvalidConfig(format!(
            "schema {name:?} is {} bytes; at most {MAX_SCHEMA_LEN} fit its NOTIFY channel \
             ({:?} + schema, 63 bytes at most)",
            name.len(),
            notify::CHANNEL_PREFIX
        )));
    } else if name.starts_with("pg_") {
        "must not start with pg_ (reserved for PostgreSQL's own schemas)"
    } else if name == "information_schema" {
        "is PostgreSQL's own schema"
    } else {
        return Ok(());
    };
    Err(PostgresError::InvalidConfig(format!(
        "schema {name:?} {problem}"
    )))
}

impl fmt::Debug for PostgresConfig {
    /// Every setting, with the password in `database_url` replaced by `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("database_url", &redact_secrets(&self.database_url))
            .field("max_connections", &self.max_connections)
            .field("min_connections", &self.min_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_lifetime", &self.max_lifetime)
            .field("query_timeout", &self.query_timeout)
            .field("test_before_acquire", &self.test_before_acquire)
            .field("schema", &self.schema)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("statement_cache_capacity", &self.statement_cache_capacity)
            .field("application_name", &self.application_name)
            .field("notify_interval", &self.notify_interval)
            .field(
                "read_replicas",
                &self
                    .read_replicas
                    .iter()
                    .map(|url| redact_secrets(url))
                    .collect::<Vec<_>>(),
            )
            .field("max_replica_lag", &self.max_replica_lag)
            .field("pooler", &self.pooler)
            .field(
                "notify_url",
                &self.notify_url.as_deref().map(redact_secrets),
            )
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for PostgresEventStore {
    /// The configuration (password redacted) and the pool's state. The
    /// pool's connect options are left out: they hold the password, also
    /// one taken from `PGPASSWORD` or a `.pgpass` file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pool = self.pool();
        f.debug_struct("PostgresEventStore")
            .field("config", self.config())
            .field("pool_size", &pool.size())
            .field("pool_idle", &pool.num_idle())
            .field("pool_closed", &pool.is_closed())
            .finish_non_exhaustive()
    }
}

/// `text` with every password it carries replaced by `***`, so it can be
/// printed or logged: the password in the user info of each URL in it
/// (`postgres://user:***@host/db`), and the value of every `password=` key
/// (a URL query parameter, a `key=value` connection string, `PGPASSWORD=`
/// and `sslpassword=` alike; quoted values included). Text without secrets
/// comes back unchanged.
///
/// ```
/// use eventcore_postgres::redact_secrets;
///
/// assert_eq!(
///     redact_secrets("postgres://app:s3cret@db:5432/app?sslmode=require"),
///     "postgres://app:***@db:5432/app?sslmode=require"
/// );
/// assert_eq!(
///     redact_secrets("host=db user=app password='s3 cret' dbname=app"),
///     "host=db user=app password=*** dbname=app"
/// );
/// assert_eq!(redact_secrets("postgres://app@db/app"), "postgres://app@db/app");
/// ```
pub fn redact_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, after) = rest.split_at(i + 3);
        out.push_str(head);
        // A URL ends at whitespace (percent-encoding covers the rest).
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        let (url, tail) = after.split_at(end);
        redact_user_info(url, &mut out);
        rest = tail;
    }
    out.push_str(rest);
    redact_password_values(&out)
}

/// Appends `after_scheme` (a URL past its `://`) with the user info's
/// password replaced.
fn redact_user_info(after_scheme: &str, out: &mut String) {
    // '/', '?' and '#' must be percent-encoded in the user info, so the
    // authority ends at the first of them and the user info at its last '@'.
    let authority_end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    let authority = &after_scheme[..authority_end];
    let at = authority.rfind('@').or_else(|| {
        // A password written with an unencoded '/', '?' or '#' ends the
        // authority early, leaving "user:pa" and no '@' before it. If what
        // follows the authority's last ':' is no port and an '@' comes
        // later, take that '@' as the end of the user info: hiding too much
        // beats showing a password.
        let (_, port) = authority.rsplit_once(':')?;
        let is_port = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
        if is_port {
            None
        } else {
            after_scheme.rfind('@')
        }
    });
    match at.map(|at| after_scheme.split_at(at)) {
        Some((user_info, host_on)) if user_info.contains(':') => {
            let user = user_info.split(':').next().unwrap_or_default();
            out.push_str(user);
            out.push_str(":***");
            out.push_str(host_on);
        }
        _ => out.push_str(after_scheme),
    }
}

/// `text` with the value of every `...password = value` replaced by `***`.
fn redact_password_values(text: &str) -> String {
    const KEY: &str = "password";
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = lower[search..].find(KEY) {
        let key_start = search + found;
        let key_end = key_start + KEY.len();
        search = key_end;
        let bytes = text.as_bytes();
        let mut i = key_end;
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        if bytes.get(i) != Some(&b'=') {
            continue;
        }
        i += 1;
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        let value_start = i;
        // In a URL query ('?' or '&' before the key) '&' and '#' end the
        // value; in a key=value string only whitespace does, and a quoted
        // value runs to its closing quote ('\' escapes).
        let in_query = key_start > 0 && {
            let before =
                text[..key_start].trim_end_matches(|c: char| c.is_ascii_alphanumeric() || c == '_');
            before.ends_with(['?', '&'])
        };
        let value_end = if bytes.get(i) == Some(&b'\'') {
            i += 1;
            while i < bytes.len() && bytes[i] != b'\'' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            (i + 1).min(bytes.len())
        } else {
            text[i..]
                .find(|c: char| c.is_whitespace() || (in_query && (c == '&' || c == '#')))
                .map_or(text.len(), |n| i + n)
        };
        if value_end > value_start {
            out.push_str(&text[copied..value_start]);
            out.push_str("***");
            copied = value_end;
            search = value_end;
        }
    }
    out.push_str(&text[copied..]);
    out
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

    /// Adds a hot standby to read from; see [`PostgresConfig::read_replicas`].
    pub fn read_replica(mut self, url: impl Into<String>) -> Self {
        self.config.read_replicas.push(url.into());
        self
    }

    /// Sets the replication lag past which a replica is unhealthy; see
    /// [`PostgresConfig::max_replica_lag`].
    pub fn max_replica_lag(mut self, lag: Duration) -> Self {
        self.config.max_replica_lag = lag;
        self
    }

    /// Sets what sits between the store and PostgreSQL; see [`Pooler`].
    pub fn pooler(mut self, pooler: Pooler) -> Self {
        self.config.pooler = pooler;
        self
    }

    /// Sets a direct connection URL for `LISTEN`/`NOTIFY`; see
    /// [`PostgresConfig::notify_url`].
    pub fn notify_url(mut self, url: impl Into<String>) -> Self {
        self.config.notify_url = Some(url.into());
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
        assert!(c.read_replicas.is_empty());
        assert_eq!(c.max_replica_lag, Duration::from_secs(30));
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
            (b().read_replica("mysql://replica"), "read_replicas"),
            (b().read_replica("not a url"), "read_replicas"),
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

    fn refused(builder: PostgresConfigBuilder) -> String {
        match builder.build() {
            Err(PostgresError::InvalidConfig(m)) => m,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    /// Item 7 of issue 14: every duration is checked against a range that
    /// works; `Duration::MAX` and sub-millisecond timeouts are refused with
    /// the field and the range named, never accepted to panic later.
    #[test]
    fn durations_outside_their_ranges_are_refused() {
        let b = || PostgresConfigBuilder::new().database_url("postgres://localhost/db");
        let ms = Duration::from_millis;
        let secs = Duration::from_secs;
        let day = secs(86_400);
        for (field, builder) in [
            ("query_timeout", b().query_timeout(Duration::MAX)),
            ("query_timeout", b().query_timeout(Duration::ZERO)),
            (
                "query_timeout",
                b().query_timeout(Duration::from_micros(999)),
            ),
            ("query_timeout", b().query_timeout(Duration::from_nanos(1))),
            ("query_timeout", b().query_timeout(ms(i32::MAX as u64 + 1))),
            // Would be sent as 2147483648ms after rounding up.
            (
                "query_timeout",
                b().query_timeout(ms(i32::MAX as u64) + Duration::from_nanos(1)),
            ),
            ("connect_timeout", b().connect_timeout(Duration::MAX)),
            ("connect_timeout", b().connect_timeout(Duration::ZERO)),
            (
                "connect_timeout",
                b().connect_timeout(Duration::from_micros(999)),
            ),
            ("connect_timeout", b().connect_timeout(day + ms(1))),
            ("idle_timeout", b().idle_timeout(Duration::MAX)),
            ("idle_timeout", b().idle_timeout(Duration::ZERO)),
            ("idle_timeout", b().idle_timeout(ms(999))),
            ("idle_timeout", b().idle_timeout(day + ms(1))),
            ("max_lifetime", b().max_lifetime(Duration::MAX)),
            ("max_lifetime", b().max_lifetime(Duration::ZERO)),
            ("max_lifetime", b().max_lifetime(day + ms(1))),
            ("notify_interval", b().notify_interval(Duration::MAX)),
            ("notify_interval", b().notify_interval(secs(61))),
        ] {
            let m = refused(builder);
            assert!(
                m.starts_with(field) && m.contains("must be between") && m.contains(" and "),
                "{field}: {m}"
            );
        }
        let m = refused(b().query_timeout(Duration::MAX));
        assert!(
            m.contains("2147483647ms") && m.contains("Duration::MAX"),
            "{m}"
        );

        // The edges themselves are fine.
        for builder in [
            b().query_timeout(ms(1)),
            b().query_timeout(ms(i32::MAX as u64)),
            b().connect_timeout(ms(1)),
            b().connect_timeout(day),
            b().idle_timeout(secs(1)),
            b().idle_timeout(day),
            b().idle_timeout(None),
            b().max_lifetime(secs(1)),
            b().max_lifetime(day),
            b().max_lifetime(None),
            b().notify_interval(Duration::ZERO),
            b().notify_interval(secs(60)),
            b().notify_interval(None),
        ] {
            let config = builder.build().expect("in range");
            config.connect_options().expect("connect options too");
        }
    }

    /// PostgreSQL reads `statement_timeout = 0` as "none": a timeout is sent
    /// in whole milliseconds rounded up, never down to 0.
    #[test]
    fn query_timeout_is_sent_in_whole_milliseconds_rounded_up() {
        assert_eq!(statement_timeout_ms(Duration::from_millis(1)), 1);
        assert_eq!(statement_timeout_ms(Duration::from_micros(1500)), 2);
        assert_eq!(statement_timeout_ms(Duration::from_secs(30)), 30_000);
        assert_eq!(
            statement_timeout_ms(Duration::from_millis(i32::MAX as u64)),
            i32::MAX as u128
        );
        let config = PostgresConfigBuilder::new()
            .database_url("postgres://localhost/db")
            .query_timeout(Duration::from_micros(1500))
            .build()
            .unwrap();
        let options = format!("{:?}", config.connect_options().unwrap());
        assert!(options.contains("statement_timeout=2ms"), "{options}");
    }

    /// Through a transaction pooler nothing is set per session: no startup
    /// `options` (PgBouncer refuses them) and no `extra_float_digits`
    /// (PgBouncer does not track it); the timeout travels per transaction.
    #[test]
    fn a_transaction_pooler_gets_no_session_settings() {
        let b = || {
            PostgresConfigBuilder::new()
                .database_url("postgres://app@localhost:6432/db")
                .query_timeout(Duration::from_millis(1500))
        };
        let direct = format!("{:?}", b().build().unwrap().connect_options().unwrap());
        assert!(direct.contains("statement_timeout=1500ms"), "{direct}");
        let pooled = b().pooler(Pooler::Transaction).build().unwrap();
        assert!(pooled.transaction_pooled());
        assert_eq!(pooled.statement_timeout(), "1500ms");
        let options = format!("{:?}", pooled.connect_options().unwrap());
        assert!(
            !options.contains("statement_timeout") && options.contains("options: None"),
            "{options}"
        );
        assert!(options.contains("extra_float_digits: None"), "{options}");
        // Wake-ups: the pool's own server when direct, none through the
        // pooler, notify_url (a direct connection, with the timeout) when set.
        assert!(b().build().unwrap().notify_options().unwrap().is_some());
        assert!(pooled.notify_options().unwrap().is_none());
        let listen = b()
            .pooler(Pooler::Transaction)
            .notify_url("postgres://app@db:5432/db")
            .build()
            .unwrap()
            .notify_options()
            .unwrap()
            .expect("notify_url");
        assert_eq!(listen.get_port(), 5432);
        assert!(format!("{listen:?}").contains("statement_timeout=1500ms"));
        let m = refused(b().notify_url("mysql://nope"));
        assert!(m.starts_with("notify_url"), "{m}");
        let m = refused(b().notify_url(format!("postgres://app:{SECRET}@h:x/db")));
        assert!(m.contains("notify_url") && !m.contains(SECRET), "{m}");
        let debug = format!(
            "{:?}",
            b().notify_url(format!("postgres://app:{SECRET}@db/app"))
                .build()
                .unwrap()
        );
        assert!(
            !debug.contains(SECRET) && debug.contains("notify_url"),
            "{debug}"
        );
    }

    /// sqlx reads a statement cache of 0 as "prepare a new named statement
    /// per query and never close it": refused.
    #[test]
    fn a_statement_cache_of_zero_is_refused() {
        let mut config = PostgresConfig::new("postgres://localhost/db");
        config.statement_cache_capacity = 0;
        match config.validate() {
            Err(PostgresError::InvalidConfig(m)) => {
                assert!(m.starts_with("statement_cache_capacity"), "{m}")
            }
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
        config.statement_cache_capacity = 1;
        config.validate().unwrap();
    }

    /// Item 12 of issue 14: names that cannot work are refused at `build()`;
    /// reserved words pass (they are quoted in SQL).
    #[test]
    fn schema_names_that_cannot_work_are_refused() {
        let b = |name: &str| {
            PostgresConfigBuilder::new()
                .database_url("postgres://localhost/db")
                .schema(name)
        };
        assert_eq!(MAX_SCHEMA_LEN, 53, "63 - \"eventcore_\".len()");
        let longest = "a".repeat(MAX_SCHEMA_LEN);
        assert_eq!(
            crate::notify::channel(&longest).len(),
            crate::notify::MAX_CHANNEL_LEN
        );
        for name in [
            "user", "select", "order", "all", "table", "public", "_x", "t1", &longest,
        ] {
            b(name)
                .build()
                .unwrap_or_else(|e| panic!("{name:?} refused: {e}"));
        }
        let too_long = "a".repeat(MAX_SCHEMA_LEN + 1);
        for (name, needle) in [
            ("information_schema", "PostgreSQL's own"),
            ("pg_catalog", "pg_"),
            ("pg_temp", "pg_"),
            ("pg_toast", "pg_"),
            (too_long.as_str(), "NOTIFY channel"),
            (&"a".repeat(64), "NOTIFY channel"),
            ("User", "a-z"),
            ("1abc", "a-z"),
            ("a-b", "a-z"),
            ("a b", "a-z"),
            ("a\"b", "a-z"),
            ("é", "a-z"),
            ("", "a-z"),
        ] {
            let m = refused(b(name));
            assert!(m.contains("schema") && m.contains(needle), "{name:?}: {m}");
        }
    }

    const SECRET: &str = "hunter2-s3cret";

    /// Item 11 of issue 14: one redaction function for every form.
    #[test]
    fn secrets_are_redacted_in_every_form() {
        for (text, expected) in [
            (
                "postgres://alice:s3cret@db.example:5432/app",
                "postgres://alice:***@db.example:5432/app",
            ),
            (
                "postgresql://alice:p%40ss@host/db?sslmode=require",
                "postgresql://alice:***@host/db?sslmode=require",
            ),
            // An unencoded '@' in the password: the last '@' ends the user info.
            ("postgres://bob:a@b@host/db", "postgres://bob:***@host/db"),
            // An unencoded '/' or '?' in the password: hide rather than leak.
            ("postgres://bob:pa/ss@host/db", "postgres://bob:***@host/db"),
            ("postgres://bob:pa?ss@host/db", "postgres://bob:***@host/db"),
            (
                "postgres://host/db?user=bob&password=hunter2&sslmode=disable",
                "postgres://host/db?user=bob&password=***&sslmode=disable",
            ),
            (
                "postgres://bob:x@host?PASSWORD=y#frag",
                "postgres://bob:***@host?PASSWORD=***#frag",
            ),
            (
                "postgres://h/db?sslpassword=k3y&sslmode=verify-full",
                "postgres://h/db?sslpassword=***&sslmode=verify-full",
            ),
            // Nothing secret: unchanged.
            (
                "postgres://postgres@127.0.0.1:55432/postgres",
                "postgres://postgres@127.0.0.1:55432/postgres",
            ),
            ("postgres://localhost", "postgres://localhost"),
            ("postgres://[::1]:5432/db", "postgres://[::1]:5432/db"),
            ("postgres://h:5432/db?x=a@b", "postgres://h:5432/db?x=a@b"),
            (
                "password authentication failed for user \"bob\"",
                "password authentication failed for user \"bob\"",
            ),
            // key=value connection strings and environment assignments.
            ("host=db password=secret", "host=db password=***"),
            (
                "host=db password = 'se cr\\'et' user=x",
                "host=db password = *** user=x",
            ),
            ("PGPASSWORD=secret psql", "PGPASSWORD=*** psql"),
            ("password=", "password="),
            // URLs inside text, as in an error message.
            (
                "cannot connect to postgres://u:pw@h/db: refused; also postgres://v:pw2@h2",
                "cannot connect to postgres://u:***@h/db: refused; also postgres://v:***@h2",
            ),
        ] {
            assert_eq!(redact_secrets(text), expected, "{text}");
        }
    }

    #[test]
    fn debug_of_config_and_builder_shows_no_password() {
        for url in [
            format!("postgres://app:{SECRET}@db:5432/app"),
            format!("postgres://app@db/app?password={SECRET}"),
        ] {
            let builder = PostgresConfigBuilder::new().database_url(url.clone());
            let config = PostgresConfig::new(url);
            for debug in [
                format!("{config:?}"),
                format!("{config:#?}"),
                format!("{builder:?}"),
            ] {
                assert!(!debug.contains(SECRET), "{debug}");
                assert!(debug.contains("***") && debug.contains("db"), "{debug}");
            }
        }
        // An invalid URL's message does not echo the password either.
        let m = refused(
            PostgresConfigBuilder::new().database_url(format!("postgres://app:{SECRET}@h:x/db")),
        );
        assert!(!m.contains(SECRET), "{m}");
    }
}
