//! Rendering results as text or JSON. Secrets in URLs are masked with
//! [`eventcore_postgres::redact_secrets`].

use std::{
    ffi::OsString,
    io::{self, BufWriter, IsTerminal, Stdout, Write},
    time::Duration,
};

use anstyle::{AnsiColor, Style};

use chrono::SecondsFormat;
use eventcore::StoredEvent;
use eventcore_postgres::PoolMetrics;
use serde_json::{Value, json};

/// Whether to colour what goes to a stream: only a terminal, and never
/// while `NO_COLOR` is set to anything but the empty string
/// (<https://no-color.org>).
pub(crate) fn colour(is_terminal: bool, no_color: Option<OsString>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Whether stderr may be coloured (logs).
pub(crate) fn stderr_colour() -> bool {
    colour(io::stderr().is_terminal(), std::env::var_os("NO_COLOR"))
}

/// How a verdict looks in colour.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Tone {
    Good,
    Warn,
    Bad,
}

/// Buffered standard output; callers flush when a batch is complete.
pub(crate) struct Output {
    out: BufWriter<Stdout>,
    json: bool,
    colour: bool,
}

impl Output {
    /// Output in JSON if `json`, else text (coloured verdicts on a terminal).
    pub(crate) fn new(json: bool) -> Self {
        Self {
            out: BufWriter::new(io::stdout()),
            json,
            colour: colour(io::stdout().is_terminal(), std::env::var_os("NO_COLOR")),
        }
    }

    /// `text` in the colour of `tone`, when stdout takes colour.
    pub(crate) fn paint(&self, text: &str, tone: Tone) -> String {
        if !self.colour {
            return text.to_owned();
        }
        let colour = match tone {
            Tone::Good => AnsiColor::Green,
            Tone::Warn => AnsiColor::Yellow,
            Tone::Bad => AnsiColor::Red,
        };
        let style = Style::new().fg_color(Some(colour.into())).bold();
        format!("{style}{text}{style:#}")
    }

    /// Whether JSON was asked for.
    pub(crate) fn json(&self) -> bool {
        self.json
    }

    /// Writes one JSON value on its own line.
    pub(crate) fn json_line(&mut self, value: &Value) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        self.out.write_all(b"\n")
    }

    /// Writes `label: value` rows with the values aligned.
    pub(crate) fn rows(&mut self, rows: &[(&str, String)]) -> io::Result<()> {
        let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 1;
        for (label, value) in rows {
            writeln!(self.out, "{:<width$} {value}", format!("{label}:"))?;
        }
        Ok(())
    }

    /// Writes one event: a JSON line, or a header line plus its data and
    /// metadata (the header names the stream if `with_stream`).
    pub(crate) fn event(&mut self, event: &StoredEvent, with_stream: bool) -> io::Result<()> {
        if self.json {
            return self.json_line(&event_json(event));
        }
        if with_stream {
            write!(self.out, "{}  ", event.stream_id)?;
        }
        writeln!(
            self.out,
            "v{}  pos {}  {}  {}",
            event.stream_version,
            event.position,
            event.event_type,
            timestamp(event)
        )?;
        // Compact, whatever spacing the store returned the JSON with; text
        // that is not JSON (a corrupt row) is shown as it is.
        match event.data.to_value() {
            Ok(value) => writeln!(self.out, "    data:     {value}")?,
            Err(e) => writeln!(self.out, "    data:     {} (not JSON: {e})", event.data)?,
        }
        writeln!(self.out, "    metadata: {}", metadata_json(event))
    }

    /// Writes a free-form text line.
    pub(crate) fn line(&mut self, text: &str) -> io::Result<()> {
        writeln!(self.out, "{text}")
    }

    /// Flushes buffered output to stdout.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn timestamp(event: &StoredEvent) -> String {
    event
        .recorded_at
        .to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn metadata_json(event: &StoredEvent) -> Value {
    // EventMetadata is plain data (ids, a timestamp, a JSON map), so this
    // cannot fail; a null would only hide a bug, not lose an event.
    serde_json::to_value(&event.metadata).unwrap_or(Value::Null)
}

/// An event as JSON, with the field names of [`StoredEvent`].
pub(crate) fn event_json(event: &StoredEvent) -> Value {
    json!({
        "stream_id": event.stream_id.as_str(),
        "stream_version": event.stream_version.get(),
        "position": event.position.get(),
        "event_id": event.event_id.to_string(),
        "event_type": event.event_type,
        "schema_version": event.schema_version,
        "recorded_at": timestamp(event),
        "data": event.data.to_value().unwrap_or_else(|e| json!({
            "not_json": event.data.get(),
            "error": e.to_string(),
        })),
        "metadata": metadata_json(event),
    })
}

/// Pool metrics as JSON, with the field names of [`PoolMetrics`]
/// (durations in milliseconds).
pub(crate) fn pool_json(m: &PoolMetrics) -> Value {
    json!({
        "current_connections": m.current_connections,
        "idle_connections": m.idle_connections,
        "max_connections": m.max_connections,
        "utilization_percent": m.utilization_percent,
        "connection_timeouts": m.connection_timeouts,
        "avg_acquisition_time_ms": millis(m.avg_acquisition_time),
        "peak_connections": m.peak_connections,
        "total_acquisitions": m.total_acquisitions,
    })
}

/// Pool metrics as text rows.
pub(crate) fn pool_rows(m: &PoolMetrics) -> Vec<(&'static str, String)> {
    vec![
        ("current connections", m.current_connections.to_string()),
        ("idle connections", m.idle_connections.to_string()),
        ("max connections", m.max_connections.to_string()),
        ("utilization", format!("{:.1}%", m.utilization_percent)),
        ("connection timeouts", m.connection_timeouts.to_string()),
        ("avg acquisition time", duration(m.avg_acquisition_time)),
        ("peak connections", m.peak_connections.to_string()),
        ("total acquisitions", m.total_acquisitions.to_string()),
    ]
}

/// A duration in milliseconds, for JSON.
pub(crate) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A duration for people: `1.2ms`, `3.0s`, `0s`.
pub(crate) fn duration(d: Duration) -> String {
    if d.is_zero() {
        "0s".to_owned()
    } else {
        format!("{d:.1?}")
    }
}

/// `yes` or `no`.
pub(crate) fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

/// `value`, or `none`.
pub(crate) fn or_none<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "none".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None));
        assert!(!colour(true, Some("1".into())));
        // The convention: an empty NO_COLOR does not count.
        assert!(colour(true, Some("".into())));
        assert!(!colour(false, Some("".into())));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(Duration::from_micros(1234)), "1.2ms");
        assert_eq!(duration(Duration::from_secs(3)), "3.0s");
        assert_eq!(duration(Duration::ZERO), "0s");
        assert_eq!(millis(Duration::from_micros(1500)), 1.5);
    }
}
