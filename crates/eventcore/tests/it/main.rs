//! The core's tests against the in-memory store: one binary.

mod contract;
mod executor;
mod roundtrip;
