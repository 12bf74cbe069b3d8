//! Events this store appended, kept for its own live subscribers.
//!
//! A subscriber that keeps up reads, a few milliseconds after they commit,
//! exactly the events its process just appended. Fetching them whole costs
//! the server a `jsonb` rendering of every payload and metadata and the
//! client a decode of every row, and the subscriber pays it on the same
//! cores as the writers. While a store has live subscribers it keeps what
//! it appended here, and `read_all` asks the server only for the positions
//! (and record times) below the read horizon, taking the bodies from here;
//! positions it does not hold (other processes' appends, evicted entries)
//! are fetched whole in a second query. The server still decides which
//! events are readable, so this changes the cost of a read, never its
//! result, except in one way: a payload comes back as the JSON text that
//! was appended, not PostgreSQL's `jsonb` rendering of it (same value, key
//! order and spacing may differ), exactly as from the in-memory store.

use std::{
    collections::BTreeMap,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use chrono::{DateTime, Utc};
use eventcore::{
    AppendOutcome, AppendRequest, GlobalPosition, NewEvent, StoredEvent, StreamId, StreamVersion,
};

use crate::RecentAppendStats;

/// After a read found more positions missing than held (most events come
/// from elsewhere), this many reads fetch whole rows in one query instead.
const BYPASS_READS: u32 = 16;

/// What an entry costs beyond its payload text, roughly: the struct, its
/// metadata, stream id and type name.
const ENTRY_OVERHEAD: usize = 256;

/// An appended event as the store keeps it, with what the append settled:
/// its stream and version. Its position is the map's key; its record time
/// is the server's, read with the position.
#[derive(Debug)]
struct Held {
    event: NewEvent,
    stream_id: StreamId,
    stream_version: StreamVersion,
    /// What this entry counts against the byte budget.
    bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    events: BTreeMap<u64, Held>,
    bytes: usize,
    /// Reads left that skip the positions-first path.
    bypass: u32,
}

/// Events served from memory and fetched whole, since the store started.
#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
}

/// The store's recent appends, bounded by payload bytes.
#[derive(Debug)]
pub(crate) struct RecentAppends {
    budget: usize,
    state: Mutex<State>,
    /// Whether anything is held: lets appends without subscribers skip the
    /// lock.
    holding: AtomicBool,
    counters: Counters,
}

/// What [`RecentAppends::lookup`] found for one read: the events in
/// position order, `None` where the body must be fetched.
pub(crate) struct Lookup {
    pub(crate) events: Vec<Option<StoredEvent>>,
    pub(crate) missing: Vec<i64>,
}

impl RecentAppends {
    /// `budget`: bytes held at most, payload text plus a fixed estimate per
    /// event (0 disables).
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            budget,
            state: Mutex::default(),
            holding: AtomicBool::new(false),
            counters: Counters::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the events of a successful, first-time append. Positions
    /// follow the request's event order; each stream's events end at its
    /// new version.
    pub(crate) fn record(&self, request: AppendRequest, outcome: &AppendOutcome) {
        if self.budget == 0 {
            return;
        }
        let Some((first, _)) = outcome.positions else {
            return;
        };
        let mut position = first.get();
        let mut state = self.lock();
        for stream in request.into_streams() {
            let n = stream.events.len() as u64;
            if n == 0 {
                continue;
            }
            let Some(last) = outcome.version_of(&stream.stream_id) else {
                // Not reported: cannot place its events; fetching is right.
                position += n;
                continue;
            };
            let base = last.get().saturating_sub(n);
            for (i, event) in stream.events.into_iter().enumerate() {
                let bytes = event.data.get().len() + ENTRY_OVERHEAD;
                state.bytes += bytes;
                let held = Held {
                    event,
                    stream_id: stream.stream_id.clone(),
                    stream_version: StreamVersion::new(base + i as u64 + 1),
                    bytes,
                };
                if let Some(old) = state.events.insert(position, held) {
                    state.bytes -= old.bytes;
                }
                position += 1;
            }
        }
        while state.bytes > self.budget {
            let Some((_, evicted)) = state.events.pop_first() else {
                break;
            };
            state.bytes -= evicted.bytes;
        }
        self.holding
            .store(!state.events.is_empty(), Ordering::Relaxed);
    }

    /// Drops everything (the last subscriber left).
    pub(crate) fn clear(&self) {
        // Loaded first: every append without subscribers calls this, and a
        // swap would write the shared cache line each time.
        if self.holding.load(Ordering::Relaxed) && self.holding.swap(false, Ordering::Relaxed) {
            let mut state = self.lock();
            state.events.clear();
            state.bytes = 0;
        }
    }

