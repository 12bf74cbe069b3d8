//! Typed events and their stored form.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::{Error, EventId, GlobalPosition, StreamId, StreamVersion};

/// A domain event: the user's own serde type.
///
/// The store records [`Event::event_type`] and [`Event::SCHEMA_VERSION`] with
/// each event and decodes it back with [`Event::decode`], which checks both:
/// a row recorded under another type name, or under a schema version the
/// type does not know, is a [`DecodeError`], never a silently wrong event.
/// To evolve a type, bump its schema version and register upcasters
/// ([`Upcasters`](crate::Upcasters)).
///
/// Derive it (`#[derive(Event)]`, the default `derive` feature): each
/// variant is recorded under the name serde tags it with, so the name
/// recorded is the one decoding checks. By hand:
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
    /// The version of the serialized shape, recorded with every event. Must
    /// be in `1..=`[`MAX_SCHEMA_VERSION`](crate::MAX_SCHEMA_VERSION).
    const SCHEMA_VERSION: u32 = 1;

    /// The stable name recorded with the event, checked when it is decoded
    /// (keep it stable when renaming Rust types). It must follow the rules
    /// of [`NewEvent::event_type`].
    fn event_type(&self) -> &'static str;

    /// Rebuilds an event from its stored form.
    ///
    /// The default accepts only [`Self::SCHEMA_VERSION`]
    /// ([`DecodeError::UnknownSchemaVersion`] otherwise), deserializes
    /// `data` with serde and checks that the result's
    /// [`event_type`](Event::event_type) is the recorded one
    /// ([`DecodeError::TypeMismatch`] otherwise); that is
    /// [`decode_current`]. Override it to upcast older schema versions:
    ///
    /// ```
    /// use eventcore::{DecodeError, Event, EventData, decode_current};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Debug, PartialEq, Serialize, Deserialize)]
    /// struct Deposited { cents: u64 }
    ///
    /// impl Event for Deposited {
    ///     // Version 1 stored whole euros as `amount`.
    ///     const SCHEMA_VERSION: u32 = 2;
    ///     fn event_type(&self) -> &'static str { "Deposited" }
    ///
    ///     fn decode(event_type: &str, schema_version: u32, data: &EventData) -> Result<Self, DecodeError> {
    ///         match schema_version {
    ///             1 => {
    ///                 #[derive(Deserialize)]
    ///                 struct V1 { amount: u64 }
    ///                 let old: V1 = data.deserialize()?;
    ///                 let event = Deposited { cents: old.amount * 100 };
    ///                 DecodeError::check_type(event, event_type)
    ///             }
    ///             Self::SCHEMA_VERSION => decode_current(event_type, data),
    ///             recorded => Err(DecodeError::UnknownSchemaVersion { recorded, known: Self::SCHEMA_VERSION }),
    ///         }
    ///     }
    /// }
    ///
    /// let old = EventData::from_json(r#"{"amount": 3}"#)?;
    /// assert_eq!(Deposited::decode("Deposited", 1, &old)?, Deposited { cents: 300 });
    /// assert!(Deposited::decode("Deposited", 3, &old).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn decode(
        event_type: &str,
        schema_version: u32,
        data: &EventData,
    ) -> Result<Self, DecodeError> {
        if schema_version != Self::SCHEMA_VERSION {
            return Err(DecodeError::UnknownSchemaVersion {
                recorded: schema_version,
                known: Self::SCHEMA_VERSION,
            });
        }
        decode_current(event_type, data)
    }
}

/// Deserializes `data` as the current shape of `E` and checks that the
/// decoded event's type name is `event_type`, the recorded one: what the
/// default [`Event::decode`] does for [`Event::SCHEMA_VERSION`], for
/// overrides to call.
pub fn decode_current<E: Event>(event_type: &str, data: &EventData) -> Result<E, DecodeError> {
    DecodeError::check_type(data.deserialize()?, event_type)
}

