//! G: the write scenarios A, B and C on `InMemoryEventStore`: the cost of the
//! library itself with no database (events/s only, no ceiling).

use std::time::Duration;

use eventcore::InMemoryEventStore;

use crate::{
    ctx::Ctx,
    measure::Timing,
    provision::seed_streams,
    report::Row,
    workload::{
        funded, measure_appends, measure_transfers, seed_order, transfer_row, write_streams,
    },
};

async fn seeded_orders() -> anyhow::Result<InMemoryEventStore> {
    let store = InMemoryEventStore::new();
    seed_streams(&store, &write_streams()?, seed_order).await?;
    Ok(store)
}

/// The store keeps every event (about 1 KB each in memory), so runs are
/// capped at this long to bound the benchmark's memory to a few GB.
const MAX_MEASURE: Duration = Duration::from_secs(5);

pub(super) async fn run_g(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let timing = Timing {
        measure: ctx.timing.measure.min(MAX_MEASURE),
        ..ctx.timing
    };
    let streams = write_streams()?;
    let mut rows = Vec::new();
    for (writers, per_append) in [(1, 1), (16, 1), (16, 10)] {
        let name = if per_append == 1 {
            "G-A".to_owned()
        } else {
            format!("G-B{per_append}")
        };
        eprintln!("[{name}] {writers} writers, in memory");
        let store = seeded_orders().await?;
        let mut m = measure_appends(&store, &streams, writers, per_append, timing).await?;
        // No server takes part; what it did meanwhile is not this row's.
        m.server_cpu_seconds = None;
        rows.push(Row::from_measured(name, writers, per_append, &m).note("in memory"));
    }
    eprintln!("[G-C] 16 writers, in memory");
    let store = InMemoryEventStore::new();
    seed_streams(&store, &streams, funded).await?;
    let mut m = measure_transfers(&store, &streams, 16, timing).await?;
    m.server_cpu_seconds = None;
    rows.push(transfer_row("G-C", 16, &m).note("in memory"));
    Ok(rows)
}
