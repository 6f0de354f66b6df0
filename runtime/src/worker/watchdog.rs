//! Time limits. A ticker thread advances the epoch of the engines the worker runs on (one per
//! kind and stack limit) every `EPOCH_TICK`; on an interruptible engine a store whose deadline
//! has passed traps at its next check, which wasm code reaches quickly. The thread starts with
//! the first call that has a time limit: a worker that never meets one never pays for it.
//! Time spent blocked in a host call (a guest sleeping, say) is not wasm code: if a task is
//! still running well past its deadline, the watchdog answers the call itself with a
//! time-limit error and ends the worker process, which the host then replaces. On an engine
//! whose code does not check the epoch (a pool built without a time limit, see
//! `engine.rs`) nothing traps, so the watchdog does so at the deadline itself, with no grace.

use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use super::output::Channel;
use super::progress::BatchProgress;
use super::state::PeakMemory;
use crate::engine::{EPOCH_TICK, tick_all};
use crate::protocol::{CallEvent, FromWorker, Outcome, Status, WATCHDOG_EXIT};

/// The call id the watchdog times a new worker's first instantiation and init under: no
/// call of the host's has it.
pub(crate) const INIT_CALL: u64 = u64::MAX;

/// A call with a time limit that has sent nothing for this long sends `Alive`.
const ALIVE_EVERY: Duration = Duration::from_secs(1);

/// Still running this long after the epoch passed its deadline, a task is taken to be stuck
/// in a host call: counted in the ticker's passes (each at least a tick apart), so time in
/// which the whole process stalled does not count.
const GRACE: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Running {
    id: u64,
    deadline: Instant,
    timeout: Duration,
    /// The ticker's passes that found the deadline passed (with the epoch past it).
    overdue_passes: u32,
    /// Whether the call's code traps at the epoch deadline: if not, nothing but the
    /// watchdog stops it, so it does not wait `GRACE` for a trap.
    interrupts: bool,
}

/// When the ticker started, and how many ticks the epoch has been advanced since.
#[derive(Debug)]
struct Clock {
    started: Instant,
    ticked: u128,
}

/// The call being timed, if any.
#[derive(Debug)]
pub(crate) struct Watchdog {
    running: Mutex<Option<Running>>,
    /// Whether a call runs, timed or not.
    busy: std::sync::atomic::AtomicBool,
    clock: Mutex<Option<Clock>>,
    channel: Arc<Channel>,
    /// The running batch's progress: its time limit restarts at each report, and what
    /// finished is answered when the watchdog stops it.
    progress: Arc<BatchProgress>,
    /// The running call's peak memory, which the watchdog reports when it answers for it.
    peak_memory: Arc<PeakMemory>,
    ticker: Once,
}

impl Watchdog {
    /// A watchdog for the calls of this worker, which answers on `channel`.
    pub fn new(channel: Arc<Channel>, progress: Arc<BatchProgress>) -> Arc<Watchdog> {
        Arc::new(Watchdog {
            running: Mutex::new(None),
            busy: std::sync::atomic::AtomicBool::new(false),
            clock: Mutex::new(None),
            channel,
            progress,
            peak_memory: Arc::new(PeakMemory::default()),
            ticker: Once::new(),
        })
    }

    /// The running call's peak memory: the instances' limiters raise it, the worker
    /// reports it with each answer.
    pub fn peak_memory(&self) -> &Arc<PeakMemory> {
        &self.peak_memory
    }

    /// Advances the epoch by the ticks due since the ticker started and not yet made, so
    /// it follows the clock: a late wake-up (a busy machine) makes up what it missed, and a
    /// call armed meanwhile gets its deadline from a current epoch, not a late one that
    /// would catch up on its budget.
    fn catch_up(&self) {
        let Ok(mut clock) = self.clock.lock() else {
            return;
        };
        if let Some(c) = clock.as_mut() {
            let due = c.started.elapsed().as_nanos() / EPOCH_TICK.as_nanos();
            if due > c.ticked {
                tick_all(due - c.ticked);
                c.ticked = due;
            }
        }
    }

