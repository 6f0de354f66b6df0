//! The broker: the host side of every shared object (queues, pipes, locks, semaphores,
//! events, barriers, conditions, dicts, lists).
//!
//! All objects of a host live in one registry behind one mutex: operations are tiny, and one
//! lock makes the clean-up after a dead worker atomic across objects. Requests come from two
//! places: worker processes (an `Object` frame, read by the worker's supervisor thread) and the
//! host program itself (the typed handles of `wasmpool-objects`, through this broker's
//! [`Transport`]). Either way the request names a handle (id and token) and an operation;
//! a blocked operation leaves a waiter on its object and is answered later, by the change
//! that lets it through, by its timeout (one timer thread), or never if its worker dies (its
//! waiters are dropped, and what it held is given back). Answers are written after the
//! registry lock is released, so a slow socket never stalls other objects.

mod kinds;
mod lane;
mod object;
mod refs;
mod timer;

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use wasmpool_objects::wire::{Handle, Kind, ObjectError, Request, Response};

use self::kinds::ObjectKind;
pub(crate) use self::kinds::ObjectState;
pub(crate) use self::lane::{ObjectBackend, WorkerLine};
use self::object::{Hold, Object, OpResult, Step, Waiter};
use crate::protocol::{ObjectAnswer, ToWorker, encode_frame};
use crate::runtime::{TAG_SHIFT, tag_of};
use crate::shm::{Local, SegmentBudget, Shared};

/// Who performs an operation: a worker process, or a thread of the host program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Owner {
    Pid(u32),
    Host(u64),
}

thread_local! {
    /// The owner this host thread acts as, inside [`act_as`].
    static ACTING: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// The high bit of an owner id set by [`act_as`]: never a thread's (those count from 1).
const ACTING_BIT: u64 = 1 << 63;

impl Owner {
    /// The calling host thread, or the owner it acts as (see [`act_as`]).
    pub fn host_thread() -> Owner {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        thread_local!(static ID: u64 = NEXT.fetch_add(1, Ordering::Relaxed));
        if let Some(id) = ACTING.with(std::cell::Cell::get) {
            return Owner::Host(id);
        }
        Owner::Host(ID.with(|id| *id))
    }
}

/// Runs `f` with the calling host thread acting as owner `owner` (what a recursive lock or a
/// condition records as its holder), whatever thread it is.
pub(crate) fn act_as<R>(owner: u64, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<u64>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACTING.with(|a| a.set(self.0));
        }
    }
    let _restore = Restore(ACTING.with(|a| a.replace(Some(owner | ACTING_BIT))));
    f()
}

/// Where an answer goes.
#[derive(Debug)]
pub(crate) enum Responder {
    /// A worker blocked in `invoke`, waiting for the reply to request `req`. `postable` is
    /// set by [`Broker::submit`] when the request can never wait (see `Object::never_waits`).
    Worker {
        writer: Arc<Mutex<UnixStream>>,
        req: u64,
        postable: bool,
    },
    /// A worker that posted request `req` on `target` and did not wait: only a refusal is
    /// answered, and recorded in `refused` (see [`Refusals`]).
    Posted {
        writer: Arc<Mutex<UnixStream>>,
        req: u64,
        target: Handle,
        refused: Arc<Refusals>,
    },
    /// A host thread blocked on this slot.
    Host(Arc<HostSlot>),
}

/// Where a host thread waits for its answer.
#[derive(Debug, Default)]
pub(crate) struct HostSlot {
    result: Mutex<Option<OpResult>>,
    ready: Condvar,
}

