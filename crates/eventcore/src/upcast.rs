//! Upcasting as a chain: functions from one (type, schema version) of an
//! event's JSON to the next, and renames of type names, applied in order
//! when an older event is decoded.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    fmt,
};

use serde_json::Value;

use crate::{BoxError, DecodeError, Event, EventData, decode_current};

type Step = Box<dyn Fn(Value) -> Result<Value, BoxError> + Send + Sync>;

/// The upcasters of one event type (an enum or a struct): steps that turn
/// the JSON of `(type, version)` into that of `(type, version + 1)`, and
/// renames of type names. Decoding an event recorded at an older schema
/// version applies the steps in order up to the type's
/// [`Event::SCHEMA_VERSION`]; a type name with no step at some version is
/// taken to be unchanged by it (the schema version belongs to the whole
/// enum, and most of its variants keep their shape).
///
/// With `#[derive(Event)]`, name a function that builds them:
/// `#[event(version = 3, upcasters = path::to::fn)]`; without, call
/// [`decode`](Self::decode) from your own [`Event::decode`].
///
/// ```
/// use eventcore::{Event, EventData, Upcasters, UpcastError};
/// use serde::{Deserialize, Serialize};
/// use serde_json::{Value, json};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize, Event)]
/// #[event(version = 3, upcasters = account_upcasters)]
/// enum AccountEvent {
///     // v1: `Credited { amount }` in whole euros; v2: cents; v3: a currency.
///     Deposited { cents: u64, currency: String },
/// }
///
/// fn account_upcasters() -> Upcasters {
///     Upcasters::new()
///         .rename("Credited", "Deposited")
///         .upcast("Deposited", 1, |mut v: Value| {
///             let body = &mut v["Deposited"];
///             let euros = body["amount"].as_u64().ok_or("amount is not a number")?;
///             *body = json!({ "cents": euros * 100 });
///             Ok::<_, UpcastError>(v)
///         })
///         .upcast("Deposited", 2, |mut v: Value| {
///             v["Deposited"]["currency"] = json!("EUR");
///             Ok::<_, UpcastError>(v)
///         })
/// }
///
/// let v1 = EventData::from_json(r#"{"Credited": {"amount": 3}}"#)?;
/// assert_eq!(
///     AccountEvent::decode("Credited", 1, &v1)?,
///     AccountEvent::Deposited { cents: 300, currency: "EUR".into() },
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Default)]
pub struct Upcasters {
    steps: HashMap<String, BTreeMap<u32, Step>>,
    renames: HashMap<String, String>,
}

/// Why an upcaster failed: the source of [`DecodeError::Upcast`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpcastError {
    /// A step refused the JSON it was given.
    #[error("upcasting '{event_type}' from schema version {from_version}: {source}")]
    Step {
        /// The type name the step is registered for.
        event_type: String,
        /// The version it upcasts from.
        from_version: u32,
        /// Its error.
        #[source]
        source: BoxError,
    },
    /// The stored payload could not be parsed to be upcast.
    #[error("the payload is not JSON: {0}")]
    Payload(#[source] serde_json::Error),
    /// Renames lead back to a name already seen.
    #[error("renames of '{event_type}' form a cycle")]
    RenameCycle {
        /// The name the cycle was found at.
        event_type: String,
    },
    /// A step's own error, for steps written to return this type
    /// (`"amount is missing".into()`).
    #[error("{0}")]
    Message(String),
}

impl From<&str> for UpcastError {
    fn from(message: &str) -> Self {
        UpcastError::Message(message.to_owned())
    }
}

impl From<String> for UpcastError {
    fn from(message: String) -> Self {
        UpcastError::Message(message)
    }
}