/// Why a stored event does not decode into the requested type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload does not deserialize into the type.
    #[error("payload does not deserialize: {0}")]
    Payload(#[from] serde_json::Error),
    /// The payload deserialized into an event of another type name than the
    /// recorded one (a `Withdrawn` row holding a `Deposited` payload).
    #[error("recorded as type '{recorded}', but the payload decodes as type '{decoded}'")]
    TypeMismatch {
        /// The type name recorded with the event.
        recorded: String,
        /// The type name of the decoded value.
        decoded: &'static str,
    },
    /// The recorded schema version is not one the type knows how to read.
    #[error("unknown schema version {recorded} (this type reads version {known})")]
    UnknownSchemaVersion {
        /// The schema version recorded with the event.
        recorded: u32,
        /// The type's [`Event::SCHEMA_VERSION`].
        known: u32,
    },
    /// An upcaster of the chain ([`Upcasters`](crate::Upcasters)) failed.
    #[error("upcast failed: {0}")]
    Upcast(#[from] crate::UpcastError),
    /// Any other reason, from a custom [`Event::decode`] (an upcast that
    /// failed, say).
    #[error("{0}")]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl DecodeError {
    /// `event` if its type name is `recorded`, else
    /// [`DecodeError::TypeMismatch`].
    pub fn check_type<E: Event>(event: E, recorded: &str) -> Result<E, DecodeError> {
        let decoded = event.event_type();
        if decoded == recorded {
            Ok(event)
        } else {
            Err(DecodeError::TypeMismatch {
                recorded: recorded.to_owned(),
                decoded,
            })
        }
    }
}

/// A serialized event payload: JSON text, kept as text so that stores pass it
/// through without building a JSON tree, and typed decoding parses it once.
/// Clones share the text.
#[derive(Clone, Debug)]
pub struct EventData(Arc<str>);

impl EventData {
    /// Serializes `value`.
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::to_string(value).map(|text| Self(text.into()))
    }

    /// Wraps JSON text, checking that it is valid JSON. Surrounding
    /// whitespace is dropped. (Appends check more: see
    /// [`NewEvent::data`].)
    pub fn from_json(text: impl AsRef<str>) -> Result<Self, serde_json::Error> {
        let raw: &RawValue = serde_json::from_str(text.as_ref())?;
        Ok(Self(raw.get().into()))
    }

    /// Wraps text the caller knows to be JSON without checking it: a store
    /// reading back a `jsonb` column, whose server validated it on the way
    /// in, skips a second full parse of every payload it reads.
    ///
    /// Text that is not JSON is not undefined behaviour: decoding or
    /// serializing it fails with an error instead, and appending it is
    /// refused ([`JsonProblem::Syntax`](crate::JsonProblem::Syntax)).
    pub fn from_json_unchecked(text: impl Into<Arc<str>>) -> Self {
        Self(text.into())
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        &self.0
    }

    /// Deserializes into `T`.
    pub fn deserialize<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// Parses into a JSON tree, for inspection.
    pub fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        self.deserialize()
    }
}

