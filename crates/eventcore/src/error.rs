//! The one error type of the core crate.

use chrono::{DateTime, Utc};

use crate::{DecodeError, EventId, ExpectedVersion, GlobalPosition, StreamId, StreamVersion};

/// Why a string is not a valid [`StreamId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidStreamId {
    /// The id was the empty string.
    #[error("stream id is empty")]
    Empty,
    /// The id is longer than [`StreamId::MAX_LEN`] bytes.
    #[error("stream id is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Length of the rejected id in bytes.
        len: usize,
        /// The limit, [`StreamId::MAX_LEN`].
        max: usize,
    },
    /// The id contains a control character (newline, NUL, ...).
    #[error("stream id contains control character {ch:?} at byte {index}")]
    ControlCharacter {
        /// The offending character.
        ch: char,
        /// Its byte offset.
        index: usize,
    },
    /// The id starts or ends with whitespace (so a whitespace-only id is
    /// refused too): ` acct-1 ` would otherwise be another stream than
    /// `acct-1`.
    #[error("stream id starts or ends with whitespace")]
    SurroundingWhitespace,
    /// The id contains an invisible format character (zero-width space or
    /// joiner, bidi control, byte order mark, soft hyphen, tag, ...; see
    /// [`StreamId`]), which would make two different ids look the same.
    #[error("stream id contains invisible character {ch:?} at byte {index}")]
    InvisibleCharacter {
        /// The offending character.
        ch: char,
        /// Its byte offset.
        index: usize,
    },
}

/// The part of an event a [`JsonProblem`] was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum JsonPart {
    /// The event's data (its payload).
    Data,
    /// The custom entries of its metadata ([`EventMetadata::custom`](crate::EventMetadata::custom)).
    CustomMetadata,
}

impl std::fmt::Display for JsonPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JsonPart::Data => "data",
            JsonPart::CustomMetadata => "custom metadata",
        })
    }
}

/// Why JSON would not read back as written, on some store. Offsets are
/// byte offsets into the JSON text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonProblem {
    /// Not JSON text (possible through
    /// [`EventData::from_json_unchecked`](crate::EventData::from_json_unchecked)).
    #[error("not valid JSON (at byte {offset})")]
    Syntax {
        /// Where reading stopped.
        offset: usize,
    },
    /// Arrays and objects nested deeper than
    /// [`MAX_JSON_DEPTH`](crate::MAX_JSON_DEPTH).
    #[error("nested deeper than {limit} levels")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// A NUL character (`\u0000`) in a string or key: PostgreSQL's `jsonb`
    /// cannot hold it.
    #[error("NUL character (\\u0000) in a string or key{}", offset.map(|o| format!(" at byte {o}")).unwrap_or_default())]
    Nul {
        /// Where, when found in JSON text.
        offset: Option<usize>,
    },
    /// An escaped UTF-16 surrogate without its pair (`"\ud800"`): not a
    /// character, so it cannot be stored as text.
    #[error("unpaired surrogate escape at byte {offset}")]
    LoneSurrogate {
        /// Where the escape starts.
        offset: usize,
    },
    /// A number that serde_json cannot read as a finite `f64` (such as
    /// `1e400`), or whose exponent or digits after the point exceed
    /// [`MAX_NUMBER_SCALE`](crate::MAX_NUMBER_SCALE) (PostgreSQL's `numeric`
    /// cannot hold it).
    #[error("number out of range at byte {offset}")]
    NumberOutOfRange {
        /// Where the number starts.
        offset: usize,
    },
    /// An object with the same key twice: stores would keep one of them,
    /// and a typed decode would see a different object than was sent.
    #[error("key {key:?} appears twice in one object")]
    DuplicateKey {
        /// The key.
        key: String,
    },
}