impl HostSlot {
    fn wait(&self) -> OpResult {
        let mut guard = match self.result.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        loop {
            if let Some(result) = guard.take() {
                return result;
            }
            guard = match self.ready.wait(guard) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
    }
}

impl Responder {
    fn deliver(self, result: OpResult) {
        match self {
            Responder::Worker {
                writer,
                req,
                postable,
            } => {
                // A refused put (a closed queue) does not make the handle postable.
                let postable = postable && result.is_ok();
                reply_to_worker(&writer, req, result, postable)
            }
            Responder::Posted {
                writer,
                req,
                target,
                refused,
            } => {
                if let Err(error) = result {
                    refused.refuse(&writer, req, target, error);
                }
            }
            Responder::Host(slot) => {
                let mut guard = match slot.result.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                *guard = Some(result);
                slot.ready.notify_all();
            }
        }
    }
}

/// The handles on which one worker's posted requests are being refused. After a refusal,
/// every later posted request on that handle is refused with the same error, until the
/// worker, told of it, sends one it waits for: so the posted items that do land are always
/// a prefix of those sent, never one with a gap.
#[derive(Debug, Default)]
pub(crate) struct Refusals(Mutex<HashMap<(u64, u64), ObjectError>>);

impl Refusals {
    fn lock(&self) -> MutexGuard<'_, HashMap<(u64, u64), ObjectError>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses posted request `req` on `target` with `error`, and what follows it.
    fn refuse(&self, writer: &Mutex<UnixStream>, req: u64, target: Handle, error: ObjectError) {
        self.lock()
            .entry((target.id, target.token))
            .or_insert_with(|| error.clone());
        write_to_worker(
            writer,
            &ToWorker::Object(ObjectAnswer::Refused { req, target, error }),
        );
    }

    /// Refuses posted request `req` if an earlier one on `target` was; answers whether it did.
    pub fn refused_again(&self, writer: &Mutex<UnixStream>, req: u64, target: Handle) -> bool {
        let Some(error) = self.lock().get(&(target.id, target.token)).cloned() else {
            return false;
        };
        write_to_worker(
            writer,
            &ToWorker::Object(ObjectAnswer::Refused { req, target, error }),
        );
        true
    }

    /// The worker waits for a request on `target`: it knows of the refusal.
    pub fn clear(&self, target: Handle) {
        let mut refused = self.lock();
        if !refused.is_empty() {
            refused.remove(&(target.id, target.token));
        }
    }
}

/// Writes `msg` to a worker; answers false if it does not fit in a frame.
fn write_to_worker(writer: &Mutex<UnixStream>, msg: &ToWorker) -> bool {
    let mut frame = Vec::new();
    if encode_frame(&mut frame, msg).is_err() {
        return false;
    }
    if let Ok(mut w) = writer.lock() {
        use std::io::Write;
        // A dead worker cannot read it; its supervisor reports the death.
        let _ = w.write_all(&frame);
    }
    true
}

/// Answers a worker's `Attach` request `req`, the pipe's segment descriptor sent with it.
pub(crate) fn reply_attached(
    writer: &Mutex<UnixStream>,
    req: u64,
    result: Result<Option<Shared>, ObjectError>,
) {
    use std::os::fd::AsRawFd;
    // Kept until the descriptor is sent.
    let shared = result.as_ref().ok().cloned().flatten();
    let fd = shared
        .as_ref()
        .and_then(|s| s.fd())
        .map(|fd| fd.as_raw_fd());
    let reply = ToWorker::Object(ObjectAnswer::Attached {
        req,
        result: result.map(|s| s.filter(|_| fd.is_some()).map(|s| s.kind())),
    });
    let mut frame = Vec::new();
    if encode_frame(&mut frame, &reply).is_err() {
        return;
    }
    let Ok(mut w) = writer.lock() else {
        return;
    };
    use std::io::Write;
    // A dead worker cannot read it; its supervisor reports the death.
    let _ = match fd {
        Some(fd) => {
            crate::fdpass::send(&*w, &frame, Some(fd)).and_then(|sent| w.write_all(&frame[sent..]))
        }
        None => w.write_all(&frame),
    };
}

/// Writes the answer to a worker's request `req`.
pub(crate) fn reply_to_worker(
    writer: &Mutex<UnixStream>,
    req: u64,
    result: OpResult,
    postable: bool,
) {
    let reply = ToWorker::Object(ObjectAnswer::Reply {
        req,
        result,
        postable,
    });
    if !write_to_worker(writer, &reply) {
        // An answer too large for a frame (a huge dict's items, say).
        let refusal = ToWorker::Object(ObjectAnswer::Reply {
            req,
            result: Err(ObjectError::TooLarge(
                "the answer is larger than the largest frame".into(),
            )),
            postable: false,
        });
        write_to_worker(writer, &refusal);
    }
}

/// The default largest message (one value put, sent or stored): 16 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;

pub(crate) use wasmpool_objects::wire::MESSAGE_CAP;

pub(crate) use wasmpool_objects::wire::too_large;

/// This process's id, as it marks the words of shared memory it holds (mutexes, locks).
pub(super) fn host_tag() -> u32 {
    static TAG: OnceLock<u32> = OnceLock::new();
    *TAG.get_or_init(std::process::id)
}

/// Sets the largest message (one value put on a queue, sent on a pipe or stored in a dict or
/// list) the objects of the global runtime accept; larger ones fail with
/// `ObjectError::TooLarge`. It is capped at 60 MiB, below the largest frame between host and
/// worker. (A [`Runtime`](crate::Runtime) of its own has its own limit.)
pub fn set_max_message_bytes(bytes: usize) {
    crate::Runtime::global().set_max_message_bytes(bytes);
}

#[derive(Debug, Default)]
struct Registry {
    objects: HashMap<u64, Object>,
    next_id: u64,
    next_waiter: u64,
    next_grant: u64,
    /// Grant id → the ends it holds.
    grants: HashMap<u64, Vec<(u64, u8)>>,
}

/// The broker of one runtime.
#[derive(Debug)]
pub(crate) struct Broker {
    /// The runtime's tag, in the high bits of every handle id it makes.
    tag: u32,
    registry: Mutex<Registry>,
    /// The largest message its objects accept.
    max_message: AtomicUsize,
    /// The deadlines of its blocked operations.
    timer: Arc<timer::Timer>,
    /// The shared-memory segments its objects may keep.
    segments: SegmentBudget,
    /// On a cluster host: where its workers' operations on cluster objects go.
    cluster: OnceLock<Arc<dyn ObjectBackend>>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.timer.stop();
    }
}

