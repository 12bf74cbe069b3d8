//! Result rows: the printed table and the `--json` file.

use std::path::Path;

use anyhow::Context as _;
use serde_json::{Map, Value, json};

use crate::{ceiling::CeilingResult, cpu, measure::Measured};

/// One line of the report: a scenario at one writer count.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    /// Stable short name (`A`, `B10`, `E-read_all`, `G-C`, ...).
    pub(crate) name: String,
    /// Concurrent writers (readers, for read scenarios).
    pub(crate) writers: usize,
    /// Events per append (per read, for read scenarios).
    pub(crate) events_per_append: usize,
    pub(crate) events_per_sec: f64,
    pub(crate) ceiling_events_per_sec: Option<f64>,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// Scenario-specific figures, written to the JSON as extra fields.
    pub(crate) extra: Map<String, Value>,
    pub(crate) notes: Vec<String>,
}

impl Row {
    /// A row from a library measurement; `events_per_sec` is taken from it.
    pub(crate) fn from_measured(
        name: impl Into<String>,
        writers: usize,
        events_per_append: usize,
        m: &Measured,
    ) -> Self {
        let mut row = Row {
            name: name.into(),
            writers,
            events_per_append,
            events_per_sec: m.per_sec(m.events),
            ceiling_events_per_sec: None,
            p50_ms: m.quantile_ms(0.50),
            p99_ms: m.quantile_ms(0.99),
            extra: Map::new(),
            notes: Vec::new(),
        };
        row.extra
            .insert("ops_per_sec".into(), json!(round(m.per_sec(m.ops))));
        if m.conflicts > 0 {
            row.extra.insert(
                "conflicts_per_sec".into(),
                json!(round(m.per_sec(m.conflicts))),
            );
        }
        let per_event = |cpu| cpu::us_per_event(cpu, m.events as f64);
        if let Some(us) = per_event(m.client_cpu_seconds) {
            row.extra
                .insert("client_cpu_us_per_event".into(), json!(round3(us)));
            row.notes.push(format!("client CPU {us:.2} µs/event"));
        }
        if let Some(us) = per_event(m.server_cpu_seconds) {
            row.extra
                .insert("server_cpu_us_per_event".into(), json!(round3(us)));
            row.notes.push(format!("server CPU {us:.2} µs/event"));
        }
        if m.errors > 0 {
            row.extra.insert("errors".into(), json!(m.errors));
            row.notes.push(format!(
                "{} errors (first: {})",
                m.errors,
                m.first_error.as_deref().unwrap_or("?")
            ));
        }
        if m.ops == 0 {
            row.notes
                .push("no operation completed in the measured window".into());
        }
        row
    }

    /// Attaches the pgbench ceiling measured for the same workload, where one
    /// pgbench transaction writes (or reads) `events_per_tx` events.
    pub(crate) fn with_ceiling(
        mut self,
        ceiling: Option<&CeilingResult>,
        events_per_tx: f64,
    ) -> Self {
        if let Some(c) = ceiling {
            self.ceiling_events_per_sec = Some(c.tps * events_per_tx);
            self.extra.insert("ceiling_tps".into(), json!(round(c.tps)));
            self.extra.insert(
                "ceiling_latency_avg_ms".into(),
                json!(round3(c.latency_avg_ms)),
            );
            if let Some(p) = c.p50_ms {
                self.extra.insert("ceiling_p50_ms".into(), json!(round3(p)));
            }
            if let Some(p) = c.p99_ms {
                self.extra.insert("ceiling_p99_ms".into(), json!(round3(p)));
            }
            if c.failed > 0 {
                self.extra.insert(
                    "ceiling_failed_per_sec".into(),
                    json!(round(c.failed as f64 / c.seconds)),
                );
            }
            let (client, server) = c.cpu_us_per_event(events_per_tx);
            let mut cpu = Vec::new();
            if let Some(us) = client {
                self.extra
                    .insert("ceiling_client_cpu_us_per_event".into(), json!(round3(us)));
                cpu.push(format!("pgbench {us:.2}"));
            }
            if let Some(us) = server {
                self.extra
                    .insert("ceiling_server_cpu_us_per_event".into(), json!(round3(us)));
                cpu.push(format!("server {us:.2}"));
            }
            if !cpu.is_empty() {
                self.notes
                    .push(format!("ceiling CPU µs/event: {}", cpu.join(", ")));
            }
        }
        self
    }

