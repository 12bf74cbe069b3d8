//! E: reads over a large store: `read_stream` of whole 100-event streams and
//! `read_all` pages of 1,000 from random positions, against the ceiling
//! scripts F1 and F2 on a table of the same size.
//!
//! The store's data set is written by SQL straight into its tables (far
//! faster than appends), with everything made the way the append statements make
//! it: one transaction per batch, `global_position = xid8 << 20 + index`,
//! UUIDv7-shaped event ids, metadata in its typed columns. It is
//! kept between runs (schema `bench_read_<size>_v<schema version>_m3`).

use std::sync::Arc;

use anyhow::{Context as _, bail};
use eventcore::{EventStore, GlobalPosition, StreamId, StreamVersion};
use eventcore_postgres::{PostgresEventStore, SCHEMA_VERSION};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use sqlx::AssertSqlSafe;

use crate::{
    ceiling::Script,
    ctx::{Ctx, close},
    measure::{Outcome, Worker, drive},
    provision::{BenchDb, READ_STREAM_LEN},
    report::Row,
    workload::{OrderPlaced, stream_ids},
};

/// Events per `read_all` page.
const PAGE: usize = 1000;

/// Streams written per transaction while building (10,000 events).
const STREAMS_PER_BATCH: usize = 100;

struct StreamReader<S> {
    store: S,
    streams: Arc<[StreamId]>,
    rng: SmallRng,
}

impl<S: EventStore + Clone + 'static> Worker for StreamReader<S> {
    async fn op(&mut self) -> anyhow::Result<Outcome> {
        let stream = &self.streams[self.rng.random_range(0..self.streams.len())];
        let events = self
            .store
            .read_stream(stream, StreamVersion::new(1), READ_STREAM_LEN)
            .await?;
        Ok(Outcome::Ok {
            events: events.len() as u64,
            retries: 0,
        })
    }
}

/// The stored positions as runs of consecutive positions (one per writing
/// transaction), so the k-th event's position can be found without a query.
struct Positions {
    /// (first position, events) of each run, in order.
    runs: Vec<(u64, u64)>,
    total: u64,
}

impl Positions {
    /// The position just before the `k`-th event (0-based).
    fn before(&self, mut k: u64) -> GlobalPosition {
        for &(first, len) in &self.runs {
            if k < len {
                return GlobalPosition::new(first + k - 1);
            }
            k -= len;
        }
        GlobalPosition::new(self.runs.last().map_or(0, |&(f, l)| f + l - 1))
    }
}

struct AllReader<S> {
    store: S,
    positions: Arc<Positions>,
    rng: SmallRng,
}

impl<S: EventStore + Clone + 'static> Worker for AllReader<S> {
    async fn op(&mut self) -> anyhow::Result<Outcome> {
        let last_start = self.positions.total.saturating_sub(PAGE as u64);
        let after = self.positions.before(self.rng.random_range(0..=last_start));
        let events = self.store.read_all(after, PAGE).await?;
        Ok(Outcome::Ok {
            events: events.len() as u64,
            retries: 0,
        })
    }
}

/// Columns and indexes of the store's tables in `schema`, so a data set
/// built by an older version of the store (the schema is still being worked
/// on) is rebuilt rather than measured.
async fn table_shape(db: &BenchDb, schema: &str) -> anyhow::Result<String> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce((SELECT string_agg(table_name || '.' || column_name || ':' || data_type, ',' \
                                            ORDER BY table_name, ordinal_position) \
                          FROM information_schema.columns \
                          WHERE table_schema = $1 AND table_name IN ('events', 'event_streams')), '') \
             || '|' || \
             coalesce((SELECT string_agg(replace(indexdef, $1 || '.', ''), ',' ORDER BY indexname) \
                       FROM pg_indexes \
                       WHERE schemaname = $1 AND tablename IN ('events', 'event_streams')), '')",
    )
    .bind(schema)
    .fetch_one(&db.admin)
    .await?)
}

/// Whether `schema` holds a complete data set of `events` events whose
/// tables look like the ones this build of the store creates.
async fn reusable(db: &BenchDb, schema: &str, events: usize) -> anyhow::Result<bool> {
    if !db.schema_exists(schema).await? {
        return Ok(false);
    }
    let probe = "bench_shape_probe";
    close(db.fresh_store(probe, 1).await?).await;
    let expected = table_shape(db, probe).await?;
    db.drop_schema(probe).await?;
    if table_shape(db, schema).await? != expected {
        eprintln!("  {schema} was built by another version of the store's schema");
        return Ok(false);
    }
    db.holds_read_set(schema, events).await
}

