//! The registry of scenarios. Each file is one family of them, built on
//! `measure` (the timed loop), `ctx` (stores and the ceiling) and `workload`
//! (the shared event, streams and workers); no scenario uses another.
//!
//! Adding a scenario: write `scenarios/<family>.rs` with an
//! `async fn run(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>>` and add an
//! entry to [`ALL`]. `--only`, the tables and the JSON pick it up from there.

mod append;
mod command;
mod memory;
mod read;
mod snapshot;
mod subscription;

use futures::future::BoxFuture;

use crate::{ctx::Ctx, report::Row};

/// One scenario: its `--only` name, its title, and how it runs.
pub(crate) struct Scenario {
    /// The name `--only` takes.
    pub(crate) key: &'static str,
    pub(crate) title: &'static str,
    /// Whether it needs the PostgreSQL server (G does not).
    pub(crate) needs_postgres: bool,
    run: for<'a> fn(&'a mut Ctx) -> BoxFuture<'a, anyhow::Result<Vec<Row>>>,
}

impl Scenario {
    pub(crate) async fn run(&self, ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
        (self.run)(ctx).await
    }
}

/// Every scenario, in run order.
pub(crate) const ALL: &[Scenario] = &[
    Scenario {
        key: "A",
        title: "A: 1 event per append, random stream of 10,000, version read first",
        needs_postgres: true,
        run: |ctx| Box::pin(append::run_a(ctx)),
    },
    Scenario {
        key: "A-cmd",
        title: "A-cmd: A through CommandExecutor (fold the stream, append 1 event)",
        needs_postgres: true,
        run: |ctx| Box::pin(command::run_a_cmd(ctx)),
    },
    Scenario {
        key: "B",
        title: "B: batched appends (10 and 100 events per append)",
        needs_postgres: true,
        run: |ctx| Box::pin(append::run_b(ctx)),
    },
    Scenario {
        key: "C",
        title: "C: 2-stream atomic transfer through CommandExecutor",
        needs_postgres: true,
        run: |ctx| Box::pin(command::run_c(ctx)),
    },
    Scenario {
        key: "D",
        title: "D: one hot stream, every writer on it",
        needs_postgres: true,
        run: |ctx| Box::pin(command::run_d(ctx)),
    },
    Scenario {
        key: "E",
        title: "E: reads (read_stream of 100, read_all pages of 1,000)",
        needs_postgres: true,
        run: |ctx| Box::pin(read::run_e(ctx)),
    },
    Scenario {
        key: "F",
        title: "F: subscription latency, append to delivery, under A with 16 writers",
        needs_postgres: true,
        run: |ctx| Box::pin(subscription::run_f(ctx)),
    },
    Scenario {
        key: "G",
        title: "G: write scenarios on InMemoryEventStore (no ceiling)",
        needs_postgres: false,
        run: |ctx| Box::pin(memory::run_g(ctx)),
    },
    Scenario {
        key: "S",
        title: "S: a command on a stream of 100,000 events vs 100, with snapshots",
        needs_postgres: true,
        run: |ctx| Box::pin(snapshot::run_s(ctx)),
    },
];

/// The scenarios named by `only` (case-insensitive), in run order; all of
/// them if `only` is empty.
pub(crate) fn select(only: &[String]) -> anyhow::Result<Vec<&'static Scenario>> {
    let wanted: Vec<&str> = only
        .iter()
        .map(|k| k.trim())
        .filter(|k| !k.is_empty())
        .collect();
    if let Some(unknown) = wanted
        .iter()
        .find(|k| !ALL.iter().any(|s| s.key.eq_ignore_ascii_case(k)))
    {
        let known: Vec<_> = ALL.iter().map(|s| s.key).collect();
        anyhow::bail!("unknown scenario {unknown:?}; known: {}", known.join(", "));
    }
    Ok(ALL
        .iter()
        .filter(|s| wanted.is_empty() || wanted.iter().any(|k| s.key.eq_ignore_ascii_case(k)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_by_key_in_run_order() {
        let keys = |only: &[&str]| -> Vec<&str> {
            let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
            select(&only).unwrap().iter().map(|s| s.key).collect()
        };
        assert_eq!(keys(&["e", " A-CMD", "a", ""]), ["A", "A-cmd", "E"]);
        assert_eq!(keys(&[]).len(), ALL.len());
        assert!(select(&["A16".to_string()]).is_err());
    }
}
