//! Export and import as JSON Lines: the way to move events between
//! schemas, databases and clusters.
//!
//! One event per line, in global order, with the fields (in this order)
//! `event_id`, `stream_id`, `stream_version`, `event_type`,
//! `schema_version`, `metadata`, `data`. `metadata` is an
//! [`EventMetadata`]'s JSON (`correlation_id`, `causation_id` if any,
//! `occurred_at`, `custom` if not empty); `data` and `custom` are the JSON
//! PostgreSQL stores, as it prints it. Global positions and record times are
//! the store's own facts and are not exported: positions derive from
//! transaction ids, which mean nothing in another cluster (and which
//! `pg_dump` does not carry). An import appends the events in the file's
//! order, so they get new positions in the same relative order, and keeps
//! every stream's versions. It is idempotent: events whose ids the target
//! already holds (at the same stream and version) are passed over, so an
//! interrupted import is finished by running it again. Exporting what was
//! imported gives the same bytes.

use std::{
    collections::HashMap,
    io::{BufRead, Write},
    time::Duration,
};

use chrono::{DateTime, Utc};
use eventcore::{
    AppendRequest, Error, EventData, EventId, EventMetadata, EventStore, ExpectedVersion,
    GlobalPosition, NewEvent, RetryPolicy, StreamId, StreamVersion,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::Row;
use uuid::Uuid;

use super::sql::{self, fill};
use crate::{PostgresError, PostgresEventStore, pool::Call};

/// Rows per export read.
const EXPORT_PAGE: i64 = 1000;

/// Events per import append, at most.
const IMPORT_BATCH: usize = 500;

/// How often an export waiting for committed events that an open
/// transaction still holds back looks again, and how long it waits in all.
const HELD_BACK_POLL: Duration = Duration::from_millis(200);
const HELD_BACK_LIMIT: Duration = Duration::from_secs(60);

/// Which events to export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportSelection {
    /// Every event (`$all`).
    All,
    /// The streams whose ids start with this prefix (a category, such as
    /// `account-`).
    Category(String),
    /// These streams.
    Streams(Vec<StreamId>),
}

/// What an export wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExportSummary {
    /// Events (lines) written.
    pub events: u64,
    /// Distinct streams among them.
    pub streams: u64,
    /// The newest position when the export started: every event committed
    /// before then that the selection takes was exported.
    pub head: GlobalPosition,
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImportSummary {
    /// Lines read (events in the file).
    pub events: u64,
    /// Events appended.
    pub imported: u64,
    /// Events the target already held (same id, stream and version).
    pub already_present: u64,
    /// Appends (transactions) made.
    pub appends: u64,
}

/// One exported event, borrowed for writing.
#[derive(Serialize)]
struct LineOut<'a> {
    event_id: Uuid,
    stream_id: &'a str,
    stream_version: i64,
    event_type: &'a str,
    schema_version: i32,
    metadata: MetadataOut<'a>,
    data: &'a RawValue,
}

/// Exported metadata: the fields of [`EventMetadata`], in its order, with
/// the custom map as PostgreSQL prints it.
#[derive(Serialize)]
struct MetadataOut<'a> {
    correlation_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    causation_id: Option<Uuid>,
    occurred_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "is_empty_object")]
    custom: &'a RawValue,
}

fn is_empty_object(raw: &&RawValue) -> bool {
    raw.get() == "{}"
}

/// One event read from an import.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineIn {
    event_id: Uuid,
    stream_id: String,
    stream_version: u64,
    event_type: String,
    schema_version: u32,
    metadata: EventMetadata,
    data: Box<RawValue>,
}

/// An event of an import batch, with its line.
struct Pending {
    line: u64,
    stream: StreamId,
    version: u64,
    event: NewEvent,
}

