//! Append requests and their outcome.

use std::collections::{BTreeMap, HashSet};

use crate::{
    Error, EventId, ExpectedVersion, GlobalPosition, InvalidEventReason, JsonPart, NewEvent,
    StreamId, StreamVersion, rules,
};

/// Default limit on one event's serialized data plus custom metadata, in bytes.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Most events one append may carry (the PostgreSQL store numbers events
/// within a transaction in 20 bits).
pub const MAX_EVENTS_PER_APPEND: usize = 100_000;

/// One stream's part of an append: its expectation and its new events
/// (none for a stream that was only read and must merely be unchanged).
#[derive(Clone, Debug, PartialEq)]
pub struct StreamAppend {
    /// The stream.
    pub stream_id: StreamId,
    /// What the stream's version must be for the append to proceed.
    pub expected: ExpectedVersion,
    /// Events to add, in order. Empty for a check-only stream.
    pub events: Vec<NewEvent>,
}

/// An atomic append to any number of streams: every expectation is checked
/// and every event written in one transaction, or nothing is.
///
/// ```
/// use eventcore::{AppendRequest, ExpectedVersion, NewEvent, StreamId};
///
/// let from = StreamId::new("account-1")?;
/// let to = StreamId::new("account-2")?;
/// let limits = StreamId::new("limits")?;
/// let request = AppendRequest::new()
///     .append(from, ExpectedVersion::Any, vec![NewEvent::raw("Debited", serde_json::json!({"amount": 5}))])
///     .append(to, ExpectedVersion::Any, vec![NewEvent::raw("Credited", serde_json::json!({"amount": 5}))])
///     // read but not written: the append fails if it moved meanwhile
///     .check(limits, ExpectedVersion::NoStream);
/// assert_eq!(request.event_count(), 2);
/// # Ok::<(), eventcore::InvalidStreamId>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppendRequest {
    streams: Vec<StreamAppend>,
}

impl AppendRequest {
    /// An empty request.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds events for `stream_id`, expected at `expected`.
    pub fn append(
        mut self,
        stream_id: StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Self {
        self.streams.push(StreamAppend {
            stream_id,
            expected,
            events,
        });
        self
    }

    /// Adds a stream that is only checked against `expected`, not written.
    pub fn check(self, stream_id: StreamId, expected: ExpectedVersion) -> Self {
        self.append(stream_id, expected, Vec::new())
    }

    /// The streams of the request, in the order they were added.
    pub fn streams(&self) -> &[StreamAppend] {
        &self.streams
    }

    /// Consumes the request, returning its streams.
    pub fn into_streams(self) -> Vec<StreamAppend> {
        self.streams
    }

    /// Total number of events.
    pub fn event_count(&self) -> usize {
        self.streams.iter().map(|s| s.events.len()).sum()
    }

    /// Every event id, in request order.
    pub fn event_ids(&self) -> impl Iterator<Item = EventId> + '_ {
        self.streams
            .iter()
            .flat_map(|s| s.events.iter().map(|e| e.event_id))
    }

