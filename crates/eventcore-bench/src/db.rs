//! Database provisioning (the `eventcore_bench` database, fresh store
//! schemas, the read data sets) and the pgbench ceiling.
//!
//! The ceiling is what PostgreSQL itself does on the same server with no
//! client library in the way: the plain-SQL scripts of `ceiling/` (copied
//! from the reference set behind the benchmark issue) run by pgbench over the
//! same TCP connection the library uses, on tables shaped like
//! `ceiling/schema.sql`, prepared exactly like the reference README says.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use eventcore_postgres::{Pooler, PostgresConfigBuilder, PostgresEventStore};
use hdrhistogram::Histogram;
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, postgres::PgPoolOptions};

/// The dedicated database every table of the benchmark lives in.
pub(crate) const BENCH_DATABASE: &str = "eventcore_bench";

/// Schema of the pgbench write tables (truncated before every write run).
const CEILING_WRITE_SCHEMA: &str = "ceiling_write";

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
    /// them in the background took CPU from whichever scenario ran next
    /// (one run's E read 338,500 events/s against 532,000 on a quiet
    /// server). pgbench vacuums its own tables before every run for the
    /// same reason.
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

    /// Where the stores connect: `DATABASE_URL`'s server, or with
    /// `EVENTCORE_BENCH_POOLER_URL` set, that transaction-mode pooler
    /// (PgBouncer) with `Pooler::Transaction` and wake-ups on the direct
    /// URL. The bench's own administration stays direct.
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

/// What one pgbench run measured.
#[derive(Clone, Debug)]
pub(crate) struct CeilingResult {
    /// Successful transactions per second.
    pub(crate) tps: f64,
    /// Failed transactions (expected-version check failures).
    pub(crate) failed: u64,
    /// Length of the run.
    pub(crate) seconds: f64,
    pub(crate) latency_avg_ms: f64,
    /// From the per-transaction log, if it could be read.
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    /// CPU seconds pgbench used, and the server during the run (when it
    /// runs on this machine; see `cpu`).
    pub(crate) client_cpu_seconds: Option<f64>,
    pub(crate) server_cpu_seconds: Option<f64>,
}

impl CeilingResult {
    /// pgbench's and the server's CPU per event, where one transaction
    /// carries `events_per_tx` events.
    pub(crate) fn cpu_us_per_event(&self, events_per_tx: f64) -> (Option<f64>, Option<f64>) {
        let events = self.tps * self.seconds * events_per_tx;
        (
            crate::cpu::us_per_event(self.client_cpu_seconds, events),
            crate::cpu::us_per_event(self.server_cpu_seconds, events),
        )
    }

    /// Two runs of one workload as one: rates weighted by run length, the
    /// latency percentiles averaged (an approximation; the runs are alike).
    pub(crate) fn combine(a: &Self, b: &Self) -> Self {
        let seconds = a.seconds + b.seconds;
        let tx = a.tps * a.seconds + b.tps * b.seconds;
        let mean = |x: Option<f64>, y: Option<f64>| x.zip(y).map(|(x, y)| (x + y) / 2.0);
        let sum = |x: Option<f64>, y: Option<f64>| x.zip(y).map(|(x, y)| x + y);
        Self {
            tps: tx / seconds,
            failed: a.failed + b.failed,
            seconds,
            latency_avg_ms: if tx > 0.0 {
                (a.latency_avg_ms * a.tps * a.seconds + b.latency_avg_ms * b.tps * b.seconds) / tx
            } else {
                (a.latency_avg_ms + b.latency_avg_ms) / 2.0
            },
            p50_ms: mean(a.p50_ms, b.p50_ms),
            p99_ms: mean(a.p99_ms, b.p99_ms),
            client_cpu_seconds: sum(a.client_cpu_seconds, b.client_cpu_seconds),
            server_cpu_seconds: sum(a.server_cpu_seconds, b.server_cpu_seconds),
        }
    }
}

/// A pgbench script and the tables it runs on.
#[derive(Clone, Debug)]
pub(crate) struct Script {
    /// Cache key and log label (`A_append1`, `B_append100`, ...).
    pub(crate) key: String,
    pub(crate) text: String,
    /// Schema whose tables the script's unqualified names refer to.
    pub(crate) schema: String,
    /// Truncate and re-seed the write tables first (write scripts).
    pub(crate) writes: bool,
    /// Give every stream one event (version 1) when re-seeding, as the
    /// library's stores are seeded: for scripts that read the events.
    pub(crate) seeded: bool,
    /// The event payload to send instead of the ~200-byte default.
    pub(crate) payload: Option<String>,
}

