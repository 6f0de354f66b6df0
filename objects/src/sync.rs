//! Synchronisation primitives: `Lock`, `RLock`, `Semaphore`, `Event`, `Barrier`, `Condition`.
//!
//! The host owns each one. Whatever a worker held when it died is given back: its locks are
//! released, its semaphore acquisitions returned, a barrier it waited at breaks.

use std::time::Duration;

use crate::handle::{handle_type, unexpected};
use crate::queue::{count, flag, unit};
use crate::wire::{Kind, ObjectError, Request, Response};

/// The operations every lock-like object shares.
macro_rules! lock_ops {
    ($name:ident, $guard:ident) => {
        impl $name {
            /// Blocks until acquired.
            pub fn acquire(&self) -> Result<(), ObjectError> {
                match self.acquire_timeout(None)? {
                    true => Ok(()),
                    false => Err(ObjectError::Timeout),
                }
            }

            /// Waits at most `timeout` (`None`: forever); answers whether it was acquired.
            pub fn acquire_timeout(&self, timeout: Option<Duration>) -> Result<bool, ObjectError> {
                flag(self.raw.call(Request::Acquire, timeout)?)
            }

            /// Acquires only if that is possible now.
            pub fn try_acquire(&self) -> Result<bool, ObjectError> {
                self.acquire_timeout(Some(Duration::ZERO))
            }

            /// Releases one acquisition.
            pub fn release(&self) -> Result<(), ObjectError> {
                unit(self.raw.call(Request::Release, None)?)
            }

            /// Acquires, and releases when the guard is dropped (Python's `with lock:`).
            pub fn lock(&self) -> Result<$guard<'_>, ObjectError> {
                self.acquire()?;
                Ok($guard { owner: self })
            }
        }

        /// Releases its object when dropped.
        #[derive(Debug)]
        #[must_use = "the object is released as soon as the guard is dropped"]
        pub struct $guard<'a> {
            owner: &'a $name,
        }

        impl Drop for $guard<'_> {
            fn drop(&mut self) {
                let _ = self.owner.release();
            }
        }
    };
}

handle_type!(
    /// A mutual-exclusion lock. As in Python, any process may release it.
    Lock,
    Kind::Lock
);
lock_ops!(Lock, LockGuard);

impl Lock {
    /// Whether anyone holds the lock now (Python 3.13's `Lock.locked()`): a snapshot,
    /// which may be out of date as soon as it is answered.
    pub fn locked(&self) -> Result<bool, ObjectError> {
        flag(self.raw.call(Request::Locked, None)?)
    }
}

handle_type!(
    /// A recursive lock: its owner may acquire it again; only the owner may release it.
    RLock,
    Kind::RLock
);
lock_ops!(RLock, RLockGuard);

impl RLock {
    /// Whether anyone (this process or another) holds the lock now (Python's
    /// `RLock.locked()`): a snapshot.
    pub fn locked(&self) -> Result<bool, ObjectError> {
        flag(self.raw.call(Request::Locked, None)?)
    }
}

handle_type!(
    /// A counting semaphore; a bounded one refuses to be released past its initial value.
    Semaphore,
    Kind::Semaphore
);
lock_ops!(Semaphore, SemaphoreGuard);

impl Semaphore {
    /// The current value.
    pub fn value(&self) -> Result<u64, ObjectError> {
        Ok(count(self.raw.call(Request::SemaphoreValue, None)?)? as u64)
    }
}

handle_type!(
    /// A condition variable with its own recursive lock. `wait` and `notify` need the lock held.
    Condition,
    Kind::Condition
);
lock_ops!(Condition, ConditionGuard);

impl Condition {
    /// Releases the lock, waits for a notification, and re-acquires the lock.
    pub fn wait(&self) -> Result<(), ObjectError> {
        self.wait_timeout(None).map(|_| ())
    }

    /// As [`wait`](Self::wait), waiting at most `timeout` for the notification; answers
    /// whether one came (the lock is re-acquired either way).
    pub fn wait_timeout(&self, timeout: Option<Duration>) -> Result<bool, ObjectError> {
        flag(self.raw.call(Request::ConditionWait, timeout)?)
    }

    /// Waits until `predicate` is true (Python's `Condition.wait_for`): the caller must hold
    /// the lock. `predicate` is evaluated first, and again after every wake-up, with the
    /// lock held; `timeout` bounds the whole wait (`None`: no bound). Answers the
    /// predicate's last value: `false` only if the timeout passed first. The lock is held
    /// again when it returns, whatever it answers.
    pub fn wait_for<F>(
        &self,
        mut predicate: F,
        timeout: Option<Duration>,
    ) -> Result<bool, ObjectError>
    where
        F: FnMut() -> Result<bool, ObjectError>,
    {
        // Python's rule: the deadline starts at the first wait, and a wait that would have
        // no time left is not made (the predicate's last value is the answer).
        let mut deadline: Option<std::time::Instant> = None;
        let mut result = predicate()?;
        while !result {
            let wait = match (timeout, deadline) {
                (None, _) => None,
                (Some(t), None) => {
                    deadline = std::time::Instant::now().checked_add(t);
                    Some(t)
                }
                (Some(_), Some(d)) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    Some(left)
                }
            };
            self.wait_timeout(wait)?;
            result = predicate()?;
        }
        Ok(result)
    }

    /// Wakes up to `n` waiters.
    pub fn notify(&self, n: u32) -> Result<(), ObjectError> {
        unit(self.raw.call(Request::ConditionNotify(n), None)?)
    }

    /// Wakes every waiter.
    pub fn notify_all(&self) -> Result<(), ObjectError> {
        unit(self.raw.call(Request::ConditionNotifyAll, None)?)
    }
}