    /// Checks what can be checked without a store: no stream twice, no
    /// expected version above [`StreamVersion::MAX`], no event id twice, at
    /// most [`MAX_EVENTS_PER_APPEND`] events, every event within the rules
    /// of [`NewEvent`] (so that it reads back identically) and no event
    /// whose serialized data plus custom metadata exceeds `max_event_bytes`.
    ///
    /// Every store calls this before touching storage, so bad input fails the
    /// same way everywhere: [`Error::InvalidAppend`],
    /// [`Error::ExpectedVersionOutOfRange`], [`Error::InvalidEvent`] or
    /// [`Error::PayloadTooLarge`].
    pub fn validate(&self, max_event_bytes: usize) -> Result<(), Error> {
        let mut streams = HashSet::with_capacity(self.streams.len());
        for s in &self.streams {
            if !streams.insert(&s.stream_id) {
                return Err(Error::InvalidAppend {
                    reason: format!("stream '{}' appears more than once", s.stream_id),
                });
            }
            if let ExpectedVersion::Exact(v) = s.expected
                && v > StreamVersion::MAX
            {
                return Err(Error::ExpectedVersionOutOfRange {
                    stream_id: s.stream_id.clone(),
                    expected: s.expected,
                });
            }
        }
        let count = self.event_count();
        if count > MAX_EVENTS_PER_APPEND {
            return Err(Error::InvalidAppend {
                reason: format!(
                    "{count} events in one append; the limit is {MAX_EVENTS_PER_APPEND}"
                ),
            });
        }
        let mut ids = HashSet::with_capacity(count);
        for s in &self.streams {
            for e in &s.events {
                if !ids.insert(e.event_id) {
                    return Err(Error::InvalidAppend {
                        reason: format!("event id {} appears more than once", e.event_id),
                    });
                }
                let invalid = |reason| Error::InvalidEvent {
                    stream_id: Some(s.stream_id.clone()),
                    event_id: e.event_id,
                    event_type: e.event_type.clone(),
                    reason,
                };
                rules::check_type_and_version(&e.event_type, e.schema_version).map_err(invalid)?;
                rules::check_metadata(&e.metadata).map_err(invalid)?;
                let size = encoded_size(e);
                if size > max_event_bytes {
                    return Err(Error::PayloadTooLarge {
                        stream_id: s.stream_id.clone(),
                        event_id: e.event_id,
                        size,
                        limit: max_event_bytes,
                    });
                }
                rules::check_json(e.data.get(), rules::MAX_JSON_DEPTH).map_err(|problem| {
                    invalid(InvalidEventReason::Json {
                        part: JsonPart::Data,
                        problem,
                    })
                })?;
            }
        }
        Ok(())
    }
}

/// Serialized size of an event's data plus custom metadata, the parts of
/// variable size.
pub fn encoded_size(event: &NewEvent) -> usize {
    let custom = &event.metadata.custom;
    event.data.get().len()
        + if custom.is_empty() {
            0
        } else {
            json_len(custom)
        }
}

/// Length of `value`'s compact JSON text, without allocating it.
fn json_len<T: serde::Serialize + ?Sized>(value: &T) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing JSON values into a counter cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// The result of a successful append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The new version of every stream that received events.
    pub stream_versions: BTreeMap<StreamId, StreamVersion>,
    /// Global position of the first and last written event, if any.
    pub positions: Option<(GlobalPosition, GlobalPosition)>,
    /// True when the events were already stored by an earlier send of the
    /// same append; this outcome then describes that earlier write.
    pub replayed: bool,
}

impl AppendOutcome {
    /// The new version of `stream`, if the append wrote to it.
    pub fn version_of(&self, stream: &StreamId) -> Option<StreamVersion> {
        self.stream_versions.get(stream).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JsonProblem, MAX_EVENT_TYPE_LEN, MAX_JSON_DEPTH, MAX_SCHEMA_VERSION};
    use serde_json::json;

    fn sid(s: &str) -> StreamId {
        StreamId::new(s).unwrap()
    }

    #[test]
    fn rejects_duplicate_streams_and_ids() {
        let e = NewEvent::raw("T", json!({}));
        let dup_stream = AppendRequest::new()
            .append(
                sid("a"),
                ExpectedVersion::Any,
                vec![NewEvent::raw("T", json!({}))],
            )
            .check(sid("a"), ExpectedVersion::Any);
        assert!(matches!(
            dup_stream.validate(DEFAULT_MAX_EVENT_BYTES),
            Err(Error::InvalidAppend { .. })
        ));
        let dup_id = AppendRequest::new()
            .append(sid("a"), ExpectedVersion::Any, vec![e.clone()])
            .append(sid("b"), ExpectedVersion::Any, vec![e]);
        assert!(matches!(
            dup_id.validate(DEFAULT_MAX_EVENT_BYTES),
            Err(Error::InvalidAppend { .. })
        ));
    }