fn random_token() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most `buf.len()` bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != 8 {
        // No entropy from the kernel: fall back to std's per-process random hasher keys.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        return h.finish();
    }
    u64::from_le_bytes(buf)
}

thread_local! {
    /// Handles encoded into task arguments while a collector is active.
    static COLLECT: RefCell<Option<Vec<Handle>>> = const { RefCell::new(None) };
}

thread_local! {
    /// Handles this host thread was handed with an answer (a popped value): each is already
    /// counted as a copy in the host program, which the handle decoded from the answer
    /// takes instead of counting one more (see [`Broker::retain`]).
    static ADOPT: RefCell<Vec<Handle>> = const { RefCell::new(Vec::new()) };
}

/// A copy of `h` is counted for this thread's next decoded handle of it.
fn adopt_later(h: Handle) {
    ADOPT.with(|a| a.borrow_mut().push(h));
}

/// Whether a copy of `h` was counted for this thread already (and takes it).
fn adopted(h: Handle) -> bool {
    ADOPT.with(|a| {
        let mut a = a.borrow_mut();
        match a.iter().position(|x| *x == h) {
            Some(i) => {
                a.swap_remove(i);
                true
            }
            None => false,
        }
    })
}

/// Runs `encode` and answers the handles it encoded (the objects the task will hold).
pub(crate) fn collect_grants<R>(encode: impl FnOnce() -> R) -> (R, Vec<Handle>) {
    let previous = COLLECT.with(|c| c.borrow_mut().replace(Vec::new()));
    let result = encode();
    let handles = COLLECT.with(|c| std::mem::replace(&mut *c.borrow_mut(), previous));
    (result, handles.unwrap_or_default())
}

/// Sends the answers an operation produced; called with the registry unlocked.
fn deliver_all(out: Vec<(Responder, OpResult)>) {
    for (responder, result) in out {
        responder.deliver(result);
    }
}

fn stale() -> ObjectError {
    ObjectError::Stale(
        "no such object: it was dropped, or the handle was not given by this host".into(),
    )
}

impl Broker {
    /// The broker of the runtime tagged `tag`; its timer thread starts with its first
    /// deadline and ends with it.
    pub fn new(tag: u32, max_message: usize, segments: SegmentBudget) -> Arc<Broker> {
        Arc::new_cyclic(|me| Broker {
            tag,
            registry: Mutex::default(),
            max_message: AtomicUsize::new(max_message.min(MESSAGE_CAP)),
            timer: timer::Timer::start(me.clone()),
            segments,
            cluster: OnceLock::new(),
        })
    }

    /// Sends its workers' operations on cluster objects to `lane` (once; a cluster host).
    pub fn set_cluster(&self, lane: Arc<dyn ObjectBackend>) {
        let _ = self.cluster.set(lane);
    }

    /// Where its workers' operations on cluster objects go, if anywhere.
    pub fn cluster(&self) -> Option<&Arc<dyn ObjectBackend>> {
        self.cluster.get()
    }

