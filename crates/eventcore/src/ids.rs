//! Validated identifiers and positions.

use std::{borrow::Borrow, fmt, str::FromStr, sync::Arc};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, InvalidStreamId};
use crate::rules::{NameProblem, check_name};

/// The name of an event stream, such as `account-42`.
///
/// The rule, the same on every store (both share this constructor):
///
/// * non-empty and at most [`StreamId::MAX_LEN`] bytes of UTF-8;
/// * no whitespace at the start or end (so whitespace-only ids are
///   refused): ` acct-1 ` is not a second `acct-1`; inner spaces are fine;
/// * no control character (Unicode `Cc`: NUL, tab, newline, DEL, ...);
/// * no invisible format character (Unicode `Cf`: zero-width space and
///   joiners U+200B-U+200D, left-to-right/right-to-left marks U+200E/U+200F,
///   bidi embeddings, overrides and isolates U+202A-U+202E and
///   U+2066-U+2069, word joiner and invisible operators U+2060-U+2064, the
///   rest of U+2060-U+206F, byte order mark U+FEFF, soft hyphen U+00AD,
///   Arabic letter mark U+061C, Mongolian vowel separator U+180E, tags
///   U+E0000-U+E007F and the other `Cf` characters of Unicode 16) and no
///   line or paragraph separator (U+2028, U+2029).
///
/// Ids are compared byte for byte, without Unicode normalization: `é`
/// written as one code point and as `e` plus a combining accent are two
/// different streams. So they survive logs, URLs and database columns
/// unchanged, and two ids that print the same are the same id (up to
/// normalization and look-alike letters). Cloning is cheap (shared).
///
/// ```
/// use eventcore::{StreamId, InvalidStreamId};
///
/// let id = StreamId::new("account-42")?;
/// assert_eq!(id.as_str(), "account-42");
/// assert_eq!(StreamId::new(""), Err(InvalidStreamId::Empty));
/// assert!(matches!(StreamId::new("a\nb"), Err(InvalidStreamId::ControlCharacter { .. })));
/// assert_eq!(StreamId::new(" account-42"), Err(InvalidStreamId::SurroundingWhitespace));
/// assert!(matches!(StreamId::new("account\u{200B}-42"), Err(InvalidStreamId::InvisibleCharacter { .. })));
/// assert!(StreamId::new("compte de Zoë").is_ok());
/// # Ok::<(), InvalidStreamId>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(Arc<str>);

impl StreamId {
    /// Longest accepted id, in bytes (the width of the PostgreSQL column).
    pub const MAX_LEN: usize = 255;

