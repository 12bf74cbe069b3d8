//! What an operator needs without writing SQL, as library functions (the
//! `eventcore` CLI and its web page call them): projections' state and the
//! actions on them, export and import as JSON Lines, a verification of what
//! the store relies on, stream listings and the server's connections.

mod browse;
mod projections;
mod sql;
mod transfer;
mod verify;

pub use browse::{ConnectionGroup, Connections, StreamSummary};
pub use projections::{
    LastError, ProjectionOperation, ProjectionRequest, ProjectionStatus, RunnerInfo,
};
pub use transfer::{ExportSelection, ExportSummary, ImportSummary};
pub use verify::{Check, CheckStatus, VerifyReport};
