//! The append path: one statement for one stream, one call of the
//! `append_to_streams` function for several (or check-only streams), and
//! the replay check that recognises a re-send by its event ids.

use std::{borrow::Cow, collections::BTreeMap};

use chrono::{DateTime, Utc};

use eventcore::{
    AppendOutcome, AppendRequest, Error, ExpectedVersion, GlobalPosition, StreamVersion,
    VersionConflict,
};
use sqlx::{PgConnection, Postgres, Row, postgres::PgArguments, query::Query};
use tracing::Instrument;
use uuid::Uuid;

use super::PostgresEventStore;
use crate::{
    error::{CONFLICT_SQLSTATE, constraint, db_error_parts, sqlstate},
    instrument,
    jsonb::{self, JsonbParam},
    pool::Call,
    sql::{self, sql},
};

/// What one send of an append found.
enum Attempt {
    Written(AppendOutcome),
    /// Nothing was written: stream `index` of the request was at `actual`.
    Conflict {
        index: usize,
        actual: u64,
        id_seen: bool,
    },
}

/// The append's parameters as column arrays, built once per request and
/// reused by retries.
struct AppendParams<'a> {
    streams: Vec<&'a str>,
    expected: Vec<i64>,
    event_ids: Vec<Uuid>,
    event_types: Vec<&'a str>,
    schema_versions: Vec<i32>,
    data: Vec<JsonbParam<'a>>,
    occurred_at: Vec<DateTime<Utc>>,
    correlation_ids: Vec<Uuid>,
    causation_ids: Vec<Option<Uuid>>,
    /// Custom metadata as JSON text.
    custom: Vec<Cow<'a, str>>,
}

impl<'a> AppendParams<'a> {
    /// Binds the per-event arrays, `$5..$12` of `append_to_streams`.
    fn bind_events<'q>(
        &'q self,
        query: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        query
            .bind(&self.event_ids)
            .bind(&self.event_types)
            .bind(&self.schema_versions)
            .bind(&self.data)
            .bind(&self.occurred_at)
            .bind(&self.correlation_ids)
            .bind(&self.causation_ids)
            .bind(
                self.custom
                    .iter()
                    .map(|c| JsonbParam(c))
                    .collect::<Vec<_>>(),
            )
    }

    fn new(request: &'a AppendRequest) -> Result<Self, Error> {
        let n = request.event_count();
        let mut p = AppendParams {
            streams: Vec::with_capacity(request.streams().len()),
            expected: Vec::with_capacity(request.streams().len()),
            event_ids: Vec::with_capacity(n),
            event_types: Vec::with_capacity(n),
            schema_versions: Vec::with_capacity(n),
            data: Vec::with_capacity(n),
            occurred_at: Vec::with_capacity(n),
            correlation_ids: Vec::with_capacity(n),
            causation_ids: Vec::with_capacity(n),
            custom: Vec::with_capacity(n),
        };
        for s in request.streams() {
            p.streams.push(s.stream_id.as_str());
            p.expected
                .push(sql::expected_version_code(&s.stream_id, s.expected)?);
            for e in &s.events {
                p.event_ids.push(e.event_id.as_uuid());
                p.event_types.push(&e.event_type);
                p.schema_versions.push(e.schema_version as i32);
                p.data.push(JsonbParam(e.data.get()));
                p.occurred_at.push(e.metadata.occurred_at);
                p.correlation_ids.push(e.metadata.correlation_id);
                p.causation_ids.push(e.metadata.causation_id);
                p.custom
                    .push(jsonb::custom_text(&e.metadata.custom).map_err(|source| {
                        Error::Encode {
                            event_type: e.event_type.clone(),
                            source,
                        }
                    })?);
            }
        }
        Ok(p)
    }
}

