//! The contract every [`EventStore`] must meet, one public async function
//! per guarantee.
//!
//! Run them all against a store with one macro call in a test file; the
//! argument is an expression returning a future of a fresh, empty store:
//!
//! ```no_run
//! eventcore::event_store_contract_tests!(|| async { eventcore::InMemoryEventStore::new() });
//! ```
//!
//! Each case panics with a message saying which guarantee broke.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rand::Rng;
use serde_json::json;

use super::bank::{AccountEvent, JointWithdraw, Transfer};
use super::seed;
use crate::{
    AppendRequest, Command, CommandError, CommandExecutor, Decision, DecodeError, Error, Event,
    EventData, EventId, EventMetadata, EventStore, ExpectedVersion, GlobalPosition,
    InvalidEventReason, JsonPart, JsonProblem, MAX_JSON_DEPTH, NewEvent, RecordedEvent,
    RetryPolicy, StoredEvent, StreamId, StreamVersion,
};

/// Generates one `#[tokio::test]` per contract case. The calling crate needs
/// `tokio` (with `macros` and `rt-multi-thread`) as a dev-dependency.
#[macro_export]
macro_rules! event_store_contract_tests {
    ($factory:expr) => {
        $crate::event_store_contract_tests!(@cases $factory;
            append_and_read_back,
            read_stream_pages_without_cap,
            read_several_streams_at_once,
            expectations_are_enforced,
            multi_stream_append_is_atomic,
            check_only_streams_are_checked,
            appends_are_idempotent,
            read_all_is_ordered_and_pages,
            undecodable_event_is_an_error,
            bad_input_is_refused_and_writes_nothing,
            invalid_events_are_refused_and_write_nothing,
            expected_versions_above_max_are_refused,
            decode_checks_type_and_schema_version,
            edge_values_read_back_identically,
            concurrent_appends_lose_nothing,
            concurrent_transfers_conserve_money,
            no_write_skew,
        );
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let store = ($factory)().await;
                $crate::testing::contract::$case(&store).await;
            }
        )*
    };
}

fn unique(prefix: &str) -> StreamId {
    StreamId::new(format!("{prefix}-{}", EventId::new())).expect("valid id")
}

fn raw(kind: &str, n: u64) -> NewEvent {
    NewEvent::raw(kind, json!({ "n": n, "note": "contract" }))
}

/// Every event committed before the call. `read_all` may briefly hold
/// back events behind transactions still open elsewhere (other tests share
/// the database), so this waits until it reaches the head.
async fn read_everything<S: EventStore + ?Sized>(store: &S) -> Vec<StoredEvent> {
    let head = store.head_position().await.expect("head_position");
    let mut all = Vec::new();
    let mut after = GlobalPosition::START;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let page = store.read_all(after, 500).await.expect("read_all");
        match page.last() {
            Some(last) => after = last.position,
            None if after >= head => return all,
            None => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "read_all never reached the head"
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        all.extend(page);
    }
}

fn expect_conflict<T: std::fmt::Debug>(
    result: Result<T, Error>,
    stream: &StreamId,
    expected: ExpectedVersion,
    actual: u64,
) {
    match result {
        Err(Error::Conflict(c)) => {
            assert_eq!(&c.stream_id, stream, "conflict names the wrong stream");
            assert_eq!(
                c.expected, expected,
                "conflict reports the wrong expectation"
            );
            assert_eq!(
                c.actual,
                StreamVersion::new(actual),
                "conflict reports the wrong actual version"
            );
        }
        other => panic!("expected a conflict on {stream}, got {other:?}"),
    }
}

