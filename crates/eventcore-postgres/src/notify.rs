//! Wake-ups for subscribers: an in-process signal on every local append,
//! and LISTEN/NOTIFY across processes, sent *outside* append transactions.
//!
//! A transaction that issues NOTIFY takes a database-wide lock at commit, so
//! notifying inside each append would serialise all committers. Instead,
//! successful appends only poke a background notifier, which sends one
//! `pg_notify` per burst of appends and at most one per
//! [`PostgresConfig::notify_interval`](crate::PostgresConfig::notify_interval).
//! Subscribers poll as well, so a lost notification (a dropped listener
//! connection, a pooler that does not pass NOTIFY) costs latency, never events.
//!
//! Both use connections of their own with the wake-up connect options
//! ([`PostgresConfig::notify_options`](crate::PostgresConfig)): a store
//! behind a transaction pooler without a `notify_url` has none, so it does
//! not listen (its subscribers poll) and sends its NOTIFY through the pool
//! as one simple-protocol statement, for listeners of other processes.

use std::{
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use sqlx::{
    AssertSqlSafe, PgPool,
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
};
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};

/// The store's channel is this prefix followed by the schema name.
pub(crate) const CHANNEL_PREFIX: &str = "eventcore_";

/// PostgreSQL's identifier limit (NAMEDATALEN - 1): `pg_notify` refuses a
/// longer channel and `LISTEN` truncates one, so they would never meet.
pub(crate) const MAX_CHANNEL_LEN: usize = 63;

/// The NOTIFY channel of the store in `schema`.
pub(crate) fn channel(schema: &str) -> String {
    format!("{CHANNEL_PREFIX}{schema}")
}

/// The store's wake-up machinery.
#[derive(Debug)]
pub(crate) struct Notifier {
    /// Changes whenever new events may be readable.
    signal: watch::Sender<()>,
    /// Pokes the NOTIFY task.
    poke: Arc<Notify>,
    channel: String,
    interval: Option<Duration>,
    /// Connect options of the wake-up connections; `None`: no LISTEN.
    direct: Option<PgConnectOptions>,
    tasks: Mutex<Tasks>,
}

#[derive(Debug, Default)]
struct Tasks {
    notifier: Option<JoinHandle<()>>,
    listener: Option<JoinHandle<()>>,
}

impl Notifier {
    pub(crate) fn new(
        schema: &str,
        interval: Option<Duration>,
        direct: Option<PgConnectOptions>,
    ) -> Self {
        Self {
            signal: watch::Sender::new(()),
            poke: Arc::new(Notify::new()),
            channel: channel(schema),
            interval,
            direct,
            tasks: Mutex::default(),
        }
    }

    /// Called after every append that wrote events.
    pub(crate) fn appended(&self, pool: &PgPool) {
        self.signal.send_replace(());
        let Some(interval) = self.interval else {
            return;
        };
        self.poke.notify_one();
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if tasks.notifier.as_ref().is_none_or(|t| t.is_finished()) {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            // A connection of its own: under load every pool connection may
            // be busy, and a wake-up that waits for one arrives too late.
            let sender = match &self.direct {
                Some(options) => Sender::Own(dedicated(options)),
                None => Sender::Pooled(pool.clone()),
            };
            tasks.notifier = Some(runtime.spawn(notify_loop(
                sender,
                Arc::downgrade(&self.poke),
                self.channel.clone(),
                interval,
            )));
        }
    }

    /// A receiver of wake-ups; starts the LISTEN task if it is not running
    /// (and the store has a connection to listen on).
    pub(crate) fn subscribe(&self, _pool: &PgPool) -> watch::Receiver<()> {
        let receiver = self.signal.subscribe();
        let Some(options) = &self.direct else {
            return receiver;
        };
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if tasks.listener.as_ref().is_none_or(|t| t.is_finished())
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            tasks.listener = Some(runtime.spawn(listen_loop(
                dedicated(options),
                self.signal.clone(),
                self.channel.clone(),
            )));
        }
        receiver
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(|e| e.into_inner());
        for task in [tasks.notifier.take(), tasks.listener.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

/// A one-connection pool with `options`, opened lazily.
fn dedicated(options: &PgConnectOptions) -> PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options.clone())
}

/// Where NOTIFY goes out.
enum Sender {
    /// A connection of its own, prepared statement.
    Own(PgPool),
    /// Through a transaction pooler: the simple protocol runs one
    /// statement as one transaction with nothing prepared.
    Pooled(PgPool),
}

impl Sender {
    async fn send(&self, channel: &str) -> Result<(), sqlx::Error> {
        match self {
            Sender::Own(pool) => sqlx::query(crate::sql::NOTIFY_CHANNEL)
                .bind(channel)
                .execute(pool)
                .await
                .map(drop),
            // The channel is the prefix and a validated schema name
            // (`a-z0-9_`): a plain literal, nothing to inject.
            Sender::Pooled(pool) => {
                sqlx::raw_sql(AssertSqlSafe(format!("SELECT pg_notify('{channel}', '')")))
                    .execute(pool)
                    .await
                    .map(drop)
            }
        }
    }
}

/// One NOTIFY per burst of appends, at most one per `interval`.
async fn notify_loop(sender: Sender, poke: Weak<Notify>, channel: String, interval: Duration) {
    loop {
        let Some(poke) = poke.upgrade() else { return };
        poke.notified().await;
        drop(poke);
        // The interval runs from this send's start: a NOTIFY's own round
        // trip (a commit, slow under load) does not stretch the cadence.
        let sent = tokio::time::Instant::now();
        if let Err(e) = sender.send(&channel).await {
            tracing::debug!(error = %e, "NOTIFY failed; subscribers fall back to polling");
        }
        tokio::time::sleep_until(sent + interval).await;
    }
}

/// Relays notifications from other processes to local subscribers on a
/// connection of its own, `own` (it would otherwise pin one of the pool's).
/// Exits when no subscriber is left; the next subscriber starts it again.
async fn listen_loop(own: PgPool, signal: watch::Sender<()>, channel: String) {
    let mut listener: Option<PgListener> = None;
    loop {
        if signal.receiver_count() == 0 {
            return;
        }
        let l = match listener.as_mut() {
            Some(l) => l,
            None => {
                let connected = async {
                    let mut l = PgListener::connect_with(&own).await?;
                    l.listen(&channel).await?;
                    Ok::<_, sqlx::Error>(l)
                }
                .await;
                match connected {
                    Ok(l) => {
                        // Anything committed while we were not listening
                        // is found by the subscribers' next read.
                        signal.send_replace(());
                        listener.insert(l)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "LISTEN failed; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
        };
        tokio::select! {
            received = l.try_recv() => match received {
                Ok(Some(_)) => {
                    signal.send_replace(());
                }
                // Connection lost: it reconnects on the next call; wake the
                // subscribers in case a notification was lost with it.
                Ok(None) => {
                    signal.send_replace(());
                }
                Err(e) => {
                    tracing::debug!(error = %e, "listener failed; reconnecting");
                    listener = None;
                    signal.send_replace(());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = signal.closed() => return,
        }
    }
}
