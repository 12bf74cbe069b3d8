//! Round-trip properties shared by the in-memory store (`tests/it/roundtrip.rs`
//! of `eventcore`) and the PostgreSQL store (`tests/it/roundtrip.rs` of
//! `eventcore-postgres`, which includes this file by path).
//!
//! Generated appends carry events (raw JSON text with nesting near the
//! limits, numbers at f64's and PostgreSQL's edges, strings with NUL,
//! surrogate escapes and control characters; typed events with extreme and
//! non-finite floats), metadata (custom maps, `occurred_at` around years
//! 0/1/9999/10000, leap seconds, finer than microseconds), stream ids and type names at their edges,
//! and expected versions up to `u64::MAX`. The property: an append the store
//! accepts reads back identically; one it refuses fails with a typed error
//! and writes nothing.
//!
//! `ROUNDTRIP_STATS=1` (with `--nocapture`) prints each append's outcome, to
//! see which rules the cases reach.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use eventcore::{
    AppendRequest, Error, Event, EventData, EventMetadata, EventStore, ExpectedVersion,
    GlobalPosition, NewEvent, StoredEvent, StreamId, StreamVersion,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde::{Deserialize, Serialize};
use serde_json::Value;

// ----- JSON text -------------------------------------------------------

/// A JSON tree whose scalars are already text, so it can hold what
/// `serde_json::Value` cannot: `1e400`, `\ud800`, duplicate keys.
#[derive(Clone, Debug)]
pub(crate) enum J {
    Lit(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    fn render(&self, out: &mut String) {
        match self {
            J::Lit(text) => out.push_str(text),
            J::Arr(items) => {
                out.push('[');
                for (n, item) in items.iter().enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    item.render(out);
                }
                out.push(']');
            }
            J::Obj(entries) => {
                out.push('{');
                for (n, (key, value)) in entries.iter().enumerate() {
                    if n > 0 {
                        out.push_str(", ");
                    }
                    out.push_str(key);
                    out.push(':');
                    value.render(out);
                }
                out.push('}');
            }
        }
    }
}

/// Characters at the edges of the name and string rules.
const SPECIAL_CHARS: &[char] = &[
    '\0',
    '\n',
    '\t',
    '\u{7f}',
    '\u{85}',
    '\u{a0}',
    '\u{ad}',
    '\u{61c}',
    '\u{200b}',
    '\u{200d}',
    '\u{200e}',
    '\u{202e}',
    '\u{2066}',
    '\u{2028}',
    '\u{feff}',
    '\u{e0041}',
    '\u{3000}',
    'é',
    '日',
    '\u{1F600}',
    '\u{301}',
    '"',
    '\\',
    '\u{10FFFF}',
];

fn escape_char(c: char) -> String {
    match c {
        '"' => "\\\"".to_owned(),
        '\\' => "\\\\".to_owned(),
        c if u32::from(c) < 0x20 => format!("\\u{:04x}", u32::from(c)),
        c => c.to_string(),
    }
}

/// A JSON string literal, quotes included.
fn json_string() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => any::<char>().prop_map(escape_char),
        4 => prop::collection::vec(prop::char::range('a', 'z'), 1..5)
            .prop_map(|cs| cs.into_iter().collect::<String>()),
        2 => prop::sample::select(SPECIAL_CHARS).prop_map(escape_char),
        2 => prop::sample::select(&[
            "\\u0000", "\\ud800", "\\udc00", "\\udbff\\udfff", "\\ud83d\\ude00", "\\ud83dx",
            "\\n", "\\/", "\\u00e9", "\\uFEFF", "\\u001f", "\\u0041",
        ][..])
        .prop_map(str::to_owned),
    ];
    prop::collection::vec(piece, 0..6).prop_map(|pieces| format!("\"{}\"", pieces.concat()))
}

const EDGE_F64: &[f64] = &[
    0.0,
    -0.0,
    1.0,
    0.1,
    1e16,
    1e21,
    1e300,
    -1e300,
    f64::MAX,
    f64::MIN,
    f64::MIN_POSITIVE,
    5e-324,
    -1.5e-7,
    9007199254740993.0,
    123.456,
];