/// The store's read data set, built unless a complete one is there.
async fn read_store(
    db: &BenchDb,
    schema: &str,
    events: usize,
    connections: usize,
) -> anyhow::Result<PostgresEventStore> {
    let streams = events / READ_STREAM_LEN;
    if reusable(db, schema, events).await? {
        eprintln!("  reusing {schema}");
        return db.store(schema, connections).await;
    }
    eprintln!("  building store read data set {schema} ({events} events)");
    let store = db.fresh_store(schema, connections).await?;
    let payload = serde_json::to_string(&OrderPlaced::sample(0))?.replace('\'', "''");
    let batches = streams.div_ceil(STREAMS_PER_BATCH);
    // One transaction per batch (COMMIT inside DO), like one append each.
    // The version nibble of gen_random_uuid() is set to 7: the store only
    // accepts UUIDv7 event ids.
    db.exec(format!(
        r"DO $bench$
DECLARE
    base BIGINT;
    lo INTEGER;
    hi INTEGER;
BEGIN
    FOR b IN 0 .. {batches} - 1 LOOP
        lo := b * {STREAMS_PER_BATCH} + 1;
        hi := least((b + 1) * {STREAMS_PER_BATCH}, {streams});
        -- As the append statements: never a wrapped position.
        IF pg_current_xact_id() >= '8796093022208'::xid8 THEN
            RAISE EXCEPTION 'transaction id past the encodable range' USING ERRCODE = 'EC003';
        END IF;
        base := pg_current_xact_id()::text::bigint << 20;
        INSERT INTO {schema}.events (global_position, event_id, stream_id, stream_version,
                                     event_type, schema_version, event_data,
                                     occurred_at, correlation_id)
        SELECT base + (s - lo) * {READ_STREAM_LEN} + v,
               overlay(gen_random_uuid()::text PLACING '7' FROM 15 FOR 1)::uuid,
               'stream-' || s, v, 'OrderPlaced', 1, '{payload}'::jsonb,
               clock_timestamp(), gen_random_uuid()
        FROM generate_series(lo, hi) s, generate_series(1, {READ_STREAM_LEN}) v
        ORDER BY s, v;
        INSERT INTO {schema}.event_streams (stream_id, version)
        SELECT 'stream-' || s, {READ_STREAM_LEN} FROM generate_series(lo, hi) s;
        COMMIT;
    END LOOP;
END
$bench$"
    ))
    .await
    .context("building the read data set")?;
    db.settle(schema).await?;
    Ok(store)
}

async fn positions(db: &BenchDb, schema: &str) -> anyhow::Result<Positions> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT min(global_position), count(*) FROM {schema}.events \
         GROUP BY global_position >> 20 ORDER BY 1"
    )))
    .fetch_all(&db.admin)
    .await?;
    let runs: Vec<(u64, u64)> = rows.iter().map(|&(f, n)| (f as u64, n as u64)).collect();
    let total = runs.iter().map(|r| r.1).sum();
    if total == 0 {
        bail!("the read data set in {schema} is empty");
    }
    Ok(Positions { runs, total })
}

pub(super) async fn run_e(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let (events, label) = if ctx.quick {
        (100_000, "100k")
    } else {
        (1_000_000, "1m")
    };
    let readers_list = ctx.sweep(&[16], &[1, 16]);
    let max_readers = readers_list.iter().copied().max().unwrap_or(1);
    // `_m3`: metadata in typed columns.
    let schema = format!("bench_read_{label}_v{SCHEMA_VERSION}_m3");
    let ceiling_schema = format!("ceiling_read_{label}_m3");
    let streams = stream_ids("stream", events / READ_STREAM_LEN)?;

    eprintln!("[E] {events} events stored");
    let db = ctx.db()?;
    let store = read_store(db, &schema, events, max_readers).await?;
    let positions = Arc::new(positions(db, &schema).await?);
    close(store).await;
    if let Some(ceiling) = ctx.ceiling.as_ref() {
        ceiling
            .prepare_read_tables(ctx.db()?, &ceiling_schema, events)
            .await?;
    }

    let mut rows = Vec::new();
    for readers in readers_list {
        eprintln!("[E] read_stream, {readers} readers");
        let store = ctx.db()?.store(&schema, readers).await?;
        BenchDb::warm_pool(store.pool(), readers).await?;
        ctx.db()?.quiesce().await?;
        let workers = (0..readers)
            .map(|id| StreamReader {
                store: store.clone(),
                streams: streams.clone(),
                rng: SmallRng::seed_from_u64(0xE0 + id as u64),
            })
            .collect();
        let stream_m = drive(workers, ctx.timing).await?;

        eprintln!("[E] read_all, {readers} readers");
        let workers = (0..readers)
            .map(|id| AllReader {
                store: store.clone(),
                positions: positions.clone(),
                rng: SmallRng::seed_from_u64(0xF0 + id as u64),
            })
            .collect();
        ctx.db()?.quiesce().await?;
        let all_m = drive(workers, ctx.timing).await?;
        close(store).await;

        let f1 = Script::read_stream(&ceiling_schema, events / READ_STREAM_LEN);
        let f1 = ctx.measure_ceiling(&f1, readers).await;
        let f2 = Script::read_all(&ceiling_schema, events, PAGE);
        let f2 = ctx.measure_ceiling(&f2, readers).await;
        let note =
            format!("{events} events stored; writers = readers; ev/append = events per read");
        rows.push(
            Row::from_measured("E-read_stream", readers, READ_STREAM_LEN, &stream_m)
                .with_ceiling(f1.as_ref(), READ_STREAM_LEN as f64)
                .note(format!("ceiling F1; {note}")),
        );
        rows.push(
            Row::from_measured("E-read_all", readers, PAGE, &all_m)
                .with_ceiling(f2.as_ref(), PAGE as f64)
                .note(format!("ceiling F2; {note}")),
        );
    }
    Ok(rows)
}