impl Script {
    fn write(key: &str, text: String) -> Self {
        Self {
            key: key.into(),
            text,
            schema: CEILING_WRITE_SCHEMA.into(),
            writes: true,
            seeded: false,
            payload: None,
        }
    }

    /// Read version, bump it if it matches, insert one event.
    pub(crate) fn append1() -> Self {
        Self::write("A_append1", include_str!("../ceiling/A_append1.sql").into())
    }

    /// As [`Self::append1`] with `n` events in one multi-row insert. For
    /// `n = 10` this is the reference `B_append10.sql`.
    pub(crate) fn append_n(n: usize) -> Self {
        let rows = (1..=n)
            .map(|i| format!("({i}, 'OrderLinePicked', :payload::jsonb, :meta::jsonb)"))
            .collect::<Vec<_>>()
            .join(",\n             ");
        let text = format!(
            r"\set s random(1, {STREAMS})
SELECT version AS ev FROM event_streams WHERE stream_id = 'stream-' || :s \gset
WITH st AS (
  INSERT INTO event_streams AS es (stream_id, version) VALUES ('stream-' || :s, :ev::bigint + {n})
  ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version WHERE es.version = :ev::bigint
  RETURNING es.version)
INSERT INTO events (event_id, stream_id, stream_version, event_type, event_data, metadata)
SELECT gen_random_uuid(), 'stream-' || :s, b.base + v.n, v.t, v.d, v.m
FROM (SELECT coalesce((SELECT version FROM st), wrong_expected_version('stream-' || :s)) - {n} AS base) b,
     (VALUES {rows}) AS v(n, t, d, m);
"
        );
        Self::write(&format!("B_append{n}"), text)
    }

    /// Two streams in one transaction, locked in sorted order.
    pub(crate) fn two_streams() -> Self {
        Self::write(
            "C_two_streams",
            include_str!("../ceiling/C_two_streams.sql").into(),
        )
    }

    /// [`Self::append1`] with the version read replaced by what
    /// `CommandExecutor::execute` reads (`ceiling/A_cmd_read.sql`): every
    /// event of the stream, all columns. Not a ceiling: it tells how much of
    /// A-cmd's distance from A's ceiling is that read's own cost on the
    /// server.
    pub(crate) fn command_append1() -> Self {
        let reference = Self::append1();
        Self {
            seeded: true,
            ..Self::write(
                "A_cmd_read_append1",
                replace_version_read(&reference.text, include_str!("../ceiling/A_cmd_read.sql")),
            )
        }
    }

    /// [`Self::two_streams`] reading both streams' events in one statement
    /// (`ceiling/C_cmd_read.sql`), as the executor does for a transfer; see
    /// [`Self::command_append1`]. `payload` is the library's transfer event,
    /// which is far smaller than the reference's payload.
    pub(crate) fn command_two_streams(payload: String) -> Self {
        let reference = Self::two_streams();
        Self {
            seeded: true,
            payload: Some(payload),
            ..Self::write(
                "C_cmd_read_two_streams",
                replace_version_read(&reference.text, include_str!("../ceiling/C_cmd_read.sql")),
            )
        }
    }

    /// Every client on `stream-1`, with the version check.
    pub(crate) fn hot_stream() -> Self {
        Self::write(
            "D_hot_stream",
            include_str!("../ceiling/D_hot_stream.sql").into(),
        )
    }

    /// 100 events of one random stream (reference F1).
    pub(crate) fn read_stream(schema: &str, streams: usize) -> Self {
        Self {
            key: format!("F1_read_stream_{schema}"),
            text: format!(
                r"\set s random(1, {streams})
SELECT global_position, event_id, stream_id, stream_version, event_type, event_data, metadata, created_at
FROM events WHERE stream_id = 'stream-' || :s AND stream_version >= 1
ORDER BY stream_version LIMIT {READ_STREAM_LEN};
"
            ),
            schema: schema.into(),
            writes: false,
            seeded: false,
            payload: None,
        }
    }

    /// 1,000 events after a random position (reference F2).
    pub(crate) fn read_all(schema: &str, events: usize, page: usize) -> Self {
        Self {
            key: format!("F2_read_all_{schema}"),
            text: format!(
                r"\set x random(0, {})
SELECT global_position, event_id, stream_id, stream_version, event_type, event_data, metadata, created_at
FROM events WHERE global_position > :x
ORDER BY global_position LIMIT {page};
",
                events - page
            ),
            schema: schema.into(),
            writes: false,
            seeded: false,
            payload: None,
        }
    }
}