    /// The largest message its objects accept now.
    pub fn max_message(&self) -> usize {
        self.max_message.load(Ordering::Relaxed)
    }

    /// Sets the largest message its objects accept (capped at 60 MiB).
    pub fn set_max_message(&self, bytes: usize) {
        self.max_message
            .store(bytes.min(MESSAGE_CAP), Ordering::Relaxed);
    }

    /// The budget of shared-memory segments its objects are made under.
    pub fn segments(&self) -> &SegmentBudget {
        &self.segments
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        match self.registry.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Creates an object; answers its handles (two for a pipe, one otherwise). The host
    /// program holds one reference to each.
    pub fn create(&self, kind: Kind, state: ObjectState) -> [Handle; 2] {
        let tokens = [random_token(), random_token()];
        let mut reg = self.lock();
        reg.next_id += 2;
        let id = (u64::from(self.tag) << TAG_SHIFT) | (reg.next_id & ((1 << TAG_SHIFT) - 1));
        reg.objects.insert(id, Object::new(kind, tokens, state));
        [
            Handle {
                id,
                token: tokens[0],
            },
            Handle {
                id: id | 1,
                token: tokens[1],
            },
        ]
    }

    /// Performs `req` on `target` for `owner`; the answer goes to `responder`, now or later.
    pub fn submit(
        &self,
        owner: Owner,
        target: Handle,
        req: Request,
        timeout: Option<Duration>,
        mut responder: Responder,
    ) {
        let max = self.max_message();
        if req.payload_len() > max {
            responder.deliver(Err(too_large(req.payload_len(), max)));
            return;
        }
        let mut out = Vec::new();
        {
            let mut reg = self.lock();
            let (obj_id, end) = (target.id & !1, (target.id & 1) as u8);
            let waiter_id = reg.next_waiter + 1;
            let mut deadline = None;
            let obj = match self.find(&mut reg.objects, target) {
                Ok(obj) => obj,
                Err(e) => {
                    drop(reg);
                    responder.deliver(Err(e));
                    return;
                }
            };
            if let Responder::Worker { postable, .. } = &mut responder {
                *postable = obj.never_waits(&req);
            }
            match obj.start(owner, end, req, &mut out) {
                Step::Done(result) => out.push((responder, result)),
                Step::Wait(pending) => {
                    obj.waiters.push_back(Waiter {
                        id: waiter_id,
                        owner,
                        end,
                        pending,
                        responder,
                    });
                    match timeout {
                        // Non-blocking: answered at once with what a timeout answers.
                        Some(Duration::ZERO) => obj.expire(waiter_id, &mut out),
                        Some(t) => deadline = Some(t),
                        None => {}
                    }
                    reg.next_waiter = waiter_id;
                }
            }
            if let Some(obj) = reg.objects.get_mut(&obj_id) {
                obj.pump(&mut out);
            }
            // The handles a dict or list took in or let go of.
            reg.apply_refs(obj_id, owner, &mut out);
            if let Some(t) = deadline {
                let objects = &reg.objects;
                self.timer.schedule(t, obj_id, waiter_id, || {
                    objects
                        .iter()
                        .flat_map(|(&o, obj)| obj.waiters.iter().map(move |w| (o, w.id)))
                        .collect()
                });
            }
        }
        deliver_all(out);
    }

    /// The live object `target` names, or the stale-handle error.
    fn find<'a>(
        &self,
        objects: &'a mut HashMap<u64, Object>,
        target: Handle,
    ) -> Result<&'a mut Object, ObjectError> {
        if tag_of(target) != self.tag {
            return Err(ObjectError::Stale(
                "the object belongs to another wasmpool runtime than the one asked".into(),
            ));
        }
        let (obj_id, end) = (target.id & !1, (target.id & 1) as u8);
        objects
            .get_mut(&obj_id)
            .filter(|o| {
                o.tokens[usize::from(end)] == target.token
                    && (end == 0 || o.kind == Kind::Connection)
            })
            .ok_or_else(stale)
    }

    /// Worker `pid` will use object `target` in place: it holds it from now on, and gets
    /// its shared segment (`None`: it has none; every operation then goes through
    /// [`submit`](Self::submit)).
    pub fn attach(&self, pid: u32, target: Handle) -> Result<Option<Shared>, ObjectError> {
        let mut reg = self.lock();
        let obj = self.find(&mut reg.objects, target)?;
        let end = (target.id & 1) as u8;
        obj.state.admit(Owner::Pid(pid), end)?;
        let Some(shared) = obj.state.shared() else {
            return Ok(None);
        };
        obj.holds[usize::from(end)]
            .entry(Hold::Pid(pid))
            .or_insert(1);
        // An end held again is open again; the segment is told.
        let mut out = Vec::new();
        obj.pump(&mut out);
        drop(reg);
        deliver_all(out);
        Ok(Some(shared))
    }

    /// The shared segment the host program uses object `target` through, in place; `None`
    /// if it has none.
    fn host_shared(&self, target: Handle) -> Result<Option<Shared>, ObjectError> {
        let mut reg = self.lock();
        let obj = self.find(&mut reg.objects, target)?;
        let end = usize::from((target.id & 1) as u8);
        if obj.state.host_closed(end) {
            return Err(ObjectError::Closed("the connection is closed".into()));
        }
        Ok(obj.state.shared())
    }

    /// An operation of the host program done in the object's shared segment (see
    /// [`crate::shm::in_place`]); `Broker` when it has to go through [`submit`](Self::submit)
    /// (no segment, or a spilled ring or dict), with `timeout` left as what remains of it.
    fn host_shared_op(
        &self,
        target: Handle,
        req: &Request,
        timeout: &mut Option<Duration>,
    ) -> Result<Local<Response>, ObjectError> {
        let (len, max) = (req.payload_len(), self.max_message());
        if len > max {
            return Err(too_large(len, max));
        }
        let Some(shared) = self.host_shared(target)? else {
            return Ok(Local::Broker);
        };
        // A timeout too long to be a point in time is no deadline at all.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let local = shared.run(target, host_tag(), req, deadline)?;
        if let Some(d) = deadline {
            *timeout = Some(d.saturating_duration_since(Instant::now()));
        }
        Ok(local)
    }

    /// Waiter `waiter` of object `object` reached its deadline.
    pub(super) fn expire(&self, object: u64, waiter: u64) {
        let mut out = Vec::new();
        if let Some(obj) = self.lock().objects.get_mut(&object) {
            obj.expire(waiter, &mut out);
        }
        deliver_all(out);
    }

    /// Worker `pid` is gone: its waiters are dropped, its locks released, its semaphore
    /// acquisitions returned, barriers it waited at broken, pipe ends it held closed.
    pub fn worker_exited(&self, pid: u32) {
        let mut out = Vec::new();
        {
            let mut reg = self.lock();
            if reg.objects.is_empty() {
                return;
            }
            for obj in reg.objects.values_mut() {
                obj.worker_exited(pid, &mut out);
            }
            reg.sweep(&mut out);
        }
        deliver_all(out);
    }

    /// The ends `handles` are held for a task that has not started: they stay open (and
    /// alive) until [`bind_grant`](Self::bind_grant) or [`drop_grant`](Self::drop_grant).
    /// A handle of another runtime is refused: the task could not reach it.
    pub fn hold_grant(&self, handles: &[Handle]) -> Result<Option<u64>, ObjectError> {
        if handles.is_empty() {
            return Ok(None);
        }
        if handles.iter().any(|h| tag_of(*h) != self.tag) {
            return Err(ObjectError::Stale(
                "an argument holds an object of another wasmpool runtime; a task reaches \
                 only the objects of the runtime it runs in"
                    .into(),
            ));
        }
        let mut reg = self.lock();
        reg.next_grant += 1;
        let gid = reg.next_grant;
        let mut held = Vec::new();
        for h in handles {
            let (obj_id, end) = (h.id & !1, (h.id & 1) as u8);
            if let Some(obj) = reg.objects.get_mut(&obj_id)
                && obj.tokens[usize::from(end)] == h.token
            {
                *obj.holds[usize::from(end)]
                    .entry(Hold::Grant(gid))
                    .or_insert(0) += 1;
                held.push((obj_id, end));
            }
        }
        reg.grants.insert(gid, held);
        Ok(Some(gid))
    }

    /// The task the grant was for runs in worker `pid`: the worker now holds those ends.
    pub fn bind_grant(&self, gid: u64, pid: u32) {
        self.rehold(gid, Some(pid));
    }

    /// The task the grant was for will never run.
    pub fn drop_grant(&self, gid: u64) {
        self.rehold(gid, None);
    }

    fn rehold(&self, gid: u64, pid: Option<u32>) {
        let mut out = Vec::new();
        {
            let mut reg = self.lock();
            let Some(held) = reg.grants.remove(&gid) else {
                return;
            };
            for (obj_id, end) in held {
                if let Some(obj) = reg.objects.get_mut(&obj_id) {
                    let holds = &mut obj.holds[usize::from(end)];
                    holds.remove(&Hold::Grant(gid));
                    if let Some(pid) = pid {
                        holds.entry(Hold::Pid(pid)).or_insert(1);
                    }
                    obj.pump(&mut out);
                }
            }
            reg.sweep(&mut out);
        }
        deliver_all(out);
    }

    fn adjust_host_refs(&self, h: Handle, up: bool) {
        let mut out = Vec::new();
        {
            let mut reg = self.lock();
            let (obj_id, end) = (h.id & !1, (h.id & 1) as u8);
            let Some(obj) = reg.objects.get_mut(&obj_id) else {
                return;
            };
            if obj.tokens[usize::from(end)] != h.token {
                return;
            }
            let refs = &mut obj.host_refs[usize::from(end)];
            if up {
                *refs += 1;
                return;
            }
            *refs = refs.saturating_sub(1);
            // The host program's last copy of a pipe end closes it for the host.
            obj.pump(&mut out);
            reg.free(vec![obj_id], &mut out);
        }
        deliver_all(out);
    }

    /// How many objects are alive (for tests of clean-up).
    pub fn live_objects(&self) -> usize {
        self.lock().objects.len()
    }
}

