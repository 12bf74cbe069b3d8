//! The store contract on the in-memory store.

eventcore::event_store_contract_tests!(|| async { eventcore::InMemoryEventStore::new() });
