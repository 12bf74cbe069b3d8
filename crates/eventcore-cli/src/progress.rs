//! Progress bars on stderr (indicatif): drawn only on a terminal and never
//! with `--json`; plain, so `NO_COLOR` has nothing to strip.

use std::{io::IsTerminal, time::Duration};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` events with count, rate and time left, or a spinner
/// with count and rate if the length is unknown; hidden unless stderr is a
/// terminal and `json` is off.
pub(crate) fn events_bar(len: Option<u64>, json: bool, message: &str) -> ProgressBar {
    let bar = match len {
        Some(len) => ProgressBar::new(len).with_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {human_pos}/{human_len} events ({per_sec:0}, {eta} left)",
            )
            .expect("valid template")
            .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {human_pos} events ({per_sec:0})")
                .expect("valid template"),
        ),
    };
    bar.set_message(message.to_owned());
    if json || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    } else {
        bar.enable_steady_tick(Duration::from_millis(200));
    }
    bar
}
