//! `Manager`: creates the objects tasks share. The host's broker owns them; the handles it
//! answers work in this program and, passed inside task arguments, in tasks.

use std::sync::Arc;

use wasmpool_objects::wire::Kind;
use wasmpool_objects::{
    Barrier, Condition, Connection, Dict, Event, List, Lock, Queue, RLock, Semaphore,
};

use crate::broker::ObjectState;
use crate::runtime::Runtime;
use crate::shm::{SharedDict, SharedLock, SharedPipe, SharedQueue};

/// Creates shared objects, as Python's `multiprocessing` module functions and
/// `Manager()` do. Every object lives while this program holds a handle to it or a process
/// it was given to is running; a task can reach only the objects whose handles it was given.
///
/// ```no_run
/// use wasmpool::{Manager, Module, Process};
///
/// let module = Module::load("examples/seeds")?;
/// let m = Manager::new();
/// let queue = m.queue::<String>();
/// let producer = Process::new(&module, "producer", &(queue.clone(),))?;
/// producer.start()?;
/// producer.join()?;
/// while !queue.empty()? {
///     println!("{}", queue.get()?);
/// }
/// # Ok::<(), wasmpool::Error>(())
/// ```
///
/// The host side uses the same typed handles the tasks use, so a host producer can feed a
/// guest consumer and back:
///
/// ```
/// let m = wasmpool::Manager::new();
/// let counts = m.dict::<String, i64>();
/// counts.set(&"seen".to_string(), &1)?;
/// assert_eq!(counts.increment(&"seen".to_string(), 2)?, 3);
/// let (a, b) = m.pipe::<u32>(true);
/// a.send(&7)?;
/// assert_eq!(b.recv()?, 7);
/// # Ok::<(), wasmpool::Error>(())
/// ```
///
/// A manager belongs to a [`Runtime`]: [`Manager::new`] to the global one, and
/// [`Runtime::manager`] to another. Its objects can be given to that runtime's tasks only.
#[derive(Debug, Clone)]
pub struct Manager {
    runtime: Runtime,
}

impl Default for Manager {
    fn default() -> Self {
        Manager::new()
    }
}

impl Manager {
    /// The manager of the shared objects of this program's global runtime.
    pub fn new() -> Manager {
        Manager::in_runtime(Runtime::global())
    }

    /// The manager of `runtime`'s shared objects (as [`Runtime::manager`]).
    pub fn in_runtime(runtime: &Runtime) -> Manager {
        Manager {
            runtime: runtime.clone(),
        }
    }