    fn invalid(event: NewEvent) -> InvalidEventReason {
        let id = event.event_id;
        let req = AppendRequest::new().append(sid("a"), ExpectedVersion::Any, vec![event]);
        match req.validate(DEFAULT_MAX_EVENT_BYTES) {
            Err(Error::InvalidEvent {
                stream_id,
                event_id,
                reason,
                ..
            }) => {
                assert_eq!(stream_id, Some(sid("a")));
                assert_eq!(event_id, id);
                reason
            }
            other => panic!("expected InvalidEvent, got {other:?}"),
        }
    }

    fn accepted(event: NewEvent) {
        let req = AppendRequest::new().append(sid("a"), ExpectedVersion::Any, vec![event]);
        req.validate(DEFAULT_MAX_EVENT_BYTES).expect("accepted");
    }

    fn nested(depth: usize) -> serde_json::Value {
        (0..depth).fold(json!("leaf"), |v, _| json!({ "k": v }))
    }

    #[test]
    fn type_names_and_schema_versions() {
        for name in [
            "",
            "\0",
            "A\nB",
            "A\u{0}",
            " A",
            "A ",
            "\u{3000}",
            "A\u{200b}B",
            "A\u{202e}",
        ] {
            assert!(
                matches!(
                    invalid(NewEvent::raw(name, json!({}))),
                    InvalidEventReason::TypeName { .. }
                ),
                "{name:?}"
            );
        }
        assert!(matches!(
            invalid(NewEvent::raw("T".repeat(MAX_EVENT_TYPE_LEN + 1), json!({}))),
            InvalidEventReason::TypeName { .. }
        ));
        accepted(NewEvent::raw("T".repeat(MAX_EVENT_TYPE_LEN), json!({})));
        accepted(NewEvent::raw("Account Opened.v2 (zoë)", json!({})));
        for (version, ok) in [
            (0, false),
            (1, true),
            (MAX_SCHEMA_VERSION, true),
            (MAX_SCHEMA_VERSION + 1, false),
            (u32::MAX, false),
        ] {
            let mut e = NewEvent::raw("T", json!({}));
            e.schema_version = version;
            if ok {
                accepted(e);
            } else {
                assert!(matches!(
                    invalid(e),
                    InvalidEventReason::SchemaVersion { .. }
                ));
            }
        }
    }

