//! Round-trip properties on PostgreSQL, against a fresh schema: what an
//! append accepts reads back identically from `jsonb` (numbers equal as
//! numbers, keys in any order); what it refuses is a typed error that writes
//! nothing. The cases are the in-memory store's (`eventcore`'s
//! `tests/it/roundtrip/cases.rs`), so both stores meet the same rules.

#[path = "../../../eventcore/tests/it/roundtrip/cases.rs"]
mod cases;

use eventcore_test_support::fresh_store;
use proptest::prelude::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn roundtrip_accepted_appends_read_back_and_refused_ones_write_nothing() {
    let rt = runtime();
    // sqlx returns connections to the pool on drop, which needs the runtime.
    let _context = rt.enter();
    let store = rt.block_on(fresh_store());
    cases::run(256, cases::any_case(), |case| {
        rt.block_on(cases::check_case(&store, &case)).map(drop)
    });
    // Every row written reads back through `read_all` too.
    rt.block_on(cases::everything_reads(&store));
}

#[test]
fn roundtrip_valid_appends_are_accepted_and_read_back() {
    let rt = runtime();
    // sqlx returns connections to the pool on drop, which needs the runtime.
    let _context = rt.enter();
    let store = rt.block_on(fresh_store());
    cases::run(64, cases::valid_case(), |case| {
        let accepted = rt.block_on(cases::check_case(&store, &case))?;
        prop_assert!(accepted, "a valid append was refused: {case:?}");
        Ok(())
    });
}