impl PostgresEventStore {
    /// [`EventStore::append`](eventcore::EventStore::append): validated,
    /// the schema checked once, then one call of the pool.
    pub(super) async fn write(&self, request: AppendRequest) -> Result<AppendOutcome, Error> {
        request.validate(self.config().max_event_bytes)?;
        crate::schema::ensure_writable(self).await?;
        let events = request.event_count();
        let span = tracing::debug_span!(
            "eventcore.append",
            streams = request.streams().len(),
            events,
            first_stream = request.streams().first().map(|s| s.stream_id.as_str()),
            first_position = tracing::field::Empty,
            replayed = tracing::field::Empty,
        );
        let result = async {
            if request.streams().is_empty() {
                return Ok(AppendOutcome {
                    stream_versions: BTreeMap::new(),
                    positions: None,
                    replayed: false,
                });
            }
            let outcome = {
                let params = AppendParams::new(&request)?;
                let (request, params) = (&request, &params);
                self.db()
                    .call("append", Call::Write, |conn| {
                        Box::pin(self.append_once(conn, request, params))
                    })
                    .await?
            };
            if outcome.positions.is_some() && !outcome.replayed {
                self.appended();
            }
            if let Some((first, _)) = outcome.positions {
                tracing::Span::current().record("first_position", first.get());
            }
            tracing::Span::current().record("replayed", outcome.replayed);
            Ok(outcome)
        }
        .instrument(span)
        .await;
        instrument::appended(&result, events);
        result
    }

    /// One send of the append on `conn`.
    async fn append_once(
        &self,
        conn: &mut PgConnection,
        request: &AppendRequest,
        p: &AppendParams<'_>,
    ) -> Result<AppendOutcome, Error> {
        let attempt = if request.streams().len() == 1 && !p.event_ids.is_empty() {
            self.append_to_stream(conn, request, p).await
        } else {
            self.append_to_streams(conn, request, p).await
        };
        match attempt {
            Ok(Attempt::Written(outcome)) => Ok(outcome),
            Ok(Attempt::Conflict {
                index,
                actual,
                id_seen,
            }) => {
                // The events may already be stored by an earlier send whose
                // acknowledgement was lost: then this is a replay, not a
                // conflict.
                if id_seen && let Some(outcome) = self.replay(conn, request, p).await? {
                    return Ok(outcome);
                }
                let s = &request.streams()[index];
                Err(VersionConflict {
                    stream_id: s.stream_id.clone(),
                    expected: s.expected,
                    actual: StreamVersion::new(actual),
                }
                .into())
            }
            Err(e) => match db_error_parts(&e) {
                // Another append stored one of these ids first: either this
                // is a re-send, or a genuine clash.
                Some((code, Some(c)))
                    if code == sqlstate::UNIQUE_VIOLATION
                        && c == constraint::EVENTS_EVENT_ID_KEY =>
                {
                    self.db()
                        .restart_on(conn)
                        .await
                        .map_err(|e| self.map_err("append", e))?;
                    match self.replay(conn, request, p).await? {
                        Some(outcome) => Ok(outcome),
                        None => Err(self.map_err("append", e)),
                    }
                }
                // Cannot happen while every writer locks the stream row; if
                // a foreign writer raced us, retrying is right.
                Some((code, Some(c)))
                    if code == sqlstate::UNIQUE_VIOLATION
                        && c == constraint::EVENTS_STREAM_VERSION_KEY =>
                {
                    Err(Error::Aborted {
                        operation: "append",
                        source: Box::new(e),
                    })
                }
                _ => Err(self.map_err("append", e)),
            },
        }
    }

