//! The benchmark's database and stores: the `eventcore_bench` database
//! (created if missing), fresh store schemas, seeding, and bringing the
//! server to the same quiet state before every measurement.

use anyhow::Context as _;
use eventcore::{
    AppendRequest, Event, EventMetadata, EventStore, ExpectedVersion, NewEvent, StreamId,
};
use eventcore_postgres::{Pooler, PostgresConfigBuilder, PostgresEventStore};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, postgres::PgPoolOptions};

/// The dedicated database every table of the benchmark lives in.
pub(crate) const BENCH_DATABASE: &str = "eventcore_bench";

/// Streams pre-created for the write scenarios, `stream-1` .. `stream-10000`.
pub(crate) const STREAMS: usize = 10_000;

/// Events per stream in the read data set (F1 reads one whole stream).
pub(crate) const READ_STREAM_LEN: usize = 100;

/// The connection to the benchmark database.
pub(crate) struct BenchDb {
    /// URL of [`BENCH_DATABASE`] on the server under test.
    pub(crate) url: String,
    /// A small pool for DDL, VACUUM and CHECKPOINT.
    pub(crate) admin: PgPool,
    /// `server_version`, `synchronous_commit`, ... for the report header.
    pub(crate) settings: Vec<(String, String)>,
}

/// Finds the server: `DATABASE_URL`, else the project's throwaway cluster
/// (`scripts/dev-db url`, which starts it if needed).
pub(crate) fn server_url() -> anyhow::Result<String> {
    Ok(eventcore_test_support::database_url()?)
}

/// `url` with its database name replaced by `database`.
pub(crate) fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

impl BenchDb {
    /// Creates [`BENCH_DATABASE`] if it is missing and connects to it.
    pub(crate) async fn connect(server_url: &str) -> anyhow::Result<Self> {
        let maintenance = with_database(server_url, "postgres");
        let mut conn = PgConnection::connect(&maintenance)
            .await
            .with_context(|| format!("connecting to {maintenance}"))?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(BENCH_DATABASE)
                .fetch_one(&mut conn)
                .await?;
        if !exists {
            eprintln!("creating database {BENCH_DATABASE}");
            let created = sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {BENCH_DATABASE}")))
                .execute(&mut conn)
                .await;
            // Someone else may have created it meanwhile (42P04): fine.
            if let Err(e) = created {
                let dup = e
                    .as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|c| c == "42P04");
                if !dup {
                    return Err(e).context("creating the benchmark database");
                }
            }
        }
        conn.close().await?;

