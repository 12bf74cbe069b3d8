//! `eventcore export` and `eventcore import`: JSON Lines out and in.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, BufWriter, Write},
    process::ExitCode,
};

use anyhow::Context;
use eventcore::EventStore;
use eventcore_postgres::{ExportSelection, PostgresEventStore};
use serde_json::json;

use crate::{
    cli::{ExportArgs, ImportArgs},
    output::Output,
    progress,
};

pub(crate) async fn export(
    store: &PostgresEventStore,
    args: &ExportArgs,
    out: &mut Output,
) -> anyhow::Result<ExitCode> {
    let selection = match (&args.category, args.stream.is_empty()) {
        (Some(prefix), _) => ExportSelection::Category(prefix.clone()),
        (None, false) => ExportSelection::Streams(args.stream.clone()),
        (None, true) => ExportSelection::All,
    };
    let head = store.head_position().await?;
    let total = store.count_selected(&selection, head).await?;
    let bar = progress::events_bar(Some(total), out.json(), "export");
    let mut sink: Box<dyn Write + Send> = match &args.output {
        Some(path) => Box::new(BufWriter::new(
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(BufWriter::new(io::stdout())),
    };
    let summary = store
        .export(&selection, &mut *sink, |n| bar.set_position(n))
        .await
        .context("export failed")?;
    sink.flush().context("cannot write the export")?;
    bar.finish_and_clear();
    let value = json!({
        "events": summary.events,
        "streams": summary.streams,
        "head": summary.head.get(),
        "output": args.output.as_ref().map(|p| p.display().to_string()),
    });
    let text = format!(
        "exported {} events of {} streams (everything committed up to position {})",
        summary.events, summary.streams, summary.head
    );
    // The events may be on stdout: the summary then goes to stderr.
    match (&args.output, out.json()) {
        (Some(_), true) => out.json_line(&value)?,
        (Some(_), false) => out.line(&text)?,
        (None, true) => eprintln!("{value}"),
        (None, false) => eprintln!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn import(
    store: &PostgresEventStore,
    args: &ImportArgs,
    out: &mut Output,
) -> anyhow::Result<ExitCode> {
    let (mut input, lines): (Box<dyn BufRead + Send>, Option<u64>) = match &args.input {
        Some(path) => {
            let open =
                || File::open(path).with_context(|| format!("cannot open {}", path.display()));
            // A first pass counts the lines, for the bar's length.
            let lines = BufReader::new(open()?).lines().count() as u64;
            (Box::new(BufReader::new(open()?)), Some(lines))
        }
        None => (Box::new(BufReader::new(io::stdin())), None),
    };
    let bar = progress::events_bar(lines, out.json(), "import");
    let summary = store
        .import(&mut *input, |n| bar.set_position(n))
        .await
        .context(
            "import failed (what came before the line named was imported; run it again to finish)",
        )?;
    bar.finish_and_clear();
    if out.json() {
        out.json_line(&serde_json::to_value(&summary)?)?;
    } else {
        out.line(&format!(
            "imported {} of {} events in {} appends ({} already present)",
            summary.imported, summary.events, summary.appends, summary.already_present
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
