//! CPU time spent by the benchmark itself, by the pgbench runs it starts,
//! and by the PostgreSQL server when that runs on this machine, read from
//! `/proc`. Per event, these tell a client that costs the machine more
//! from a server made to work harder, which throughput alone cannot.

use std::sync::OnceLock;

use sqlx::PgPool;

/// Linux reports CPU times in `/proc/<pid>/stat` in fixed 1/100 s ticks
/// (`USER_HZ`).
const TICKS_PER_SECOND: f64 = 100.0;

/// The fields of `/proc/<pid>/stat` used here.
struct Stat {
    comm: String,
    ppid: u32,
    /// utime + stime, in seconds.
    own: f64,
    /// cutime + cstime: children the process has waited for, in seconds.
    reaped: f64,
}

fn stat(pid: &str) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(text: &str) -> Option<Stat> {
    // The command name (field 2) may contain spaces and parentheses; it ends
    // at the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 2..)?.split(' ').collect();
    // fields[0] is field 3 (state): ppid is field 4, utime..cstime 14..17.
    let num = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(Stat {
        comm,
        ppid: u32::try_from(num(1)?).ok()?,
        own: (num(11)? + num(12)?) as f64 / TICKS_PER_SECOND,
        reaped: (num(13)? + num(14)?) as f64 / TICKS_PER_SECOND,
    })
}

/// This process's CPU seconds so far (all threads).
fn process_seconds() -> Option<f64> {
    Some(stat("self")?.own)
}

/// CPU seconds of this process's finished children (pgbench runs).
fn children_seconds() -> Option<f64> {
    Some(stat("self")?.reaped)
}

/// A PostgreSQL server running on this machine, found by its postmaster.
#[derive(Debug)]
struct Server {
    postmaster: u32,
}

impl Server {
    /// The postmaster's own time, its finished children's (backends that
    /// disconnected), and every live child's: all of the server's work.
    fn seconds(&self) -> Option<f64> {
        let postmaster = stat(&self.postmaster.to_string())?;
        let mut total = postmaster.own + postmaster.reaped;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            if let Some(s) = stat(pid).filter(|s| s.ppid == self.postmaster) {
                total += s.own;
            }
        }
        Some(total)
    }
}

static SERVER: OnceLock<Option<Server>> = OnceLock::new();

/// Looks for the server behind `pool` among this machine's processes. It
/// counts only when the connection is local (a unix socket or loopback)
/// and the backend serving it is a `postgres` process whose parent is one
/// too, so a remote server's PID is never mistaken for a local process.
pub(crate) async fn locate_server(pool: &PgPool) {
    let found = async {
        let (pid, addr): (i32, Option<String>) =
            sqlx::query_as("SELECT pg_backend_pid(), host(inet_server_addr())")
                .fetch_one(pool)
                .await
                .ok()?;
        let local = addr
            .as_deref()
            .is_none_or(|a| a.starts_with("127.") || a == "::1");
        if !local {
            return None;
        }
        let backend = stat(&pid.to_string()).filter(|s| s.comm == "postgres")?;
        stat(&backend.ppid.to_string()).filter(|s| s.comm == "postgres")?;
        Some(Server {
            postmaster: backend.ppid,
        })
    }
    .await;
    if found.is_none() {
        eprintln!("server CPU: the server is not a local process; not measured");
    }
    let _ = SERVER.set(found);
}

/// The server's CPU seconds so far, if [`locate_server`] found it.
fn server_seconds() -> Option<f64> {
    SERVER.get()?.as_ref()?.seconds()
}

/// A client's CPU seconds and the server's at one moment, with how the
/// client's were read, so [`Mark::since`] reads them the same way.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mark {
    read_client: fn() -> Option<f64>,
    client: Option<f64>,
    server: Option<f64>,
}

/// This process (the library's client) and the server, now.
pub(crate) fn mark() -> Mark {
    mark_with(process_seconds)
}

/// This process's finished children (pgbench, once waited for) and the
/// server, now.
pub(crate) fn mark_children() -> Mark {
    mark_with(children_seconds)
}

fn mark_with(read_client: fn() -> Option<f64>) -> Mark {
    Mark {
        read_client,
        client: read_client(),
        server: server_seconds(),
    }
}

impl Mark {
    /// The client's and the server's CPU seconds used since this mark,
    /// where both readings of each were taken.
    pub(crate) fn since(&self) -> (Option<f64>, Option<f64>) {
        let now = mark_with(self.read_client);
        let delta = |before: Option<f64>, after: Option<f64>| Some(after? - before?);
        (
            delta(self.client, now.client),
            delta(self.server, now.server),
        )
    }
}

/// `seconds` of CPU spread over `events`, in microseconds each; `None`
/// without a reading or without events.
pub(crate) fn us_per_event(seconds: Option<f64>, events: f64) -> Option<f64> {
    seconds.filter(|_| events > 0.0).map(|s| s * 1e6 / events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_stat_line_whose_name_has_spaces_and_parentheses() {
        let line = "4242 (postgres: a (b) c) S 4200 4242 4242 0 -1 4194304 1 0 0 0 \
                    250 130 7 3 20 0 1 0 100 1000 10 18446744073709551615";
        let s = parse_stat(line).expect("parses");
        assert_eq!(s.comm, "postgres: a (b) c");
        assert_eq!(s.ppid, 4200);
        assert!((s.own - 3.8).abs() < 1e-9, "utime 250 + stime 130 ticks");
        assert!((s.reaped - 0.1).abs() < 1e-9, "cutime 7 + cstime 3 ticks");
    }

    #[test]
    fn reads_this_process() {
        let me = stat("self").expect("/proc/self/stat");
        assert!(me.ppid > 0);
        assert!(process_seconds().is_some() && children_seconds().is_some());
    }
}
