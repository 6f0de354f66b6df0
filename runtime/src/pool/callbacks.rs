//! The pool's callback thread: the user's callbacks (`apply_async_with`, `map_async_with`,
//! a future's done callbacks) run here, in this program, one at a time, in completion order;
//! never on a worker's supervisor thread, which must go on reading the worker's frames.

use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex};

use super::job::{Hook, Job};

/// A user callback, run on the pool's callback thread.
type Callback = Box<dyn FnOnce() + Send>;

/// Counts a job's gating hook run when dropped (run, panicked, or dropped unrun).
struct Settle(Option<Arc<Job>>);

impl Drop for Settle {
    fn drop(&mut self) {
        if let Some(job) = &self.0 {
            job.settle();
        }
    }
}

/// Counts a callback done when dropped.
struct Done<'a>(&'a Pending);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.done();
    }
}

/// A count of callbacks queued and not yet run, and a way to wait until there are none.
#[derive(Default)]
struct Pending {
    count: Mutex<usize>,
    none: Condvar,
}

impl Pending {
    fn add(&self) {
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }

    fn done(&self) {
        let mut n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.none.notify_all();
        }
    }

    fn wait_none(&self) {
        let mut n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        while *n > 0 {
            n = self.none.wait(n).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The callback thread of one pool, and the callbacks sent to it and not yet run.
pub(crate) struct Callbacks {
    sender: Mutex<Option<Sender<Callback>>>,
    /// Callbacks sent to the callback thread and not yet run.
    pending: Arc<Pending>,
    /// The callback thread, if it started.
    thread: Option<std::thread::ThreadId>,
}

impl Callbacks {
    /// Starts the callback thread; it ends once [`stop`](Callbacks::stop) is called and
    /// the callbacks sent before have run. Without a thread (none to be had), callbacks
    /// are dropped unrun, and counted settled.
    pub fn start() -> Callbacks {
        let (tx, rx) = std::sync::mpsc::channel::<Callback>();
        let pending = Arc::new(Pending::default());
        let counted = pending.clone();
        // Callbacks run here, in the host, one at a time, in completion order.
        let thread = std::thread::Builder::new()
            .name("wasmpool-callbacks".into())
            .spawn(move || {
                for f in rx {
                    // Counted done however it ends: a callback that panics is reported
                    // (by the panic hook) and the next one runs.
                    let _done = Done(&counted);
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
                }
            })
            .ok()
            .map(|t| t.thread().id());
        Callbacks {
            sender: Mutex::new(Some(tx)),
            pending,
            thread,
        }
    }

    /// The callback thread, if it started.
    pub fn thread(&self) -> Option<std::thread::ThreadId> {
        self.thread
    }

    /// Runs the job's completion hooks on the callback thread, if every item of it has
    /// finished and they are still to run.
    pub fn run_hooks(&self, job: &Arc<Job>) {
        for hook in job.take_hooks_if_finished() {
            self.run_hook(job, hook);
        }
    }

    /// Runs one completion hook of `job` on the callback thread. A gating hook is counted
    /// run however it ends, and also if it never runs (the callback thread is gone), so a
    /// `get` cannot hang on it.
    pub fn run_hook(&self, job: &Arc<Job>, hook: Hook) {
        let settle = Settle(hook.gating.then(|| job.clone()));
        let job = job.clone();
        let f = hook.run;
        let run: Callback = Box::new(move || {
            let _settle = settle;
            f(job.as_ref())
        });
        if let Some(tx) = self.sender.lock().ok().and_then(|t| t.clone()) {
            self.pending.add();
            if tx.send(run).is_err() {
                self.pending.done();
            }
        }
    }

    /// Waits until every callback sent so far has run; at once on the callback thread
    /// itself (a callback that waits for the callbacks would wait for itself).
    pub fn wait_all_run(&self) {
        if self.thread != Some(std::thread::current().id()) {
            self.pending.wait_none();
        }
    }

    /// Lets the callback thread end once the callbacks sent so far have run.
    pub fn stop(&self) {
        if let Ok(mut sender) = self.sender.lock() {
            sender.take();
        }
    }
}
