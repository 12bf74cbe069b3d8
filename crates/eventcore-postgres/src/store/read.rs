//! Reads: a stream, several streams, the `$all` log, versions and the head.

use eventcore::{
    DEFAULT_READ_PAGE, Error, EventId, EventMetadata, GlobalPosition, StoredEvent, StreamId,
    StreamVersion,
};
use sqlx::{
    PgConnection, Postgres, Row,
    postgres::{PgArguments, PgRow},
    query::Query,
};
use tracing::Instrument;
use uuid::Uuid;

use super::PostgresEventStore;
use crate::{
    instrument,
    jsonb::{CustomColumn, JsonbColumn, TimestampColumn},
    pool::{Call, Pool},
    sql::{self, sql},
};

impl PostgresEventStore {
    /// The pool reads of events go to: a replica's in turn, or the
    /// primary's, and the replica's name for spans.
    fn reader(&self) -> (&Pool, Option<&str>) {
        match self.replicas().pick() {
            Some(replica) => (&replica.db, Some(replica.name.as_str())),
            None => (self.db(), None),
        }
    }

    /// [`EventStore::read_stream`]: on a replica, if there are any.
    pub(super) async fn stream_events(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, Error> {
        self.stream_events_on(self.reader(), stream, from, limit)
            .await
    }

    /// `read_stream` on `db` (named `replica` if it is one).
    async fn stream_events_on(
        &self,
        (db, replica): (&Pool, Option<&str>),
        stream: &StreamId,
        from: StreamVersion,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, Error> {
        let span = tracing::debug_span!(
            "eventcore.read_stream",
            stream = stream.as_str(),
            from = from.get(),
            limit,
            replica
        );
        db.call("read_stream", Call::Read, |conn| {
            let query = sqlx::query(sql(&self.sql().read_stream_forward))
                .persistent(self.named())
                .bind(stream.as_str())
                .bind(to_i64(from.get()))
                .bind(to_i64(limit as u64));
            Box::pin(self.fetch_events(conn, "read_stream", query))
        })
        .instrument(span)
        .await
        .inspect(|events| instrument::events_read("read_stream", events.len()))
    }

    /// Every event of `stream` from `from` on, from the primary: what a
    /// command decides on must be the newest state, which a replica may
    /// not have replayed yet (it would only cause conflicts).
    async fn stream_to_end_on_primary(
        &self,
        stream: &StreamId,
        from: StreamVersion,
    ) -> Result<Vec<StoredEvent>, Error> {
        eventcore::read_stream_pages(from, |next| {
            self.stream_events_on((self.db(), None), stream, next, DEFAULT_READ_PAGE)
        })
        .await
    }

    /// [`EventStore::read_all`]: on a replica, if there are any. A
    /// standby's snapshot xmin is the primary's oldest running transaction
    /// as replayed, so the same horizon holds there.
    pub(super) async fn events_after(
        &self,
        after: GlobalPosition,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, Error> {
        let (db, replica) = self.reader();
        let span = tracing::debug_span!("eventcore.read_all", after = after.get(), limit, replica);
        db.call("read_all", Call::Read, |conn| {
            Box::pin(async move {
                let rows = sqlx::query(sql(&self.sql().read_all_forward))
                    .persistent(self.named())
                    .bind(to_i64(after.get()))
                    .bind(to_i64(limit as u64))
                    .fetch_all(&mut **conn)
                    .await
                    .map_err(|e| self.map_err("read_all", e))?;
                // A bad row must not hold back the good ones before it:
                // the page ends just before it, and the next read, which
                // starts with it, fails with its position, so a reader
                // can record it and pass.
                let mut events = Vec::with_capacity(rows.len());
                let mut last_stream = None;
                for row in &rows {
                    match decode_row(row, &mut last_stream, |e| self.map_err("read_all", e)) {
                        Ok(event) => events.push(event),
                        Err(e) if events.is_empty() => return Err(e),
                        Err(_) => break,
                    }
                }
                Ok(events)
            })
        })
        .instrument(span)
        .await
        .inspect(|events| instrument::events_read("read_all", events.len()))
    }

    /// [`EventStore::stream_version`].
    pub(super) async fn version_of(&self, stream: &StreamId) -> Result<StreamVersion, Error> {
        let span = tracing::debug_span!("eventcore.stream_version", stream = stream.as_str());
        self.db()
            .call("stream_version", Call::Read, |conn| {
                Box::pin(async move {
                    let version: Option<i64> =
                        sqlx::query_scalar(sql(&self.sql().select_stream_version))
                            .persistent(self.named())
                            .bind(stream.as_str())
                            .fetch_optional(&mut **conn)
                            .await
                            .map_err(|e| self.map_err("stream_version", e))?;
                    Ok(StreamVersion::new(version.unwrap_or(0) as u64))
                })
            })
            .instrument(span)
            .await
    }

    /// [`EventStore::read_streams_to_end`].
    pub(super) async fn streams_to_end(
        &self,
        streams: &[(StreamId, StreamVersion)],
    ) -> Result<Vec<Vec<StoredEvent>>, Error> {
        /// One round trip covers this many events; longer histories page.
        const BATCH: usize = 5000;
        // One stream (most commands): the plain per-stream read, whose plan
        // is simpler than the multi-stream join.
        if let [(stream, from)] = streams {
            return Ok(vec![self.stream_to_end_on_primary(stream, *from).await?]);
        }
        let ids: Vec<&str> = streams.iter().map(|(s, _)| s.as_str()).collect();
        let lowest = streams.iter().map(|(_, v)| v.get()).min().unwrap_or(1);
        let span = tracing::debug_span!(
            "eventcore.read_streams",
            streams = ids.len(),
            first_stream = ids.first().copied(),
            from = lowest
        );
        let ids = &ids;
        let events = self
            .db()
            .call("read_streams", Call::Read, |conn| {
                let query = sqlx::query(sql(&self.sql().read_streams_forward))
                    .persistent(self.named())
                    .bind(ids)
                    .bind(to_i64(lowest))
                    .bind(BATCH as i64);
                Box::pin(self.fetch_events(conn, "read_streams", query))
            })
            .instrument(span)
            .await?;
        instrument::events_read("read_streams", events.len());
        if events.len() == BATCH {
            // A long history: page through each stream instead.
            let mut out = Vec::with_capacity(streams.len());
            for (stream, from) in streams {
                out.push(self.stream_to_end_on_primary(stream, *from).await?);
            }
            return Ok(out);
        }
        // Rows come grouped by stream in version order; each requested slot
        // takes its stream's rows from its own first version on. A stream
        // requested once (the usual case) gets its rows moved, not copied.
        let mut out: Vec<Vec<StoredEvent>> = vec![Vec::new(); streams.len()];
        for event in events {
            let mut slots = streams
                .iter()
                .enumerate()
                .filter(|(_, (stream, from))| {
                    *stream == event.stream_id && event.stream_version >= *from
                })
                .map(|(slot, _)| slot)
                .peekable();
            while let Some(slot) = slots.next() {
                if slots.peek().is_some() {
                    out[slot].push(event.clone());
                } else {
                    out[slot].push(event);
                    break;
                }
            }
        }
        Ok(out)
    }

    /// [`EventStore::head_position`].
    pub(super) async fn head(&self) -> Result<GlobalPosition, Error> {
        let span = tracing::debug_span!("eventcore.head_position");
        self.db()
            .call("head_position", Call::Read, |conn| {
                Box::pin(async move {
                    let head: Option<i64> =
                        sqlx::query_scalar(sql(&self.sql().select_head_position))
                            .persistent(self.named())
                            .fetch_one(&mut **conn)
                            .await
                            .map_err(|e| self.map_err("head_position", e))?;
                    Ok(GlobalPosition::new(head.unwrap_or(0) as u64))
                })
            })
            .instrument(span)
            .await
    }

    /// Every row of `query` on `conn`, decoded.
    async fn fetch_events(
        &self,
        conn: &mut PgConnection,
        operation: &'static str,
        query: Query<'_, Postgres, PgArguments>,
    ) -> Result<Vec<StoredEvent>, Error> {
        let rows = query
            .fetch_all(conn)
            .await
            .map_err(|e| self.map_err(operation, e))?;
        self.decode_rows(operation, &rows)
    }

    fn decode_rows(
        &self,
        operation: &'static str,
        rows: &[PgRow],
    ) -> Result<Vec<StoredEvent>, Error> {
        let mut last_stream = None;
        rows.iter()
            .map(|row| decode_row(row, &mut last_stream, |e| self.map_err(operation, e)))
            .collect()
    }
}

/// Turns a row of `event_columns!()` into a [`StoredEvent`]; a row whose
/// stored values break the model (bad id, custom metadata not an object) is
/// [`Error::CorruptRow`] naming it. `last_stream` carries the previous
/// row's stream id: rows of one stream share it instead of each allocating
/// and validating its own.
fn decode_row(
    row: &PgRow,
    last_stream: &mut Option<StreamId>,
    map: impl Fn(sqlx::Error) -> Error,
) -> Result<StoredEvent, Error> {
    // Unchecked: the columns are ours (`event_columns!()`), so sqlx's
    // per-column type check is skipped; values are still decoded and checked.
    let position: i64 = row.try_get_unchecked(0).map_err(&map)?;
    let stream_id: &str = row.try_get_unchecked(2).map_err(&map)?;
    let stream_version: i64 = row.try_get_unchecked(3).map_err(&map)?;
    let corrupt = |reason: String| Error::CorruptRow {
        what: format!("stream '{stream_id}' version {stream_version} at position {position}"),
        position: u64::try_from(position).ok().map(GlobalPosition::new),
        reason,
    };
    // Past the row's identity every failure is this row's, named by its
    // position so that a reader can record it and read on after it.
    let column = |e: sqlx::Error| match e {
        sqlx::Error::ColumnDecode { index, source } => {
            let name = index
                .parse()
                .ok()
                .and_then(|i| sql::EVENT_COLUMNS.split(", ").nth(i));
            corrupt(format!(
                "column {} does not decode: {source}",
                name.unwrap_or(&index)
            ))
        }
        other => map(other),
    };
    let event_id: Uuid = row.try_get_unchecked(1).map_err(column)?;
    let event_type: String = row.try_get_unchecked(4).map_err(column)?;
    let schema_version: i32 = row.try_get_unchecked(5).map_err(column)?;
    // The payload stays JSON text, unparsed, until someone asks for a type
    // (see `jsonb`).
    let JsonbColumn(data) = row.try_get_unchecked(6).map_err(column)?;
    let TimestampColumn(occurred_at) = row.try_get_unchecked(7).map_err(column)?;
    let correlation_id: Uuid = row.try_get_unchecked(8).map_err(column)?;
    let causation_id: Option<Uuid> = row.try_get_unchecked(9).map_err(column)?;
    let CustomColumn(custom) = row.try_get_unchecked(10).map_err(column)?;
    let TimestampColumn(recorded_at) = row.try_get_unchecked(11).map_err(column)?;
    let stream = match last_stream {
        Some(s) if s.as_str() == stream_id => s.clone(),
        _ => {
            let s = StreamId::new(stream_id).map_err(|e| corrupt(e.to_string()))?;
            *last_stream = Some(s.clone());
            s
        }
    };
    Ok(StoredEvent {
        event_id: EventId::from_uuid(event_id).map_err(|e| corrupt(e.to_string()))?,
        stream_id: stream,
        stream_version: StreamVersion::new(stream_version as u64),
        position: GlobalPosition::new(position as u64),
        event_type,
        schema_version: schema_version as u32,
        data,
        metadata: EventMetadata {
            correlation_id,
            causation_id,
            occurred_at,
            custom,
        },
        recorded_at,
    })
}

/// Positions and versions travel as BIGINT; larger values cannot be stored.
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