/// Why an event was refused: see [`Error::InvalidEvent`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidEventReason {
    /// The type name breaks the rule of [`NewEvent::event_type`](crate::NewEvent::event_type):
    /// empty, longer than [`MAX_EVENT_TYPE_LEN`](crate::MAX_EVENT_TYPE_LEN)
    /// bytes, a control or invisible character, or whitespace at an end.
    #[error("invalid type name: {problem}")]
    TypeName {
        /// What is wrong with it.
        problem: String,
    },
    /// The schema version is 0 or above
    /// [`MAX_SCHEMA_VERSION`](crate::MAX_SCHEMA_VERSION).
    #[error("schema version {version} is outside 1..=2147483647")]
    SchemaVersion {
        /// The rejected version.
        version: u32,
    },
    /// The data or custom metadata would not read back as written.
    #[error("{part}: {problem}")]
    Json {
        /// Where the problem is.
        part: JsonPart,
        /// What it is.
        problem: JsonProblem,
    },
    /// `occurred_at` is outside years 0001-9999, finer than a microsecond
    /// or a leap second.
    #[error(
        "occurred_at {occurred_at:?} is outside years 0001-9999, finer than a microsecond or a leap second"
    )]
    OccurredAt {
        /// The rejected time.
        occurred_at: DateTime<Utc>,
    },
    /// A typed event holds a NaN or infinite float, which JSON writes as
    /// `null` and so cannot read back.
    #[error("a float field is NaN or infinite (JSON has no such number)")]
    NonFiniteFloat,
    /// A typed event's serialized form does not decode back into its type
    /// (through [`Event::decode`](crate::Event::decode) at the current
    /// schema version): it could never be read.
    #[error("its serialized form does not decode back: {0}")]
    DoesNotDecode(#[source] DecodeError),
}

/// An optimistic-concurrency conflict: a stream was not at the version a
/// command read (or said it expected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("version conflict on stream '{stream_id}': expected {expected}, actual {actual}")]
pub struct VersionConflict {
    /// The stream whose expectation failed.
    pub stream_id: StreamId,
    /// What the append expected.
    pub expected: ExpectedVersion,
    /// The stream's version when the append was checked (`0` when the stream
    /// does not exist).
    pub actual: StreamVersion,
}