    /// The runtime whose objects this manager makes.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    fn create(&self, kind: Kind, state: ObjectState) -> wasmpool_objects::wire::Handle {
        self.runtime.broker().create(kind, state)[0]
    }

    fn max_message(&self) -> usize {
        self.runtime.broker().max_message()
    }

    fn segments(&self) -> &crate::shm::SegmentBudget {
        self.runtime.broker().segments()
    }

    fn queue_with<T>(&self, maxsize: usize, joinable: bool) -> Queue<T> {
        let shared = (maxsize == 0 && !joinable)
            .then(|| SharedQueue::create(self.max_message(), self.segments()).ok())
            .flatten()
            .map(Arc::new);
        Queue::__from_created(
            self.create(Kind::Queue, ObjectState::queue(maxsize, joinable, shared)),
        )
    }

    /// An unbounded FIFO queue (Python's `Queue()` / `SimpleQueue()`).
    pub fn queue<T>(&self) -> Queue<T> {
        self.queue_with(0, false)
    }

    /// A queue holding at most `maxsize` items (0: unbounded); `put` blocks while it is full.
    pub fn bounded_queue<T>(&self, maxsize: usize) -> Queue<T> {
        self.queue_with(maxsize, false)
    }

    /// A queue with `task_done` and `join` (Python's `JoinableQueue(maxsize)`).
    pub fn joinable_queue<T>(&self, maxsize: usize) -> Queue<T> {
        self.queue_with(maxsize, true)
    }

    /// A pipe: two connected ends (Python's `Pipe(duplex)`). With `duplex` false the first
    /// end only receives and the second only sends.
    pub fn pipe<T>(&self, duplex: bool) -> (Connection<T>, Connection<T>) {
        let shared = SharedPipe::create(duplex, self.max_message(), self.segments())
            .ok()
            .map(Arc::new);
        let [a, b] = self
            .runtime
            .broker()
            .create(Kind::Connection, ObjectState::pipe(duplex, shared));
        (Connection::__from_created(a), Connection::__from_created(b))
    }

    /// A lock; any process may release it, as in Python.
    pub fn lock(&self) -> Lock {
        let state = match SharedLock::create(self.segments()) {
            Ok(shared) => ObjectState::shared_lock(Arc::new(shared)),
            Err(_) => ObjectState::lock(false),
        };
        Lock::__from_created(self.create(Kind::Lock, state))
    }

    /// A recursive lock: only its owner may release it.
    pub fn rlock(&self) -> RLock {
        RLock::__from_created(self.create(Kind::RLock, ObjectState::lock(true)))
    }

    /// A semaphore with initial value `value`.
    pub fn semaphore(&self, value: u64) -> Semaphore {
        Semaphore::__from_created(
            self.create(Kind::Semaphore, ObjectState::semaphore(value, false)),
        )
    }

    /// A semaphore that refuses to be released above its initial value.
    pub fn bounded_semaphore(&self, value: u64) -> Semaphore {
        Semaphore::__from_created(self.create(Kind::Semaphore, ObjectState::semaphore(value, true)))
    }

    /// An event, initially clear.
    pub fn event(&self) -> Event {
        Event::__from_created(self.create(Kind::Event, ObjectState::event()))
    }

    /// A barrier for `parties` processes (at least 1).
    pub fn barrier(&self, parties: u32) -> Barrier {
        Barrier::__from_created(self.create(Kind::Barrier, ObjectState::barrier(parties)))
    }

    /// A condition variable with its own recursive lock.
    pub fn condition(&self) -> Condition {
        Condition::__from_created(self.create(Kind::Condition, ObjectState::condition()))
    }

    /// An empty dict (Python's `Manager().dict()`).
    pub fn dict<K, V>(&self) -> Dict<K, V> {
        let state = match SharedDict::create(self.max_message(), self.segments()) {
            Ok(shared) => ObjectState::shared_dict(Arc::new(shared)),
            Err(_) => ObjectState::dict(),
        };
        Dict::__from_created(self.create(Kind::Dict, state))
    }

    /// An empty list (Python's `Manager().list()`).
    pub fn list<T>(&self) -> List<T> {
        List::__from_created(self.create(Kind::List, ObjectState::list()))
    }

    /// Runs `f` with the calling thread acting as owner `owner` of the objects it uses: a
    /// recursive lock or a condition acquired inside `f` is held by `owner`, not by the
    /// thread, and can be released by another call acting as the same owner, on any thread.
    /// A service that operates objects for its clients from a pool of threads gives each
    /// client its own owner. (A plain [`Lock`] has no owner: anyone may release it.)
    ///
    /// ```
    /// let m = wasmpool::Manager::new();
    /// let lock = m.rlock();
    /// wasmpool::Manager::acting_as(7, || lock.acquire())?;
    /// let other = std::thread::spawn(move || wasmpool::Manager::acting_as(7, || lock.release()));
    /// other.join().expect("the thread ran")?;
    /// # Ok::<(), wasmpool::ObjectError>(())
    /// ```
    pub fn acting_as<R>(owner: u64, f: impl FnOnce() -> R) -> R {
        crate::broker::act_as(owner, f)
    }

    /// How many shared objects are alive in this program (objects are freed when nothing
    /// can reach them any more).
    pub fn live_objects(&self) -> usize {
        self.runtime.broker().live_objects()
    }
}