    /// The common case, events for one stream: one statement (see the
    /// files `sql/append_*_stream.sql`), which is its own transaction and
    /// does for its stream what `append_to_streams` does per stream.
    async fn append_to_stream(
        &self,
        conn: &mut PgConnection,
        request: &AppendRequest,
        p: &AppendParams<'_>,
    ) -> Result<Attempt, sqlx::Error> {
        let stream = &request.streams()[0];
        let n = p.event_ids.len();
        let existing = match stream.expected {
            ExpectedVersion::Exact(v) => v > StreamVersion::NONE,
            ExpectedVersion::StreamExists => true,
            ExpectedVersion::Any | ExpectedVersion::NoStream => false,
        };
        let s = self.sql();
        let (one, many) = if existing {
            (
                &s.append_one_to_existing_stream,
                &s.append_to_existing_stream,
            )
        } else {
            (&s.append_one_to_new_stream, &s.append_to_new_stream)
        };
        let written: Option<(i64, i64)> = if n == 1 {
            let row = sqlx::query(sql(one))
                .persistent(self.named())
                .bind(p.streams[0])
                .bind(p.expected[0])
                .bind(1_i64)
                .bind(p.event_ids[0])
                .bind(p.event_types[0])
                .bind(p.schema_versions[0])
                .bind(p.data[0])
                .bind(p.occurred_at[0])
                .bind(p.correlation_ids[0])
                .bind(p.causation_ids[0])
                .bind(JsonbParam(&p.custom[0]))
                .fetch_optional(&mut *conn)
                .await?;
            match row {
                Some(row) => Some((row.try_get(1)?, row.try_get(0)?)),
                None => None,
            }
        } else {
            let query = sqlx::query(sql(many))
                .persistent(self.named())
                .bind(p.streams[0])
                .bind(p.expected[0])
                .bind(n as i64);
            let row = p.bind_events(query).fetch_one(&mut *conn).await?;
            let version: Option<i64> = row.try_get(0)?;
            let first: Option<i64> = row.try_get(1)?;
            version.zip(first)
        };
        match written {
            Some((version, first)) => Ok(Attempt::Written(AppendOutcome {
                stream_versions: BTreeMap::from([(
                    stream.stream_id.clone(),
                    StreamVersion::new(version as u64),
                )]),
                positions: Some((
                    GlobalPosition::new(first as u64),
                    GlobalPosition::new(first as u64 + n as u64 - 1),
                )),
                replayed: false,
            })),
            None => {
                // Nothing was written; the statement's transaction is over.
                let (versions, id_seen) = self.conflict_states(conn, p).await?;
                Ok(Attempt::Conflict {
                    index: 0,
                    actual: versions.first().copied().unwrap_or(0) as u64,
                    id_seen,
                })
            }
        }
    }

    /// One call of the `append_to_streams` function, which checks and bumps
    /// each stream's row (and locks each check-only stream's row) in
    /// stream-id order, so every writer takes row locks in one global order
    /// and none deadlocks. A failed expectation rolls everything back (SQLSTATE
    /// EC002); the actual versions are read afterwards.
    async fn append_to_streams(
        &self,
        conn: &mut PgConnection,
        request: &AppendRequest,
        p: &AppendParams<'_>,
    ) -> Result<Attempt, sqlx::Error> {
        let streams = request.streams();
        // Positions follow the request's order whatever the lock order.
        let mut offsets = Vec::with_capacity(streams.len());
        let mut total = 0_i32;
        for s in streams {
            offsets.push(total);
            total += s.events.len() as i32;
        }
        let mut order: Vec<usize> = (0..streams.len()).collect();
        order.sort_unstable_by_key(|&i| streams[i].stream_id.as_str());
        // The per-stream columns, in lock order.
        let mut sorted_streams = Vec::with_capacity(order.len());
        let mut sorted_expected = Vec::with_capacity(order.len());
        let mut sorted_counts = Vec::with_capacity(order.len());
        let mut sorted_offsets = Vec::with_capacity(order.len());
        for &i in &order {
            sorted_streams.push(p.streams[i]);
            sorted_expected.push(p.expected[i]);
            sorted_counts.push(streams[i].events.len() as i32);
            sorted_offsets.push(offsets[i]);
        }
        let query = sqlx::query(sql(&self.sql().append_to_streams))
            .persistent(self.named())
            .bind(&sorted_streams)
            .bind(&sorted_expected)
            .bind(&sorted_counts)
            .bind(&sorted_offsets);
        let result = p.bind_events(query).fetch_one(&mut *conn).await;
        let row = match result {
            Ok(row) => row,
            Err(e) if db_error_parts(&e).is_some_and(|(code, _)| code == CONFLICT_SQLSTATE) => {
                self.db().restart_on(conn).await?;
                return self.conflict_among(conn, request, p, e).await;
            }
            Err(e) => return Err(e),
        };
        let base: Option<i64> = row.try_get(0)?;
        let versions: Vec<i64> = row.try_get(1)?;
        let mut outcome = AppendOutcome {
            stream_versions: BTreeMap::new(),
            positions: base.map(|base| {
                (
                    GlobalPosition::new(base as u64 + 1),
                    GlobalPosition::new(base as u64 + total as u64),
                )
            }),
            replayed: false,
        };
        for (&i, v) in order.iter().zip(versions) {
            if !streams[i].events.is_empty() {
                outcome
                    .stream_versions
                    .insert(streams[i].stream_id.clone(), StreamVersion::new(v as u64));
            }
        }
        Ok(Attempt::Written(outcome))
    }