/// `reference` with its version read (the statement ending in `\gset`)
/// replaced by `read`, so a derived script keeps the reference's write
/// exactly. A reference without one is returned unchanged, which the tests
/// catch.
fn replace_version_read(reference: &str, read: &str) -> String {
    let Some(gset) = reference.find("\\gset\n") else {
        return reference.to_owned();
    };
    let start = reference[..gset].rfind("\nSELECT").map_or(0, |i| i + 1);
    let end = gset + "\\gset\n".len();
    format!("{}{read}{}", &reference[..start], &reference[end..])
}

/// Runs pgbench ceilings. Write ceilings are measured afresh right after
/// each library run they are compared with: this machine's fsync latency
/// drifts by +-10 % within minutes, and a ceiling measured next to its
/// library run shares its conditions. Read ceilings are remembered.
pub(crate) struct Ceiling {
    pgbench: PathBuf,
    /// The ~200-byte event payload and ~90-byte metadata, as JSON text.
    payload: String,
    meta: String,
    write_schema_ready: bool,
    cache: HashMap<(String, usize), Option<CeilingResult>>,
}

/// The pgbench binary: `PGBENCH`, else `pgbench` on `PATH`, else the
/// newest `/usr/lib/postgresql/*/bin/pgbench`.
pub(crate) fn find_pgbench() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PGBENCH") {
        return Some(PathBuf::from(p));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("pgbench");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let p = e.path().join("bin/pgbench");
            p.is_file().then_some((v, p))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

impl Ceiling {
    pub(crate) fn new(pgbench: PathBuf, payload: String, meta: String) -> Self {
        Self {
            pgbench,
            payload,
            meta,
            write_schema_ready: false,
            cache: HashMap::new(),
        }
    }

    pub(crate) fn pgbench(&self) -> &Path {
        &self.pgbench
    }

