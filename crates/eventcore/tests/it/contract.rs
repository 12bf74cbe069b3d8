//! The store contract on the in-memory store.

eventcore::event_store_contract_tests!(|| async { eventcore::InMemoryEventStore::new() });

mod projections {
    eventcore::projection_contract_tests!(
        || async { eventcore::InMemoryEventStore::new() },
        |_: &eventcore::InMemoryEventStore| eventcore::InMemoryCheckpointStore::new()
    );
}

mod snapshots {
    eventcore::snapshot_contract_tests!(
        || async { eventcore::InMemoryEventStore::new() },
        |_: &eventcore::InMemoryEventStore| eventcore::InMemorySnapshotStore::new()
    );
}