/// Errors from event stores, the executor and event decoding.
///
/// Store implementations map their native failures onto these variants, so
/// callers can react the same way whatever the backend:
/// [`Error::is_transient`] says what is worth retrying.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A stream id failed validation.
    #[error("invalid stream id: {0}")]
    InvalidStreamId(#[from] InvalidStreamId),

    /// An event id was not a UUID version 7.
    #[error("invalid event id {uuid}: event ids must be UUID version 7, got version {version}")]
    InvalidEventId {
        /// The rejected UUID.
        uuid: uuid::Uuid,
        /// Its version number.
        version: usize,
    },

    /// An append request was malformed (duplicate stream or event id inside
    /// one request, too many events, ...). Nothing was written.
    #[error("invalid append: {reason}")]
    InvalidAppend {
        /// What is wrong with the request.
        reason: String,
    },

    /// An event breaks a rule that every store enforces so that whatever an
    /// append accepts reads back identically: its type name, schema
    /// version, data, custom metadata or `occurred_at` (see
    /// [`InvalidEventReason`]). Refused before anything is sent; nothing
    /// was written.
    #[error(
        "invalid event {event_id} of type {event_type:?}{}: {reason}",
        stream_id.as_ref().map(|s| format!(" for stream '{s}'")).unwrap_or_default()
    )]
    InvalidEvent {
        /// The stream it was meant for (`None` when refused while it was
        /// built, before it had one).
        stream_id: Option<StreamId>,
        /// The event's id.
        event_id: EventId,
        /// Its recorded type name (possibly the offending part).
        event_type: String,
        /// What is wrong.
        reason: InvalidEventReason,
    },

    /// An append expected a stream version above
    /// [`StreamVersion::MAX`], which no store can hold. Nothing was written.
    #[error("stream '{stream_id}': expected {expected}, above the largest storable version")]
    ExpectedVersionOutOfRange {
        /// The stream.
        stream_id: StreamId,
        /// The expectation.
        expected: ExpectedVersion,
    },

    /// An event's serialized payload (data plus custom metadata) exceeds the store's limit.
    /// Nothing was written.
    #[error("event {event_id} on stream '{stream_id}' is {size} bytes; the limit is {limit}")]
    PayloadTooLarge {
        /// The stream the event was meant for.
        stream_id: StreamId,
        /// The oversized event.
        event_id: EventId,
        /// Its serialized size in bytes.
        size: usize,
        /// The store's limit in bytes.
        limit: usize,
    },

    /// An expectation failed. Nothing was written.
    #[error(transparent)]
    Conflict(#[from] VersionConflict),

    /// Some, but not all, event ids of an append are already stored, or they
    /// are stored on other streams: the request is not a re-send of an
    /// earlier append. Nothing was written.
    #[error(
        "event {event_id} is already stored, but the append is not a re-send of the one that stored it"
    )]
    DuplicateEventId {
        /// One of the clashing ids.
        event_id: EventId,
    },

    /// A command tried to append to a stream it did not declare.
    #[error("command appended to stream '{stream_id}', which it did not declare")]
    UndeclaredStream {
        /// The undeclared stream.
        stream_id: StreamId,
    },

    /// A stored event could not be turned into the requested type.
    #[error(
        "cannot decode event at position {position} (stream '{stream_id}' version {stream_version}, type '{event_type}' schema {schema_version}): {source}"
    )]
    Decode {
        /// Stream of the undecodable event.
        stream_id: StreamId,
        /// Its version within the stream.
        stream_version: StreamVersion,
        /// Its global position.
        position: GlobalPosition,
        /// The recorded type name.
        event_type: String,
        /// The recorded schema version.
        schema_version: u32,
        /// Why decoding failed.
        #[source]
        source: DecodeError,
    },

    /// A user event could not be serialized.
    #[error("cannot serialize event of type '{event_type}': {source}")]
    Encode {
        /// The type name of the event.
        event_type: String,
        /// Why serialization failed.
        #[source]
        source: serde_json::Error,
    },

    /// A stored row is malformed (for example metadata that is not an object).
    ///
    /// Reads deliver every event before the bad row first; the bad row is
    /// then the first one of the next read, which fails with this error and
    /// its position, so a reader can record it and read on after it.
    #[error("corrupt stored row for {what}: {reason}")]
    CorruptRow {
        /// Which row (stream and position, as known).
        what: String,
        /// Its global position, when the row has a readable one.
        position: Option<GlobalPosition>,
        /// What is wrong with it.
        reason: String,
    },

    /// The backend could not be reached or dropped the connection, or its pool
    /// had no free connection in time. Transient.
    #[error("store unavailable during {operation}: {source}")]
    Unavailable {
        /// What the store was doing.
        operation: &'static str,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The backend aborted the transaction to break a deadlock or a
    /// serialization conflict. Transient: retrying usually succeeds.
    #[error("transaction aborted by the backend during {operation} (retry): {source}")]
    Aborted {
        /// What the store was doing.
        operation: &'static str,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// An operation ran past its time limit.
    #[error("{operation} timed out after {elapsed:?}")]
    Timeout {
        /// What the store was doing.
        operation: &'static str,
        /// The configured limit.
        elapsed: std::time::Duration,
    },

    /// A projection failed on an event (or lost its runner lease).
    #[error("projection '{projection}' failed{}: {source}", position.map(|p| format!(" at position {p}")).unwrap_or_default())]
    Projection {
        /// The projection's name.
        projection: String,
        /// The event's position, if one was involved.
        position: Option<GlobalPosition>,
        /// The event's stream, if one was involved.
        stream_id: Option<StreamId>,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The store sent a write but lost the connection or ran out of time
    /// before it learned whether the write committed. Transient: re-sending
    /// the *same* append (same event ids) is safe, since a store recognises
    /// a re-send and returns the original outcome; deciding again with new
    /// events is not.
    #[error("outcome of {operation} unknown (it may have committed): {source}")]
    OutcomeUnknown {
        /// What the store was doing.
        operation: &'static str,
        /// The failure that hid the outcome.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// This process is no longer the active runner of a projection: its
    /// lease ended (connection lost, or another runner took over). Whatever
    /// the old runner tried to commit after that was refused.
    #[error("projection '{projection}' lost its runner lease; another runner may be active")]
    LeaseLost {
        /// The projection's name.
        projection: String,
    },

    /// Any other backend failure: a bug, a misconfiguration or a schema problem.
    #[error("store error during {operation}: {source}")]
    Backend {
        /// What the store was doing.
        operation: &'static str,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Whether retrying the same operation may succeed without any change:
    /// lost connections, pool exhaustion, deadlocks and serialization aborts.
    ///
    /// Conflicts are *not* transient: the command must re-read and decide again.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. }
                | Error::Aborted { .. }
                | Error::Timeout { .. }
                | Error::OutcomeUnknown { .. }
        )
    }

    /// Whether a write that failed with this error may nevertheless have
    /// committed ([`Error::OutcomeUnknown`]). Every other error of a write
    /// means nothing was written.
    pub fn may_have_committed(&self) -> bool {
        matches!(self, Error::OutcomeUnknown { .. })
    }

    /// The global position of the stored event the error is about, if any
    /// ([`Error::Decode`], [`Error::CorruptRow`], [`Error::Projection`]).
    pub fn position(&self) -> Option<GlobalPosition> {
        match self {
            Error::Decode { position, .. } => Some(*position),
            Error::CorruptRow { position, .. } | Error::Projection { position, .. } => *position,
            _ => None,
        }
    }

    /// The conflict, if this is an optimistic-concurrency failure.
    pub fn as_conflict(&self) -> Option<&VersionConflict> {
        match self {
            Error::Conflict(conflict) => Some(conflict),
            _ => None,
        }
    }
}

/// Errors from [`CommandExecutor::execute`](crate::CommandExecutor::execute).
///
/// Each variant says whether the command's events may have been written:
/// only [`CommandError::MaybeCommitted`] leaves that open; after any other
/// error nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E> {
    /// The command's decision refused the request (a business rule).
    /// Nothing was written.
    #[error("command rejected: {0}")]
    Rejected(#[source] E),
    /// Conflicts or transient faults outlasted the retry policy. Nothing was
    /// written; running the command again later may succeed.
    #[error("gave up after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// How many attempts were made.
        attempts: u32,
        /// The error of the last attempt.
        #[source]
        last: Error,
    },
    /// The append was sent, but the connection was lost or timed out before
    /// its outcome was known, and the retry policy ran out before a re-send
    /// settled it: the events may or may not be stored. Do **not** run the
    /// command again (it would decide anew and could write twice); re-send
    /// `request` with [`EventStore::append`](crate::EventStore::append)
    /// instead: it returns the original outcome (`replayed`) if the first
    /// send committed, a conflict if it did not and the streams moved on,
    /// or writes it now.
    #[error("gave up after {attempts} attempts; the append may have committed: {last}")]
    MaybeCommitted {
        /// How many attempts were made.
        attempts: u32,
        /// The error of the last attempt.
        #[source]
        last: Error,
        /// The append whose outcome is unknown (the same event ids).
        request: Box<crate::AppendRequest>,
    },
    /// An error retrying cannot fix (bad input, an undecodable event, a
    /// schema problem). Nothing was written.
    #[error(transparent)]
    Store(#[from] Error),
}

impl<E> CommandError<E> {
    /// The business error, if the command rejected the request.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            CommandError::Rejected(e) => Some(e),
            _ => None,
        }
    }

    /// Whether the command's events may have been written
    /// ([`CommandError::MaybeCommitted`]).
    pub fn may_have_committed(&self) -> bool {
        matches!(self, CommandError::MaybeCommitted { .. })
    }
}