handle_type!(
    /// A flag processes can wait for.
    Event,
    Kind::Event
);

impl Event {
    /// Sets the flag and wakes every waiter.
    pub fn set(&self) -> Result<(), ObjectError> {
        unit(self.raw.call(Request::EventSet, None)?)
    }

    /// Clears the flag.
    pub fn clear(&self) -> Result<(), ObjectError> {
        unit(self.raw.call(Request::EventClear, None)?)
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> Result<bool, ObjectError> {
        flag(self.raw.call(Request::EventIsSet, None)?)
    }

    /// Blocks until the flag is set.
    pub fn wait(&self) -> Result<(), ObjectError> {
        self.wait_timeout(None).map(|_| ())
    }

    /// Waits at most `timeout` for the flag; answers whether it is set.
    pub fn wait_timeout(&self, timeout: Option<Duration>) -> Result<bool, ObjectError> {
        flag(self.raw.call(Request::EventWait, timeout)?)
    }
}

handle_type!(
    /// A barrier for a fixed number of parties. Aborting it, a waiter's timeout or a
    /// waiter's death breaks it: every waiter gets `Broken`.
    Barrier,
    Kind::Barrier
);

impl Barrier {
    /// Waits until every party has arrived; answers this party's arrival index
    /// (0 to parties - 1).
    pub fn wait(&self) -> Result<u32, ObjectError> {
        self.wait_timeout(None)
    }

    /// As [`wait`](Self::wait); a timeout breaks the barrier.
    pub fn wait_timeout(&self, timeout: Option<Duration>) -> Result<u32, ObjectError> {
        match self.raw.call(Request::BarrierWait, timeout)? {
            Response::Int(i) => Ok(u32::try_from(i).unwrap_or(0)),
            r => Err(unexpected(r)),
        }
    }

    /// Breaks the barrier.
    pub fn abort(&self) -> Result<(), ObjectError> {
        unit(self.raw.call(Request::BarrierAbort, None)?)
    }

    /// Returns the barrier to its initial state; current waiters get `Broken`.
    pub fn reset(&self) -> Result<(), ObjectError> {
        unit(self.raw.call(Request::BarrierReset, None)?)
    }

    /// How many parties are waiting now.
    pub fn n_waiting(&self) -> Result<usize, ObjectError> {
        count(self.raw.call(Request::BarrierNWaiting, None)?)
    }

    /// The number of parties a round needs (Python's `Barrier.parties`).
    pub fn parties(&self) -> Result<u32, ObjectError> {
        let n = count(self.raw.call(Request::BarrierParties, None)?)?;
        u32::try_from(n).map_err(|_| ObjectError::Invalid(format!("{n} parties")))
    }

    /// Whether the barrier is broken (Python's `Barrier.broken`): aborted, or a waiter
    /// timed out or died, or a round's action failed; `reset` mends it.
    pub fn broken(&self) -> Result<bool, ObjectError> {
        flag(self.raw.call(Request::BarrierBroken, None)?)
    }

    /// As [`wait`](Self::wait), offering `action` as the round's action (Python's
    /// `Barrier(parties, action=...)`; a closure cannot cross processes, so each party
    /// offers its own). Once every party has arrived, exactly one party that offered an
    /// action runs its own: the last to arrive if it offered one, otherwise the earliest
    /// that did. The round's parties are released only after it returned `Ok`. If it fails
    /// (or its party panics, traps or dies while running it), the barrier breaks: the other
    /// parties get `Broken`, and this party gets the action's error. A round in which no
    /// party offered an action has none.
    pub fn wait_with<F>(&self, action: F) -> Result<u32, ObjectError>
    where
        F: FnOnce() -> Result<(), ObjectError>,
    {
        self.wait_with_timeout(action, None)
    }

    /// As [`wait_with`](Self::wait_with), waiting at most `timeout` for the other parties
    /// (the action itself is not timed); a timeout breaks the barrier.
    pub fn wait_with_timeout<F>(
        &self,
        action: F,
        timeout: Option<Duration>,
    ) -> Result<u32, ObjectError>
    where
        F: FnOnce() -> Result<(), ObjectError>,
    {
        let index = match self.raw.call(Request::BarrierWaitAction, timeout)? {
            Response::Int(i) => return Ok(u32::try_from(i).unwrap_or(0)),
            Response::RunAction(i) => i,
            r => return Err(unexpected(r)),
        };
        // A panic inside the action still reports its failure, so the others are not left
        // waiting for a round that cannot end.
        let mut running = Running {
            barrier: self,
            done: false,
        };
        let outcome = action();
        running.done = true;
        match outcome {
            Ok(()) => match self.raw.call(Request::BarrierActionDone(true), None)? {
                Response::Int(_) => Ok(index),
                r => Err(unexpected(r)),
            },
            Err(e) => {
                let _ = self.raw.call(Request::BarrierActionDone(false), None);
                Err(e)
            }
        }
    }
}

/// A barrier's action being run: reports a failure if it is dropped before the end.
struct Running<'a> {
    barrier: &'a Barrier,
    done: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self
                .barrier
                .raw
                .call(Request::BarrierActionDone(false), None);
        }
    }
}