    /// Validates and wraps `id` (see [`StreamId`] for the rule).
    pub fn new(id: impl AsRef<str>) -> Result<Self, InvalidStreamId> {
        let id = id.as_ref();
        check_name(id, Self::MAX_LEN).map_err(|problem| match problem {
            NameProblem::Empty => InvalidStreamId::Empty,
            NameProblem::TooLong { len, max } => InvalidStreamId::TooLong { len, max },
            NameProblem::Control { ch, index } => InvalidStreamId::ControlCharacter { ch, index },
            NameProblem::Invisible { ch, index } => {
                InvalidStreamId::InvisibleCharacter { ch, index }
            }
            NameProblem::SurroundingWhitespace => InvalidStreamId::SurroundingWhitespace,
        })?;
        Ok(Self(Arc::from(id)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({:?})", &*self.0)
    }
}

impl AsRef<str> for StreamId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for StreamId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FromStr for StreamId {
    type Err = InvalidStreamId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for StreamId {
    type Error = InvalidStreamId;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<String> for StreamId {
    type Error = InvalidStreamId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl Serialize for StreamId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StreamId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

/// A globally unique event id: a UUID version 7, so ids sort by creation
/// time and index well.
///
/// Appends are idempotent by event id: re-sending an append whose ids are
/// already stored returns the original result instead of writing twice.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "Uuid", into = "Uuid")]
pub struct EventId(Uuid);

impl EventId {
    /// A fresh id from the current time.
    #[allow(clippy::new_without_default)] // a fresh random id is not a "default"
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps `uuid`, which must be version 7.
    pub fn from_uuid(uuid: Uuid) -> Result<Self, Error> {
        if uuid.get_version_num() == 7 {
            Ok(Self(uuid))
        } else {
            Err(Error::InvalidEventId {
                uuid,
                version: uuid.get_version_num(),
            })
        }
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl TryFrom<Uuid> for EventId {
    type Error = Error;
    fn try_from(uuid: Uuid) -> Result<Self, Error> {
        Self::from_uuid(uuid)
    }
}

impl From<EventId> for Uuid {
    fn from(id: EventId) -> Uuid {
        id.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EventId({})", self.0)
    }
}

/// The version of a stream: how many events it holds. A stream that does
/// not exist has version 0; its first event has version 1.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct StreamVersion(u64);

impl StreamVersion {
    /// The version of a stream with no events.
    pub const NONE: StreamVersion = StreamVersion(0);

    /// The largest version a store can hold (`i64::MAX`: PostgreSQL keeps
    /// versions in a `bigint`). An append expecting
    /// [`ExpectedVersion::Exact`] above it is refused with
    /// [`Error::ExpectedVersionOutOfRange`](crate::Error::ExpectedVersionOutOfRange).
    pub const MAX: StreamVersion = StreamVersion(i64::MAX as u64);

    /// Wraps a raw version number.
    pub const fn new(v: u64) -> Self {
        Self(v)
    }

    /// The raw version number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The version after `n` more events.
    pub const fn advance(self, n: u64) -> Self {
        Self(self.0 + n)
    }

    /// The version following this one.
    pub const fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for StreamVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The position of an event in the store's global order (`$all`).
///
/// Positions strictly increase in the order readers see events, and a reader
/// that has seen position `P` never later finds a committed event below
/// `P`. They are not dense: a store may leave holes in the numbering
/// (the PostgreSQL store derives them from transaction ids), so use them as
/// cursors, never as counts.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct GlobalPosition(u64);

impl GlobalPosition {
    /// Before the first event: reading all events "after" it reads everything.
    pub const START: GlobalPosition = GlobalPosition(0);

    /// Wraps a raw position.
    pub const fn new(p: u64) -> Self {
        Self(p)
    }

    /// The raw position.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for GlobalPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What an append expects of a stream's version before it writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist (version 0).
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream must be at exactly this version (`Exact(0)` means "no
    /// stream"), at most [`StreamVersion::MAX`].
    Exact(StreamVersion),
}

impl ExpectedVersion {
    /// The expectation that a stream is still at `version`, as read.
    pub fn from_read(version: StreamVersion) -> Self {
        if version == StreamVersion::NONE {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(version)
        }
    }

    /// Whether a stream at `actual` meets the expectation.
    pub fn is_met_by(self, actual: StreamVersion) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == StreamVersion::NONE,
            ExpectedVersion::StreamExists => actual > StreamVersion::NONE,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("an existing stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_id_limits() {
        assert!(StreamId::new("x".repeat(255)).is_ok());
        assert_eq!(
            StreamId::new("x".repeat(256)),
            Err(InvalidStreamId::TooLong { len: 256, max: 255 })
        );
        // Multi-byte characters count in bytes, like the database column.
        assert!(StreamId::new("é".repeat(128)).is_err());
        assert_eq!(
            StreamId::new("ab\u{0}"),
            Err(InvalidStreamId::ControlCharacter { ch: '\0', index: 2 })
        );
        assert!(serde_json::from_str::<StreamId>("\"\"").is_err());
    }

    #[test]
    fn stream_ids_that_look_alike_are_refused() {
        for ws in [
            " ",
            "   ",
            "\u{a0}",
            "\u{3000}",
            " acct-1",
            "acct-1 ",
            "\u{2003}acct-1",
        ] {
            assert_eq!(
                StreamId::new(ws),
                Err(InvalidStreamId::SurroundingWhitespace),
                "{ws:?}"
            );
        }
        assert_eq!(
            StreamId::new("\t"),
            Err(InvalidStreamId::ControlCharacter { ch: '\t', index: 0 })
        );
        for (id, ch) in [
            ("acct\u{200b}-1", '\u{200b}'),
            ("acct\u{200d}-1", '\u{200d}'),
            ("acct\u{202e}-1", '\u{202e}'),
            ("acct\u{2066}-1", '\u{2066}'),
            ("acct\u{200f}-1", '\u{200f}'),
            ("acct\u{feff}-1", '\u{feff}'),
            ("acct\u{ad}-1", '\u{ad}'),
            ("acct\u{e0041}-1", '\u{e0041}'),
            ("acct\u{2028}-1", '\u{2028}'),
        ] {
            assert_eq!(
                StreamId::new(id),
                Err(InvalidStreamId::InvisibleCharacter { ch, index: 4 }),
                "{id:?}"
            );
        }
        assert!(serde_json::from_str::<StreamId>("\" acct-1\"").is_err());
        // Inner spaces and any script are fine; no normalization.
        let composed = StreamId::new("caf\u{e9}").unwrap();
        let decomposed = StreamId::new("cafe\u{301}").unwrap();
        assert_ne!(composed, decomposed);
        assert!(StreamId::new("my account 1").is_ok());
        assert!(StreamId::new("口座-1").is_ok());
    }

    #[test]
    fn event_ids_must_be_v7() {
        assert!(EventId::from_uuid(Uuid::nil()).is_err());
        let id = EventId::new();
        assert_eq!(EventId::from_uuid(id.as_uuid()).unwrap(), id);
        assert!(serde_json::from_str::<EventId>(&format!("\"{}\"", Uuid::nil())).is_err());
    }

    #[test]
    fn expectations() {
        let v0 = StreamVersion::NONE;
        let v3 = StreamVersion::new(3);
        assert!(ExpectedVersion::Any.is_met_by(v0) && ExpectedVersion::Any.is_met_by(v3));
        assert!(
            ExpectedVersion::NoStream.is_met_by(v0) && !ExpectedVersion::NoStream.is_met_by(v3)
        );
        assert!(!ExpectedVersion::StreamExists.is_met_by(v0));
        assert!(ExpectedVersion::StreamExists.is_met_by(v3));
        assert!(ExpectedVersion::Exact(v3).is_met_by(v3));
        assert!(!ExpectedVersion::Exact(v3).is_met_by(v3.next()));
        assert_eq!(ExpectedVersion::from_read(v0), ExpectedVersion::NoStream);
    }
}
