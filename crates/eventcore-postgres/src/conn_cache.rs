//! Keeps recently used pool connections at hand instead of handing each one
//! back to the sqlx pool after every operation.
//!
//! sqlx pings a connection each time it returns to its pool: one extra
//! round trip and one server wake-up per operation, which costs a
//! single-event append a large share of its throughput. The store instead
//! parks a connection here when an operation completed cleanly and takes it
//! again for the next one. Connections stay checked out of the sqlx pool
//! while parked, so they count against `max_connections`; a reaper hands
//! back any connection idle for more than [`IDLE_RETURN`], and every
//! connection goes back after [`MAX_PARKED`] however busy (so sqlx's
//! `max_lifetime` applies, and your own `pool().acquire()` calls wait at
//! most about that long even while the store keeps every connection busy).
//! The store's background work (NOTIFY, LISTEN) has connections of its own.
//!
//! A connection whose operation did not finish (a cancelled future, an I/O
//! error, a fatal server error) is never parked: it goes back to sqlx,
//! which tests it on release.

use std::{
    ops::{Deref, DerefMut},
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use sqlx::{PgConnection, Postgres, pool::PoolConnection};

use crate::error::connection_lost;

/// Parked connections idle longer than this go back to the sqlx pool.
pub(crate) const IDLE_RETURN: Duration = Duration::from_millis(200);
/// Connections kept (in use or parked) longer than this go back too, so a
/// caller waiting in the sqlx pool gets one within this long even while
/// the store is busy.
pub(crate) const MAX_PARKED: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub(crate) struct ConnCache {
    /// Most recently parked last.
    idle: Mutex<Vec<Parked>>,
    reaper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Debug)]
struct Parked {
    conn: PoolConnection<Postgres>,
    idle_since: Instant,
    taken_at: Instant,
}

/// A connection on loan to one store operation.
#[derive(Debug)]
pub(crate) struct Conn {
    conn: Option<PoolConnection<Postgres>>,
    taken_at: Instant,
    clean: bool,
    cache: Weak<ConnCache>,
}

impl ConnCache {
    /// A parked connection, if any.
    pub(crate) fn take(self: &Arc<Self>) -> Option<Conn> {
        let parked = self.lock().pop()?;
        Some(Conn {
            conn: Some(parked.conn),
            taken_at: parked.taken_at,
            clean: false,
            cache: Arc::downgrade(self),
        })
    }

    /// Wraps a connection fresh from the sqlx pool.
    pub(crate) fn wrap(self: &Arc<Self>, conn: PoolConnection<Postgres>) -> Conn {
        self.start_reaper();
        Conn {
            conn: Some(conn),
            taken_at: Instant::now(),
            clean: false,
            cache: Arc::downgrade(self),
        }
    }

    /// Number of parked connections.
    pub(crate) fn idle_count(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Parked>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn park(&self, conn: PoolConnection<Postgres>, taken_at: Instant) {
        if taken_at.elapsed() < MAX_PARKED {
            self.lock().push(Parked {
                conn,
                idle_since: Instant::now(),
                taken_at,
            });
        }
    }

    /// Hands stale parked connections back to the sqlx pool.
    fn reap(&self) {
        let stale: Vec<Parked> = {
            let mut idle = self.lock();
            let (keep, stale) = std::mem::take(&mut *idle).into_iter().partition(|p| {
                p.idle_since.elapsed() < IDLE_RETURN && p.taken_at.elapsed() < MAX_PARKED
            });
            *idle = keep;
            stale
        };
        drop(stale);
    }

    fn start_reaper(self: &Arc<Self>) {
        let mut reaper = self.reaper.lock().unwrap_or_else(|e| e.into_inner());
        if reaper.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let cache = Arc::downgrade(self);
        *reaper = Some(runtime.spawn(async move {
            let mut ticker = tokio::time::interval(IDLE_RETURN / 2);
            loop {
                ticker.tick().await;
                let Some(cache) = cache.upgrade() else { return };
                cache.reap();
            }
        }));
    }

    /// Returns every parked connection to the sqlx pool.
    pub(crate) fn clear(&self) {
        drop(std::mem::take(&mut *self.lock()));
    }
}

impl Drop for ConnCache {
    fn drop(&mut self) {
        if let Some(task) = self
            .reaper
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

impl Conn {
    /// Records how the operation on this connection ended: after success or
    /// an ordinary database error the connection is in a known state and
    /// may be parked for the next operation.
    pub(crate) fn finished<T>(&mut self, result: &Result<T, sqlx::Error>) {
        self.clean = match result {
            Ok(_) => true,
            Err(e @ sqlx::Error::Database(_)) => !connection_lost(e),
            Err(_) => false,
        };
    }
}

impl Deref for Conn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        self.conn.as_deref().expect("present until drop")
    }
}

impl DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.conn.as_deref_mut().expect("present until drop")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if !self.clean {
            // Failed, or abandoned mid-statement (a client deadline): sqlx
            // would ping it before pooling it again, and a ping to a server
            // that went silent never returns, holding the pool slot.
            conn.close_on_drop();
            return;
        }
        match self.cache.upgrade() {
            Some(cache) => cache.park(conn, self.taken_at),
            // Back to sqlx, which tests it on release.
            None => drop(conn),
        }
    }
}