        let url = with_database(server_url, BENCH_DATABASE);
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let mut settings = Vec::new();
        for name in [
            "server_version",
            "synchronous_commit",
            "fsync",
            "shared_buffers",
            "max_connections",
        ] {
            let value: String = sqlx::query_scalar("SELECT current_setting($1)")
                .bind(name)
                .fetch_one(&admin)
                .await?;
            settings.push((name.to_owned(), value));
        }
        Ok(Self {
            url,
            admin,
            settings,
        })
    }

    pub(crate) async fn exec(&self, sql: String) -> anyhow::Result<()> {
        sqlx::raw_sql(AssertSqlSafe(sql.clone()))
            .execute(&self.admin)
            .await
            .with_context(|| format!("running: {}", first_line(&sql)))?;
        Ok(())
    }

    pub(crate) async fn drop_schema(&self, schema: &str) -> anyhow::Result<()> {
        self.exec(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await
    }

    pub(crate) async fn schema_exists(&self, schema: &str) -> anyhow::Result<bool> {
        Ok(
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(schema)
                .fetch_one(&self.admin)
                .await?,
        )
    }

    /// Whether the tables of `schema` hold `events` events in streams of
    /// [`READ_STREAM_LEN`]: a read data set that can be kept.
    pub(crate) async fn holds_read_set(&self, schema: &str, events: usize) -> anyhow::Result<bool> {
        if !self.schema_exists(schema).await? {
            return Ok(false);
        }
        let counts: Result<(i64, i64), _> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT (SELECT count(*) FROM {schema}.events), \
                    (SELECT count(*) FROM {schema}.event_streams)"
        )))
        .fetch_one(&self.admin)
        .await;
        let streams = events / READ_STREAM_LEN;
        Ok(matches!(counts, Ok((e, s)) if e as usize == events && s as usize == streams))
    }

    /// `VACUUM ANALYZE` of the two tables of `schema`, then [`quiesce`], so
    /// every write run starts from the same clean state.
    ///
    /// [`quiesce`]: Self::quiesce
    pub(crate) async fn settle(&self, schema: &str) -> anyhow::Result<()> {
        self.exec(format!("VACUUM ANALYZE {schema}.event_streams"))
            .await?;
        self.exec(format!("VACUUM ANALYZE {schema}.events")).await?;
        self.quiesce().await
    }

    /// Does now what autovacuum would otherwise do during the next
    /// measurement, then `CHECKPOINT`s: `VACUUM ANALYZE` of every table of
    /// the benchmark's schemas past autovacuum's own thresholds (PostgreSQL
    /// 15 defaults: 50 + 20 % of the rows dead, 1,000 + 20 % inserted since
    /// the last vacuum, 50 + 10 % changed since the last analyze). A full
    /// run writes millions of rows into one schema after another; vacuuming
    /// them in the background took CPU from whichever scenario ran next.
    /// pgbench vacuums its own tables before every run for the same reason.
    pub(crate) async fn quiesce(&self) -> anyhow::Result<()> {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT format('%I.%I', schemaname, relname) FROM pg_stat_user_tables \
             WHERE (schemaname LIKE 'bench\\_%' OR schemaname LIKE 'ceiling\\_%') \
               AND (n_dead_tup > 50 + 0.2 * n_live_tup \
                    OR n_ins_since_vacuum > 1000 + 0.2 * n_live_tup \
                    OR n_mod_since_analyze > 50 + 0.1 * n_live_tup)",
        )
        .fetch_all(&self.admin)
        .await
        .context("listing tables to vacuum")?;
        for table in tables {
            // A table dropped since the listing is no reason to stop.
            if let Err(e) = self.exec(format!("VACUUM ANALYZE {table}")).await {
                tracing::warn!(error = %e, table, "VACUUM failed; continuing");
            }
        }
        self.checkpoint().await
    }

    /// A checkpoint, if we are allowed to; a run without it is only noisier.
    pub(crate) async fn checkpoint(&self) -> anyhow::Result<()> {
        if let Err(e) = sqlx::raw_sql("CHECKPOINT").execute(&self.admin).await {
            tracing::warn!(error = %e, "CHECKPOINT refused; continuing without it");
        }
        Ok(())
    }

    /// Where the stores connect: the server under test, or with
    /// `EVENTCORE_BENCH_POOLER_URL` set, that transaction-mode pooler
    /// (PgBouncer, naming this database) with `Pooler::Transaction` and
    /// wake-ups on the direct URL. The bench's own administration stays
    /// direct.
    fn store_config(&self) -> PostgresConfigBuilder {
        match std::env::var("EVENTCORE_BENCH_POOLER_URL") {
            Ok(pooler) if !pooler.is_empty() => PostgresConfigBuilder::new()
                .database_url(pooler)
                .pooler(Pooler::Transaction)
                .notify_url(&self.url),
            _ => PostgresConfigBuilder::new().database_url(&self.url),
        }
    }

    /// A fresh, initialized store in `schema` (dropped first) whose pool has
    /// room for `connections` concurrent operations, all kept warm.
    pub(crate) async fn fresh_store(
        &self,
        schema: &str,
        connections: usize,
    ) -> anyhow::Result<PostgresEventStore> {
        self.drop_schema(schema).await?;
        self.store(schema, connections).await
    }

    /// A store on `schema` as it is (created and migrated if needed).
    pub(crate) async fn store(
        &self,
        schema: &str,
        connections: usize,
    ) -> anyhow::Result<PostgresEventStore> {
        // max_connections first: performance_optimized() keeps the larger of
        // it and 8 per core, and sets min_connections to the result.
        let config = self
            .store_config()
            .schema(schema)
            .max_connections(u32::try_from(connections.max(1))?)
            .performance_optimized()
            .build()?;
        let store = PostgresEventStore::new(config).await?;
        store.initialize().await?;
        Ok(store)
    }

    /// A second store on an existing `schema` with the default
    /// configuration and a pool of at most `connections` (nothing kept
    /// warm): what another process following the same events would open.
    pub(crate) async fn plain_store(
        &self,
        schema: &str,
        connections: u32,
    ) -> anyhow::Result<PostgresEventStore> {
        let config = self
            .store_config()
            .schema(schema)
            .max_connections(connections)
            .min_connections(1)
            .build()?;
        let store = PostgresEventStore::new(config).await?;
        store.initialize().await?;
        Ok(store)
    }

    /// Opens `connections` pooled connections before timing starts, so the
    /// first measured operations do not pay for connects.
    pub(crate) async fn warm_pool(pool: &PgPool, connections: usize) -> anyhow::Result<()> {
        let mut held = Vec::with_capacity(connections);
        for _ in 0..connections {
            held.push(pool.acquire().await?);
        }
        drop(held);
        Ok(())
    }
}

fn first_line(sql: &str) -> &str {
    let line = sql.trim_start().lines().next().unwrap_or("");
    &line[..line.len().min(120)]
}

/// Gives every stream one event, `seed(i)` for the i-th, with multi-stream
/// appends of 500 streams each.
pub(crate) async fn seed_streams<S: EventStore, E: Event>(
    store: &S,
    streams: &[StreamId],
    seed: impl Fn(usize) -> E,
) -> anyhow::Result<()> {
    for (chunk_no, chunk) in streams.chunks(500).enumerate() {
        let mut request = AppendRequest::new();
        for (i, stream) in chunk.iter().enumerate() {
            let event = NewEvent::new(&seed(chunk_no * 500 + i), EventMetadata::new())?;
            request = request.append(stream.clone(), ExpectedVersion::NoStream, vec![event]);
        }
        store.append(request).await.context("seeding streams")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database() {
        assert_eq!(
            with_database("postgres://u@h:5/postgres", "x"),
            "postgres://u@h:5/x"
        );
        assert_eq!(with_database("postgres://u@h:5", "x"), "postgres://u@h:5/x");
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