const EDGE_NUMBERS: &[&str] = &[
    "1e400",
    "-1e309",
    "1e308",
    "1.7976931348623157e308",
    "1.7976931348623158e308",
    "1.7976931348623159e308",
    "1e-400",
    "1e-16383",
    "1e-16384",
    "0.5e-16383",
    "0e16383",
    "0e16384",
    "0e-16384",
    "1E+2",
    "-0",
    "-0.0",
    "1.50",
    "100e-2",
    "18446744073709551616",
    "-9223372036854775809",
    "123456789012345678901234567890",
];

fn digits(min: usize, max: usize) -> impl Strategy<Value = String> {
    (1u8..10, prop::collection::vec(0u8..10, min..max)).prop_map(|(first, rest)| {
        std::iter::once(first)
            .chain(rest)
            .map(|d| char::from(b'0' + d))
            .collect()
    })
}

/// Number text, from JSON's grammar, with exponents around f64's and
/// PostgreSQL's limits.
fn json_number() -> impl Strategy<Value = String> {
    let composed = (
        any::<bool>(),
        prop_oneof![Just("0".to_owned()), digits(0, 40)],
        prop::option::of(prop::collection::vec(0u8..10, 1..25)),
        prop::option::of((
            prop::sample::select(&["e", "E", "e+", "e-", "E-"][..]),
            prop_oneof![
                prop::sample::select(
                    &[
                        0u32, 1, 2, 16, 22, 300, 307, 308, 309, 324, 325, 400, 1000, 16383, 16384,
                        20000
                    ][..]
                ),
                0u32..400,
            ],
        )),
    )
        .prop_map(|(negative, int, frac, exp)| {
            let mut s = String::new();
            if negative {
                s.push('-');
            }
            s.push_str(&int);
            if let Some(frac) = frac {
                s.push('.');
                s.extend(frac.into_iter().map(|d| char::from(b'0' + d)));
            }
            if let Some((e, n)) = exp {
                s.push_str(e);
                s.push_str(&n.to_string());
            }
            s
        });
    prop_oneof![
        2 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        2 => any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::to_string(&f).unwrap()),
        1 => prop::sample::select(EDGE_F64).prop_map(|f| serde_json::to_string(&f).unwrap()),
        3 => composed,
        2 => prop::sample::select(EDGE_NUMBERS).prop_map(str::to_owned),
    ]
}

fn json_scalar() -> impl Strategy<Value = J> {
    prop_oneof![
        1 => prop::sample::select(&["null", "true", "false"][..]).prop_map(|s| J::Lit(s.into())),
        3 => json_number().prop_map(J::Lit),
        3 => json_string().prop_map(J::Lit),
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => json_string(),
        1 => prop::sample::select(&["\"a\"", "\"b\"", "\"\\u0061\""][..]).prop_map(str::to_owned),
    ]
}

fn json_tree() -> impl Strategy<Value = J> {
    json_scalar().prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(J::Arr),
            prop::collection::vec((json_key(), inner), 0..4).prop_map(J::Obj),
        ]
    })
}

/// Extra nesting around a tree, to reach the depth limit (64) and
/// serde_json's (128).
fn nesting() -> impl Strategy<Value = usize> {
    prop_oneof![
        12 => Just(0usize),
        4 => 1usize..8,
        1 => prop::sample::select(&[60usize, 61, 62, 63, 64, 65, 66, 100, 126, 127, 128, 129, 200][..]),
    ]
}

fn wrap(mut tree: J, depth: usize, objects: bool) -> J {
    for _ in 0..depth {
        tree = if objects {
            J::Obj(vec![("\"k\"".to_owned(), tree)])
        } else {
            J::Arr(vec![tree])
        };
    }
    tree
}

