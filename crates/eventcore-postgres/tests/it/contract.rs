//! The shared store contract, on PostgreSQL.

eventcore::event_store_contract_tests!(crate::support::fresh_store);
