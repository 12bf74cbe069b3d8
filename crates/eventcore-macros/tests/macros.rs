//! The derives as users meet them through `eventcore`: what they generate,
//! and (trybuild) the errors misuse gets. One test binary for both.

use eventcore::{
    Command, CommandStreams, DecodeError, Event, EventData, StreamId, UpcastError, Upcasters,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
enum Plain {
    Opened { owner: String },
    Closed,
    Noted(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[serde(rename_all = "snake_case")]
#[event(version = 2)]
enum Renamed {
    MoneyDeposited {
        amount: u64,
    },
    #[serde(rename = "withdrawal")]
    MoneyWithdrawn {
        amount: u64,
    },
    #[event(name = "bank.Closed")]
    AccountClosed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[serde(tag = "type")]
enum Internal {
    Started { at: u64 },
    Stopped { at: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
struct Pinged {
    count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(name = "metrics.Sampled", version = 3)]
struct Sampled(f64);

/// Recorded type names are serde's tags, so what is recorded is what
/// decoding checks.
#[test]
fn type_names_follow_the_serde_representation() {
    let opened = Plain::Opened { owner: "a".into() };
    assert_eq!(opened.event_type(), "Opened");
    assert_eq!(Plain::Closed.event_type(), "Closed");
    assert_eq!(Plain::Noted("x".into()).event_type(), "Noted");
    assert_eq!(<Plain as Event>::SCHEMA_VERSION, 1);

    let deposited = Renamed::MoneyDeposited { amount: 1 };
    assert_eq!(deposited.event_type(), "money_deposited");
    assert_eq!(
        Renamed::MoneyWithdrawn { amount: 1 }.event_type(),
        "withdrawal"
    );
    assert_eq!(Renamed::AccountClosed.event_type(), "bank.Closed");
    assert_eq!(<Renamed as Event>::SCHEMA_VERSION, 2);
    for event in [
        deposited.clone(),
        Renamed::MoneyWithdrawn { amount: 1 },
        Renamed::AccountClosed,
    ] {
        let data = EventData::from_serialize(&event).unwrap();
        let tag = match data.to_value().unwrap() {
            serde_json::Value::Object(map) => map.keys().next().unwrap().clone(),
            serde_json::Value::String(tag) => tag,
            other => panic!("unexpected form {other}"),
        };
        // An explicit #[event(name)] may differ from serde's tag; the
        // default is serde's tag.
        if event != Renamed::AccountClosed {
            assert_eq!(tag, event.event_type());
        }
        assert_eq!(
            Renamed::decode(event.event_type(), 2, &data).unwrap(),
            event
        );
    }
    // Recorded under the wrong name or version: refused.
    let data = EventData::from_serialize(&deposited).unwrap();
    assert!(matches!(
        Renamed::decode("withdrawal", 2, &data),
        Err(DecodeError::TypeMismatch { .. })
    ));
    assert!(matches!(
        Renamed::decode("money_deposited", 1, &data),
        Err(DecodeError::UnknownSchemaVersion { .. })
    ));

    let started = Internal::Started { at: 1 };
    assert_eq!(started.event_type(), "Started");
    let data = EventData::from_serialize(&started).unwrap();
    assert_eq!(data.to_value().unwrap()["type"], "Started");
    assert_eq!(Internal::decode("Started", 1, &data).unwrap(), started);

    assert_eq!(Pinged { count: 1 }.event_type(), "Pinged");
    assert_eq!(Sampled(1.5).event_type(), "metrics.Sampled");
    assert_eq!(<Sampled as Event>::SCHEMA_VERSION, 3);
}

/// v1 `Credited { euros }` became `Deposited { cents }` in v2 (a rename
/// and a new shape), and v3 added a currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
#[event(version = 3, upcasters = account_upcasters)]
enum Account {
    Deposited { cents: u64, currency: String },
    Closed,
}

fn account_upcasters() -> Upcasters {
    Upcasters::new()
        .rename("Credited", "Deposited")
        .upcast("Deposited", 1, |mut v: serde_json::Value| {
            let euros = v["Deposited"]["euros"]
                .as_u64()
                .ok_or("euros is not a number")?;
            v["Deposited"] = json!({ "cents": euros * 100 });
            Ok::<_, UpcastError>(v)
        })
        .upcast("Deposited", 2, |mut v: serde_json::Value| {
            v["Deposited"]["currency"] = json!("EUR");
            Ok::<_, UpcastError>(v)
        })
}

#[test]
fn derived_events_decode_through_their_upcasters_from_v1_to_v3() {
    let v1 = EventData::from(json!({ "Credited": { "euros": 2 } }));
    assert_eq!(
        Account::decode("Credited", 1, &v1).unwrap(),
        Account::Deposited {
            cents: 200,
            currency: "EUR".into()
        }
    );
    let v2 = EventData::from(json!({ "Deposited": { "cents": 5 } }));
    assert_eq!(
        Account::decode("Deposited", 2, &v2).unwrap(),
        Account::Deposited {
            cents: 5,
            currency: "EUR".into()
        }
    );
    let closed = EventData::from(json!("Closed"));
    assert_eq!(
        Account::decode("Closed", 1, &closed).unwrap(),
        Account::Closed
    );
    let broken = EventData::from(json!({ "Credited": { "euros": "two" } }));
    assert!(matches!(
        Account::decode("Credited", 1, &broken),
        Err(DecodeError::Upcast(UpcastError::Step {
            from_version: 1,
            ..
        }))
    ));
}

/// An id type of the user's that names a stream.
struct AccountId(StreamId);

impl AsRef<StreamId> for AccountId {
    fn as_ref(&self) -> &StreamId {
        &self.0
    }
}

#[derive(Command)]
#[allow(dead_code)]
struct Transfer {
    #[stream]
    from: AccountId,
    #[stream]
    to: StreamId,
    #[stream]
    fee_account: Option<StreamId>,
    #[stream]
    watchers: Vec<StreamId>,
    amount: u64,
}

#[derive(Command)]
#[allow(dead_code)]
struct Pair(#[stream] StreamId, u8, #[stream] StreamId);

#[test]
fn stream_fields_are_the_streams_read_in_order() {
    let id = |s: &str| StreamId::new(s).unwrap();
    let transfer = Transfer {
        from: AccountId(id("a")),
        to: id("b"),
        fee_account: None,
        watchers: vec![id("w1"), id("w2")],
        amount: 5,
    };
    assert_eq!(transfer.streams(), [id("a"), id("b"), id("w1"), id("w2")]);
    let with_fee = Transfer {
        fee_account: Some(id("fees")),
        watchers: Vec::new(),
        ..transfer
    };
    assert_eq!(with_fee.streams(), [id("a"), id("b"), id("fees")]);
    assert_eq!(Pair(id("x"), 0, id("y")).streams(), [id("x"), id("y")]);
}

/// Misuse is refused at compile time with a message that says what to do
/// (tests/ui/*.stderr).
#[test]
fn misuse_is_a_clear_compile_error() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
