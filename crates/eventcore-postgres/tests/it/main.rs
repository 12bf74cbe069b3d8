//! Integration tests against a real PostgreSQL: `DATABASE_URL` if set,
//! otherwise the throwaway cluster of `scripts/dev-db`.

mod admin;
mod concurrency;
mod config;
mod contract;
mod counter;
mod deadlines;
mod faults;
mod pg_projection;
mod pooler;
mod projections;
mod roundtrip;
mod schema;
mod standby;
mod store;
