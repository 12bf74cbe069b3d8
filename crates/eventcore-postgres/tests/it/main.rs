//! Integration tests against a real PostgreSQL: `DATABASE_URL` if set,
//! otherwise the throwaway cluster of `scripts/dev-db`.

mod admin;
mod concurrency;
mod config;
mod contract;
mod deadlines;
mod faults;
mod projections;
mod roundtrip;
mod schema;
mod store;
mod support;