impl PostgresEventStore {
    /// Events of `selection` (how many, up to `upto` inclusive): the length
    /// of an export's progress bar.
    pub async fn count_selected(
        &self,
        selection: &ExportSelection,
        upto: GlobalPosition,
    ) -> Result<u64, PostgresError> {
        const OP: &str = "count events";
        let schema = self.config().schema.as_str();
        let (streams, prefix) = filters(selection);
        let streams = &streams;
        let n: i64 = self
            .db()
            .call(OP, Call::Read, |conn| {
                Box::pin(async move {
                    sqlx::query_scalar(fill(
                        "SELECT count(*) FROM {schema}.events WHERE global_position <= $1 \
                       AND ($2::text[] IS NULL OR stream_id = ANY ($2)) \
                       AND ($3::text IS NULL OR starts_with(stream_id, $3))",
                        schema,
                    ))
                    .persistent(self.named())
                    .bind(i64::try_from(upto.get()).unwrap_or(i64::MAX))
                    .bind(streams)
                    .bind(prefix)
                    .fetch_one(&mut **conn)
                    .await
                    .map_err(|e| self.map_err(OP, e))
                })
            })
            .await?;
        Ok(n.max(0) as u64)
    }

    /// Writes the events of `selection` committed before the call to `out`
    /// as JSON Lines (see the format above), in global order, calling
    /// `progress` with the count written after each page. Waits (up to a
    /// minute) for committed events an open transaction still holds back.
    pub async fn export(
        &self,
        selection: &ExportSelection,
        out: &mut (dyn Write + Send),
        mut progress: impl FnMut(u64) + Send,
    ) -> Result<ExportSummary, PostgresError> {
        const OP: &str = "export";
        let schema = self.config().schema.as_str();
        let head = self.head_position().await?;
        let (streams, prefix) = filters(selection);
        let page_sql = fill(sql::SELECT_EXPORT_PAGE, schema).0;
        let horizon_sql = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20";
        let mut after = 0_i64;
        let mut written = 0_u64;
        let mut seen_streams = std::collections::HashSet::new();
        let mut waiting_since = None;
        let (streams, page_sql) = (&streams, &page_sql);
        loop {
            let (horizon, rows) = self
                .db()
                .call(OP, Call::Read, |conn| {
                    Box::pin(async move {
                        // The horizon before the page: if it is past the head,
                        // the page saw every event committed before the start.
                        let horizon: i64 = sqlx::query_scalar(horizon_sql)
                            .persistent(self.named())
                            .fetch_one(&mut **conn)
                            .await
                            .map_err(|e| self.map_err(OP, e))?;
                        let rows = sqlx::query(sqlx::AssertSqlSafe(page_sql.clone()))
                            .persistent(self.named())
                            .bind(after)
                            .bind(EXPORT_PAGE)
                            .bind(streams)
                            .bind(prefix)
                            .fetch_all(&mut **conn)
                            .await
                            .map_err(|e| self.map_err(OP, e))?;
                        Ok::<_, Error>((horizon, rows))
                    })
                })
                .await?;
            for row in &rows {
                let get = |e| PostgresError::from(self.map_err(OP, e));
                let stream_id: &str = row.try_get(1).map_err(get)?;
                let position: i64 = row.try_get(10).map_err(get)?;
                let raw = |text: String| {
                    RawValue::from_string(text).map_err(|e| {
                        PostgresError::Store(Error::CorruptRow {
                            what: format!("event at position {position}"),
                            position: u64::try_from(position).ok().map(GlobalPosition::new),
                            reason: e.to_string(),
                        })
                    })
                };
                let data = raw(row.try_get(5).map_err(get)?)?;
                let custom = raw(row.try_get(9).map_err(get)?)?;
                let metadata = MetadataOut {
                    occurred_at: row.try_get(6).map_err(get)?,
                    correlation_id: row.try_get(7).map_err(get)?,
                    causation_id: row.try_get(8).map_err(get)?,
                    custom: &custom,
                };
                let line = LineOut {
                    event_id: row.try_get(0).map_err(get)?,
                    stream_id,
                    stream_version: row.try_get(2).map_err(get)?,
                    event_type: row.try_get(3).map_err(get)?,
                    schema_version: row.try_get(4).map_err(get)?,
                    metadata,
                    data: &data,
                };
                serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::from)?;
                out.write_all(b"\n")?;
                if !seen_streams.contains(stream_id) {
                    seen_streams.insert(stream_id.to_owned());
                }
                after = position;
                written += 1;
            }
            progress(written);
            if rows.len() as i64 == EXPORT_PAGE {
                waiting_since = None;
                continue;
            }
            if u64::try_from(horizon).unwrap_or(0) > head.get() {
                break;
            }
            let since = *waiting_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= HELD_BACK_LIMIT {
                let held = match self.read_blocker().await {
                    Ok(Some(b)) => format!("held back by {b}"),
                    _ => "nothing known holds them back".to_owned(),
                };
                return Err(PostgresError::Store(Error::Backend {
                    operation: OP,
                    source: format!(
                        "events up to position {head} are committed but were not readable \
                         for {HELD_BACK_LIMIT:?} (exported up to {after}): {held}"
                    )
                    .into(),
                }));
            }
            tokio::time::sleep(HELD_BACK_POLL).await;
        }
        out.flush()?;
        Ok(ExportSummary {
            events: written,
            streams: seen_streams.len() as u64,
            head,
        })
    }

    /// Appends the events of a JSON Lines export read from `input`, in its
    /// order, keeping every stream's versions and the events' ids; events
    /// already stored (same id, stream and version) are passed over.
    /// Calls `progress` with the lines done after each append. A line that
    /// is not an event, or that contradicts the target (an id stored
    /// elsewhere, a stream at another version), stops it with
    /// [`PostgresError::Import`] naming the line; what came before it is
    /// imported.
    pub async fn import(
        &self,
        input: &mut (dyn BufRead + Send),
        mut progress: impl FnMut(u64) + Send,
    ) -> Result<ImportSummary, PostgresError> {
        let mut summary = ImportSummary::default();
        let mut batch: Vec<Pending> = Vec::new();
        let mut text = String::new();
        let mut line = 0_u64;
        loop {
            text.clear();
            if input.read_line(&mut text)? == 0 {
                break;
            }
            line += 1;
            if text.trim().is_empty() {
                continue;
            }
            let pending = parse_line(line, &text)?;
            summary.events += 1;
            // A request's positions follow its streams' order, one stream's
            // events together: a stream coming back after another starts a
            // new request, so the file's order is kept.
            let back = batch
                .last()
                .is_some_and(|last| last.stream != pending.stream)
                && batch.iter().any(|p| p.stream == pending.stream);
            if back || batch.len() >= IMPORT_BATCH {
                self.import_batch(std::mem::take(&mut batch), &mut summary)
                    .await?;
                progress(line - 1);
            }
            if let Some(prev) = batch.last().filter(|p| p.stream == pending.stream)
                && pending.version != prev.version + 1
            {
                return Err(PostgresError::Import {
                    line,
                    reason: format!(
                        "stream '{}' goes from version {} to {}: versions must follow each other",
                        pending.stream, prev.version, pending.version
                    ),
                });
            }
            batch.push(pending);
        }
        self.import_batch(batch, &mut summary).await?;
        progress(line);
        Ok(summary)
    }

    /// One append of a batch's events the target does not hold yet.
    async fn import_batch(
        &self,
        batch: Vec<Pending>,
        summary: &mut ImportSummary,
    ) -> Result<(), PostgresError> {
        const OP: &str = "import";
        if batch.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = batch.iter().map(|p| p.event.event_id.as_uuid()).collect();
        let ids = &ids;
        let schema = self.config().schema.as_str();
        let rows = self
            .db()
            .call(OP, Call::Read, |conn| {
                Box::pin(async move {
                    sqlx::query(fill(sql::SELECT_STORED_IDS, schema))
                        .persistent(self.named())
                        .bind(ids)
                        .fetch_all(&mut **conn)
                        .await
                        .map_err(|e| self.map_err(OP, e))
                })
            })
            .await?;
        let mut stored = HashMap::with_capacity(rows.len());
        for row in &rows {
            let get = |e| PostgresError::from(self.map_err(OP, e));
            let id: Uuid = row.try_get(0).map_err(get)?;
            let stream: String = row.try_get(1).map_err(get)?;
            let version: i64 = row.try_get(2).map_err(get)?;
            stored.insert(id, (stream, version.max(0) as u64));
        }
        // Streams in first-seen order, each with the events still to write.
        let mut request: Vec<(StreamId, u64, Vec<NewEvent>, u64)> = Vec::new();
        for p in batch {
            if let Some((stream, version)) = stored.get(&p.event.event_id.as_uuid()) {
                if stream != p.stream.as_str() || *version != p.version {
                    return Err(PostgresError::Import {
                        line: p.line,
                        reason: format!(
                            "event {} is stored in the target as stream '{stream}' version \
                             {version}, not '{}' version {}",
                            p.event.event_id, p.stream, p.version
                        ),
                    });
                }
                summary.already_present += 1;
                continue;
            }
            match request.last_mut() {
                Some((stream, _, events, _)) if *stream == p.stream => events.push(p.event),
                _ => request.push((p.stream, p.version, vec![p.event], p.line)),
            }
        }
        if request.is_empty() {
            return Ok(());
        }
        let first_lines: Vec<(StreamId, u64)> = request
            .iter()
            .map(|(s, _, _, line)| (s.clone(), *line))
            .collect();
        let mut append = AppendRequest::new();
        let mut count = 0;
        for (stream, first_version, events, _) in request {
            count += events.len() as u64;
            let expected = ExpectedVersion::Exact(StreamVersion::new(first_version - 1));
            append = append.append(stream, expected, events);
        }
        let outcome = RetryPolicy::default()
            .retry(|| self.append(append.clone()))
            .await;
        match outcome {
            Ok(_) => {
                summary.imported += count;
                summary.appends += 1;
                Ok(())
            }
            Err(Error::Conflict(c)) => {
                let line = first_lines
                    .iter()
                    .find(|(s, _)| *s == c.stream_id)
                    .map_or(0, |(_, l)| *l);
                Err(PostgresError::Import {
                    line,
                    reason: format!(
                        "stream '{}' is at version {} in the target, but the file continues \
                         it from version {} (the target holds other events for it)",
                        c.stream_id,
                        c.actual,
                        match c.expected {
                            ExpectedVersion::Exact(v) => v.get() + 1,
                            _ => 1,
                        }
                    ),
                })
            }
            Err(e @ (Error::InvalidEvent { .. } | Error::InvalidAppend { .. }))
                if first_lines.len() == 1 =>
            {
                Err(PostgresError::Import {
                    line: first_lines[0].1,
                    reason: e.to_string(),
                })
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The selection as the export statement's filters: stream ids, prefix.
fn filters(selection: &ExportSelection) -> (Option<Vec<String>>, Option<&str>) {
    match selection {
        ExportSelection::All => (None, None),
        ExportSelection::Category(prefix) => (None, Some(prefix.as_str())),
        ExportSelection::Streams(ids) => (
            Some(ids.iter().map(|s| s.as_str().to_owned()).collect()),
            None,
        ),
    }
}

fn parse_line(line: u64, text: &str) -> Result<Pending, PostgresError> {
    let bad = |reason: String| PostgresError::Import { line, reason };
    let parsed: LineIn =
        serde_json::from_str(text).map_err(|e| bad(format!("not an exported event: {e}")))?;
    let stream = StreamId::new(&parsed.stream_id)
        .map_err(|e| bad(format!("stream id {:?}: {e}", parsed.stream_id)))?;
    if parsed.stream_version == 0 {
        return Err(bad("stream versions start at 1".into()));
    }
    let event_id = EventId::from_uuid(parsed.event_id).map_err(|e| bad(e.to_string()))?;
    let data = EventData::from_json(parsed.data.get()).map_err(|e| bad(format!("data: {e}")))?;
    Ok(Pending {
        line,
        stream,
        version: parsed.stream_version,
        event: NewEvent {
            event_id,
            event_type: parsed.event_type,
            schema_version: parsed.schema_version,
            data,
            metadata: parsed.metadata,
        },
    })
}
