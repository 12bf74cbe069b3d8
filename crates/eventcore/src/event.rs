//! Typed events and their stored form.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::{Error, EventId, GlobalPosition, StreamId, StreamVersion};

/// A domain event: the user's own serde type.
///
/// The store records [`Event::event_type`] and [`Event::SCHEMA_VERSION`] with
/// each event and decodes it back with [`Event::decode`], so an enum can
/// evolve: bump the schema version and teach `decode` the old shape.
///
/// ```
/// use eventcore::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// enum AccountEvent {
///     Opened { owner: String },
///     Deposited { amount: u64 },
/// }
///
/// impl Event for AccountEvent {
///     fn event_type(&self) -> &'static str {
///         match self {
///             AccountEvent::Opened { .. } => "AccountOpened",
///             AccountEvent::Deposited { .. } => "AccountDeposited",
///         }
///     }
/// }
/// ```
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The version of the serialized shape, recorded with every event.
    const SCHEMA_VERSION: u32 = 1;

    /// The stable name recorded with the event (used for filtering and
    /// decoding; keep it stable when renaming Rust types).
    fn event_type(&self) -> &'static str;

    /// Rebuilds an event from its stored form. The default deserializes
    /// `data` with serde; override it to upcast older schema versions.
    fn decode(
        event_type: &str,
        schema_version: u32,
        data: &EventData,
    ) -> Result<Self, serde_json::Error> {
        let _ = (event_type, schema_version);
        data.deserialize()
    }
}

/// A serialized event payload: JSON text, kept as text so that stores pass it
/// through without building a JSON tree, and typed decoding parses it once.
#[derive(Clone, Debug)]
pub struct EventData(Box<RawValue>);

impl EventData {
    /// Serializes `value`.
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value).map(Self)
    }

    /// Wraps JSON text, checking that it is valid JSON.
    pub fn from_json(text: impl Into<String>) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text.into()).map(Self)
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Deserializes into `T`.
    pub fn deserialize<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }

    /// Parses into a JSON tree, for inspection.
    pub fn to_value(&self) -> serde_json::Value {
        // Valid JSON by construction, so this cannot fail.
        self.deserialize().unwrap_or(serde_json::Value::Null)
    }

    /// The underlying raw value.
    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }
}

impl From<Box<RawValue>> for EventData {
    fn from(raw: Box<RawValue>) -> Self {
        Self(raw)
    }
}

impl From<serde_json::Value> for EventData {
    fn from(value: serde_json::Value) -> Self {
        // A JSON tree always serializes.
        Self::from_serialize(&value).expect("a JSON value serializes")
    }
}

impl PartialEq for EventData {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl std::fmt::Display for EventData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.get())
    }
}

impl Serialize for EventData {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Context recorded with every event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// Groups every event caused by one originating request.
    pub correlation_id: Uuid,
    /// The event or message that directly caused this one, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// When the event was created by the writer (the store also records its
    /// own commit-side timestamp in [`StoredEvent::recorded_at`]).
    pub occurred_at: DateTime<Utc>,
    /// Free-form user metadata (user id, tenant, request path, ...).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub custom: serde_json::Map<String, serde_json::Value>,
}

impl Default for EventMetadata {
    fn default() -> Self {
        Self::new()
    }
}

impl EventMetadata {
    /// Metadata with a fresh correlation id and the current time.
    pub fn new() -> Self {
        Self {
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            occurred_at: Utc::now(),
            custom: serde_json::Map::new(),
        }
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = id;
        self
    }

    /// Sets the causation id.
    pub fn with_causation_id(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }

    /// Adds one custom entry.
    pub fn with_custom(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.custom.insert(key.into(), value.into());
        self
    }
}

/// An event ready to append: already serialized, with its id.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// Its id; re-sending the same id makes the append idempotent.
    pub event_id: EventId,
    /// The recorded type name.
    pub event_type: String,
    /// The recorded schema version.
    pub schema_version: u32,
    /// The serialized event.
    pub data: EventData,
    /// Its metadata.
    pub metadata: EventMetadata,
}

impl NewEvent {
    /// Serializes a typed event with a fresh id.
    pub fn new<E: Event>(event: &E, metadata: EventMetadata) -> Result<Self, Error> {
        Self::with_id(EventId::new(), event, metadata)
    }

    /// Serializes a typed event with the given id.
    pub fn with_id<E: Event>(
        event_id: EventId,
        event: &E,
        metadata: EventMetadata,
    ) -> Result<Self, Error> {
        let event_type = event.event_type();
        let data = EventData::from_serialize(event).map_err(|source| Error::Encode {
            event_type: event_type.to_owned(),
            source,
        })?;
        Ok(Self {
            event_id,
            event_type: event_type.to_owned(),
            schema_version: E::SCHEMA_VERSION,
            data,
            metadata,
        })
    }

    /// A raw event from already-serialized parts (tools, migrations, tests).
    pub fn raw(event_type: impl Into<String>, data: serde_json::Value) -> Self {
        Self {
            event_id: EventId::new(),
            event_type: event_type.into(),
            schema_version: 1,
            data: data.into(),
            metadata: EventMetadata::new(),
        }
    }
}

/// An event as stored: untyped payload plus everything the store knows.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    /// The event's id.
    pub event_id: EventId,
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// Its version within the stream (1 for the first event).
    pub stream_version: StreamVersion,
    /// Its position in the global order.
    pub position: GlobalPosition,
    /// The recorded type name.
    pub event_type: String,
    /// The recorded schema version.
    pub schema_version: u32,
    /// The serialized event.
    pub data: EventData,
    /// Its metadata.
    pub metadata: EventMetadata,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
}

impl StoredEvent {
    /// Decodes the payload into `E`. A failure is an [`Error::Decode`] naming
    /// the stream, version, position and type, never a silent skip.
    pub fn decode<E: Event>(&self) -> Result<RecordedEvent<E>, Error> {
        let event =
            E::decode(&self.event_type, self.schema_version, &self.data).map_err(|source| {
                Error::Decode {
                    stream_id: self.stream_id.clone(),
                    stream_version: self.stream_version,
                    position: self.position,
                    event_type: self.event_type.clone(),
                    schema_version: self.schema_version,
                    source,
                }
            })?;
        Ok(RecordedEvent {
            event,
            event_id: self.event_id,
            stream_id: self.stream_id.clone(),
            stream_version: self.stream_version,
            position: self.position,
            metadata: self.metadata.clone(),
            recorded_at: self.recorded_at,
        })
    }
}

/// A decoded event with its stored context.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedEvent<E> {
    /// The user's event.
    pub event: E,
    /// Its id.
    pub event_id: EventId,
    /// Its stream.
    pub stream_id: StreamId,
    /// Its version within the stream.
    pub stream_version: StreamVersion,
    /// Its global position.
    pub position: GlobalPosition,
    /// Its metadata.
    pub metadata: EventMetadata,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
}
