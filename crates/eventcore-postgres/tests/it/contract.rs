//! The shared store contract, on PostgreSQL.

eventcore::event_store_contract_tests!(eventcore_test_support::fresh_store);

mod projections {
    eventcore::projection_contract_tests!(
        eventcore_test_support::fresh_store,
        |store: &eventcore_postgres::PostgresEventStore| {
            eventcore_postgres::PostgresCheckpointStore::new(store.clone())
        }
    );
}

mod snapshots {
    eventcore::snapshot_contract_tests!(
        eventcore_test_support::fresh_store,
        |store: &eventcore_postgres::PostgresEventStore| {
            eventcore_postgres::PostgresSnapshotStore::new(store.clone())
        }
    );
}