/// Notes that `target` is being encoded into task arguments (see [`collect_grants`]).
pub(crate) fn note_granted(target: Handle) {
    COLLECT.with(|c| {
        if let Some(list) = c.borrow_mut().as_mut() {
            list.push(target);
        }
    });
}

/// What the host program's typed handles do, routed here by the runtime (see
/// `crate::runtime`).
impl Broker {
    /// Performs `req` on `target` for the calling host thread.
    pub fn invoke_for_host(
        &self,
        target: Handle,
        req: Request,
        mut timeout: Option<Duration>,
    ) -> Result<Response, ObjectError> {
        // Copies counted for answers that were never decoded into handles are let go of.
        for h in ADOPT.with(|a| std::mem::take(&mut *a.borrow_mut())) {
            self.adjust_host_refs(h, false);
        }
        if crate::shm::in_place(&req)
            && let Local::Done(response) = self.host_shared_op(target, &req, &mut timeout)?
        {
            return Ok(response);
        }
        let slot = Arc::new(HostSlot::default());
        self.submit(
            Owner::host_thread(),
            target,
            req,
            timeout,
            Responder::Host(slot.clone()),
        );
        slot.wait()
    }

    /// A new copy of `target` exists in the host program.
    pub fn retain_for_host(&self, target: Handle) {
        if adopted(target) {
            return;
        }
        self.adjust_host_refs(target, true);
    }