/// Typed events round-trip with ids, versions, metadata and type names.
pub async fn append_and_read_back<S: EventStore + ?Sized>(store: &S) {
    let stream = unique("account");
    let meta = EventMetadata::new()
        .with_causation_id(uuid::Uuid::now_v7())
        .with_custom("user", "alice");
    // Stores may read metadata of different shapes by different paths.
    let meta_without_custom = EventMetadata::new().with_causation_id(uuid::Uuid::now_v7());
    let first = NewEvent::new(&AccountEvent::Deposited { amount: 5 }, meta.clone()).unwrap();
    let second = NewEvent::new(
        &AccountEvent::Debited {
            amount: 2,
            to: "x".into(),
        },
        meta_without_custom.clone(),
    )
    .unwrap();
    let ids = [first.event_id, second.event_id];
    let out = store
        .append(AppendRequest::new().append(
            stream.clone(),
            ExpectedVersion::NoStream,
            vec![first, second],
        ))
        .await
        .expect("append");
    assert_eq!(out.version_of(&stream), Some(StreamVersion::new(2)));
    assert!(!out.replayed);
    let (lo, hi) = out.positions.expect("positions of written events");
    assert!(lo < hi);

    let events = store
        .read_stream_to_end(&stream, StreamVersion::new(1))
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!([events[0].event_id, events[1].event_id], ids);
    assert_eq!(events[0].stream_version, StreamVersion::new(1));
    assert_eq!(events[1].stream_version, StreamVersion::new(2));
    assert_eq!((events[0].position, events[1].position), (lo, hi));
    assert_eq!(events[0].event_type, "Deposited");
    assert_eq!(events[1].event_type, "Debited");
    assert_eq!(events[0].metadata, meta);
    assert_eq!(events[0].metadata.custom["user"], "alice");
    assert_eq!(events[1].metadata, meta_without_custom);
    let decoded: RecordedEvent<AccountEvent> = events[1].decode().unwrap();
    assert_eq!(
        decoded.event,
        AccountEvent::Debited {
            amount: 2,
            to: "x".into()
        }
    );
    assert_eq!(
        store.stream_version(&stream).await.unwrap(),
        StreamVersion::new(2)
    );
    assert_eq!(
        store.stream_version(&unique("none")).await.unwrap(),
        StreamVersion::NONE
    );
    assert!(
        store
            .read_stream(&unique("none"), StreamVersion::new(1), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Long streams read completely, page by page, from any version.
pub async fn read_stream_pages_without_cap<S: EventStore + ?Sized>(store: &S) {
    let stream = unique("long");
    for batch in 0..5u64 {
        let events = (0..500).map(|i| raw("Tick", batch * 500 + i)).collect();
        store
            .append(AppendRequest::new().append(stream.clone(), ExpectedVersion::Any, events))
            .await
            .expect("append batch");
    }
    let all = store
        .read_stream_to_end(&stream, StreamVersion::new(1))
        .await
        .unwrap();
    assert_eq!(all.len(), 2500, "whole-stream read must not be capped");
    for (i, e) in all.iter().enumerate() {
        assert_eq!(
            e.stream_version.get(),
            i as u64 + 1,
            "versions are contiguous"
        );
        assert_eq!(
            e.data.to_value().expect("stored payloads are JSON")["n"],
            i as u64,
            "events are in append order"
        );
    }
    let tail = store
        .read_stream(&stream, StreamVersion::new(2401), 1000)
        .await
        .unwrap();
    assert_eq!(tail.len(), 100);
    assert_eq!(tail[0].stream_version.get(), 2401);
    let page = store
        .read_stream(&stream, StreamVersion::new(10), 7)
        .await
        .unwrap();
    assert_eq!(page.len(), 7);
    assert_eq!(page[6].stream_version.get(), 16);
}

/// `read_streams_to_end` returns each requested stream from its own
/// version, in request order, empty for unknown streams.
pub async fn read_several_streams_at_once<S: EventStore + ?Sized>(store: &S) {
    let a = unique("multi-a");
    let b = unique("multi-b");
    let none = unique("multi-none");
    for i in 0..5 {
        store
            .append(AppendRequest::new().append(a.clone(), ExpectedVersion::Any, vec![raw("A", i)]))
            .await
            .unwrap();
    }
    store
        .append(AppendRequest::new().append(
            b.clone(),
            ExpectedVersion::Any,
            vec![raw("B", 0), raw("B", 1)],
        ))
        .await
        .unwrap();
    let got = store
        .read_streams_to_end(&[
            (b.clone(), StreamVersion::new(2)),
            (none.clone(), StreamVersion::new(1)),
            (a.clone(), StreamVersion::new(3)),
            (a.clone(), StreamVersion::new(5)),
        ])
        .await
        .unwrap();
    let versions: Vec<Vec<u64>> = got
        .iter()
        .map(|events| events.iter().map(|e| e.stream_version.get()).collect())
        .collect();
    assert_eq!(versions, [vec![2], vec![], vec![3, 4, 5], vec![5]]);
    assert!(got[0].iter().all(|e| e.stream_id == b));
    assert!(got[2].iter().all(|e| e.stream_id == a));
}

/// `Any`, `NoStream`, `StreamExists` and `Exact` behave as documented and a
/// failure reports stream, expectation and actual version.
pub async fn expectations_are_enforced<S: EventStore + ?Sized>(store: &S) {
    let s = unique("exp");
    let one = |e: ExpectedVersion| AppendRequest::new().append(s.clone(), e, vec![raw("E", 0)]);
    expect_conflict(
        store.append(one(ExpectedVersion::StreamExists)).await,
        &s,
        ExpectedVersion::StreamExists,
        0,
    );
    expect_conflict(
        store
            .append(one(ExpectedVersion::Exact(StreamVersion::new(3))))
            .await,
        &s,
        ExpectedVersion::Exact(StreamVersion::new(3)),
        0,
    );
    store
        .append(one(ExpectedVersion::NoStream))
        .await
        .expect("NoStream on a new stream");
    expect_conflict(
        store.append(one(ExpectedVersion::NoStream)).await,
        &s,
        ExpectedVersion::NoStream,
        1,
    );
    store
        .append(one(ExpectedVersion::StreamExists))
        .await
        .expect("StreamExists");
    store.append(one(ExpectedVersion::Any)).await.expect("Any");
    let exact3 = ExpectedVersion::Exact(StreamVersion::new(3));
    let out = store
        .append(one(exact3))
        .await
        .expect("Exact at the right version");
    assert_eq!(out.version_of(&s), Some(StreamVersion::new(4)));
    expect_conflict(store.append(one(exact3)).await, &s, exact3, 4);
    assert_eq!(
        store.stream_version(&s).await.unwrap(),
        StreamVersion::new(4)
    );
}

/// One failed expectation fails the whole multi-stream append.
pub async fn multi_stream_append_is_atomic<S: EventStore + ?Sized>(store: &S) {
    let a = unique("a");
    let b = unique("b");
    let c = unique("c");
    store
        .append(AppendRequest::new().append(b.clone(), ExpectedVersion::Any, vec![raw("E", 0)]))
        .await
        .unwrap();
    let stale = AppendRequest::new()
        .append(a.clone(), ExpectedVersion::NoStream, vec![raw("E", 1)])
        .append(b.clone(), ExpectedVersion::NoStream, vec![raw("E", 2)])
        .append(c.clone(), ExpectedVersion::Any, vec![raw("E", 3)]);
    expect_conflict(store.append(stale).await, &b, ExpectedVersion::NoStream, 1);
    assert_eq!(
        store.stream_version(&a).await.unwrap(),
        StreamVersion::NONE,
        "nothing half-written"
    );
    assert_eq!(
        store.stream_version(&c).await.unwrap(),
        StreamVersion::NONE,
        "nothing half-written"
    );
    let stray = read_everything(store)
        .await
        .into_iter()
        .filter(|e| e.stream_id == a || e.stream_id == c)
        .count();
    assert_eq!(stray, 0, "no event of the failed append reached $all");

    let ok = AppendRequest::new()
        .append(
            a.clone(),
            ExpectedVersion::NoStream,
            vec![raw("E", 1), raw("E", 2)],
        )
        .append(
            b.clone(),
            ExpectedVersion::Exact(StreamVersion::new(1)),
            vec![raw("E", 3)],
        );
    let out = store.append(ok).await.unwrap();
    assert_eq!(out.version_of(&a), Some(StreamVersion::new(2)));
    assert_eq!(out.version_of(&b), Some(StreamVersion::new(2)));
    let (lo, hi) = out.positions.unwrap();
    let written: Vec<_> = read_everything(store)
        .await
        .into_iter()
        .filter(|e| e.position >= lo && e.position <= hi)
        .collect();
    assert_eq!(
        written.len(),
        3,
        "all events of one append lie between its positions"
    );
}

/// A stream that was only read is checked, not written.
pub async fn check_only_streams_are_checked<S: EventStore + ?Sized>(store: &S) {
    let target = unique("target");
    let guard = unique("guard");
    store
        .append(AppendRequest::new().append(guard.clone(), ExpectedVersion::Any, vec![raw("E", 0)]))
        .await
        .unwrap();
    let stale = AppendRequest::new()
        .append(target.clone(), ExpectedVersion::Any, vec![raw("E", 1)])
        .check(guard.clone(), ExpectedVersion::NoStream);
    expect_conflict(
        store.append(stale).await,
        &guard,
        ExpectedVersion::NoStream,
        1,
    );
    assert_eq!(
        store.stream_version(&target).await.unwrap(),
        StreamVersion::NONE
    );

    let missing = unique("missing");
    let fresh = AppendRequest::new()
        .append(target.clone(), ExpectedVersion::Any, vec![raw("E", 1)])
        .check(guard.clone(), ExpectedVersion::Exact(StreamVersion::new(1)))
        .check(missing.clone(), ExpectedVersion::NoStream);
    let out = store.append(fresh).await.unwrap();
    assert_eq!(out.version_of(&target), Some(StreamVersion::new(1)));
    assert_eq!(
        out.version_of(&guard),
        None,
        "check-only streams are not written"
    );
    assert_eq!(
        store.stream_version(&guard).await.unwrap(),
        StreamVersion::new(1)
    );
    assert_eq!(
        store.stream_version(&missing).await.unwrap(),
        StreamVersion::NONE
    );
}

/// Re-sending an append returns the original outcome and stores nothing twice;
/// reusing some ids in a different append is refused.
pub async fn appends_are_idempotent<S: EventStore + ?Sized>(store: &S) {
    let a = unique("idem-a");
    let b = unique("idem-b");
    let request = AppendRequest::new()
        .append(
            a.clone(),
            ExpectedVersion::NoStream,
            vec![raw("E", 1), raw("E", 2)],
        )
        .append(b.clone(), ExpectedVersion::NoStream, vec![raw("E", 3)]);
    let first = store.append(request.clone()).await.unwrap();
    // Another writer moves stream a on; the re-send must still be recognised.
    store
        .append(AppendRequest::new().append(a.clone(), ExpectedVersion::Any, vec![raw("E", 4)]))
        .await
        .unwrap();
    let again = store
        .append(request.clone())
        .await
        .expect("re-send is not a conflict");
    assert!(again.replayed, "re-send is reported as a replay");
    assert_eq!(again.stream_versions, first.stream_versions);
    assert_eq!(again.positions, first.positions);
    assert_eq!(
        store.stream_version(&a).await.unwrap(),
        StreamVersion::new(3)
    );
    assert_eq!(
        store.stream_version(&b).await.unwrap(),
        StreamVersion::new(1)
    );

    let reused = request.streams()[0].events[0].clone();
    let partial = AppendRequest::new().append(
        a.clone(),
        ExpectedVersion::Any,
        vec![reused.clone(), raw("E", 5)],
    );
    match store.append(partial).await {
        Err(Error::DuplicateEventId { event_id }) => assert_eq!(event_id, reused.event_id),
        other => panic!("expected DuplicateEventId, got {other:?}"),
    }
    let elsewhere = AppendRequest::new().append(b.clone(), ExpectedVersion::Any, vec![reused]);
    assert!(matches!(
        store.append(elsewhere).await,
        Err(Error::DuplicateEventId { .. })
    ));
    assert_eq!(
        store.stream_version(&a).await.unwrap(),
        StreamVersion::new(3)
    );
    assert_eq!(
        store.stream_version(&b).await.unwrap(),
        StreamVersion::new(1)
    );
}

/// `read_all` returns strictly increasing positions and pages by cursor.
pub async fn read_all_is_ordered_and_pages<S: EventStore + ?Sized>(store: &S) {
    let s = unique("all");
    let mut ids = Vec::new();
    for i in 0..30 {
        let e = raw("E", i);
        ids.push(e.event_id);
        store
            .append(AppendRequest::new().append(s.clone(), ExpectedVersion::Any, vec![e]))
            .await
            .unwrap();
    }
    let all = read_everything(store).await;
    for pair in all.windows(2) {
        assert!(
            pair[0].position < pair[1].position,
            "positions strictly increase"
        );
    }
    let mine: Vec<_> = all
        .iter()
        .filter(|e| e.stream_id == s)
        .map(|e| e.event_id)
        .collect();
    assert_eq!(
        mine, ids,
        "read_all returns this stream's events in append order"
    );
    let mut paged = Vec::new();
    let mut after = GlobalPosition::START;
    loop {
        let page = store.read_all(after, 7).await.unwrap();
        assert!(page.len() <= 7, "read_all honours the limit");
        let Some(last) = page.last() else { break };
        assert!(page[0].position > after, "read_all starts after the cursor");
        after = last.position;
        paged.extend(page.into_iter().map(|e| e.event_id));
    }
    assert_eq!(paged, all.iter().map(|e| e.event_id).collect::<Vec<_>>());
    assert!(store.read_all(after, 10).await.unwrap().is_empty());
}

/// An event that does not fit the requested type is an error naming it.
pub async fn undecodable_event_is_an_error<S: EventStore + ?Sized>(store: &S) {
    let s = unique("poison");
    store
        .append(AppendRequest::new().append(
            s.clone(),
            ExpectedVersion::Any,
            vec![NewEvent::raw("Deposited", json!({ "unexpected": true }))],
        ))
        .await
        .unwrap();
    let stored = store
        .read_stream_to_end(&s, StreamVersion::new(1))
        .await
        .unwrap();
    match stored[0].decode::<AccountEvent>() {
        Err(Error::Decode {
            stream_id,
            stream_version,
            event_type,
            position,
            ..
        }) => {
            assert_eq!(stream_id, s);
            assert_eq!(stream_version, StreamVersion::new(1));
            assert_eq!(event_type, "Deposited");
            assert_eq!(position, stored[0].position);
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    // The executor surfaces it too instead of folding around it.
    let executor = CommandExecutor::new(store);
    let result = executor
        .execute(Transfer {
            from: s.clone(),
            to: unique("to"),
            amount: 1,
        })
        .await;
    assert!(
        matches!(result, Err(CommandError::Store(Error::Decode { .. }))),
        "executor must report the undecodable event, got {result:?}"
    );
}

/// Emits an event to a stream it never declared.
struct Sneaky {
    declared: StreamId,
    other: StreamId,
}

impl Command for Sneaky {
    type Event = AccountEvent;
    type State = ();
    type Error = std::convert::Infallible;
    fn read_streams(&self) -> Vec<StreamId> {
        vec![self.declared.clone()]
    }
    fn apply(&self, _: &mut (), _: &RecordedEvent<AccountEvent>) {}
    fn handle(&self, _: &(), d: &mut Decision<AccountEvent>) -> Result<(), Self::Error> {
        d.emit(&self.declared, AccountEvent::Deposited { amount: 1 });
        d.emit(&self.other, AccountEvent::Deposited { amount: 1 });
        Ok(())
    }
}

/// Oversized payloads, duplicate ids and undeclared streams are typed errors
/// and leave nothing behind.
pub async fn bad_input_is_refused_and_writes_nothing<S: EventStore + ?Sized>(store: &S) {
    let s = unique("bad");
    let s2 = unique("bad2");
    let huge = NewEvent::raw("Huge", json!({ "blob": "x".repeat(2 * 1024 * 1024) }));
    let request = AppendRequest::new()
        .append(s.clone(), ExpectedVersion::Any, vec![raw("E", 1)])
        .append(s2.clone(), ExpectedVersion::Any, vec![huge]);
    assert!(matches!(
        store.append(request).await,
        Err(Error::PayloadTooLarge { .. })
    ));
    let dup = raw("E", 1);
    let request =
        AppendRequest::new().append(s.clone(), ExpectedVersion::Any, vec![dup.clone(), dup]);
    assert!(matches!(
        store.append(request).await,
        Err(Error::InvalidAppend { .. })
    ));
    let twice = AppendRequest::new()
        .append(s.clone(), ExpectedVersion::Any, vec![raw("E", 1)])
        .append(s.clone(), ExpectedVersion::Any, vec![raw("E", 2)]);
    assert!(matches!(
        store.append(twice).await,
        Err(Error::InvalidAppend { .. })
    ));

    let executor = CommandExecutor::new(store);
    let other = unique("undeclared");
    let result = executor
        .execute(Sneaky {
            declared: s.clone(),
            other: other.clone(),
        })
        .await;
    match result {
        Err(CommandError::Store(Error::UndeclaredStream { stream_id })) => {
            assert_eq!(stream_id, other)
        }
        other => panic!("expected UndeclaredStream, got {other:?}"),
    }
    assert_eq!(store.stream_version(&s).await.unwrap(), StreamVersion::NONE);
    let written = read_everything(store)
        .await
        .into_iter()
        .filter(|e| [&s, &s2, &other].contains(&&e.stream_id))
        .count();
    assert_eq!(written, 0, "nothing was written");
}

/// Events that a store could write but not read back identically are
/// refused before anything is sent, with [`Error::InvalidEvent`] naming the
/// stream, the event and the rule, and the same way on every store: deep or
/// NUL-holding or unreadable payloads and custom metadata, times outside
/// years 0001-9999, bad type names and schema versions.
pub async fn invalid_events_are_refused_and_write_nothing<S: EventStore + ?Sized>(store: &S) {
    let s = unique("invalid");
    let nested = |depth: usize| {
        let mut v = json!(1);
        for _ in 0..depth {
            v = json!([v]);
        }
        v
    };
    let at = |year: i32| {
        chrono::NaiveDate::from_ymd_opt(year, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
            .and_utc()
    };
    let with_meta = |m: EventMetadata| {
        let mut e = raw("E", 1);
        e.metadata = m;
        e
    };
    let with_time = |t| {
        let mut m = EventMetadata::new();
        m.occurred_at = t;
        with_meta(m)
    };
    let with_data = |text: &str| {
        let mut e = raw("E", 1);
        e.data = EventData::from_json_unchecked(text);
        e
    };
    let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
        .unwrap()
        .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
        .unwrap()
        .and_utc();
    let mut version_zero = raw("E", 1);
    version_zero.schema_version = 0;
    let cases: Vec<(&str, NewEvent)> = vec![
        (
            "NUL in a string",
            NewEvent::raw("E", json!({ "a": "x\u{0}y" })),
        ),
        ("NUL in a key", NewEvent::raw("E", json!({ "\u{0}": 1 }))),
        ("too deep", NewEvent::raw("E", nested(MAX_JSON_DEPTH + 1))),
        ("serde_json's limit", NewEvent::raw("E", nested(200))),
        ("lone surrogate", with_data(r#"{"a":"\ud800"}"#)),
        ("number out of range", with_data(r#"{"a":1e400}"#)),
        ("numeric scale", with_data(r#"{"a":1e-16384}"#)),
        ("duplicate key", with_data(r#"{"a":1,"a":2}"#)),
        ("not JSON", with_data("{not json")),
        ("year 10000", with_time(at(10000))),
        ("year 0", with_time(at(0))),
        ("year -1", with_time(at(-1))),
        ("leap second", with_time(leap)),
        (
            "finer than a microsecond",
            with_time(at(2026) + chrono::Duration::nanoseconds(1)),
        ),
        (
            "custom metadata 200 deep",
            with_meta(EventMetadata::new().with_custom("deep", nested(200))),
        ),
        (
            "NUL in custom metadata",
            with_meta(EventMetadata::new().with_custom("user", "a\u{0}")),
        ),
        ("empty type", NewEvent::raw("", json!({}))),
        ("NUL in type", NewEvent::raw("Dep\u{0}osited", json!({}))),
        ("newline in type", NewEvent::raw("Deposited\n", json!({}))),
        ("spaces around type", NewEvent::raw(" Deposited", json!({}))),
        (
            "zero-width type",
            NewEvent::raw("Depo\u{200b}sited", json!({})),
        ),
        ("long type", NewEvent::raw("T".repeat(256), json!({}))),
        ("schema version 0", version_zero),
        ("schema version above i32", {
            let mut e = raw("E", 1);
            e.schema_version = i32::MAX as u32 + 1;
            e
        }),
    ];
    for (what, bad) in cases {
        let bad_id = bad.event_id;
        let good = raw("E", 1);
        let request = AppendRequest::new().append(s.clone(), ExpectedVersion::Any, vec![good, bad]);
        match store.append(request).await {
            Err(Error::InvalidEvent {
                stream_id,
                event_id,
                ..
            }) => {
                assert_eq!(stream_id.as_ref(), Some(&s), "{what}: names the stream");
                assert_eq!(event_id, bad_id, "{what}: names the event");
            }
            other => panic!("{what}: expected InvalidEvent, got {other:?}"),
        }
        assert_eq!(
            store.stream_version(&s).await.unwrap(),
            StreamVersion::NONE,
            "{what}: nothing written"
        );
    }
    // The limits themselves are accepted and read back.
    let mut edge = NewEvent::raw("E", nested(MAX_JSON_DEPTH));
    edge.metadata = EventMetadata::new().with_custom("deep", nested(MAX_JSON_DEPTH - 1));
    edge.metadata.occurred_at = chrono::NaiveDate::from_ymd_opt(9999, 12, 31)
        .unwrap()
        .and_hms_nano_opt(23, 59, 59, 999_999_000)
        .unwrap()
        .and_utc();
    let mut first = raw("T".repeat(255).as_str(), 1);
    first.metadata.occurred_at = at(1);
    first.schema_version = i32::MAX as u32;
    store
        .append(AppendRequest::new().append(
            s.clone(),
            ExpectedVersion::NoStream,
            vec![first.clone(), edge.clone()],
        ))
        .await
        .expect("events at the limits are accepted");
    let back = store
        .read_stream_to_end(&s, StreamVersion::new(1))
        .await
        .expect("and read back");
    assert_eq!(back.len(), 2);
    for (sent, got) in [first, edge].iter().zip(&back) {
        assert_eq!(got.event_type, sent.event_type);
        assert_eq!(got.schema_version, sent.schema_version);
        assert_eq!(got.metadata, sent.metadata);
        assert_eq!(got.data.to_value().unwrap(), sent.data.to_value().unwrap());
    }
}

/// `ExpectedVersion::Exact` above [`StreamVersion::MAX`] (the largest
/// version a store can hold) is a typed error on every store, in appends and
/// check-only streams alike, never a conflict or an unchecked write.
pub async fn expected_versions_above_max_are_refused<S: EventStore + ?Sized>(store: &S) {
    let s = unique("huge");
    let other = unique("huge-other");
    store
        .append(AppendRequest::new().append(
            s.clone(),
            ExpectedVersion::Any,
            vec![raw("E", 1), raw("E", 2)],
        ))
        .await
        .unwrap();
    for v in [StreamVersion::MAX.get() + 1, 1 << 63 | 2, u64::MAX] {
        let expected = ExpectedVersion::Exact(StreamVersion::new(v));
        let requests = [
            AppendRequest::new().append(s.clone(), expected, vec![raw("E", 3)]),
            AppendRequest::new()
                .append(other.clone(), ExpectedVersion::Any, vec![raw("E", 1)])
                .check(s.clone(), expected),
            AppendRequest::new()
                .append(other.clone(), ExpectedVersion::Any, vec![raw("E", 1)])
                .append(s.clone(), expected, vec![raw("E", 3)]),
        ];
        for request in requests {
            match store.append(request).await {
                Err(Error::ExpectedVersionOutOfRange {
                    stream_id,
                    expected: e,
                }) => {
                    assert_eq!(stream_id, s);
                    assert_eq!(e, expected);
                }
                other => panic!("Exact({v}): expected ExpectedVersionOutOfRange, got {other:?}"),
            }
        }
    }
    assert_eq!(
        store.stream_version(&s).await.unwrap(),
        StreamVersion::new(2)
    );
    assert_eq!(
        store.stream_version(&other).await.unwrap(),
        StreamVersion::NONE
    );
    // The largest storable version is an ordinary expectation: a conflict.
    let expected = ExpectedVersion::Exact(StreamVersion::MAX);
    let result = store
        .append(AppendRequest::new().check(s.clone(), expected))
        .await;
    expect_conflict(result, &s, expected, 2);
}

/// A row recorded under one type name (or schema version) never decodes
/// silently as another: `Debited` holding a `Deposited` payload and a
/// schema version the type does not know are decode errors.
pub async fn decode_checks_type_and_schema_version<S: EventStore + ?Sized>(store: &S) {
    let s = unique("mislabelled");
    let mut unknown_version = NewEvent::raw("Deposited", json!({ "Deposited": { "amount": 1 } }));
    unknown_version.schema_version = 99;
    store
        .append(AppendRequest::new().append(
            s.clone(),
            ExpectedVersion::Any,
            vec![
                NewEvent::raw("Debited", json!({ "Deposited": { "amount": 1 } })),
                unknown_version,
                NewEvent::raw("Deposited", json!({ "Deposited": { "amount": 1 } })),
            ],
        ))
        .await
        .unwrap();
    let stored = store
        .read_stream_to_end(&s, StreamVersion::new(1))
        .await
        .unwrap();
    match stored[0].decode::<AccountEvent>() {
        Err(Error::Decode {
            source: DecodeError::TypeMismatch { recorded, decoded },
            event_type,
            ..
        }) => {
            assert_eq!((recorded.as_str(), decoded), ("Debited", "Deposited"));
            assert_eq!(event_type, "Debited");
        }
        other => panic!("expected a type mismatch, got {other:?}"),
    }
    match stored[1].decode::<AccountEvent>() {
        Err(Error::Decode {
            source: DecodeError::UnknownSchemaVersion { recorded, known },
            schema_version,
            ..
        }) => {
            assert_eq!((recorded, known), (99, AccountEvent::SCHEMA_VERSION));
            assert_eq!(schema_version, 99);
        }
        other => panic!("expected an unknown schema version, got {other:?}"),
    }
    assert_eq!(
        stored[2].decode::<AccountEvent>().unwrap().event,
        AccountEvent::Deposited { amount: 1 }
    );
}

/// A typed event for the edge-value cases: floats at their extremes,
/// 128-bit integers, text from all planes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Extremes {
    floats: Vec<f64>,
    small: Vec<f32>,
    maybe: Option<f64>,
    wide: (i128, u128),
    text: String,
}

impl Event for Extremes {
    fn event_type(&self) -> &'static str {
        "Extremes"
    }
}

/// Values at the edges of what JSON, serde_json and the store hold read
/// back identically: `f64`s bit for bit (with `float_roundtrip`, PostgreSQL
/// printing `1e300` as 301 digits still reads back the same `f64`), 128-bit
/// integers, text from every plane; and typed events that could not read
/// back (NaN, infinities) are refused when built.
pub async fn edge_values_read_back_identically<S: EventStore + ?Sized>(store: &S) {
    let s = unique("edges");
    let event = Extremes {
        floats: vec![
            1e300,
            -1e300,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            5e-324,
            0.1 + 0.2,
            1e16,
            123_456_789.123_456_79,
            std::f64::consts::PI,
            2.0_f64.powi(60),
            0.0,
        ],
        small: vec![f32::MAX, f32::MIN_POSITIVE, 0.1, 1e-45, 3.4e38],
        maybe: Some(1e-300),
        wide: (i128::MIN, u128::MAX),
        text: "zoë \u{1F600} \u{7f} \u{2028} \u{FEFF} \u{10FFFF} \"\\ \n\t日本".to_owned(),
    };
    let typed = NewEvent::new(&event, EventMetadata::new()).expect("finite event is accepted");
    let raw_event = NewEvent::raw(
        "Raw",
        json!({ "u": u64::MAX, "i": i64::MIN, "f": 1.5e-7, "nested": [[[{ "k": "\u{1F600}" }]]] }),
    );
    let raw_value = raw_event.data.to_value().unwrap();
    store
        .append(AppendRequest::new().append(
            s.clone(),
            ExpectedVersion::NoStream,
            vec![typed, raw_event],
        ))
        .await
        .unwrap();
    let back = store
        .read_stream_to_end(&s, StreamVersion::new(1))
        .await
        .unwrap();
    let decoded = back[0].decode::<Extremes>().unwrap().event;
    for (a, b) in decoded.floats.iter().zip(&event.floats) {
        assert_eq!(a.to_bits(), b.to_bits(), "{a:e} read back as {b:e}");
    }
    assert_eq!(decoded, event);
    assert_eq!(back[1].data.to_value().unwrap(), raw_value);

    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut e = event.clone();
        e.maybe = Some(bad);
        assert!(
            matches!(
                NewEvent::new(&e, EventMetadata::new()),
                Err(Error::InvalidEvent {
                    reason: InvalidEventReason::NonFiniteFloat,
                    stream_id: None,
                    ..
                })
            ),
            "{bad} is refused"
        );
        let mut e = event.clone();
        e.small[0] = bad as f32;
        assert!(NewEvent::new(&e, EventMetadata::new()).is_err());
    }
    // Through the executor and seed too, before anything is sent.
    let mut nul = event.clone();
    nul.text = "a\u{0}b".to_owned();
    match super::seed(store, &s, [nul]).await {
        Err(Error::InvalidEvent {
            reason:
                InvalidEventReason::Json {
                    part: JsonPart::Data,
                    problem: JsonProblem::Nul { .. },
                },
            ..
        }) => {}
        other => panic!("expected InvalidEvent for NUL, got {other:?}"),
    }
    assert_eq!(
        store.stream_version(&s).await.unwrap(),
        StreamVersion::new(2)
    );
}

/// Many tasks appending to a few shared streams: versions stay contiguous,
/// no event is lost or duplicated.
pub async fn concurrent_appends_lose_nothing<S: EventStore + ?Sized>(store: &S) {
    const TASKS: usize = 32;
    const APPENDS: usize = 25;
    let streams: Arc<Vec<StreamId>> = Arc::new((0..4).map(|_| unique("shared")).collect());
    let sent = std::sync::Mutex::new(Vec::new());
    futures::future::join_all((0..TASKS).map(|t| {
        let streams = streams.clone();
        let sent = &sent;
        async move {
            for i in 0..APPENDS {
                let stream = streams[(t + i) % streams.len()].clone();
                let events = vec![raw("E", i as u64), raw("E", i as u64)];
                let ids: Vec<_> = events
                    .iter()
                    .map(|e| (stream.clone(), e.event_id))
                    .collect();
                store
                    .append(AppendRequest::new().append(stream, ExpectedVersion::Any, events))
                    .await
                    .expect("Any never conflicts");
                sent.lock().unwrap().extend(ids);
            }
        }
    }))
    .await;
    let sent = sent.into_inner().unwrap();
    assert_eq!(sent.len(), TASKS * APPENDS * 2);
    let mut total = 0;
    for stream in streams.iter() {
        let events = store
            .read_stream_to_end(stream, StreamVersion::new(1))
            .await
            .unwrap();
        for (i, e) in events.iter().enumerate() {
            assert_eq!(
                e.stream_version.get(),
                i as u64 + 1,
                "versions are contiguous in {stream}"
            );
        }
        total += events.len();
    }
    assert_eq!(total, sent.len(), "every append landed once");
    let all = read_everything(store).await;
    let mut seen = HashSet::new();
    for e in all.iter().filter(|e| streams.contains(&e.stream_id)) {
        assert!(
            seen.insert(e.event_id),
            "event {} appears twice in read_all",
            e.event_id
        );
    }
    let expected: HashSet<_> = sent.iter().map(|(_, id)| *id).collect();
    assert_eq!(seen, expected, "read_all holds exactly the appended events");
}

/// Sixteen tasks doing random transfers through the executor while a reader
/// follows `read_all`: see [`run_transfer_load`].
pub async fn concurrent_transfers_conserve_money<S: EventStore + ?Sized>(store: &S) {
    let report = run_transfer_load(store, TransferLoad::default()).await;
    assert!(report.succeeded > 0, "some transfers must succeed");
}

/// Shape of a [`run_transfer_load`] run.
#[derive(Clone, Debug)]
pub struct TransferLoad {
    /// Concurrent writer tasks.
    pub tasks: usize,
    /// Transfers each task attempts.
    pub transfers_per_task: usize,
    /// Number of accounts; the first two are hot (half of all transfers pay
    /// into them).
    pub accounts: usize,
    /// Opening balance of every account.
    pub initial_balance: u64,
}

impl Default for TransferLoad {
    fn default() -> Self {
        Self {
            tasks: 16,
            transfers_per_task: 40,
            accounts: 8,
            initial_balance: 1_000,
        }
    }
}

/// What a [`run_transfer_load`] run did.
#[derive(Clone, Debug)]
pub struct TransferReport {
    /// Transfers that committed.
    pub succeeded: usize,
    /// Transfers refused by the overdraft rule.
    pub rejected: usize,
    /// Executor attempts beyond the first, summed.
    pub retries: u64,
    /// Events the live reader saw.
    pub events_seen: usize,
}

/// Random transfers from many tasks through the executor while a reader
/// follows `read_all`, then checks every invariant: money is conserved, no
/// account is ever overdrawn, stream versions are contiguous, every transfer
/// wrote exactly its two events, and the live reader saw every event exactly
/// once, in order, with no position it passed ever filled in later.
///
/// Transient store errors met by the reader are retried, so the run also
/// serves fault tests that kill connections underneath it.
pub async fn run_transfer_load<S: EventStore + ?Sized>(
    store: &S,
    load: TransferLoad,
) -> TransferReport {
    let accounts: Vec<StreamId> = (0..load.accounts).map(|_| unique("acct")).collect();
    // Not the last position read_all returns: a store may not show the
    // newest events yet while older transactions elsewhere are open.
    let mut start = GlobalPosition::START;
    for a in &accounts {
        let deposit = AccountEvent::Deposited {
            amount: load.initial_balance,
        };
        // Under injected faults the seed itself may be cut off: the same
        // request is re-sent, which a store recognises by its event ids.
        let request = AppendRequest::new().append(
            a.clone(),
            ExpectedVersion::Any,
            vec![NewEvent::new(&deposit, EventMetadata::new()).unwrap()],
        );
        let seeded = RetryPolicy::new()
            .max_attempts(100)
            .retry(|| store.append(request.clone()))
            .await
            .unwrap();
        start = start.max(seeded.positions.expect("seeded").1);
    }
    // The load checks what faults leave behind, not how fast the executor
    // gets past them: under injected faults (backends terminated every few
    // milliseconds on a loaded machine) a transfer may need minutes.
    let executor = CommandExecutor::new(store).with_retry_policy(
        RetryPolicy::new()
            .max_attempts(1000)
            .max_elapsed(std::time::Duration::from_secs(300)),
    );
    let done = AtomicBool::new(false);

    let reader = async {
        let mut seen: Vec<StoredEvent> = Vec::new();
        let mut after = start;
        // Once the writers are done: the head to read up to.
        let mut target = None;
        loop {
            if target.is_none() && done.load(Ordering::Acquire) {
                target = Some(store.head_position().await.expect("head_position"));
            }
            let page = match store.read_all(after, 100).await {
                Ok(page) => page,
                Err(e) if e.is_transient() => {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    continue;
                }
                Err(e) => panic!("read_all while writing: {e}"),
            };
            if let Some(last) = page.last() {
                assert!(page[0].position > after, "read_all went backwards");
                after = last.position;
                seen.extend(page);
            } else if target.is_some_and(|t| after >= t) {
                return seen;
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    };
    let writers = async {
        let results = futures::future::join_all((0..load.tasks).map(|_| async {
            let (mut ok, mut rejected, mut retries) = (0usize, 0usize, 0u64);
            for _ in 0..load.transfers_per_task {
                let (from, to, amount) = {
                    let mut rng = rand::rng();
                    let from = rng.random_range(0..accounts.len());
                    let to = if rng.random_bool(0.5) {
                        rng.random_range(0..2)
                    } else {
                        rng.random_range(0..accounts.len())
                    };
                    (
                        from,
                        to,
                        rng.random_range(1..=(load.initial_balance / 10).max(1)),
                    )
                };
                if from == to {
                    continue;
                }
                let command = Transfer {
                    from: accounts[from].clone(),
                    to: accounts[to].clone(),
                    amount,
                };
                match executor.execute(command).await {
                    Ok(outcome) => {
                        ok += 1;
                        retries += u64::from(outcome.attempts - 1);
                    }
                    Err(CommandError::Rejected(_)) => rejected += 1,
                    Err(e) => panic!("transfer failed: {e}"),
                }
            }
            (ok, rejected, retries)
        }))
        .await;
        done.store(true, Ordering::Release);
        results
            .into_iter()
            .fold((0, 0, 0), |a, r| (a.0 + r.0, a.1 + r.1, a.2 + r.2))
    };
    let (seen, (succeeded, rejected, retries)) = futures::join!(reader, writers);

    let mut total = 0i128;
    let mut stream_events = 0usize;
    for a in &accounts {
        let events = store
            .read_stream_to_end(a, StreamVersion::new(1))
            .await
            .unwrap();
        let mut balance = 0;
        for (i, e) in events.iter().enumerate() {
            assert_eq!(
                e.stream_version.get(),
                i as u64 + 1,
                "versions of {a} are contiguous"
            );
            balance += e.decode::<AccountEvent>().unwrap().event.delta();
            assert!(
                balance >= 0,
                "account {a} went negative: the overdraft rule was bypassed"
            );
        }
        stream_events += events.len() - 1;
        total += balance;
    }
    assert_eq!(
        total,
        i128::from(load.initial_balance) * accounts.len() as i128,
        "money is conserved"
    );
    assert_eq!(
        stream_events,
        succeeded * 2,
        "every transfer wrote exactly two events"
    );

    let after_start: Vec<_> = read_everything(store)
        .await
        .into_iter()
        .filter(|e| e.position > start)
        .collect();
    let ours = |e: &&StoredEvent| accounts.contains(&e.stream_id);
    assert_eq!(
        after_start.iter().filter(ours).count(),
        succeeded * 2,
        "two events per transfer in $all"
    );
    let unique_ids: HashSet<_> = after_start.iter().map(|e| e.event_id).collect();
    assert_eq!(
        unique_ids.len(),
        after_start.len(),
        "no event appears twice in $all"
    );
    let live: Vec<_> = seen.iter().map(|e| (e.position, e.event_id)).collect();
    let settled: Vec<_> = after_start
        .iter()
        .map(|e| (e.position, e.event_id))
        .collect();
    super::assert_same_sequence(
        "the live reader saw every event exactly once, in order",
        &live,
        &settled,
    );
    TransferReport {
        succeeded,
        rejected,
        retries,
        events_seen: seen.len(),
    }
}

/// Two withdrawals that each read both accounts of a pair but write only one
/// can never both succeed on stale state.
pub async fn no_write_skew<S: EventStore + ?Sized>(store: &S) {
    let a = unique("joint-a");
    let b = unique("joint-b");
    seed(store, &a, [AccountEvent::Deposited { amount: 100 }])
        .await
        .unwrap();
    seed(store, &b, [AccountEvent::Deposited { amount: 100 }])
        .await
        .unwrap();
    let executor =
        CommandExecutor::new(store).with_retry_policy(RetryPolicy::new().max_attempts(1000));
    let results = futures::future::join_all((0..24).map(|i| {
        let (account, partner) = if i % 2 == 0 {
            (a.clone(), b.clone())
        } else {
            (b.clone(), a.clone())
        };
        let executor = &executor;
        async move {
            executor
                .execute(JointWithdraw {
                    account,
                    partner,
                    amount: 30,
                })
                .await
        }
    }))
    .await;
    let succeeded = results.iter().filter(|r| r.is_ok()).count();
    for r in &results {
        if let Err(e) = r {
            assert!(
                matches!(e, CommandError::Rejected(_)),
                "unexpected failure {e}"
            );
        }
    }
    let mut combined = 0i128;
    for s in [&a, &b] {
        for e in store
            .read_stream_to_end(s, StreamVersion::new(1))
            .await
            .unwrap()
        {
            combined += e.decode::<AccountEvent>().unwrap().event.delta();
        }
    }
    assert!(combined >= 0, "write skew: combined balance is {combined}");
    assert_eq!(succeeded, 6, "exactly 200 / 30 = 6 withdrawals fit");
    assert_eq!(combined, 200 - 30 * succeeded as i128);
}