/// Payload text: mostly well-formed, sometimes broken (only
/// `EventData::from_json_unchecked` lets such text through).
fn payload_text() -> impl Strategy<Value = String> {
    (
        json_tree(),
        nesting(),
        any::<bool>(),
        prop::sample::select(&["", " ", "\n\t"][..]),
        prop_oneof![30 => Just(0u8), 1 => 1u8..4],
    )
        .prop_map(|(tree, depth, objects, ws, breakage)| {
            let mut text = ws.to_owned();
            wrap(tree, depth, objects).render(&mut text);
            text.push_str(ws);
            match breakage {
                1 => {
                    text.pop();
                }
                2 => text.push_str(" ,"),
                3 => text.clear(),
                _ => {}
            }
            text
        })
}

// ----- values for custom metadata -------------------------------------

fn text_with_edges() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => any::<char>(),
            4 => prop::char::range('a', 'z'),
            1 => prop::sample::select(SPECIAL_CHARS),
        ],
        0..6,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

fn finite_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => any::<f64>().prop_filter("finite", |f| f.is_finite()),
        1 => prop::sample::select(EDGE_F64),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        finite_f64().prop_map(Value::from),
        text_with_edges().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::vec((text_with_edges(), inner), 0..3)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn custom_metadata() -> impl Strategy<Value = serde_json::Map<String, Value>> {
    prop_oneof![
        3 => Just(serde_json::Map::new()),
        2 => prop::collection::vec((text_with_edges(), json_value(), nesting()), 1..3).prop_map(
            |entries| {
                entries
                    .into_iter()
                    .map(|(k, v, depth)| {
                        let v = (0..depth).fold(v, |v, _| Value::Array(vec![v]));
                        (k, v)
                    })
                    .collect()
            },
        ),
    ]
}

fn occurred_at() -> impl Strategy<Value = DateTime<Utc>> {
    let year = prop_oneof![
        1 => prop::sample::select(&[-1i32, 0, 1, 2, 1969, 1970, 2026, 9998, 9999, 10000, 262_142][..]),
        8 => 1i32..10_000,
    ];
    // Mostly whole microseconds (what stores keep), some finer or leap.
    let nanos = prop_oneof![
        2 => prop::sample::select(
            &[0u32, 1, 999, 1_000, 123_000_000, 999_999_000, 999_999_999, 1_000_000_000, 1_999_999_999][..]
        ),
        16 => (0u32..1_000_000).prop_map(|micros| micros * 1_000),
        1 => 0u32..2_000_000_000,
    ];
    (
        year,
        1u32..=12,
        1u32..=31,
        0u32..24,
        0u32..60,
        0u32..60,
        nanos,
    )
        .prop_map(|(y, mo, d, h, mi, s, n)| {
            let date = NaiveDate::from_ymd_opt(y, mo, d)
                .or_else(|| NaiveDate::from_ymd_opt(y, mo, 28))
                .expect("day 28 exists");
            // chrono allows leap-second nanos only in second 59.
            date.and_hms_nano_opt(h, mi, s, n)
                .or_else(|| date.and_hms_nano_opt(h, mi, 59, n))
                .expect("valid time")
                .and_utc()
        })
}

fn metadata() -> impl Strategy<Value = EventMetadata> {
    (
        any::<u128>(),
        prop::option::of(any::<u128>()),
        occurred_at(),
        custom_metadata(),
    )
        .prop_map(|(correlation, causation, t, custom)| {
            let mut m =
                EventMetadata::new().with_correlation_id(uuid::Uuid::from_u128(correlation));
            if let Some(c) = causation {
                m = m.with_causation_id(uuid::Uuid::from_u128(c));
            }
            m.occurred_at = t;
            m.custom = custom;
            m
        })
}

// ----- names, versions, expectations ----------------------------------

