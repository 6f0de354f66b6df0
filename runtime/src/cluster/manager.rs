//! [`ClusterManager`]: a `Manager` whose objects live in a cluster's Redis, so tasks on every
//! host share them (and this program too).

use std::sync::Arc;
use std::time::Duration;

use wasmpool_objects::wire::Handle;
use wasmpool_objects::{
    Barrier, Condition, Connection, Dict, Event, List, Lock, Queue, RLock, Semaphore,
};

use super::objects::{ClusterObjects, DEFAULT_OBJECT_TTL, Spec};
use crate::error::{Error, Result};

/// Creates shared objects in a cluster's Redis, as [`Manager`](crate::Manager) creates them
/// in this program: the same typed handles, passed to tasks inside their arguments the
/// same way, with the same operations and the same semantics across hosts (blocking with
/// timeouts; a dead worker's or host's locks released with their fence advanced, its
/// semaphore acquisitions returned, a barrier it waited at broken).
///
/// ```no_run
/// use wasmpool::{Module, Pool};
///
/// let module = Module::load("examples/testkit")?;
/// let pool = Pool::builder(&module).cluster("redis://10.0.0.1:6379").build()?;
/// let m = pool.manager()?;
/// let (counts, lock) = (m.dict::<String, i64>()?, m.lock()?);
/// pool.starmap::<_, ()>(
///     "locked_increments",
///     (0..4).map(|_| (counts.clone(), lock.clone(), 1000u64)),
/// )?;
/// assert_eq!(counts.get(&"count".to_string())?, Some(4000));
/// # Ok::<(), wasmpool::Error>(())
/// ```
///
/// An object is kept until it has gone unused for its TTL (a day by default; see
/// [`ClusterManagerBuilder::object_ttl`]), not counted by its handles as a local one is.
#[derive(Debug, Clone)]
pub struct ClusterManager {
    objects: Arc<ClusterObjects>,
    ttl: Duration,
}

/// Options of a [`ClusterManager`].
#[derive(Debug, Clone)]
pub struct ClusterManagerBuilder {
    url: String,
    ttl: Duration,
}

impl ClusterManagerBuilder {
    /// How long an object is kept after its last operation (default a day, at least a
    /// second).
    pub fn object_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Connects to the cluster's Redis (once per program and URL), checking that its keys
    /// are this version's.
    pub fn build(self) -> Result<ClusterManager> {
        if self.ttl < Duration::from_secs(1) {
            return Err(Error::State(
                "a shared object's TTL must be at least a second".into(),
            ));
        }
        Ok(ClusterManager {
            objects: crate::runtime::cluster_route(&self.url)?,
            ttl: self.ttl,
        })
    }
}

impl ClusterManager {
    /// The manager of the objects of the cluster at `url` (`redis://HOST:PORT`).
    pub fn connect(url: &str) -> Result<ClusterManager> {
        ClusterManager::builder(url).build()
    }

    /// Options first, then [`build`](ClusterManagerBuilder::build).
    pub fn builder(url: &str) -> ClusterManagerBuilder {
        ClusterManagerBuilder {
            url: url.to_string(),
            ttl: DEFAULT_OBJECT_TTL,
        }
    }

    /// The cluster's Redis URL.
    pub fn url(&self) -> &str {
        self.objects.url()
    }

    fn create(&self, spec: Spec) -> Result<[Handle; 2]> {
        self.objects.create(&spec, self.ttl)
    }

    fn one(&self, spec: Spec) -> Result<Handle> {
        Ok(self.create(spec)?[0])
    }

    /// An unbounded FIFO queue.
    pub fn queue<T>(&self) -> Result<Queue<T>> {
        self.bounded_queue(0)
    }

    /// A queue holding at most `maxsize` items (0: unbounded); `put` blocks while it is full.
    pub fn bounded_queue<T>(&self, maxsize: usize) -> Result<Queue<T>> {
        Ok(Queue::__from_created(
            self.one(Spec::queue(maxsize, false))?,
        ))
    }

    /// A queue with `task_done` and `join` (Python's `JoinableQueue(maxsize)`).
    pub fn joinable_queue<T>(&self, maxsize: usize) -> Result<Queue<T>> {
        Ok(Queue::__from_created(self.one(Spec::queue(maxsize, true))?))
    }