impl Upcasters {
    /// No upcasters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `step`, which turns the JSON payload of an `event_type`
    /// recorded at `from_version` into its shape at `from_version + 1`.
    ///
    /// # Panics
    ///
    /// If a step for `event_type` at `from_version` is registered already
    /// (like a route registered twice in axum: a mistake in the code).
    pub fn upcast<F, E>(mut self, event_type: &str, from_version: u32, step: F) -> Self
    where
        F: Fn(Value) -> Result<Value, E> + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        let boxed: Step = Box::new(move |value| step(value).map_err(Into::into));
        let previous = self
            .steps
            .entry(event_type.to_owned())
            .or_default()
            .insert(from_version, boxed);
        assert!(
            previous.is_none(),
            "an upcaster for '{event_type}' at schema version {from_version} is registered twice"
        );
        self
    }

    /// Registers a rename: events recorded as `from` decode as `to`, at
    /// whatever schema version they were recorded (the steps of `to` then
    /// apply). Where the payload is serde's externally tagged form of the
    /// old name (an object whose only key is `from`), the tag is renamed
    /// too; for other representations keep the old name readable with
    /// `#[serde(alias = "...")]`.
    ///
    /// # Panics
    ///
    /// If `from` is renamed already.
    pub fn rename(mut self, from: &str, to: &str) -> Self {
        let previous = self.renames.insert(from.to_owned(), to.to_owned());
        assert!(previous.is_none(), "'{from}' is renamed twice");
        self
    }

    /// Decodes an event recorded as `event_type` at `schema_version`:
    /// renames and upcasts its payload to the current shape of `E`, then
    /// deserializes it and checks its type name against the (renamed)
    /// recorded one. A payload that needs no step is deserialized directly.
    /// A schema version above `E::SCHEMA_VERSION` is
    /// [`DecodeError::UnknownSchemaVersion`].
    pub fn decode<E: Event>(
        &self,
        event_type: &str,
        schema_version: u32,
        data: &EventData,
    ) -> Result<E, DecodeError> {
        if schema_version > E::SCHEMA_VERSION || schema_version == 0 {
            return Err(DecodeError::UnknownSchemaVersion {
                recorded: schema_version,
                known: E::SCHEMA_VERSION,
            });
        }
        let mut name = Cow::Borrowed(event_type);
        // Parsed only once a step or rename needs the tree.
        let mut value: Option<Value> = None;
        let parsed = |value: &mut Option<Value>| -> Result<Value, UpcastError> {
            match value.take() {
                Some(v) => Ok(v),
                None => data.deserialize().map_err(UpcastError::Payload),
            }
        };
        let mut renames = 0;
        while let Some(to) = self.renames.get(name.as_ref()) {
            renames += 1;
            if renames > self.renames.len() {
                return Err(UpcastError::RenameCycle {
                    event_type: name.into_owned(),
                }
                .into());
            }
            let mut v = parsed(&mut value)?;
            retag(&mut v, &name, to);
            value = Some(v);
            name = Cow::Owned(to.clone());
        }
        if let Some(steps) = self.steps.get(name.as_ref()) {
            for (&from_version, step) in steps.range(schema_version..E::SCHEMA_VERSION) {
                let v = parsed(&mut value)?;
                let upcast = step(v).map_err(|source| UpcastError::Step {
                    event_type: name.to_string(),
                    from_version,
                    source,
                })?;
                value = Some(upcast);
            }
        }
        match value {
            None => decode_current(&name, data),
            Some(v) => DecodeError::check_type(serde_json::from_value(v)?, &name),
        }
    }
}