    /// A copy of `target` in the host program was dropped.
    pub fn release_for_host(&self, target: Handle) {
        self.adjust_host_refs(target, false);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn deadlines_of_waits_answered_early_do_not_pile_up() {
        // Two host threads play ping-pong over two queues with an hour-long timeout on every
        // get: each get mostly blocks, is answered within microseconds, and leaves a deadline
        // an hour away. Kept, those would grow the timer's heap by one per get.
        let manager = crate::Manager::new();
        let (ping, pong) = (manager.queue::<u32>(), manager.queue::<u32>());
        let hour = Some(Duration::from_secs(3600));
        const ROUNDS: u32 = 10_000;
        let echo = {
            let (ping, pong) = (ping.clone(), pong.clone());
            std::thread::spawn(move || {
                for _ in 0..ROUNDS {
                    let n = ping.get_timeout(hour).expect("ping");
                    pong.put(&n).expect("pong");
                }
            })
        };
        for i in 0..ROUNDS {
            ping.put(&i).expect("put");
            assert_eq!(pong.get_timeout(hour).expect("get"), i);
        }
        echo.join().expect("echo thread");
        let kept = crate::Runtime::global().broker().timer.len();
        assert!(
            kept < 4096,
            "{kept} deadlines kept after {} timed gets",
            2 * ROUNDS
        );
    }
}