/// Stream ids and type names, around the shared rule's edges.
pub(crate) fn name() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        8 => prop::char::range('a', 'z'),
        2 => prop::char::range('0', '9'),
        1 => Just('-'),
        1 => Just(' '),
        1 => any::<char>(),
        2 => prop::sample::select(SPECIAL_CHARS),
    ];
    prop_oneof![
        6 => prop::collection::vec(ch, 1..12).prop_map(|cs| cs.into_iter().collect::<String>()),
        2 => prop::sample::select(&["acct-1", "acct-2", "Deposited"][..]).prop_map(str::to_owned),
        1 => prop::sample::select(vec![
            "T".repeat(255),
            "T".repeat(256),
            format!("{}x", "é".repeat(127)),
            "é".repeat(128),
            String::new(),
            " ".to_owned(),
            " acct-1".to_owned(),
            "acct-1 ".to_owned(),
            "\u{3000}".to_owned(),
            "acct\u{200b}-1".to_owned(),
        ]),
    ]
}

/// Mostly ordinary type names, so that other rules get their turn.
fn event_type() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(&["Deposited", "Withdrawn", "E"][..]).prop_map(str::to_owned),
        1 => name(),
    ]
}

fn schema_version() -> impl Strategy<Value = u32> {
    prop_oneof![
        8 => 1u32..100,
        1 => prop::sample::select(&[0u32, 1, 2, 99, i32::MAX as u32, i32::MAX as u32 + 1, u32::MAX][..]),
    ]
}

/// An expectation, resolved against the stream's version at run time.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Expect {
    Any,
    NoStream,
    StreamExists,
    Current,
    Ahead,
    Behind,
    Max,
    AboveMax,
    U64Max,
    Raw(u64),
}

impl Expect {
    fn resolve(self, current: StreamVersion) -> ExpectedVersion {
        let exact = |v: u64| ExpectedVersion::Exact(StreamVersion::new(v));
        match self {
            Expect::Any => ExpectedVersion::Any,
            Expect::NoStream => ExpectedVersion::NoStream,
            Expect::StreamExists => ExpectedVersion::StreamExists,
            Expect::Current => exact(current.get()),
            Expect::Ahead => exact(current.get() + 1),
            Expect::Behind => exact(current.get().saturating_sub(1)),
            Expect::Max => exact(StreamVersion::MAX.get()),
            Expect::AboveMax => exact(StreamVersion::MAX.get() + 1),
            Expect::U64Max => exact(u64::MAX),
            Expect::Raw(v) => exact(v),
        }
    }
}

fn expect() -> impl Strategy<Value = Expect> {
    prop_oneof![
        12 => Just(Expect::Any),
        4 => Just(Expect::Current),
        1 => Just(Expect::NoStream),
        1 => Just(Expect::StreamExists),
        1 => Just(Expect::Ahead),
        1 => Just(Expect::Behind),
        1 => Just(Expect::Max),
        1 => Just(Expect::AboveMax),
        1 => Just(Expect::U64Max),
        1 => any::<u64>().prop_map(Expect::Raw),
    ]
}

// ----- typed events -----------------------------------------------------

/// A typed event with every kind of number and text.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Sample {
    f: f64,
    g: f32,
    o: Option<f64>,
    v: Vec<f64>,
    s: String,
    i: i64,
    u: u64,
    w: i128,
    m: BTreeMap<String, f64>,
}

impl Event for Sample {
    fn event_type(&self) -> &'static str {
        "Sample"
    }
}

fn same_f64(a: f64, b: f64) -> bool {
    // Bit for bit, except that PostgreSQL prints -0.0 as 0.0.
    a.to_bits() == b.to_bits() || (a == 0.0 && b == 0.0)
}

impl Sample {
    fn same(&self, other: &Sample) -> bool {
        same_f64(self.f, other.f)
            && (self.g.to_bits() == other.g.to_bits() || (self.g == 0.0 && other.g == 0.0))
            && match (self.o, other.o) {
                (Some(a), Some(b)) => same_f64(a, b),
                (a, b) => a.is_none() && b.is_none(),
            }
            && self.v.len() == other.v.len()
            && self.v.iter().zip(&other.v).all(|(a, b)| same_f64(*a, *b))
            && self.s == other.s
            && (self.i, self.u, self.w) == (other.i, other.u, other.w)
            && self.m.len() == other.m.len()
            && self
                .m
                .iter()
                .zip(&other.m)
                .all(|((ka, a), (kb, b))| ka == kb && same_f64(*a, *b))
    }
}

fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => finite_f64(),
        1 => prop::sample::select(&[f64::NAN, f64::INFINITY, f64::NEG_INFINITY][..]),
    ]
}

fn sample(finite_only: bool) -> impl Strategy<Value = Sample> {
    let float = move || {
        if finite_only {
            finite_f64().boxed()
        } else {
            any_f64().boxed()
        }
    };
    let text = move || {
        if finite_only {
            text_with_edges().prop_map(|s| s.replace('\0', "")).boxed()
        } else {
            text_with_edges().boxed()
        }
    };
    (
        (float(), float(), prop::option::of(float())),
        prop::collection::vec(float(), 0..4),
        text(),
        (any::<i64>(), any::<u64>(), any::<i128>()),
        prop::collection::btree_map(text(), float(), 0..3),
    )
        .prop_map(move |((f, g, o), v, s, (i, u, w), m)| Sample {
            f,
            // f64s beyond f32's range become infinite.
            g: if finite_only && !(g as f32).is_finite() {
                1.5
            } else {
                g as f32
            },
            o,
            v,
            s,
            i,
            u,
            w,
            m,
        })
}

// ----- cases ------------------------------------------------------------

/// One event of a generated append.
#[derive(Clone, Debug)]
pub(crate) enum EventSpec {
    Raw {
        event_type: String,
        schema_version: u32,
        data: String,
        metadata: EventMetadata,
    },
    Typed {
        sample: Sample,
        metadata: EventMetadata,
    },
}

/// One stream of a generated append.
#[derive(Clone, Debug)]
pub(crate) struct StreamSpec {
    name: String,
    expect: Expect,
    events: Vec<EventSpec>,
}

/// A generated append.
#[derive(Clone, Debug)]
pub(crate) struct Case {
    streams: Vec<StreamSpec>,
}

fn event_spec() -> impl Strategy<Value = EventSpec> {
    prop_oneof![
        3 => (event_type(), schema_version(), payload_text(), metadata()).prop_map(
            |(event_type, schema_version, data, metadata)| EventSpec::Raw {
                event_type,
                schema_version,
                data,
                metadata,
            }
        ),
        2 => (sample(false), metadata())
            .prop_map(|(sample, metadata)| EventSpec::Typed { sample, metadata }),
    ]
}

/// Appends anywhere in the input space: most break some rule.
pub(crate) fn any_case() -> impl Strategy<Value = Case> {
    let stream_name = prop_oneof![
        3 => prop::sample::select(&["acct-1", "acct-2", "acct-3"][..]).prop_map(str::to_owned),
        2 => name(),
    ];
    let stream = (
        stream_name,
        expect(),
        prop::collection::vec(event_spec(), 0..4),
    )
        .prop_map(|(name, expect, events)| StreamSpec {
            name,
            expect,
            events,
        });
    prop::collection::vec(stream, 1..3).prop_map(|streams| Case { streams })
}

/// Appends that break no rule: every one must be accepted.
pub(crate) fn valid_case() -> impl Strategy<Value = Case> {
    let time = (1i64..253_402_300_799, 0u32..1_000_000)
        .prop_map(|(s, micros)| DateTime::from_timestamp(s, micros * 1_000).expect("in range"));
    let meta = (
        any::<u128>(),
        time,
        prop::collection::vec(("[a-z]{1,5}", json_value()), 0..2),
    )
        .prop_map(|(c, t, custom)| {
            let mut m = EventMetadata::new().with_correlation_id(uuid::Uuid::from_u128(c));
            m.occurred_at = t;
            m.custom = custom.into_iter().map(|(k, v)| (k, strip_nul(v))).collect();
            m
        })
        .boxed();
    let event = prop_oneof![
        (
            "[A-Z][A-Za-z0-9 .]{0,30}[a-z]",
            1u32..1000,
            json_value(),
            meta.clone()
        )
            .prop_map(|(event_type, schema_version, v, metadata)| EventSpec::Raw {
                event_type,
                schema_version,
                data: serde_json::to_string(&strip_nul(v)).unwrap(),
                metadata,
            }),
        (sample(true), meta).prop_map(|(sample, metadata)| EventSpec::Typed { sample, metadata }),
    ];
    let stream =
        ("[a-z][a-z0-9-]{0,20}", prop::collection::vec(event, 1..4)).prop_map(|(name, events)| {
            StreamSpec {
                name,
                expect: Expect::Any,
                events,
            }
        });
    prop::collection::vec(stream, 1..3).prop_map(|mut streams| {
        streams.dedup_by(|a, b| a.name == b.name);
        Case { streams }
    })
}

