//! Integration tests against a real PostgreSQL: `DATABASE_URL` if set,
//! otherwise the throwaway cluster of `scripts/dev-db`.

mod concurrency;
mod contract;
mod faults;
mod projections;
mod roundtrip;
mod schema;
mod store;
mod support;