    /// A pipe: two connected ends (Python's `Pipe(duplex)`); with `duplex` false the first
    /// end only receives and the second only sends.
    pub fn pipe<T>(&self, duplex: bool) -> Result<(Connection<T>, Connection<T>)> {
        let [a, b] = self.create(Spec::pipe(duplex))?;
        Ok((Connection::__from_created(a), Connection::__from_created(b)))
    }

    /// A lock; any process may release it, as in Python. Its fence ([`fence`](Self::fence))
    /// goes up at every acquisition and when it is taken back from a dead holder.
    pub fn lock(&self) -> Result<Lock> {
        Ok(Lock::__from_created(self.one(Spec::lock(false))?))
    }

    /// A recursive lock: only its owner may release it.
    pub fn rlock(&self) -> Result<RLock> {
        Ok(RLock::__from_created(self.one(Spec::lock(true))?))
    }

    /// A semaphore with initial value `value`.
    pub fn semaphore(&self, value: u64) -> Result<Semaphore> {
        Ok(Semaphore::__from_created(
            self.one(Spec::semaphore(value, false))?,
        ))
    }

    /// A semaphore that refuses to be released above its initial value.
    pub fn bounded_semaphore(&self, value: u64) -> Result<Semaphore> {
        Ok(Semaphore::__from_created(
            self.one(Spec::semaphore(value, true))?,
        ))
    }

    /// An event, initially clear.
    pub fn event(&self) -> Result<Event> {
        Ok(Event::__from_created(self.one(Spec::event())?))
    }

    /// A barrier for `parties` (at least 1).
    pub fn barrier(&self, parties: u32) -> Result<Barrier> {
        Ok(Barrier::__from_created(self.one(Spec::barrier(parties))?))
    }

    /// A condition variable with its own recursive lock.
    pub fn condition(&self) -> Result<Condition> {
        Ok(Condition::__from_created(self.one(Spec::condition())?))
    }

    /// An empty dict.
    pub fn dict<K, V>(&self) -> Result<Dict<K, V>> {
        Ok(Dict::__from_created(self.one(Spec::dict())?))
    }

    /// An empty list.
    pub fn list<T>(&self) -> Result<List<T>> {
        Ok(List::__from_created(self.one(Spec::list())?))
    }

    /// Sets how long the object behind `handle` (any object's [`handle`](Lock::handle)) is
    /// kept once idle, counted from now and renewed by every operation as the TTL it was
    /// made with was: a program that is done with an object can let it go sooner, while
    /// the tasks still using it keep it alive. Answers whether there was such an object
    /// (`false`: it had expired already, or the handle is not of this cluster).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// let m = wasmpool::cluster::ClusterManager::connect("redis://127.0.0.1:6379")?;
    /// let results = m.dict::<String, i64>()?;
    /// // … tasks fill it, the program reads it …
    /// assert!(m.set_ttl(results.handle(), Duration::from_secs(60))?);
    /// # Ok::<(), wasmpool::Error>(())
    /// ```
    pub fn set_ttl(&self, handle: Handle, ttl: Duration) -> Result<bool> {
        Ok(self.objects.set_ttl(handle, ttl)?)
    }

    /// Removes the object behind `handle` from Redis now: its contents are gone, and every
    /// handle to it (in this program, in tasks, inside other objects) is stale from then on
    /// (`ObjectError::Stale`; a waiter finds that at its next poll). Answers whether there
    /// was such an object.
    ///
    /// ```no_run
    /// let m = wasmpool::cluster::ClusterManager::connect("redis://127.0.0.1:6379")?;
    /// let scratch = m.list::<String>()?;
    /// // … tasks use it …
    /// assert!(m.destroy(scratch.handle())?);
    /// # Ok::<(), wasmpool::Error>(())
    /// ```
    pub fn destroy(&self, handle: Handle) -> Result<bool> {
        Ok(self.objects.destroy(handle)?)
    }

    /// The fence of a lock of this cluster: it goes up by one at every acquisition and
    /// every time the lock is taken back from a holder that died, so a holder can tell
    /// whether the lock is still the one it took.
    pub fn fence(&self, lock: &Lock) -> Result<u64> {
        Ok(self.objects.fence(lock.handle())?)
    }
}

impl super::ClusterPool {
    /// The manager of shared objects in this pool's Redis (as
    /// [`ClusterManager::connect`] with the pool's URL).
    pub fn manager(&self) -> Result<ClusterManager> {
        ClusterManager::connect(self.url())
    }
}
