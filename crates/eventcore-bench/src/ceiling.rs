//! The pgbench ceiling: what PostgreSQL itself does on the same server with
//! no client library in the way: the plain-SQL scripts of `ceiling/` (copied
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
use hdrhistogram::Histogram;
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::{
    measure::histogram,
    provision::{BenchDb, READ_STREAM_LEN, STREAMS},
};

/// Schema of the pgbench write tables (truncated before every write run).
const CEILING_WRITE_SCHEMA: &str = "ceiling_write";

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
            .map(|i| {
                format!(
                    "({i}, 'OrderLinePicked', :payload::jsonb, now(), gen_random_uuid(), '{{}}'::jsonb)"
                )
            })
            .collect::<Vec<_>>()
            .join(",\n             ");
        let text = format!(
            r"\set s random(1, {STREAMS})
SELECT version AS ev FROM event_streams WHERE stream_id = 'stream-' || :s \gset
WITH st AS (
  INSERT INTO event_streams AS es (stream_id, version) VALUES ('stream-' || :s, :ev::bigint + {n})
  ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version WHERE es.version = :ev::bigint
  RETURNING es.version)
INSERT INTO events (event_id, stream_id, stream_version, event_type, event_data, occurred_at, correlation_id, metadata)
SELECT gen_random_uuid(), 'stream-' || :s, b.base + v.n, v.t, v.d, v.oa, v.ci, v.m
FROM (SELECT coalesce((SELECT version FROM st), wrong_expected_version('stream-' || :s)) - {n} AS base) b,
     (VALUES {rows}) AS v(n, t, d, oa, ci, m);
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

    /// A read script on the tables of `schema`.
    fn read(key: String, text: String, schema: &str) -> Self {
        Self {
            key,
            text,
            schema: schema.into(),
            writes: false,
            seeded: false,
            payload: None,
        }
    }

    /// 100 events of one random stream (reference F1).
    pub(crate) fn read_stream(schema: &str, streams: usize) -> Self {
        let text = format!(
            r"\set s random(1, {streams})
SELECT global_position, event_id, stream_id, stream_version, event_type, event_data, occurred_at, correlation_id, causation_id, metadata, created_at
FROM events WHERE stream_id = 'stream-' || :s AND stream_version >= 1
ORDER BY stream_version LIMIT {READ_STREAM_LEN};
"
        );
        Self::read(format!("F1_read_stream_{schema}"), text, schema)
    }

    /// 1,000 events after a random position (reference F2).
    pub(crate) fn read_all(schema: &str, events: usize, page: usize) -> Self {
        let text = format!(
            r"\set x random(0, {})
SELECT global_position, event_id, stream_id, stream_version, event_type, event_data, occurred_at, correlation_id, causation_id, metadata, created_at
FROM events WHERE global_position > :x
ORDER BY global_position LIMIT {page};
",
            events - page
        );
        Self::read(format!("F2_read_all_{schema}"), text, schema)
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
    /// The scripts pgbench refused or failed on, for the exit status.
    failed: Vec<String>,
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
            failed: Vec::new(),
        }
    }

    pub(crate) fn pgbench(&self) -> &Path {
        &self.pgbench
    }

    /// The ceiling scripts that failed in this invocation: a broken script
    /// is a defect of the benchmark, so the run ends with an error.
    pub(crate) fn failed(&self) -> &[String] {
        &self.failed
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
                if !self.failed.contains(&script.key) {
                    self.failed.push(script.key.clone());
                }
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
            db.exec(format!(
                "INSERT INTO {s}.events (event_id, stream_id, stream_version, event_type, event_data, occurred_at, correlation_id, metadata) \
                 SELECT gen_random_uuid(), 'stream-' || g, 1, 'OrderPlaced', '{payload}'::jsonb, now(), gen_random_uuid(), '{{}}' \
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
        if db.holds_read_set(schema, events).await? {
            return Ok(());
        }
        let streams = events / READ_STREAM_LEN;
        eprintln!("  building ceiling read tables {schema} ({events} events)");
        create_reference_tables(db, schema).await?;
        let payload = self.payload.replace('\'', "''");
        db.exec(format!(
            "INSERT INTO {schema}.events (event_id, stream_id, stream_version, event_type, event_data, occurred_at, correlation_id, metadata) \
             SELECT gen_random_uuid(), 'stream-' || s, v, 'OrderPlaced', '{payload}'::jsonb, now(), gen_random_uuid(), '{{}}' \
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
    let mut hist = histogram()?;
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

    /// Regression: the typed metadata columns were added to the insert's
    /// column list but not to the rows, and pgbench refused the script
    /// ("INSERT has more target columns than expressions").
    #[test]
    fn batch_script_fills_every_column_it_names() {
        let text = Script::append_n(3).text;
        let between = |from: &str, to: &str| {
            let start = text.find(from).unwrap() + from.len();
            let len = text[start..].find(to).unwrap();
            text[start..start + len].to_owned()
        };
        // Comma-separated items outside parentheses and quotes.
        let items = |list: &str| {
            let (mut depth, mut quoted, mut items) = (0, false, vec![String::new()]);
            for c in list.chars() {
                match c {
                    '\'' => quoted = !quoted,
                    '(' if !quoted => depth += 1,
                    ')' if !quoted => depth -= 1,
                    ',' if !quoted && depth == 0 => {
                        items.push(String::new());
                        continue;
                    }
                    _ => {}
                }
                items.last_mut().unwrap().push(c);
            }
            items
        };
        let columns = items(&between("INSERT INTO events (", ")")).len();
        let selected = items(&between("\nSELECT ", "\nFROM")).len();
        let aliases = items(&between("AS v(", ")")).len();
        let rows = items(&between("(VALUES ", ") AS v("));
        assert_eq!(columns, 8);
        assert_eq!(selected, columns, "{text}");
        assert_eq!(rows.len(), 3, "{text}");
        for row in rows {
            let row = row
                .trim()
                .strip_prefix('(')
                .unwrap()
                .strip_suffix(')')
                .unwrap();
            assert_eq!(items(row).len(), aliases, "{text}");
        }
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