impl From<Box<RawValue>> for EventData {
    fn from(raw: Box<RawValue>) -> Self {
        Self(raw.get().into())
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
    /// Embeds the payload as JSON (not as a string holding JSON).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue = serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
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
    /// own commit-side timestamp in [`StoredEvent::recorded_at`]). Stores
    /// keep whole microseconds: [`EventMetadata::new`] takes the current
    /// time truncated to them, and an append refuses a finer time.
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
    /// Metadata with a fresh correlation id and the current time, in whole
    /// microseconds.
    pub fn new() -> Self {
        Self {
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            occurred_at: Utc::now().trunc_subsecs(6),
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
///
/// Every store checks each event before it writes anything, so that what an
/// append accepts reads back identically, and refuses one that breaks a
/// rule with [`Error::InvalidEvent`] naming it (see the fields for the
/// rules). [`NewEvent::new`] also checks a typed event when it builds it.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// Its id; re-sending the same id makes the append idempotent.
    pub event_id: EventId,
    /// The recorded type name: non-empty, at most
    /// [`MAX_EVENT_TYPE_LEN`](crate::MAX_EVENT_TYPE_LEN) bytes, no control
    /// character, no invisible format character and no whitespace at
    /// either end (the rule of [`StreamId`]).
    pub event_type: String,
    /// The recorded schema version, in
    /// `1..=`[`MAX_SCHEMA_VERSION`](crate::MAX_SCHEMA_VERSION).
    pub schema_version: u32,
    /// The serialized event: one JSON value, nested at most
    /// [`MAX_JSON_DEPTH`](crate::MAX_JSON_DEPTH) deep, without `\u0000` or
    /// unpaired surrogate escapes in strings and keys, without a key twice
    /// in one object, with numbers that read as finite `f64`s and whose
    /// exponent and digits after the point stay within
    /// [`MAX_NUMBER_SCALE`](crate::MAX_NUMBER_SCALE).
    ///
    /// It reads back as the same JSON value: same structure, strings and
    /// keys; numbers equal as numbers, not necessarily spelled the same or
    /// of the same serde_json kind (PostgreSQL reorders keys and prints
    /// `1e2` as `100` and `-0.0` as `0.0`, so an integral float may come back
    /// as a serde_json integer: compare numbers with `as_f64`). Typed events
    /// decode to the same value, `f64`s bit for bit except that the sign of
    /// a zero may be lost.
    pub data: EventData,
    /// Its metadata: `occurred_at` in years 0001-9999, in whole
    /// microseconds and not a leap second; custom entries nested at most
    /// [`MAX_JSON_DEPTH`](crate::MAX_JSON_DEPTH) deep (the custom map is
    /// level 1), without NUL in strings or keys. Reads back equal, with
    /// custom numbers under the rule of [`NewEvent::data`].
    pub metadata: EventMetadata,
}

impl NewEvent {
    /// Serializes a typed event with a fresh id.
    ///
    /// Fails with [`Error::Encode`] if serde cannot serialize it, and with
    /// [`Error::InvalidEvent`] if it could not be read back: an invalid type
    /// name or schema version, a NaN or infinite float
    /// ([`InvalidEventReason::NonFiniteFloat`](crate::InvalidEventReason::NonFiniteFloat)),
    /// or a serialized form that [`Event::decode`] does not read back
    /// ([`InvalidEventReason::DoesNotDecode`](crate::InvalidEventReason::DoesNotDecode)).
    pub fn new<E: Event>(event: &E, metadata: EventMetadata) -> Result<Self, Error> {
        Self::with_id(EventId::new(), event, metadata)
    }

    /// Serializes a typed event with the given id; checked as by
    /// [`NewEvent::new`].
    pub fn with_id<E: Event>(
        event_id: EventId,
        event: &E,
        metadata: EventMetadata,
    ) -> Result<Self, Error> {
        let event_type = event.event_type();
        let invalid = |reason| Error::InvalidEvent {
            stream_id: None,
            event_id,
            event_type: event_type.to_owned(),
            reason,
        };
        crate::rules::check_type_and_version(event_type, E::SCHEMA_VERSION).map_err(invalid)?;
        let data = EventData::from_serialize(event).map_err(|source| Error::Encode {
            event_type: event_type.to_owned(),
            source,
        })?;
        // serde_json writes NaN and infinities as `null`; only then can the
        // text hold a `null` that the event did not.
        if data.get().contains("null") && finite::has_non_finite(event) {
            return Err(invalid(crate::InvalidEventReason::NonFiniteFloat));
        }
        E::decode(event_type, E::SCHEMA_VERSION, &data)
            .map_err(|e| invalid(crate::InvalidEventReason::DoesNotDecode(e)))?;
        Ok(Self {
            event_id,
            event_type: event_type.to_owned(),
            schema_version: E::SCHEMA_VERSION,
            data,
            metadata,
        })
    }

    /// A raw event from already-serialized parts (tools, migrations, tests).
    /// Checked when appended.
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

/// Finds NaN and infinite floats in a serializable value, by walking it
/// with a serializer that writes nothing.
mod finite {
    use serde::ser::{self, Serialize};

    /// Whether serializing `value` meets a NaN or infinite `f32`/`f64`.
    pub(super) fn has_non_finite<T: Serialize + ?Sized>(value: &T) -> bool {
        matches!(value.serialize(Walk), Err(Found::NonFinite))
    }

    #[derive(Debug)]
    pub(super) enum Found {
        NonFinite,
        /// The value's own serialization failed (it already serialized once
        /// with serde_json, so this is a value that fails on purpose).
        Other,
    }

    impl std::fmt::Display for Found {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("non-finite float")
        }
    }

    impl std::error::Error for Found {}

    impl ser::Error for Found {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Found::Other
        }
    }

    pub(super) struct Walk;

    type R = Result<(), Found>;

    fn float(finite: bool) -> R {
        if finite {
            Ok(())
        } else {
            Err(Found::NonFinite)
        }
    }

    /// Scalars other than floats cannot be non-finite.
    macro_rules! scalars {
        ($($name:ident: $ty:ty),* $(,)?) => {$(
            fn $name(self, _: $ty) -> R {
                Ok(())
            }
        )*};
    }

    /// Every compound walks its parts; `$method` takes the part (after a
    /// field name, for structs).
    macro_rules! compound {
        ($($trait:ident :: $method:ident ($($name:ty)?)),* $(,)?) => {$(
            impl ser::$trait for Walk {
                type Ok = ();
                type Error = Found;
                fn $method<T: Serialize + ?Sized>(&mut self, $(_: $name,)? value: &T) -> R {
                    value.serialize(Walk)
                }
                fn end(self) -> R {
                    Ok(())
                }
            }
        )*};
    }

    compound!(
        SerializeSeq::serialize_element(),
        SerializeTuple::serialize_element(),
        SerializeTupleStruct::serialize_field(),
        SerializeTupleVariant::serialize_field(),
        SerializeStruct::serialize_field(&'static str),
        SerializeStructVariant::serialize_field(&'static str),
    );

    impl ser::SerializeMap for Walk {
        type Ok = ();
        type Error = Found;
        fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> R {
            key.serialize(Walk)
        }
        fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> R {
            value.serialize(Walk)
        }
        fn end(self) -> R {
            Ok(())
        }
    }

    impl ser::Serializer for Walk {
        type Ok = ();
        type Error = Found;
        type SerializeSeq = Walk;
        type SerializeTuple = Walk;
        type SerializeTupleStruct = Walk;
        type SerializeTupleVariant = Walk;
        type SerializeMap = Walk;
        type SerializeStruct = Walk;
        type SerializeStructVariant = Walk;

        scalars!(
            serialize_bool: bool,
            serialize_i8: i8,
            serialize_i16: i16,
            serialize_i32: i32,
            serialize_i64: i64,
            serialize_i128: i128,
            serialize_u8: u8,
            serialize_u16: u16,
            serialize_u32: u32,
            serialize_u64: u64,
            serialize_u128: u128,
            serialize_char: char,
            serialize_str: &str,
            serialize_bytes: &[u8],
            serialize_unit_struct: &'static str,
        );

        fn serialize_f32(self, v: f32) -> R {
            float(v.is_finite())
        }
        fn serialize_f64(self, v: f64) -> R {
            float(v.is_finite())
        }
        fn serialize_none(self) -> R {
            Ok(())
        }
        fn serialize_unit(self) -> R {
            Ok(())
        }
        fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> R {
            value.serialize(Walk)
        }
        fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> R {
            Ok(())
        }
        fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> R {
            value.serialize(Walk)
        }
        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            value: &T,
        ) -> R {
            value.serialize(Walk)
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Walk, Found> {
            Ok(Walk)
        }
        fn serialize_tuple(self, _: usize) -> Result<Walk, Found> {
            Ok(Walk)
        }
        fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Walk, Found> {
            Ok(Walk)
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Walk, Found> {
            Ok(Walk)
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Walk, Found> {
            Ok(Walk)
        }
        fn serialize_struct(self, _: &'static str, _: usize) -> Result<Walk, Found> {
            Ok(Walk)
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Walk, Found> {
            Ok(Walk)
        }
        fn collect_str<T: std::fmt::Display + ?Sized>(self, _: &T) -> R {
            Ok(())
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
    /// Decodes the payload into `E` with [`Event::decode`], which checks the
    /// recorded type name and schema version. A failure is an
    /// [`Error::Decode`] naming the stream, version, position and type,
    /// never a silent skip.
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

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration, TimeZone, Utc};

    use super::{EventData, EventMetadata};

    #[test]
    fn checked_payloads_are_json_and_lose_surrounding_whitespace() {
        let data = EventData::from_json(" {\"n\": 1} \n").unwrap();
        assert_eq!(data.get(), "{\"n\": 1}");
        assert_eq!(data.to_value().unwrap()["n"], 1);
        assert!(EventData::from_json("{\"n\": ").is_err());
    }

    #[test]
    fn a_payload_serializes_as_embedded_json() {
        let data = EventData::from_json("[1,{\"a\":true}]").unwrap();
        let outer = serde_json::json!({ "data": data });
        assert_eq!(outer["data"][1]["a"], true);
    }

    #[test]
    fn unchecked_text_that_is_not_json_fails_when_used() {
        let data = EventData::from_json_unchecked("{not json");
        assert_eq!(data.get(), "{not json");
        assert!(data.to_value().is_err());
        assert!(data.deserialize::<serde_json::Value>().is_err());
        assert!(serde_json::to_string(&data).is_err());
    }

    mod typed {
        use serde::{Deserialize, Serialize};
        use serde_json::json;

        use crate::{
            DecodeError, Error, Event, EventData, EventId, EventMetadata, InvalidEventReason,
            NewEvent,
        };

        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        pub(super) enum Account {
            Deposited { amount: u64 },
            Withdrawn { amount: u64 },
        }

        impl Event for Account {
            fn event_type(&self) -> &'static str {
                match self {
                    Account::Deposited { .. } => "Deposited",
                    Account::Withdrawn { .. } => "Withdrawn",
                }
            }
        }

        #[test]
        fn default_decode_checks_the_recorded_type_and_schema_version() {
            let deposited = EventData::from(json!({ "Deposited": { "amount": 5 } }));
            assert_eq!(
                Account::decode("Deposited", 1, &deposited).unwrap(),
                Account::Deposited { amount: 5 }
            );
            match Account::decode("Withdrawn", 1, &deposited) {
                Err(DecodeError::TypeMismatch { recorded, decoded }) => {
                    assert_eq!((recorded.as_str(), decoded), ("Withdrawn", "Deposited"));
                }
                other => panic!("expected a type mismatch, got {other:?}"),
            }
            for version in [0, 2, 99, u32::MAX] {
                assert!(matches!(
                    Account::decode("Deposited", version, &deposited),
                    Err(DecodeError::UnknownSchemaVersion { recorded, known: 1 }) if recorded == version
                ));
            }
            let garbage = EventData::from(json!({ "Deposited": { "amount": "lots" } }));
            assert!(matches!(
                Account::decode("Deposited", 1, &garbage),
                Err(DecodeError::Payload(_))
            ));
        }

        /// Two variants with the same serialized shape: the second decodes
        /// as the first, so it could never be read back as itself.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(untagged)]
        enum Ambiguous {
            First { n: u64 },
            Second { n: u64 },
        }

        impl Event for Ambiguous {
            fn event_type(&self) -> &'static str {
                match self {
                    Ambiguous::First { .. } => "First",
                    Ambiguous::Second { .. } => "Second",
                }
            }
        }

        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        struct Reading {
            value: f64,
            previous: Option<f64>,
        }

        impl Event for Reading {
            fn event_type(&self) -> &'static str {
                "Reading"
            }
        }

        #[derive(Debug, Serialize, Deserialize)]
        struct Unnamed;
        impl Event for Unnamed {
            fn event_type(&self) -> &'static str {
                "Un\nnamed"
            }
        }

        #[derive(Debug, Serialize, Deserialize)]
        struct Versionless;
        impl Event for Versionless {
            const SCHEMA_VERSION: u32 = 0;
            fn event_type(&self) -> &'static str {
                "Versionless"
            }
        }

        fn reason<E: Event>(event: &E) -> InvalidEventReason {
            match NewEvent::with_id(EventId::new(), event, EventMetadata::new()) {
                Err(Error::InvalidEvent {
                    reason,
                    stream_id: None,
                    event_type,
                    ..
                }) => {
                    assert_eq!(event_type, event.event_type());
                    reason
                }
                other => panic!("expected InvalidEvent, got {other:?}"),
            }
        }

        #[test]
        fn typed_events_that_would_not_read_back_are_refused_when_built() {
            assert!(NewEvent::new(&Ambiguous::First { n: 1 }, EventMetadata::new()).is_ok());
            assert!(matches!(
                reason(&Ambiguous::Second { n: 1 }),
                InvalidEventReason::DoesNotDecode(DecodeError::TypeMismatch { .. })
            ));
            for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                let plain = Reading {
                    value: bad,
                    previous: None,
                };
                assert!(matches!(reason(&plain), InvalidEventReason::NonFiniteFloat));
                // `None` and NaN both write `null`: NaN would read back as None.
                let optional = Reading {
                    value: 1.0,
                    previous: Some(bad),
                };
                assert!(matches!(
                    reason(&optional),
                    InvalidEventReason::NonFiniteFloat
                ));
            }
            let fine = Reading {
                value: 1e300,
                previous: None,
            };
            let event = NewEvent::new(&fine, EventMetadata::new()).unwrap();
            assert_eq!(event.data.deserialize::<Reading>().unwrap(), fine);
            assert!(matches!(
                reason(&Unnamed),
                InvalidEventReason::TypeName { .. }
            ));
            assert!(matches!(
                reason(&Versionless),
                InvalidEventReason::SchemaVersion { version: 0 }
            ));
        }
    }

    fn round_trip(t: DateTime<Utc>) -> DateTime<Utc> {
        let mut m = EventMetadata::new();
        m.occurred_at = t;
        let json = serde_json::to_string(&m).unwrap();
        serde_json::from_str::<EventMetadata>(&json)
            .unwrap()
            .occurred_at
    }

    #[test]
    fn metadata_serializes_and_reads_back_exactly() {
        let base = Utc.with_ymd_and_hms(2024, 2, 29, 23, 59, 59).unwrap();
        for nanos in [0, 1, 10, 123_000_000, 123_456_000, 999_999_999] {
            let t = base + Duration::nanoseconds(nanos);
            assert_eq!(round_trip(t), t, "{t:?}");
        }
        let m = EventMetadata::new()
            .with_causation_id(uuid::Uuid::now_v7())
            .with_custom("user", "zoë");
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<EventMetadata>(&text).unwrap(), m);
        // Optional parts are left out, and read back as absent.
        let plain = EventMetadata::new();
        let value = serde_json::to_value(&plain).unwrap();
        assert_eq!(
            value.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["correlation_id", "occurred_at"]
        );
        assert_eq!(
            serde_json::from_value::<EventMetadata>(value).unwrap(),
            plain
        );
    }

    #[test]
    fn new_metadata_is_in_whole_microseconds() {
        for _ in 0..100 {
            assert_eq!(
                EventMetadata::new().occurred_at.timestamp_subsec_nanos() % 1000,
                0
            );
        }
    }
}