    /// After `append_to_streams` found a failed expectation (everything
    /// rolled back): the first stream, in request order, whose expectation
    /// the current versions break. Should none (a stream expected to exist
    /// was created meanwhile), the original error goes up as a transient
    /// abort and the append is retried.
    async fn conflict_among(
        &self,
        conn: &mut PgConnection,
        request: &AppendRequest,
        p: &AppendParams<'_>,
        raised: sqlx::Error,
    ) -> Result<Attempt, sqlx::Error> {
        let (versions, id_seen) = self.conflict_states(conn, p).await?;
        let broken = request
            .streams()
            .iter()
            .zip(&versions)
            .position(|(s, &v)| !s.expected.is_met_by(StreamVersion::new(v as u64)));
        match broken {
            Some(index) => Ok(Attempt::Conflict {
                index,
                actual: versions[index] as u64,
                id_seen,
            }),
            None => Err(raised),
        }
    }

    /// After a failed expectation: each stream's version (0 if none) in the
    /// request's order, and whether any of its event ids is stored already.
    async fn conflict_states(
        &self,
        conn: &mut PgConnection,
        p: &AppendParams<'_>,
    ) -> Result<(Vec<i64>, bool), sqlx::Error> {
        let row = sqlx::query(sql(&self.sql().select_conflict_states))
            .persistent(self.named())
            .bind(&p.streams)
            .bind(&p.event_ids)
            .fetch_one(&mut *conn)
            .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// The original outcome if every event of `request` is already stored on
    /// its stream; `None` if none is; [`Error::DuplicateEventId`] otherwise.
    async fn replay(
        &self,
        conn: &mut PgConnection,
        request: &AppendRequest,
        p: &AppendParams<'_>,
    ) -> Result<Option<AppendOutcome>, Error> {
        let rows = sqlx::query(sql(&self.sql().select_events_by_id))
            .persistent(self.named())
            .bind(&p.event_ids)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.map_err("append", e))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut stored = BTreeMap::new();
        for row in &rows {
            let id: Uuid = row.try_get(0).map_err(|e| self.map_err("append", e))?;
            let stream: String = row.try_get(1).map_err(|e| self.map_err("append", e))?;
            let version: i64 = row.try_get(2).map_err(|e| self.map_err("append", e))?;
            let position: i64 = row.try_get(3).map_err(|e| self.map_err("append", e))?;
            stored.insert(id, (stream, version as u64, position as u64));
        }
        let mut outcome = AppendOutcome {
            stream_versions: BTreeMap::new(),
            positions: None,
            replayed: true,
        };
        let (mut lo, mut hi) = (u64::MAX, 0);
        for s in request.streams() {
            for e in &s.events {
                match stored.get(&e.event_id.as_uuid()) {
                    Some((stream, version, position)) if stream == s.stream_id.as_str() => {
                        let v = outcome
                            .stream_versions
                            .entry(s.stream_id.clone())
                            .or_default();
                        *v = (*v).max(StreamVersion::new(*version));
                        lo = lo.min(*position);
                        hi = hi.max(*position);
                    }
                    _ => {
                        // Report an id that *is* stored: that is the clash.
                        let event_id = request
                            .event_ids()
                            .find(|id| stored.contains_key(&id.as_uuid()))
                            .unwrap_or(e.event_id);
                        return Err(Error::DuplicateEventId { event_id });
                    }
                }
            }
        }
        outcome.positions = Some((GlobalPosition::new(lo), GlobalPosition::new(hi)));
        Ok(Some(outcome))
    }
}
