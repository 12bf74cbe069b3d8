//! Round-trip properties on the in-memory store: what an append accepts
//! reads back identically; what it refuses is a typed error that writes
//! nothing. The same cases run on PostgreSQL (`eventcore-postgres`'s
//! `tests/it/roundtrip.rs`).

mod cases;

use eventcore::{InMemoryEventStore, StreamId};
use proptest::prelude::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn accepted_appends_read_back_and_refused_ones_write_nothing() {
    let rt = runtime();
    let store = InMemoryEventStore::new();
    cases::run(512, cases::any_case(), |case| {
        rt.block_on(cases::check_case(&store, &case)).map(drop)
    });
    rt.block_on(cases::everything_reads(&store));
}

#[test]
fn valid_appends_are_accepted_and_read_back() {
    let rt = runtime();
    let store = InMemoryEventStore::new();
    cases::run(256, cases::valid_case(), |case| {
        let accepted = rt.block_on(cases::check_case(&store, &case))?;
        prop_assert!(accepted, "a valid append was refused: {case:?}");
        Ok(())
    });
}

#[test]
fn accepted_stream_ids_are_unambiguous() {
    cases::run(2048, cases::name(), |name| {
        if let Ok(id) = StreamId::new(&name) {
            prop_assert_eq!(id.as_str().trim(), id.as_str());
            prop_assert!(!id.as_str().chars().any(char::is_control));
            prop_assert!(id.as_str().len() <= StreamId::MAX_LEN);
            let json = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(serde_json::from_str::<StreamId>(&json).unwrap(), id);
        } else {
            prop_assert!(
                serde_json::from_str::<StreamId>(&serde_json::to_string(&name).unwrap()).is_err()
            );
        }
        Ok(())
    });
}