    /// The pgbench figure for `script` at `clients`, measured now unless it
    /// reads and this invocation already measured it. A failed run is reported (and `None`
    /// returned) rather than aborting the whole benchmark.
    pub(crate) async fn measure(
        &mut self,
        db: &BenchDb,
        script: &Script,
        clients: usize,
        duration: Duration,
    ) -> Option<CeilingResult> {
        let key = (script.key.clone(), clients);
        if !script.writes
            && let Some(hit) = self.cache.get(&key)
        {
            return hit.clone();
        }
        eprintln!("  ceiling: pgbench {} with {clients} clients", script.key);
        let result = match self.run(db, script, clients, duration).await {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("  ceiling {} failed: {e:#}", script.key);
                None
            }
        };
        if !script.writes {
            self.cache.insert(key, result.clone());
        }
        result
    }

    async fn run(
        &mut self,
        db: &BenchDb,
        script: &Script,
        clients: usize,
        duration: Duration,
    ) -> anyhow::Result<CeilingResult> {
        if script.writes {
            self.prepare_write_tables(db, script).await?;
        } else {
            db.quiesce().await?;
        }
        let dir = std::env::temp_dir().join(format!(
            "eventcore-bench-{}-{}-{clients}",
            std::process::id(),
            script.key
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let script_path = dir.join("script.sql");
        std::fs::write(&script_path, &script.text)?;
        let secs = duration.as_secs_f64().ceil().max(1.0) as u64;
        let mut cmd = Command::new(&self.pgbench);
        cmd.args(["-n", "-M", "prepared"])
            .args(["-j", &clients.min(2).to_string()])
            .args(["-c", &clients.to_string()])
            .args(["-T", &secs.to_string()])
            .arg("--failures-detailed")
            .arg("-l")
            .arg(format!("--log-prefix={}", dir.join("tx").display()))
            .arg("-D")
            .arg(format!(
                "payload={}",
                script.payload.as_ref().unwrap_or(&self.payload)
            ))
            .arg("-D")
            .arg(format!("meta={}", self.meta))
            .arg("-f")
            .arg(&script_path)
            .arg(&db.url)
            .env("PGOPTIONS", format!("-c search_path={}", script.schema))
            .env("PGAPPNAME", "eventcore-bench-pgbench")
            .current_dir(&dir);
        // pgbench's CPU shows in this process's reaped children once
        // `output` has waited for it.
        let out = tokio::task::spawn_blocking(move || {
            let before = crate::cpu::mark_children();
            cmd.output().map(|o| (o, before.since()))
        });
        let (out, cpu) = out.await??;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            bail!("pgbench exited with {}: {}", out.status, stderr.trim());
        }
        let mut result = parse_pgbench(&stdout, secs as f64)
            .with_context(|| format!("parsing pgbench output:\n{stdout}\n{stderr}"))?;
        (result.client_cpu_seconds, result.server_cpu_seconds) = cpu;
        if let Ok(hist) = read_tx_logs(&dir)
            && !hist.is_empty()
        {
            result.p50_ms = Some(hist.value_at_quantile(0.50) as f64 / 1000.0);
            result.p99_ms = Some(hist.value_at_quantile(0.99) as f64 / 1000.0);
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(result)
    }

    /// The reference preparation: TRUNCATE both tables, insert `stream-1` ..
    /// `stream-10000` at version 0 (for a `seeded` script: at version 1, with
    /// one event each), VACUUM ANALYZE, CHECKPOINT.
    async fn prepare_write_tables(&mut self, db: &BenchDb, script: &Script) -> anyhow::Result<()> {
        let seeded = script.seeded;
        let s = CEILING_WRITE_SCHEMA;
        if !self.write_schema_ready {
            create_reference_tables(db, s).await?;
            self.write_schema_ready = true;
        }
        db.exec(format!("TRUNCATE {s}.events, {s}.event_streams"))
            .await?;
        let version = i32::from(seeded);
        db.exec(format!(
            "INSERT INTO {s}.event_streams (stream_id, version) \
             SELECT 'stream-' || g, {version} FROM generate_series(1, {STREAMS}) g"
        ))
        .await?;
        if seeded {
            let payload = script.payload.as_ref().unwrap_or(&self.payload);
            let payload = payload.replace('\'', "''");
            let meta = self.meta.replace('\'', "''");
            db.exec(format!(
                "INSERT INTO {s}.events (event_id, stream_id, stream_version, event_type, event_data, metadata) \
                 SELECT gen_random_uuid(), 'stream-' || g, 1, 'OrderPlaced', '{payload}'::jsonb, '{meta}'::jsonb \
                 FROM generate_series(1, {STREAMS}) g"
            ))
            .await?;
        }
        db.settle(s).await
    }

    /// Reference tables in `schema` holding `events` events: streams of
    /// [`READ_STREAM_LEN`] events, positions 1..=events in stream order.
    /// Kept across runs; rebuilt only if its counts are off.
    pub(crate) async fn prepare_read_tables(
        &self,
        db: &BenchDb,
        schema: &str,
        events: usize,
    ) -> anyhow::Result<()> {
        let streams = events / READ_STREAM_LEN;
        if db.schema_exists(schema).await? {
            let counts: Result<(i64, i64), _> = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT (SELECT count(*) FROM {schema}.events), \
                        (SELECT count(*) FROM {schema}.event_streams)"
            )))
            .fetch_one(&db.admin)
            .await;
            if matches!(counts, Ok((e, s)) if e as usize == events && s as usize == streams) {
                return Ok(());
            }
        }
        eprintln!("  building ceiling read tables {schema} ({events} events)");
        create_reference_tables(db, schema).await?;
        let payload = self.payload.replace('\'', "''");
        let meta = self.meta.replace('\'', "''");
        db.exec(format!(
            "INSERT INTO {schema}.events (event_id, stream_id, stream_version, event_type, event_data, metadata) \
             SELECT gen_random_uuid(), 'stream-' || s, v, 'OrderPlaced', '{payload}'::jsonb, '{meta}'::jsonb \
             FROM generate_series(1, {streams}) s, generate_series(1, {READ_STREAM_LEN}) v \
             ORDER BY s, v"
        ))
        .await?;
        db.exec(format!(
            "INSERT INTO {schema}.event_streams (stream_id, version) \
             SELECT 'stream-' || s, {READ_STREAM_LEN} FROM generate_series(1, {streams}) s"
        ))
        .await?;
        db.settle(schema).await
    }
}

/// `ceiling/schema.sql` (tables plus `wrong_expected_version`) in a fresh
/// `schema`.
async fn create_reference_tables(db: &BenchDb, schema: &str) -> anyhow::Result<()> {
    db.drop_schema(schema).await?;
    db.exec(format!("CREATE SCHEMA {schema}")).await?;
    let mut conn = PgConnection::connect(&db.url).await?;
    sqlx::raw_sql(AssertSqlSafe(format!("SET search_path TO {schema}")))
        .execute(&mut conn)
        .await?;
    sqlx::raw_sql(include_str!("../ceiling/schema.sql"))
        .execute(&mut conn)
        .await
        .context("creating the reference tables")?;
    conn.close().await?;
    Ok(())
}