    /// Starts the ticker thread, ticking every engine the worker's instances run on.
    fn start_ticker(self: &Arc<Self>) {
        if let Ok(mut clock) = self.clock.lock() {
            *clock = Some(Clock {
                started: Instant::now(),
                ticked: 0,
            });
        }
        let watched = self.clone();
        let channel = self.channel.clone();
        let grace_passes = (GRACE.as_nanos() / EPOCH_TICK.as_nanos()) as u32;
        let _ = std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(EPOCH_TICK);
                    watched.catch_up();
                    // Wasm code traps at its next check once the epoch is past its deadline;
                    // a task still running `GRACE` of this thread's passes after that is
                    // blocked in the host.
                    // A worker that runs a call (perhaps an untimed one behind a timed one
                    // whose answer waits, queued) and has sent nothing for a while says it
                    // is alive, which sends what is queued too: the host can tell a
                    // stopped worker from a long call.
                    if channel.quiet_for() >= ALIVE_EVERY
                        && watched.busy.load(std::sync::atomic::Ordering::Relaxed)
                    {
                        let _ = channel.send(&FromWorker::Control(Status::Alive));
                    }
                    let last_report = watched.progress.last_report();
                    let Ok(mut running) = watched.running.lock() else {
                        continue;
                    };
                    let Some(r) = running.as_mut() else {
                        continue;
                    };
                    // Inside a batch the limit restarts at each progress report.
                    let deadline =
                        last_report.map_or(r.deadline, |at| r.deadline.max(at + r.timeout));
                    if Instant::now() <= deadline {
                        continue;
                    }
                    r.overdue_passes += 1;
                    let grace = if r.interrupts { grace_passes } else { 0 };
                    if r.overdue_passes > grace {
                        // Still holding `running`: the call cannot end (its end disarms
                        // the watchdog first) and be answered twice.
                        let (id, timeout) = (r.id, r.timeout);
                        let outcome = Outcome::Limit(time_limit_message(timeout));
                        let micros = timeout.as_micros().try_into().unwrap_or(u64::MAX);
                        let peak_memory = watched.peak_memory.get();
                        // A batch keeps the answers of its items that finished; those that
                        // did not go back to the host, to run again one by one.
                        let answer = match watched.progress.stop(id, outcome.clone()) {
                            _ if id == INIT_CALL => FromWorker::Control(Status::LoadFailed(
                                format!("the module's init {}", time_limit_message(timeout)),
                            )),
                            Some((answers, keep_output)) => {
                                channel.end_hold(keep_output);
                                FromWorker::Call(CallEvent::BatchDone {
                                    id,
                                    answers,
                                    fuel: None,
                                    micros,
                                    peak_memory,
                                })
                            }
                            None => FromWorker::Call(CallEvent::Done {
                                id,
                                outcome,
                                fuel: None,
                                micros,
                                peak_memory,
                            }),
                        };
                        // The guest is blocked in the host, or runs code that does not check
                        // the epoch, and cannot be interrupted: end the process, the answer
                        // written under the writer's lock, held until the end, so no output
                        // the guest writes meanwhile follows it (and is taken for the next
                        // call's).
                        let _ = channel.queue(&answer);
                        channel.flush_and_exit(WATCHDOG_EXIT);
                    }
                }
            });
    }

    /// Times call `id`, if it has a timeout; `interrupts`: whether its code traps at the
    /// epoch deadline (runs on an interruptible engine).
    pub fn arm(self: &Arc<Self>, id: u64, timeout: Option<Duration>, interrupts: bool) {
        self.busy.store(true, std::sync::atomic::Ordering::Relaxed);
        if timeout.is_some() {
            self.ticker.call_once(|| self.start_ticker());
            self.catch_up();
        }
        if let (Some(timeout), Ok(mut r)) = (timeout, self.running.lock()) {
            *r = Some(Running {
                id,
                deadline: Instant::now() + timeout,
                timeout,
                overdue_passes: 0,
                interrupts,
            });
        }
    }

    /// The call is over.
    pub fn disarm(&self) {
        self.busy.store(false, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut r) = self.running.lock() {
            *r = None;
        }
    }
}

/// The error text of a task stopped by its time limit.
pub(crate) fn time_limit_message(timeout: Duration) -> String {
    format!("exceeded its time limit of {timeout:?}")
}

/// Epoch ticks for a timeout (at least one).
pub(crate) fn ticks(timeout: Duration) -> u64 {
    (timeout.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u64 + 1
}