    /// Attaches plain SQL doing the library's work where it is more than the
    /// ceiling's (`script`, e.g. reading the events a command folds instead
    /// of one version): what that work costs PostgreSQL by itself. Call
    /// after [`Self::with_ceiling`].
    pub(crate) fn with_same_work(
        mut self,
        script: &str,
        same_work: Option<&CeilingResult>,
        events_per_tx: f64,
    ) -> Self {
        let Some(w) = same_work else {
            return self;
        };
        let rate = w.tps * events_per_tx;
        self.extra
            .insert("same_work_sql_events_per_sec".into(), json!(round(rate)));
        let mut note = format!("plain SQL doing the same reads ({script}): {rate:.0} events/s");
        if let (_, Some(us)) = w.cpu_us_per_event(events_per_tx) {
            self.extra.insert(
                "same_work_server_cpu_us_per_event".into(),
                json!(round3(us)),
            );
            note.push_str(&format!(" (server CPU {us:.2} µs/event)"));
        }
        if let Some(c) = self.ceiling_events_per_sec.filter(|c| *c > 0.0) {
            let of_ceiling = round3(rate / c);
            self.extra
                .insert("same_work_sql_ratio".into(), json!(of_ceiling));
            note.push_str(&format!(", {of_ceiling} of the ceiling"));
        }
        if rate > 0.0 {
            let of_same = round3(self.events_per_sec / rate);
            self.extra
                .insert("ratio_to_same_work_sql".into(), json!(of_same));
            note.push_str(&format!("; the library reaches {of_same} of it"));
        }
        self.note(note)
    }

    /// Conflict retries per second (commands through the executor).
    pub(crate) fn retries_per_sec(self, m: &Measured) -> Self {
        self.extra("retries_per_sec", round(m.per_sec(m.retries)))
    }

    pub(crate) fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    pub(crate) fn extra(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// Library events/s over ceiling events/s.
    pub(crate) fn ratio(&self) -> Option<f64> {
        self.ceiling_events_per_sec
            .filter(|c| *c > 0.0)
            .map(|c| self.events_per_sec / c)
    }

    fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("name".into(), json!(self.name));
        o.insert("writers".into(), json!(self.writers));
        o.insert("events_per_append".into(), json!(self.events_per_append));
        o.insert("events_per_sec".into(), json!(round(self.events_per_sec)));
        o.insert(
            "ceiling_events_per_sec".into(),
            json!(self.ceiling_events_per_sec.map(round)),
        );
        o.insert("ratio".into(), json!(self.ratio().map(round3)));
        o.insert("p50_ms".into(), json!(round3(self.p50_ms)));
        o.insert("p99_ms".into(), json!(round3(self.p99_ms)));
        for (k, v) in &self.extra {
            o.insert(k.clone(), v.clone());
        }
        if !self.notes.is_empty() {
            o.insert("notes".into(), json!(self.notes.join("; ")));
        }
        Value::Object(o)
    }
}

pub(crate) fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn fmt_ms(x: f64) -> String {
    if x < 1.0 {
        format!("{x:.3}")
    } else {
        format!("{x:.2}")
    }
}

fn fmt_rate(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

const HEADER: [&str; 9] = [
    "name",
    "writers",
    "ev/append",
    "events/s",
    "ceiling ev/s",
    "ratio",
    "p50 ms",
    "p99 ms",
    "notes",
];

/// A row's cells under [`HEADER`].
fn cells(r: &Row) -> [String; 9] {
    [
        r.name.clone(),
        r.writers.to_string(),
        r.events_per_append.to_string(),
        fmt_rate(r.events_per_sec),
        r.ceiling_events_per_sec.map_or("-".into(), fmt_rate),
        r.ratio().map_or("-".into(), |x| format!("{x:.2}")),
        fmt_ms(r.p50_ms),
        fmt_ms(r.p99_ms),
        r.notes.join("; "),
    ]
}

/// Prints one scenario's rows as a table on stdout.
pub(crate) fn print_table(title: &str, rows: &[Row]) {
    if rows.is_empty() {
        return;
    }
    let cells: Vec<[String; 9]> = rows.iter().map(cells).collect();
    let mut widths = HEADER.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    // Notes go last and unpadded.
    widths[8] = 0;
    println!("\n## {title}\n");
    let line = |cols: &[String]| {
        let mut out = String::new();
        for (i, (c, w)) in cols.iter().zip(widths).enumerate() {
            if i == 0 || i == 8 {
                out.push_str(&format!("{c:<w$}  "));
            } else {
                out.push_str(&format!("{c:>w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(&HEADER.map(String::from));
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, w)| "-".repeat(if i == 8 { 5 } else { *w }))
        .collect();
    line(&rule);
    for row in &cells {
        line(row);
    }
}

/// Writes every row as a JSON array.
pub(crate) fn write_json(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let array = Value::Array(rows.iter().map(Row::to_json).collect());
    let text = serde_json::to_string_pretty(&array)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// The rows as a Markdown table (for pasting into docs/benchmarks.md).
pub(crate) fn markdown(rows: &[Row]) -> String {
    let mut out = format!(
        "| {} |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
        HEADER.join(" | ")
    );
    for r in rows {
        let cells = cells(r).map(|c| c.replace('|', "\\|"));
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}
