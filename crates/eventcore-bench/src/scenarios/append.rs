//! A and B: plain `EventStore::append`, the version read first and expected
//! exactly, like the ceiling scripts A_append1 and B_append10.

use crate::{
    ceiling::Script,
    ctx::{Ctx, close},
    report::Row,
    workload::{measure_appends, seed_order, write_streams},
};

/// One library run plus its ceiling: a fresh store seeded with the 10,000
/// streams, and pgbench on `script` at the same client count just before
/// and just after the library run.
async fn append_row(
    ctx: &mut Ctx,
    name: &str,
    script: &Script,
    writers: usize,
    per_append: usize,
) -> anyhow::Result<Row> {
    eprintln!("[{name}] {writers} writers, {per_append} events per append");
    let streams = write_streams()?;
    let schema = format!("bench_{}_w{writers}", name.to_lowercase());
    let store = ctx
        .prepared_store(&schema, writers, &streams, seed_order)
        .await?;
    let timing = ctx.timing;
    let (m, ceiling) = ctx
        .bracketed(script, writers, async move {
            let m = measure_appends(&store, &streams, writers, per_append, timing).await?;
            close(store).await;
            Ok(m)
        })
        .await?;
    let mut row = Row::from_measured(name, writers, per_append, &m)
        .with_ceiling(ceiling.as_ref(), per_append as f64);
    if m.conflicts > 0 {
        row = row.note(format!(
            "{} version conflict(s) (counted, not retried)",
            m.conflicts
        ));
    }
    Ok(row)
}

pub(super) async fn run_a(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for w in ctx.sweep(&[1, 16], &[1, 4, 16, 64]) {
        rows.push(append_row(ctx, "A", &Script::append1(), w, 1).await?);
    }
    Ok(rows)
}

pub(super) async fn run_b(ctx: &mut Ctx) -> anyhow::Result<Vec<Row>> {
    let writers = ctx.sweep(&[16], &[1, 16]);
    let mut rows = Vec::new();
    for per_append in [10, 100] {
        for &w in &writers {
            let name = format!("B{per_append}");
            rows.push(append_row(ctx, &name, &Script::append_n(per_append), w, per_append).await?);
        }
    }
    Ok(rows)
}