/// `{"from": x}` becomes `{"to": x}`; anything else is left alone.
fn retag(value: &mut Value, from: &str, to: &str) {
    if let Value::Object(map) = value
        && map.len() == 1
        && let Some(inner) = map.remove(from)
    {
        map.insert(to.to_owned(), inner);
    }
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps: BTreeMap<&str, Vec<u32>> = self
            .steps
            .iter()
            .map(|(t, s)| (t.as_str(), s.keys().copied().collect()))
            .collect();
        f.debug_struct("Upcasters")
            .field("steps", &steps)
            .field("renames", &self.renames)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    use super::*;

    /// Version 3 of an account's events. v1 stored `Credited { amount }`
    /// in whole euros; v2 renamed it `Deposited` and stored cents; v3 added
    /// the currency. `Closed` never changed.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Account {
        Deposited { cents: u64, currency: String },
        Closed,
    }

    impl Event for Account {
        const SCHEMA_VERSION: u32 = 3;
        fn event_type(&self) -> &'static str {
            match self {
                Account::Deposited { .. } => "Deposited",
                Account::Closed => "Closed",
            }
        }
        fn decode(t: &str, v: u32, data: &EventData) -> Result<Self, DecodeError> {
            chain().decode(t, v, data)
        }
    }

    fn chain() -> Upcasters {
        Upcasters::new()
            .rename("Credited", "Deposited")
            .upcast("Deposited", 1, |mut v: Value| {
                let body = &mut v["Deposited"];
                let euros = body["amount"]
                    .as_u64()
                    .ok_or_else(|| format!("amount is not a number: {}", body["amount"]))?;
                *body = json!({ "cents": euros * 100 });
                Ok::<_, UpcastError>(v)
            })
            .upcast("Deposited", 2, |mut v: Value| {
                v["Deposited"]["currency"] = json!("EUR");
                Ok::<_, UpcastError>(v)
            })
    }

    fn data(v: Value) -> EventData {
        EventData::from(v)
    }

    #[test]
    fn v1_to_v3_through_a_rename_and_two_steps() {
        let v1 = data(json!({ "Credited": { "amount": 3 } }));
        assert_eq!(
            Account::decode("Credited", 1, &v1).unwrap(),
            Account::Deposited {
                cents: 300,
                currency: "EUR".into()
            }
        );
        let v2 = data(json!({ "Deposited": { "cents": 7 } }));
        assert_eq!(
            Account::decode("Deposited", 2, &v2).unwrap(),
            Account::Deposited {
                cents: 7,
                currency: "EUR".into()
            }
        );
        let v3 = data(json!({ "Deposited": { "cents": 7, "currency": "CHF" } }));
        assert_eq!(
            Account::decode("Deposited", 3, &v3).unwrap(),
            Account::Deposited {
                cents: 7,
                currency: "CHF".into()
            }
        );
    }

    #[test]
    fn types_without_steps_move_up_unchanged() {
        let closed = data(json!("Closed"));
        for version in 1..=3 {
            assert_eq!(
                Account::decode("Closed", version, &closed).unwrap(),
                Account::Closed
            );
        }
    }

    #[test]
    fn failures_are_typed() {
        let bad = data(json!({ "Credited": { "amount": "lots" } }));
        match Account::decode("Credited", 1, &bad) {
            Err(DecodeError::Upcast(UpcastError::Step {
                event_type,
                from_version: 1,
                source,
            })) => {
                assert_eq!(event_type, "Deposited");
                assert!(source.to_string().contains("not a number"), "{source}");
            }
            other => panic!("expected a failed step, got {other:?}"),
        }
        assert!(matches!(
            Account::decode("Deposited", 4, &data(json!(null))),
            Err(DecodeError::UnknownSchemaVersion {
                recorded: 4,
                known: 3
            })
        ));
        // The renamed, upcast payload is still checked against the name.
        assert!(matches!(
            Account::decode("Credited", 3, &data(json!("Closed"))),
            Err(DecodeError::TypeMismatch { .. })
        ));
        let cycle = Upcasters::new().rename("A", "B").rename("B", "A");
        assert!(matches!(
            cycle.decode::<Account>("A", 3, &data(json!("Closed"))),
            Err(DecodeError::Upcast(UpcastError::RenameCycle { .. }))
        ));
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn a_step_registered_twice_is_a_bug() {
        let ok = |v: Value| Ok::<_, UpcastError>(v);
        let _ = Upcasters::new().upcast("A", 1, ok).upcast("A", 1, ok);
    }
}
