//! The timed loop every scenario uses: workers spawned as tasks, a warm-up,
//! a measured window in which every completed operation counts, latency
//! histograms, and the CPU this process and the server spent meanwhile.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hdrhistogram::Histogram;

use crate::cpu;

/// Warm-up (not measured) and measured time of every library run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    pub(crate) warmup: Duration,
    pub(crate) measure: Duration,
}

/// What one operation of a worker came to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Outcome {
    /// Done: `events` written or read, after `retries` conflict retries.
    Ok { events: u64, retries: u64 },
    /// Failed its expected-version check (after `retries` retries); counted,
    /// not fatal.
    Conflict { retries: u64 },
}

/// One concurrent writer or reader. Each gets its own task.
pub(crate) trait Worker: Send + 'static {
    /// One timed operation.
    fn op(&mut self) -> impl Future<Output = anyhow::Result<Outcome>> + Send;
}

/// A latency histogram in microseconds, 1 µs to 10 minutes, 3 significant
/// digits.
pub(crate) fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

/// The `q` quantile of a microsecond histogram, in ms (0 when empty).
pub(crate) fn quantile_ms(hist: &Histogram<u64>, q: f64) -> f64 {
    if hist.is_empty() {
        return 0.0;
    }
    hist.value_at_quantile(q) as f64 / 1000.0
}

/// A timed run of several workers.
#[derive(Debug)]
pub(crate) struct Measured {
    /// Latency of successful operations, in microseconds.
    pub(crate) hist: Histogram<u64>,
    pub(crate) ops: u64,
    pub(crate) events: u64,
    pub(crate) conflicts: u64,
    pub(crate) retries: u64,
    /// Most retries one successful operation needed.
    pub(crate) max_retries: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    /// Successful operations of each worker (starvation check).
    pub(crate) per_worker_ops: Vec<u64>,
    pub(crate) seconds: f64,
    /// CPU time the whole bench process used during the measured window
    /// (`None` where `/proc/self/stat` cannot be read).
    pub(crate) client_cpu_seconds: Option<f64>,
    /// CPU time the server used meanwhile, when it runs on this machine.
    pub(crate) server_cpu_seconds: Option<f64>,
}

impl Measured {
    pub(crate) fn quantile_ms(&self, q: f64) -> f64 {
        quantile_ms(&self.hist, q)
    }

    /// `count` per measured second.
    pub(crate) fn per_sec(&self, count: u64) -> f64 {
        count as f64 / self.seconds
    }

    /// The fewest and the most successful operations of one worker.
    pub(crate) fn per_worker_range(&self) -> (u64, u64) {
        let ops = self.per_worker_ops.iter().copied();
        (ops.clone().min().unwrap_or(0), ops.max().unwrap_or(0))
    }

    fn empty(seconds: f64) -> anyhow::Result<Self> {
        Ok(Self {
            hist: histogram()?,
            ops: 0,
            events: 0,
            conflicts: 0,
            retries: 0,
            max_retries: 0,
            errors: 0,
            first_error: None,
            per_worker_ops: Vec::new(),
            seconds,
            client_cpu_seconds: None,
            server_cpu_seconds: None,
        })
    }

    fn record(&mut self, result: anyhow::Result<Outcome>, took: Duration) {
        match result {
            Ok(Outcome::Ok { events, retries }) => {
                self.ops += 1;
                self.events += events;
                self.retries += retries;
                self.max_retries = self.max_retries.max(retries);
                self.hist
                    .saturating_record((took.as_micros() as u64).max(1));
            }
            Ok(Outcome::Conflict { retries }) => {
                self.conflicts += 1;
                self.retries += retries;
            }
            Err(e) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(format!("{e:#}"));
                }
            }
        }
    }

    fn add(&mut self, m: Self) -> anyhow::Result<()> {
        self.hist.add(&m.hist)?;
        self.ops += m.ops;
        self.events += m.events;
        self.conflicts += m.conflicts;
        self.retries += m.retries;
        self.max_retries = self.max_retries.max(m.max_retries);
        self.errors += m.errors;
        if self.first_error.is_none() {
            self.first_error = m.first_error;
        }
        self.per_worker_ops.push(m.ops);
        Ok(())
    }
}

/// Runs every worker concurrently: a warm-up, then `timing.measure` during
/// which every operation that completes counts.
pub(crate) async fn drive<W: Worker>(workers: Vec<W>, timing: Timing) -> anyhow::Result<Measured> {
    drive_from(workers, timing, Instant::now() + Duration::from_millis(20)).await
}

/// [`drive`] with the warm-up starting at `start`: the measured window is
/// `start + warmup .. start + warmup + measure`.
pub(crate) async fn drive_from<W: Worker>(
    workers: Vec<W>,
    timing: Timing,
    start: Instant,
) -> anyhow::Result<Measured> {
    let measure_from = start + timing.warmup;
    let until = measure_from + timing.measure;
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|mut w| {
            tokio::spawn(async move {
                let mut m = Measured::empty(timing.measure.as_secs_f64())?;
                tokio::time::sleep_until(start.into()).await;
                loop {
                    let began = Instant::now();
                    if began >= until {
                        break;
                    }
                    let result = w.op().await;
                    let ended = Instant::now();
                    // Completions inside the window count: an unbiased
                    // throughput however long single operations take.
                    if ended < measure_from || ended > until {
                        continue;
                    }
                    let failed = result.is_err();
                    m.record(result, ended - began);
                    if failed {
                        // Do not spin on a dead server.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                anyhow::Ok(m)
            })
        })
        .collect();
    // The client's and the server's CPU per event: what the library costs
    // the machine, and what it makes the server do. Sampled on a thread of
    // its own: workers whose operations never wait (the in-memory store)
    // would starve a task.
    let cpu = tokio::task::spawn_blocking(move || {
        std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
        let before = cpu::mark();
        std::thread::sleep(until.saturating_duration_since(Instant::now()));
        before.since()
    });
    let mut total = Measured::empty(timing.measure.as_secs_f64())?;
    (total.client_cpu_seconds, total.server_cpu_seconds) =
        cpu.await.context("the CPU sampler panicked")?;
    for task in tasks {
        total.add(task.await.context("a worker panicked")??)?;
    }
    Ok(total)
}