/// Reads `tps = `, `latency average = ` and the failure count.
fn parse_pgbench(stdout: &str, seconds: f64) -> anyhow::Result<CeilingResult> {
    let after = |prefix: &str| -> Option<&str> {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(str::trim)
    };
    let number = |s: &str| -> Option<f64> { s.split_whitespace().next()?.parse().ok() };
    let tps = after("tps = ")
        .and_then(number)
        .ok_or_else(|| anyhow!("no 'tps = ' line"))?;
    let latency_avg_ms = after("latency average = ")
        .and_then(number)
        .unwrap_or(f64::NAN);
    let failed = after("number of failed transactions: ")
        .and_then(number)
        .unwrap_or(0.0) as u64;
    Ok(CeilingResult {
        tps,
        failed,
        seconds,
        latency_avg_ms,
        p50_ms: None,
        p99_ms: None,
        client_cpu_seconds: None,
        server_cpu_seconds: None,
    })
}

/// Latencies (microseconds) of the successful transactions in pgbench's
/// per-transaction logs (`client tx_no time_us script epoch epoch_us`; a
/// failed transaction has a word instead of a time).
fn read_tx_logs(dir: &Path) -> anyhow::Result<Histogram<u64>> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_log = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("tx."));
        if !is_log {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        for line in text.lines() {
            if let Some(us) = line
                .split_whitespace()
                .nth(2)
                .and_then(|t| t.parse::<u64>().ok())
            {
                hist.saturating_record(us.max(1));
            }
        }
    }
    Ok(hist)
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

    #[test]
    fn combined_ceilings_weigh_rates_by_run_length() {
        let run = |tps: f64, seconds: f64, avg: f64, p99: Option<f64>| CeilingResult {
            tps,
            failed: 1,
            seconds,
            latency_avg_ms: avg,
            p50_ms: Some(1.0),
            p99_ms: p99,
            client_cpu_seconds: Some(seconds / 10.0),
            server_cpu_seconds: None,
        };
        let c = CeilingResult::combine(
            &run(1000.0, 10.0, 2.0, Some(4.0)),
            &run(500.0, 30.0, 4.0, None),
        );
        assert!((c.tps - 625.0).abs() < 1e-9, "{}", c.tps);
        assert_eq!((c.failed, c.seconds), (2, 40.0));
        // 10,000 transactions at 2 ms and 15,000 at 4 ms.
        assert!((c.latency_avg_ms - 3.2).abs() < 1e-9);
        assert_eq!((c.p50_ms, c.p99_ms), (Some(1.0), None));
        // CPU seconds add up, and vanish if either half lacks them.
        assert_eq!(c.client_cpu_seconds, Some(4.0));
        assert_eq!(c.server_cpu_seconds, None);
    }

    #[test]
    fn parses_pgbench_output() {
        let out = "\
number of transactions actually processed: 1234
number of failed transactions: 5 (0.404%)
latency average = 1.234 ms
initial connection time = 3.000 ms
tps = 9876.543210 (without initial connection time)
";
        let r = parse_pgbench(out, 10.0).unwrap();
        assert_eq!(r.failed, 5);
        assert!((r.tps - 9876.54321).abs() < 1e-6);
        assert!((r.latency_avg_ms - 1.234).abs() < 1e-9);
    }

    #[test]
    fn batch_script_matches_the_reference_shape() {
        let s = Script::append_n(10);
        assert_eq!(s.text.matches(":payload::jsonb").count(), 10);
        assert!(s.text.contains(":ev::bigint + 10)"));
        assert!(s.text.contains("(10, 'OrderLinePicked'"));
    }

    #[test]
    fn command_scripts_are_the_references_with_the_events_read() {
        for (derived, reference) in [
            (Script::command_append1(), Script::append1()),
            (
                Script::command_two_streams("{}".into()),
                Script::two_streams(),
            ),
        ] {
            let text = &derived.text;
            assert!(!text.contains("\\gset"), "{text}");
            assert_eq!(text.matches("\\aset").count(), 1, "{text}");
            assert!(text.contains("FROM events WHERE stream_id"), "{text}");
            // Everything the reference does after its version read, and
            // its `\set`s before it, are kept word for word.
            let (head, tail) = reference.text.split_once("\\gset\n").unwrap();
            let sets = &head[..head.rfind("\nSELECT").unwrap() + 1];
            assert!(text.starts_with(sets) && text.ends_with(tail), "{text}");
            assert!(derived.seeded);
        }
    }
}
