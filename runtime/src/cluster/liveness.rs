//! The beat every cluster process runs: a host renews its lease, a submitter checks that it
//! reaches Redis, and either runs the reaper, but only while it can vouch for its own
//! connection (wasmCloud#5502's trap: a process cut off from the engine must not declare
//! everybody else dead).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::keys::{GROUP, Keys, TENANT_LEASE};
use super::scripts::Scripts;
use super::{BEAT, LEASE, MIN_IDLE, connect};

/// When this process last reached Redis, and since when without a gap.
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    state: Mutex<LivenessState>,
}

#[derive(Debug, Default)]
struct LivenessState {
    last_ok: Option<Instant>,
    /// The start of the current run of beats with no gap longer than half a lease.
    since: Option<Instant>,
    /// A host's: when it was last declared dead (Redis time, ms), and Redis's time at the
    /// beat that said so.
    declared: Option<(u64, u64)>,
}

impl Liveness {
    fn lock(&self) -> std::sync::MutexGuard<'_, LivenessState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A beat reached Redis.
    pub fn ok(&self) {
        let mut s = self.lock();
        let now = Instant::now();
        // A gap (a failed beat, a slow one, this process stopped, Redis paused) starts the
        // run anew: leases others could not renew meanwhile are not theirs to lose. A
        // failed beat ended the run (`since` is None) even when the next one comes soon.
        if s.since.is_none() || s.last_ok.is_none_or(|t| now - t > LEASE / 2) {
            s.since = Some(now);
        }
        s.last_ok = Some(now);
    }

    /// A host's beat read when the host was last declared dead (`dead`, Redis time in ms,
    /// or -1 for never), at Redis time `now`. Recorded before [`ok`](Liveness::ok), so a
    /// host that comes back learns it before it claims again.
    pub fn declared(&self, now: i64, dead: i64) {
        let mut s = self.lock();
        s.declared = u64::try_from(dead)
            .ok()
            .map(|d| (d, u64::try_from(now).unwrap_or(d)));
    }

    /// Whether the host was declared dead at or after `since` (Redis time, ms): then
    /// Redis's time at the beat that told.
    pub fn declared_dead_since(&self, since: u64) -> Option<u64> {
        let s = self.lock();
        s.declared
            .filter(|(dead, _)| *dead >= since)
            .map(|(_, now)| now)
    }

    /// A beat failed.
    pub fn failed(&self) {
        let mut s = self.lock();
        s.since = None;
    }

    /// Whether the last beat to reach Redis was within `within`.
    pub fn fresh(&self, within: Duration) -> bool {
        let s = self.lock();
        s.since.is_some() && s.last_ok.is_some_and(|t| t.elapsed() <= within)
    }

    /// Whether this process may judge other hosts' leases: its beats have reached Redis
    /// with no gap for a whole lease.
    pub fn may_judge(&self) -> bool {
        let s = self.lock();
        s.since.is_some_and(|t| t.elapsed() >= LEASE)
            && s.last_ok.is_some_and(|t| t.elapsed() < LEASE / 2)
    }
}

/// What the beat renews: a host's lease, or nothing (a submitter only reaps); and the
/// leases on the streams of these tenants (a tenant's pool's own; a host's named tenants).
#[derive(Debug, Clone)]
pub(crate) struct BeatAs {
    pub host: Option<(String, usize)>,
    pub tenants: Vec<String>,
}

/// Counts of what this process's reaper did.
#[derive(Debug, Default)]
pub(crate) struct ReapCounts {
    pub redelivered: std::sync::atomic::AtomicU64,
    pub lost: std::sync::atomic::AtomicU64,
}

/// How long a reaper's pass holds the turn (see `scripts::REAP`): a little less than a beat,
/// so that a process beating alone still runs a pass at every beat, as every process did
/// before the turns.
const TURN: Duration = Duration::from_millis(BEAT.as_millis() as u64 * 9 / 10);

/// How often a reaper's pass reads every tenant's streams whatever the leases (see
/// `scripts::REAP`), whichever process's pass it is.
const SWEEP: Duration = Duration::from_secs(5);