fn strip_nul(v: Value) -> Value {
    match v {
        Value::String(s) => Value::String(s.replace('\0', "")),
        Value::Array(items) => Value::Array(items.into_iter().map(strip_nul).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k.replace('\0', ""), strip_nul(v)))
                .collect(),
        ),
        other => other,
    }
}

// ----- the property -----------------------------------------------------

/// JSON values equal as PostgreSQL keeps them: same structure, strings and
/// keys; numbers equal as numbers (PostgreSQL prints `1e2` as `100` and
/// `-0.0` as `0.0`, so an integral float may come back as an integer).
pub(crate) fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(p), Some(q), _, _) => p == q,
                (_, _, Some(p), Some(q)) => p == q,
                _ => x.as_f64() == y.as_f64() && x.as_f64().is_some(),
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_json(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

fn fail(what: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(what.to_string())
}

/// Runs one case against `store`: accepted ⇒ reads back identically;
/// refused ⇒ a typed error and nothing written. Returns whether the store
/// accepted it.
pub(crate) async fn check_case<S: EventStore + ?Sized>(
    store: &S,
    case: &Case,
) -> Result<bool, TestCaseError> {
    let mut request = AppendRequest::new();
    let mut priors: HashMap<StreamId, StreamVersion> = HashMap::new();
    let mut typed: HashMap<eventcore::EventId, Sample> = HashMap::new();
    for spec in &case.streams {
        // An id the rule refuses cannot reach a store: a typed error.
        let Ok(id) = StreamId::new(&spec.name) else {
            continue;
        };
        let prior = store.stream_version(&id).await.map_err(fail)?;
        priors.insert(id.clone(), prior);
        let mut events = Vec::new();
        for e in &spec.events {
            match e {
                EventSpec::Raw {
                    event_type,
                    schema_version,
                    data,
                    metadata,
                } => {
                    let mut event = NewEvent::raw(event_type.clone(), Value::Null);
                    event.schema_version = *schema_version;
                    event.data = EventData::from_json_unchecked(data.as_str());
                    event.metadata = metadata.clone();
                    events.push(event);
                }
                EventSpec::Typed { sample, metadata } => {
                    match NewEvent::new(sample, metadata.clone()) {
                        Ok(event) => {
                            typed.insert(event.event_id, sample.clone());
                            events.push(event);
                        }
                        Err(Error::InvalidEvent {
                            stream_id: None, ..
                        }) => {}
                        Err(other) => {
                            return Err(fail(format!("building a typed event: {other:?}")));
                        }
                    }
                }
            }
        }
        request = request.append(id, spec.expect.resolve(prior), events);
    }
    let result = store.append(request.clone()).await;
    if std::env::var_os("ROUNDTRIP_STATS").is_some() {
        eprintln!(
            "{}",
            match &result {
                Ok(_) => "accepted".to_owned(),
                Err(Error::InvalidEvent { reason, .. }) =>
                    format!("refused: {reason:?}").chars().take(60).collect(),
                Err(e) => format!("refused: {e}").chars().take(40).collect(),
            }
        );
    }
    match result {
        Ok(outcome) => {
            prop_assert!(!outcome.replayed);
            for s in request.streams() {
                let prior = priors[&s.stream_id];
                prop_assert!(
                    s.expected.is_met_by(prior),
                    "accepted {} on a stream at {prior}",
                    s.expected
                );
                if s.events.is_empty() {
                    continue;
                }
                let back = store
                    .read_stream_to_end(&s.stream_id, prior.next())
                    .await
                    .map_err(|e| fail(format!("accepted but unreadable: {e}")))?;
                prop_assert_eq!(back.len(), s.events.len());
                for (n, (sent, got)) in s.events.iter().zip(&back).enumerate() {
                    prop_assert_eq!(got.stream_version, prior.advance(n as u64 + 1));
                    same_event(sent, got, typed.get(&sent.event_id))?;
                }
            }
            Ok(true)
        }
        Err(e) => {
            let ok = match &e {
                Error::InvalidEvent {
                    stream_id: Some(stream),
                    event_id,
                    ..
                } => request.streams().iter().any(|s| {
                    &s.stream_id == stream && s.events.iter().any(|e| e.event_id == *event_id)
                }),
                Error::ExpectedVersionOutOfRange {
                    expected: ExpectedVersion::Exact(v),
                    ..
                } => *v > StreamVersion::MAX,
                Error::Conflict(c) => !c.expected.is_met_by(c.actual),
                Error::InvalidAppend { .. } | Error::PayloadTooLarge { .. } => true,
                _ => false,
            };
            prop_assert!(ok, "refused without a proper typed error: {e:?}");
            for (stream, prior) in &priors {
                let now = store.stream_version(stream).await.map_err(fail)?;
                prop_assert_eq!(now, *prior, "refused, yet {} moved ({})", stream, e);
            }
            Ok(false)
        }
    }
}

fn same_event(
    sent: &NewEvent,
    got: &StoredEvent,
    typed: Option<&Sample>,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.event_id, sent.event_id);
    prop_assert_eq!(&got.event_type, &sent.event_type);
    prop_assert_eq!(got.schema_version, sent.schema_version);
    let (m, n) = (&sent.metadata, &got.metadata);
    prop_assert_eq!(n.correlation_id, m.correlation_id);
    prop_assert_eq!(n.causation_id, m.causation_id);
    prop_assert_eq!(n.occurred_at, m.occurred_at);
    prop_assert!(
        same_json(
            &Value::Object(m.custom.clone()),
            &Value::Object(n.custom.clone())
        ),
        "custom metadata {:?} read back as {:?}",
        m.custom,
        n.custom
    );
    let sent_value: Value = serde_json::from_str(sent.data.get()).map_err(|e| {
        fail(format!(
            "accepted {:?}, which serde_json cannot read: {e}",
            sent.data.get()
        ))
    })?;
    let got_value = got
        .data
        .to_value()
        .map_err(|e| fail(format!("stored {:?} does not parse: {e}", got.data.get())))?;
    prop_assert!(
        same_json(&sent_value, &got_value),
        "sent {} read back as {}",
        sent.data.get(),
        got.data.get()
    );
    if let Some(sample) = typed {
        let decoded = got
            .decode::<Sample>()
            .map_err(|e| fail(format!("typed event does not decode: {e}")))?;
        prop_assert!(
            decoded.event.same(sample),
            "{:?} decoded as {:?}",
            sample,
            decoded.event
        );
    }
    Ok(())
}

/// Every stored event of `store` reads through `read_all`: nothing
/// accepted left a row that fails the whole page.
pub(crate) async fn everything_reads<S: EventStore + ?Sized>(store: &S) -> usize {
    let mut after = GlobalPosition::START;
    let mut count = 0;
    loop {
        let page = store.read_all(after, 500).await.expect("read_all");
        let Some(last) = page.last() else {
            return count;
        };
        after = last.position;
        count += page.len();
    }
}

/// Runs `property` over `cases` generated cases, on `rt`.
pub(crate) fn run<T: std::fmt::Debug>(
    cases: u32,
    strategy: impl Strategy<Value = T>,
    property: impl Fn(T) -> Result<(), TestCaseError>,
) {
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    if let Err(e) = runner.run(&strategy, property) {
        panic!("{e}");
    }
}