    /// Whether a read after `after` is likely to find its events here: the
    /// oldest one held is at or below it, and recent reads found most of
    /// theirs.
    pub(crate) fn covers(&self, after: GlobalPosition) -> bool {
        if !self.holding.load(Ordering::Relaxed) {
            return false;
        }
        let mut state = self.lock();
        if state.bypass > 0 {
            state.bypass -= 1;
            return false;
        }
        state
            .events
            .first_key_value()
            .is_some_and(|(&oldest, _)| oldest <= after.get())
    }

    /// The events at `rows` (position, record time; ascending), cloned from
    /// what is held.
    pub(crate) fn lookup(&self, rows: &[(i64, DateTime<Utc>)]) -> Lookup {
        let mut events = Vec::with_capacity(rows.len());
        let mut missing = Vec::new();
        let mut state = self.lock();
        for &(position, recorded_at) in rows {
            match state.events.get(&(position as u64)) {
                Some(held) => events.push(Some(StoredEvent {
                    event_id: held.event.event_id,
                    stream_id: held.stream_id.clone(),
                    stream_version: held.stream_version,
                    position: GlobalPosition::new(position as u64),
                    event_type: held.event.event_type.clone(),
                    schema_version: held.event.schema_version,
                    data: held.event.data.clone(),
                    metadata: held.event.metadata.clone(),
                    recorded_at,
                })),
                None => {
                    events.push(None);
                    missing.push(position);
                }
            }
        }
        let hits = rows.len() - missing.len();
        if missing.len() > hits {
            state.bypass = BYPASS_READS;
        }
        drop(state);
        self.counters.hits.fetch_add(hits as u64, Ordering::Relaxed);
        self.counters
            .misses
            .fetch_add(missing.len() as u64, Ordering::Relaxed);
        Lookup { events, missing }
    }

    /// What [`PostgresEventStore::recent_append_stats`](crate::PostgresEventStore::recent_append_stats) reports.
    pub(crate) fn stats(&self) -> RecentAppendStats {
        RecentAppendStats {
            held: self.len(),
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
        }
    }

    /// Events held now.
    fn len(&self) -> usize {
        if !self.holding.load(Ordering::Relaxed) {
            return 0;
        }
        self.lock().events.len()
    }
}