    #[test]
    fn payloads_that_would_not_read_back() {
        let json_problem = |e| match invalid(e) {
            InvalidEventReason::Json {
                part: JsonPart::Data,
                problem,
            } => problem,
            other => panic!("expected a data problem, got {other:?}"),
        };
        let text = |t: &str| {
            let mut e = NewEvent::raw("T", json!(null));
            e.data = crate::EventData::from_json_unchecked(t);
            e
        };
        accepted(NewEvent::raw("T", nested(MAX_JSON_DEPTH)));
        assert_eq!(
            json_problem(NewEvent::raw("T", nested(MAX_JSON_DEPTH + 1))),
            JsonProblem::TooDeep {
                limit: MAX_JSON_DEPTH
            }
        );
        assert!(matches!(
            json_problem(NewEvent::raw("T", json!(["\u{0}"]))),
            JsonProblem::Nul { .. }
        ));
        assert!(matches!(
            json_problem(text(r#"["\udbff"]"#)),
            JsonProblem::LoneSurrogate { .. }
        ));
        assert!(matches!(
            json_problem(text("[1e400]")),
            JsonProblem::NumberOutOfRange { .. }
        ));
        assert!(matches!(
            json_problem(text("[1,")),
            JsonProblem::Syntax { .. }
        ));
        assert!(matches!(json_problem(text("")), JsonProblem::Syntax { .. }));
        assert!(matches!(
            json_problem(text(r#"{"a":1,"a":1}"#)),
            JsonProblem::DuplicateKey { .. }
        ));
        accepted(text(r#" {"a": [1e300, -0.0, 1e-400, "\ud83d\ude00"]} "#));
    }

    #[test]
    fn metadata_that_would_not_read_back() {
        let with_time = |y: i32, nanos: u32| {
            let mut e = NewEvent::raw("T", json!({}));
            e.metadata.occurred_at = chrono::NaiveDate::from_ymd_opt(y, 12, 31)
                .unwrap()
                .and_hms_nano_opt(23, 59, 59, nanos)
                .unwrap()
                .and_utc();
            e
        };
        for (year, nanos) in [
            (10000, 0),
            (0, 0),
            (-1, 0),
            (2016, 1_000_000_000),
            (2016, 1_999_999_999),
            (2016, 1),
            (2016, 999_999_999),
        ] {
            assert!(matches!(
                invalid(with_time(year, nanos)),
                InvalidEventReason::OccurredAt { .. }
            ));
        }
        accepted(with_time(1, 0));
        accepted(with_time(9999, 999_999_000));
        let custom = |v: serde_json::Value| {
            let mut e = NewEvent::raw("T", json!({}));
            e.metadata = e.metadata.with_custom("k", v);
            e
        };
        // The custom map is level 1, its value level 2.
        accepted(custom(nested(MAX_JSON_DEPTH - 1)));
        for v in [nested(MAX_JSON_DEPTH), nested(200), json!([[["\u{0}"]]])] {
            assert!(matches!(
                invalid(custom(v)),
                InvalidEventReason::Json {
                    part: JsonPart::CustomMetadata,
                    ..
                }
            ));
        }
        let mut e = NewEvent::raw("T", json!({}));
        e.metadata = e.metadata.with_custom("a\u{0}", 1);
        assert!(matches!(invalid(e), InvalidEventReason::Json { .. }));
    }

    #[test]
    fn expected_versions_above_the_largest_storable_are_refused() {
        for (v, ok) in [
            (StreamVersion::MAX.get(), true),
            (StreamVersion::MAX.get() + 1, false),
            (u64::MAX, false),
        ] {
            let expected = ExpectedVersion::Exact(StreamVersion::new(v));
            for req in [
                AppendRequest::new().check(sid("a"), expected),
                AppendRequest::new().append(
                    sid("a"),
                    expected,
                    vec![NewEvent::raw("T", json!({}))],
                ),
            ] {
                let result = req.validate(DEFAULT_MAX_EVENT_BYTES);
                if ok {
                    result.unwrap();
                } else {
                    assert!(matches!(
                        result,
                        Err(Error::ExpectedVersionOutOfRange { expected: e, .. }) if e == expected
                    ));
                }
            }
        }
    }

    #[test]
    fn rejects_oversized_payload() {
        let big = NewEvent::raw("T", json!({ "blob": "x".repeat(2000) }));
        let id = big.event_id;
        let req = AppendRequest::new().append(sid("a"), ExpectedVersion::Any, vec![big]);
        match req.validate(1000) {
            Err(Error::PayloadTooLarge {
                event_id,
                size,
                limit,
                ..
            }) => {
                assert_eq!(event_id, id);
                assert!(size > 2000);
                assert_eq!(limit, 1000);
            }
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
        // Custom metadata counts, as its compact JSON text.
        let mut tagged = NewEvent::raw("T", json!({}));
        tagged.metadata = tagged.metadata.with_custom("k", "x".repeat(1000));
        assert_eq!(
            encoded_size(&tagged),
            "{}".len() + r#"{"k":""}"#.len() + 1000
        );
        let req = AppendRequest::new().append(sid("a"), ExpectedVersion::Any, vec![tagged]);
        assert!(matches!(
            req.validate(1000),
            Err(Error::PayloadTooLarge { size: 1010, .. })
        ));
    }
}