/// Beats every [`BEAT`] until `stop`: renews the lease (a host), then reaps if this process
/// may judge others.
pub(crate) fn beat_loop(
    url: String,
    keys: Keys,
    beat_as: BeatAs,
    result_ttl: Duration,
    liveness: Arc<Liveness>,
    counts: Arc<ReapCounts>,
    stop: Arc<AtomicBool>,
) {
    let scripts = Scripts::default();
    let mut con: Option<redis::Connection> = None;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        if con.is_none() {
            match connect(&url) {
                Ok(c) => con = Some(c),
                Err(e) => {
                    tracing::warn!("cluster beat: {e}");
                    liveness.failed();
                }
            }
        }
        if let Some(c) = con.as_mut() {
            let beat: redis::RedisResult<(i64, i64)> = match &beat_as.host {
                Some((host, slots)) => scripts
                    .heartbeat
                    .key(keys.hosts())
                    .key(keys.slots())
                    .key(keys.dead())
                    .arg(host)
                    .arg(LEASE.as_millis() as u64)
                    .arg(*slots)
                    .invoke(c),
                None => redis::cmd("TIME")
                    .query::<(i64, i64)>(c)
                    .map(|(s, _)| (s, -1)),
            };
            match beat {
                Ok((now, dead)) => {
                    if beat_as.host.is_some() {
                        liveness.declared(now, dead);
                    }
                    liveness.ok();
                    if !beat_as.tenants.is_empty() {
                        let mut renew = scripts.tenant_lease.key(keys.tenants());
                        renew
                            .arg(keys.prefix())
                            .arg(TENANT_LEASE.as_millis() as u64)
                            .arg(GROUP);
                        for t in &beat_as.tenants {
                            renew.arg(t);
                        }
                        let renewed: redis::RedisResult<i64> = renew.invoke(c);
                        match renewed {
                            Ok(0) => {}
                            Ok(n) => tracing::info!(
                                "cluster beat: {n} tenants' streams were gone; registered again"
                            ),
                            Err(e) => tracing::warn!("cluster beat: renewing tenants' leases: {e}"),
                        }
                    }
                    if liveness.may_judge() {
                        let reaped: redis::RedisResult<(u64, u64, u8)> = scripts
                            .reap
                            .key(keys.hosts())
                            .key(keys.tasks())
                            .key(keys.stats())
                            .key(keys.slots())
                            .key(keys.tenants())
                            .key(keys.redo_of(&keys.tasks()))
                            .key(keys.dead())
                            .key(keys.redoing())
                            .key(keys.reaping())
                            .key(keys.swept())
                            .arg(GROUP)
                            .arg(MIN_IDLE.as_millis() as u64)
                            .arg(keys.prefix())
                            .arg(result_ttl.as_millis() as u64)
                            .arg(1000)
                            .arg(SWEEP.as_millis() as u64)
                            .arg(TURN.as_millis() as u64)
                            .invoke(c);
                        // Objects given back by the pass that had the turn only.
                        let turn = matches!(reaped, Ok((_, _, 1)));
                        match reaped {
                            Ok((moved, lost, _)) => {
                                if moved + lost > 0 {
                                    tracing::info!(
                                        "cluster reaper: {moved} chunks of dead hosts redelivered, {lost} failed as lost"
                                    );
                                }
                                counts.redelivered.fetch_add(moved, Ordering::Relaxed);
                                counts.lost.fetch_add(lost, Ordering::Relaxed);
                            }
                            Err(e) => tracing::warn!("cluster reaper: {e}"),
                        }
                        if turn {
                            match super::release_dead_hosts(c, &keys) {
                                Ok(0) => {}
                                Ok(n) => tracing::info!(
                                    "cluster reaper: {n} shared objects given back from dead hosts"
                                ),
                                Err(e) => tracing::warn!("cluster reaper: {e}"),
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("cluster beat: {e}");
                    liveness.failed();
                    con = None;
                }
            }
        }
        // The next beat a BEAT after this one started, in short sleeps so `stop` is prompt.
        while !stop.load(Ordering::Relaxed) && started.elapsed() < BEAT {
            std::thread::sleep((BEAT - started.elapsed().min(BEAT)).min(Duration::from_millis(50)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_beat_after_a_failed_one_starts_a_new_run_at_once() {
        let l = Liveness::default();
        l.ok();
        assert!(l.fresh(LEASE / 2));
        l.failed();
        assert!(!l.fresh(LEASE / 2), "a failed beat ends the run");
        // The next beat, well within half a lease of the last good one: the host may claim
        // again, but may not judge others until a whole lease of beats has passed.
        l.ok();
        assert!(
            l.fresh(LEASE / 2),
            "a host whose beat came back claims again"
        );
        assert!(!l.may_judge());
    }
}