impl Lookup {
    /// Fills the gaps with `fetched` (the missing positions' rows, in
    /// position order); `None` if they do not line up.
    pub(crate) fn fill(self, fetched: Vec<StoredEvent>) -> Option<Vec<StoredEvent>> {
        let lines_up = fetched
            .iter()
            .map(|e| e.position.get() as i64)
            .eq(self.missing.iter().copied());
        if !lines_up {
            return None;
        }
        let mut fetched = fetched.into_iter();
        self.events
            .into_iter()
            .map(|slot| slot.or_else(|| fetched.next()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::{TimeZone, Utc};
    use eventcore::{
        AppendOutcome, AppendRequest, EventMetadata, ExpectedVersion, GlobalPosition, NewEvent,
        StreamId, StreamVersion,
    };

    use super::{BYPASS_READS, ENTRY_OVERHEAD, RecentAppends};

    fn event(n: u64) -> NewEvent {
        NewEvent::new(
            &eventcore::testing::bank::AccountEvent::Deposited { amount: n },
            EventMetadata::new(),
        )
        .unwrap()
    }

    fn stream(name: &str) -> StreamId {
        StreamId::new(name).unwrap()
    }

    /// `a` gets 2 events (now at version 7), `b` 1 (now at 1), at
    /// positions `first`..`first + 2` in request order.
    fn two_streams(first: u64) -> (AppendRequest, AppendOutcome) {
        let request = AppendRequest::new()
            .append(stream("a"), ExpectedVersion::Any, vec![event(1), event(2)])
            .check(stream("c"), ExpectedVersion::Any)
            .append(stream("b"), ExpectedVersion::Any, vec![event(3)]);
        let outcome = AppendOutcome {
            stream_versions: BTreeMap::from([
                (stream("a"), StreamVersion::new(7)),
                (stream("b"), StreamVersion::new(1)),
            ]),
            positions: Some((GlobalPosition::new(first), GlobalPosition::new(first + 2))),
            replayed: false,
        };
        (request, outcome)
    }

    fn at(positions: &[i64]) -> Vec<(i64, chrono::DateTime<Utc>)> {
        let t = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        positions.iter().map(|&p| (p, t)).collect()
    }

    #[test]
    fn places_events_by_request_order_and_final_versions() {
        let recent = RecentAppends::new(1 << 20);
        let (request, outcome) = two_streams(100);
        let ids: Vec<_> = request.event_ids().collect();
        recent.record(request, &outcome);
        let lookup = recent.lookup(&at(&[100, 101, 102, 103]));
        assert_eq!(lookup.missing, vec![103]);
        let found: Vec<_> = lookup.events.iter().flatten().collect();
        let placed: Vec<_> = found
            .iter()
            .map(|e| {
                (
                    e.position.get(),
                    e.stream_id.as_str(),
                    e.stream_version.get(),
                )
            })
            .collect();
        assert_eq!(placed, [(100, "a", 6), (101, "a", 7), (102, "b", 1)]);
        assert_eq!(found.iter().map(|e| e.event_id).collect::<Vec<_>>(), ids);
        assert_eq!(found[0].recorded_at, at(&[0])[0].1);
        assert_eq!(recent.counters.hits.load(super::Ordering::Relaxed), 3);
        assert_eq!(recent.counters.misses.load(super::Ordering::Relaxed), 1);
    }

    #[test]
    fn evicts_the_oldest_positions_past_the_budget() {
        let (request, outcome) = two_streams(100);
        let one = request.streams()[0].events[0].data.get().len() + ENTRY_OVERHEAD;
        let recent = RecentAppends::new(4 * one);
        recent.record(request, &outcome);
        let (request, outcome) = two_streams(200);
        recent.record(request, &outcome);
        assert_eq!(recent.len(), 4, "six events, room for four");
        assert!(
            !recent.covers(GlobalPosition::new(101)),
            "100 and 101 are gone"
        );
        assert!(recent.covers(GlobalPosition::new(102)));
        let lookup = recent.lookup(&at(&[101, 102, 200]));
        assert_eq!(lookup.missing, vec![101]);
    }

    #[test]
    fn reads_mostly_from_elsewhere_bypass_it_for_a_while() {
        let recent = RecentAppends::new(1 << 20);
        let (request, outcome) = two_streams(100);
        recent.record(request, &outcome);
        assert!(recent.covers(GlobalPosition::new(100)));
        let _ = recent.lookup(&at(&[101, 150, 160]));
        for _ in 0..BYPASS_READS {
            assert!(!recent.covers(GlobalPosition::new(100)));
        }
        assert!(recent.covers(GlobalPosition::new(100)));
    }

    #[test]
    fn gaps_are_filled_in_position_order_or_not_at_all() {
        let recent = RecentAppends::new(1 << 20);
        let (request, outcome) = two_streams(100);
        recent.record(request, &outcome);
        let other = RecentAppends::new(1 << 20);
        let (request, outcome) = two_streams(103);
        other.record(request, &outcome);
        let fetched: Vec<_> = other
            .lookup(&at(&[103, 104]))
            .events
            .into_iter()
            .flatten()
            .collect();

        let lookup = recent.lookup(&at(&[100, 101, 103, 104]));
        let filled = lookup.fill(fetched.clone()).expect("lines up");
        let positions: Vec<_> = filled.iter().map(|e| e.position.get()).collect();
        assert_eq!(positions, [100, 101, 103, 104]);
        assert_eq!(filled[2].event_id, fetched[0].event_id);

        let lookup = recent.lookup(&at(&[100, 103, 104]));
        assert!(lookup.fill(fetched[..1].to_vec()).is_none(), "one short");
        let mut reversed = fetched;
        reversed.reverse();
        let lookup = recent.lookup(&at(&[100, 103, 104]));
        assert!(lookup.fill(reversed).is_none(), "out of order");
    }

    #[test]
    fn nothing_is_kept_when_disabled_or_cleared() {
        let off = RecentAppends::new(0);
        let (request, outcome) = two_streams(100);
        off.record(request, &outcome);
        assert_eq!(off.len(), 0);
        assert!(!off.covers(GlobalPosition::new(100)));

        let on = RecentAppends::new(1 << 20);
        let (request, outcome) = two_streams(100);
        on.record(request, &outcome);
        assert_eq!(on.len(), 3);
        on.clear();
        assert_eq!(on.len(), 0);
        assert!(!on.covers(GlobalPosition::new(100)));
    }
}
