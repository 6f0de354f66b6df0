//! The queue policy: which queued chunk a free worker takes next.
//!
//! The scheduler keeps its chunks waiting for a worker in a [`QueuePolicy`] and asks it for
//! the next one whenever a worker has room. [`Fair`] is the pool's policy: weighted deficit
//! round robin across tenants ([`Tenant`](super::Tenant)), charged by what each chunk
//! really cost in a worker. Each chunk is pushed under a [`QueueKey`] (its job's tenant)
//! with a [`CostHint`], and what it really cost is reported back with
//! [`QueuePolicy::charge`] once a worker has answered it. With one tenant (every pool that
//! names none) it is first in, first out across every submission: Python's order.

use std::collections::{HashMap, VecDeque};

use super::chunk::Chunk;

/// Which queue a submission's chunks wait in: its tenant's, what a fair policy shares the
/// workers between. A pool's submissions have the default key unless a handle names a
/// tenant ([`Pool::with_tenant`](super::Pool::with_tenant)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct QueueKey(pub u64);

/// What a chunk is expected to cost, known when it is queued.
///
/// [`Fair`] estimates from what its tenant's chunks cost per item so far, not from this;
/// a policy that knows the task could.
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CostHint {
    /// Its items.
    pub items: usize,
    /// Its items' encoded size.
    pub bytes: usize,
    /// The average run time in a worker of its task's recent chunks, in microseconds;
    /// `None` until one has run.
    pub micros: Option<u64>,
}

/// What a chunk really cost, reported once a worker has answered it.
///
/// [`Fair`] charges by run time; fuel is there for a policy that meters by it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cost {
    /// The items it answered.
    pub items: usize,
    /// How long it ran in the worker, in microseconds.
    pub micros: u64,
    /// The fuel it used, on a metered worker.
    #[allow(dead_code)]
    pub fuel: Option<u64>,
    /// Whether it tells what its tenant's items cost (a cancelled chunk, skipped unrun or
    /// stopped midway, does not).
    pub typical: bool,
}

/// The chunks waiting for a worker, and the order in which workers take them.
///
/// The scheduler calls it under its lock, so a call must not block. Between a
/// [`peek`](QueuePolicy::peek) and the next [`pop`](QueuePolicy::pop), with no other call in
/// between, `pop` returns the chunk `peek` showed (the scheduler looks at the next chunk to
/// pick a worker for it, then takes it).
pub(crate) trait QueuePolicy: Send + std::fmt::Debug {
    /// Queues a newly submitted chunk under `key` (its job's), expected to cost `hint`.
    fn push(&mut self, key: QueueKey, hint: CostHint, chunk: Chunk);

    /// The chunk a worker should take next, if any.
    fn peek(&mut self) -> Option<&Chunk>;

    /// Takes the chunk a worker should take next.
    fn pop(&mut self) -> Option<Chunk>;

    /// Puts chunks back ahead of everything queued, in the order given: they were taken
    /// and did not run (their worker died first, or stopped a batch part way), or are a lost
    /// chunk's retries. They run next, before anything queued after them. Each chunk's key
    /// is [`Chunk::key`].
    fn requeue(&mut self, chunks: Vec<Chunk>);

    /// Removes and returns, in queue order, every queued chunk `which` is true of (a
    /// cancelled job's, a task's past its restart limit).
    fn remove(&mut self, which: &mut dyn FnMut(&Chunk) -> bool) -> Vec<Chunk>;

    /// Removes and returns every queued chunk, in queue order.
    fn take_all(&mut self) -> Vec<Chunk> {
        self.remove(&mut |_| true)
    }

    /// How many chunks are queued.
    fn len(&self) -> usize;

    /// Whether no chunk is queued.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A chunk taken from under `key` has been answered and cost `cost`: the policy
    /// charges the key by it.
    fn charge(&mut self, key: QueueKey, cost: Cost);
}

/// Worker time, in microseconds, a tenant of weight 1 may take in one round before the
/// next tenant's turn. Small enough that a light tenant's task waits at most about one
/// round behind a flood (ten tenants: 20 ms of worker time), large enough that a turn
/// takes several chunks of tiny tasks.
const QUANTUM_MICROS: i64 = 2_000;

/// What an item is taken to cost before any of its tenant's chunks has been answered.
const DEFAULT_ITEM_MICROS: f64 = 50.0;

/// Idle tenants remembered (their debt and cost estimate) before the idle ones are
/// forgotten, so a pool that sees many short-lived tenants does not grow without bound.
const MAX_IDLE_LANES: usize = 4096;

/// What [`Fair`] needs to know of what it queues: a chunk, or a stand-in in tests.
pub(crate) trait Queued {
    /// Its tenant's queue.
    fn key(&self) -> QueueKey;
    /// Its tenant's weight.
    fn weight(&self) -> u32;
    /// Its items.
    fn items(&self) -> usize;
}

impl Queued for Chunk {
    fn key(&self) -> QueueKey {
        Chunk::key(self)
    }

    fn weight(&self) -> u32 {
        Chunk::weight(self)
    }

    fn items(&self) -> usize {
        self.items.len()
    }
}

/// One tenant's queue.
#[derive(Debug)]
struct Lane<C> {
    chunks: VecDeque<C>,
    /// Worker time the tenant may still take in its turn, in microseconds; negative when
    /// its chunks cost more than estimated (a debt carried to its next turns).
    deficit: i64,
    weight: u32,
    /// What this tenant's answered chunks cost recently: decayed sums of their cost and
    /// of their items, whose ratio is what an item is expected to cost.
    recent: Option<Recent>,
}

/// Decayed sums of what a tenant's answered chunks cost and how many items they had.
///
/// A ratio of sums, not a moving average of each chunk's cost per item: the pool charges a
/// chunk for the time it held its worker since the worker's previous answer, and answers
/// come in bursts (a worker writes them when it runs out of work), so one chunk of a burst
/// carries the burst's time and the others almost none. Averaged chunk by chunk, a run of
/// the cheap ones would make a turn take many more chunks than its quantum pays for.
#[derive(Debug, Clone, Copy)]
struct Recent {
    micros: f64,
    items: f64,
}

/// How much of the sums each answered chunk keeps: about the last hundred chunks count.
const RECENT_DECAY: f64 = 0.99;

impl Recent {
    fn add(this: Option<Recent>, micros: u64, items: usize) -> Recent {
        let r = this.unwrap_or(Recent {
            micros: 0.0,
            items: 0.0,
        });
        Recent {
            micros: r.micros * RECENT_DECAY + micros as f64,
            items: r.items * RECENT_DECAY + items as f64,
        }
    }

    fn per_item(&self) -> f64 {
        self.micros / self.items.max(1e-9)
    }
}

impl<C> Lane<C> {
    fn new(weight: u32) -> Lane<C> {
        Lane {
            chunks: VecDeque::new(),
            deficit: 0,
            weight,
            recent: None,
        }
    }

    /// The worker time `items` of this tenant's are expected to take.
    fn estimate(&self, items: usize) -> i64 {
        let per_item = self.recent.map_or(DEFAULT_ITEM_MICROS, |r| r.per_item());
        ((per_item * items as f64).ceil() as i64).max(1)
    }

    /// The worker time one turn gives it.
    fn quantum(&self) -> i64 {
        QUANTUM_MICROS.saturating_mul(i64::from(self.weight))
    }
}

/// Weighted deficit round robin across tenants, charged by what each chunk really cost.
///
/// Each tenant with queued chunks takes a turn in a round; a turn adds the tenant's quantum
/// ([`QUANTUM_MICROS`] × its weight) to its deficit, and the tenant's chunks are taken while
/// the deficit covers the next one's estimated cost (its items × what an item of the
/// tenant's cost lately). When a worker answers, the estimate is replaced by the real run
/// time, so a tenant whose tasks run long pays for them in its next turns. A tenant that
/// empties its queue keeps its debt but not its credit: work cannot be banked by idling.
/// Chunks put back ([`QueuePolicy::requeue`]) run before everything, as in FIFO, and their
/// estimate is refunded until they are taken again.
///
/// A tenant that splits its work into many submissions gains nothing: its submissions share
/// its one queue. With one tenant, as in every pool that names none, this is first in,
/// first out.
#[derive(Debug)]
pub(crate) struct Fair<C = Chunk> {
    /// Chunks put back: taken first, in order.
    requeued: VecDeque<C>,
    lanes: HashMap<QueueKey, Lane<C>>,
    /// The tenants with queued chunks, in round order; the front one has the turn.
    active: VecDeque<QueueKey>,
    /// Whether the front tenant has had its quantum for this turn.
    turn_open: bool,
    /// Chunks queued in lanes (not counting `requeued`).
    queued: usize,
}

impl<C> Default for Fair<C> {
    fn default() -> Fair<C> {
        Fair {
            requeued: VecDeque::new(),
            lanes: HashMap::new(),
            active: VecDeque::new(),
            turn_open: false,
            queued: 0,
        }
    }
}

impl<C: Queued> Fair<C> {
    /// The tenant whose chunk is taken next, turning the round as needed.
    fn select(&mut self) -> Option<QueueKey> {
        let mut misses = 0;
        loop {
            let key = *self.active.front()?;
            let lane = self.lanes.get_mut(&key)?;
            if !self.turn_open {
                lane.deficit = lane.deficit.saturating_add(lane.quantum());
                self.turn_open = true;
            }
            let cost = lane.estimate(lane.chunks.front().map_or(0, |c| c.items()));
            if lane.deficit >= cost {
                return Some(key);
            }
            // Its turn ends: the next tenant's begins.
            self.active.rotate_left(1);
            self.turn_open = false;
            misses += 1;
            if misses >= self.active.len() {
                // A whole round in which no tenant could take a chunk (every one is in debt,
                // or its next chunk costs more than a turn gives): skip the rounds in which
                // none could, all at once.
                self.skip_idle_rounds();
                misses = 0;
            }
        }
    }

    /// Adds to every active tenant the quanta of the rounds before the first in which one
    /// of them can take its next chunk.
    fn skip_idle_rounds(&mut self) {
        let rounds = self
            .active
            .iter()
            .filter_map(|k| self.lanes.get(k))
            .map(|lane| {
                let cost = lane.estimate(lane.chunks.front().map_or(0, |c| c.items()));
                let short = cost.saturating_sub(lane.deficit).max(0);
                // Rounds until its deficit covers the chunk, the turn that is next counted.
                (short + lane.quantum() - 1) / lane.quantum()
            })
            .min()
            .unwrap_or(0);
        let skip = rounds.saturating_sub(1);
        if skip > 0 {
            for key in &self.active {
                if let Some(lane) = self.lanes.get_mut(key) {
                    lane.deficit = lane
                        .deficit
                        .saturating_add(skip.saturating_mul(lane.quantum()));
                }
            }
        }
    }

    fn lane(&mut self, key: QueueKey, weight: u32) -> &mut Lane<C> {
        if !self.lanes.contains_key(&key) && self.lanes.len() >= MAX_IDLE_LANES + self.active.len()
        {
            self.forget_idle();
        }
        self.lanes.entry(key).or_insert_with(|| Lane::new(weight))
    }

    /// Forgets the tenants with nothing queued (their debts are forgiven).
    fn forget_idle(&mut self) {
        self.lanes.retain(|_, lane| !lane.chunks.is_empty());
    }

    /// Takes the front chunk of `key`'s lane, charging its estimate.
    fn take_from(&mut self, key: QueueKey) -> Option<C> {
        let lane = self.lanes.get_mut(&key)?;
        let chunk = lane.chunks.pop_front()?;
        lane.deficit = lane.deficit.saturating_sub(lane.estimate(chunk.items()));
        self.queued -= 1;
        if lane.chunks.is_empty() {
            // Out of the round: its debt stays, its credit does not.
            lane.deficit = lane.deficit.min(0);
            if self.active.front() == Some(&key) {
                self.active.pop_front();
            } else {
                self.active.retain(|k| *k != key);
            }
            self.turn_open = false;
        }
        Some(chunk)
    }
}

impl<C: Queued> Fair<C> {
    fn push_chunk(&mut self, key: QueueKey, chunk: C) {
        let weight = chunk.weight();
        let lane = self.lane(key, weight);
        lane.weight = weight;
        let was_empty = lane.chunks.is_empty();
        lane.chunks.push_back(chunk);
        self.queued += 1;
        if was_empty {
            self.active.push_back(key);
        }
    }

    fn peek_chunk(&mut self) -> Option<&C> {
        if !self.requeued.is_empty() {
            return self.requeued.front();
        }
        let key = self.select()?;
        self.lanes.get(&key)?.chunks.front()
    }

    fn pop_chunk(&mut self) -> Option<C> {
        if let Some(chunk) = self.requeued.pop_front() {
            let lane = self.lane(chunk.key(), chunk.weight());
            lane.deficit = lane.deficit.saturating_sub(lane.estimate(chunk.items()));
            return Some(chunk);
        }
        let key = self.select()?;
        self.take_from(key)
    }

    fn requeue_chunks(&mut self, chunks: Vec<C>) {
        for chunk in chunks.into_iter().rev() {
            // Its estimate was charged when it was taken; it is charged again when it is
            // taken again.
            let lane = self.lane(chunk.key(), chunk.weight());
            lane.deficit = lane.deficit.saturating_add(lane.estimate(chunk.items()));
            self.requeued.push_front(chunk);
        }
    }

    fn remove_chunks(&mut self, which: &mut dyn FnMut(&C) -> bool) -> Vec<C> {
        let mut removed = Vec::new();
        let requeued = std::mem::take(&mut self.requeued);
        for chunk in requeued {
            if which(&chunk) {
                removed.push(chunk);
            } else {
                self.requeued.push_back(chunk);
            }
        }
        // Lanes in round order, so chunks come out in the order they would have run
        // within each tenant.
        let keys: Vec<QueueKey> = self.active.iter().copied().collect();
        for key in keys {
            let Some(lane) = self.lanes.get_mut(&key) else {
                continue;
            };
            let chunks = std::mem::take(&mut lane.chunks);
            for chunk in chunks {
                if which(&chunk) {
                    removed.push(chunk);
                    self.queued -= 1;
                } else {
                    lane.chunks.push_back(chunk);
                }
            }
            if lane.chunks.is_empty() {
                lane.deficit = lane.deficit.min(0);
                if self.active.front() == Some(&key) {
                    self.turn_open = false;
                }
                self.active.retain(|k| *k != key);
            }
        }
        removed
    }

    fn queued(&self) -> usize {
        self.queued + self.requeued.len()
    }

    fn charge_key(&mut self, key: QueueKey, cost: Cost) {
        let Some(lane) = self.lanes.get_mut(&key) else {
            // Forgotten while its chunk ran: nothing to charge.
            return;
        };
        let real = i64::try_from(cost.micros).unwrap_or(i64::MAX);
        let estimated = lane.estimate(cost.items);
        lane.deficit = lane.deficit.saturating_add(estimated).saturating_sub(real);
        if cost.items > 0 && cost.typical {
            lane.recent = Some(Recent::add(lane.recent, cost.micros, cost.items));
        }
    }
}

impl QueuePolicy for Fair<Chunk> {
    fn push(&mut self, key: QueueKey, _hint: CostHint, chunk: Chunk) {
        self.push_chunk(key, chunk);
    }

    fn peek(&mut self) -> Option<&Chunk> {
        self.peek_chunk()
    }

    fn pop(&mut self) -> Option<Chunk> {
        self.pop_chunk()
    }

    fn requeue(&mut self, chunks: Vec<Chunk>) {
        self.requeue_chunks(chunks);
    }

    fn remove(&mut self, which: &mut dyn FnMut(&Chunk) -> bool) -> Vec<Chunk> {
        self.remove_chunks(which)
    }

    fn len(&self) -> usize {
        self.queued()
    }

    fn charge(&mut self, key: QueueKey, cost: Cost) {
        self.charge_key(key, cost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for a chunk: its tenant, weight, items and a tag to follow it by.
    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Fake {
        key: u64,
        weight: u32,
        items: usize,
        tag: u32,
    }

    impl Queued for Fake {
        fn key(&self) -> QueueKey {
            QueueKey(self.key)
        }
        fn weight(&self) -> u32 {
            self.weight
        }
        fn items(&self) -> usize {
            self.items
        }
    }

    fn fake(key: u64, weight: u32, tag: u32) -> Fake {
        Fake {
            key,
            weight,
            items: 1,
            tag,
        }
    }

    fn push(q: &mut Fair<Fake>, f: Fake) {
        q.push_chunk(f.key(), f);
    }

    /// Takes the next chunk and charges its tenant `micros` per item, as a worker answering
    /// it at once would.
    fn run_one(q: &mut Fair<Fake>, mut micros: impl FnMut(u64) -> u64) -> Option<Fake> {
        let peeked = q.peek_chunk().copied();
        let f = q.pop_chunk()?;
        assert_eq!(peeked, Some(f), "pop takes the chunk peek showed");
        q.charge_key(
            f.key(),
            Cost {
                items: f.items,
                micros: micros(f.key) * f.items as u64,
                fuel: None,
                typical: true,
            },
        );
        Some(f)
    }

    #[test]
    fn one_tenant_is_first_in_first_out_and_put_back_chunks_run_first() {
        let mut q = Fair::default();
        for tag in 0..5 {
            push(&mut q, fake(0, 1, tag));
        }
        assert_eq!(q.queued(), 5);
        let a = q.pop_chunk().map(|f| f.tag);
        let b = q.pop_chunk().map(|f| f.tag);
        assert_eq!((a, b), (Some(0), Some(1)));
        q.requeue_chunks(vec![fake(0, 1, 10), fake(0, 1, 11)]);
        let order: Vec<u32> = std::iter::from_fn(|| run_one(&mut q, |_| 1_000_000))
            .map(|f| f.tag)
            .collect();
        // Even at a second per item (far over a quantum) the order holds.
        assert_eq!(order, [10, 11, 2, 3, 4]);
        assert_eq!(q.queued(), 0);
    }

    #[test]
    fn a_light_tenants_chunk_waits_about_one_round_behind_a_flood() {
        let mut q = Fair::default();
        for tag in 0..10_000 {
            push(&mut q, fake(1, 1, tag));
        }
        // The flood runs a while, and its cost is learned (100 µs an item).
        for _ in 0..500 {
            run_one(&mut q, |_| 100);
        }
        push(&mut q, fake(2, 1, 99));
        let wait = std::iter::from_fn(|| run_one(&mut q, |_| 100))
            .position(|f| f.key == 2)
            .expect("the light tenant's chunk runs");
        // One turn of the flood is 2 ms / 100 µs = 20 chunks.
        assert!(wait <= 21, "waited behind {wait} of the flood's chunks");
    }

    #[test]
    fn a_flood_charged_in_bursts_still_takes_turns_of_about_one_quantum() {
        // The pool charges a chunk for the time it held its worker since the worker's last
        // answer, and answers come in bursts: one chunk in ten carries the burst's 200 µs,
        // the others none (20 µs an item on average).
        let mut q = Fair::default();
        for tag in 0..20_000 {
            push(&mut q, fake(1, 1, tag));
        }
        let mut n = 0u64;
        let mut bursty = |_key: u64| {
            n += 1;
            if n.is_multiple_of(10) { 200 } else { 0 }
        };
        for _ in 0..1_000 {
            run_one(&mut q, &mut bursty);
        }
        let lane = &q.lanes[&QueueKey(1)];
        let per_item = lane.recent.map(|r| r.per_item()).unwrap_or_default();
        assert!(
            (15.0..=25.0).contains(&per_item),
            "an item is expected to cost the chunks' mean, 20 µs, not the last few's: {per_item}"
        );
        // So a light tenant's chunk waits about one turn of the flood: 2 ms / 20 µs = 100
        // chunks, not the thousands a turn of "free" chunks would take.
        push(&mut q, fake(2, 1, 99));
        let wait = std::iter::from_fn(|| run_one(&mut q, &mut bursty))
            .position(|f| f.key == 2)
            .expect("the light tenant's chunk runs");
        assert!(wait <= 130, "waited behind {wait} of the flood's chunks");
    }

    #[test]
    fn weights_share_worker_time_and_a_tenant_pays_for_what_its_tasks_really_cost() {
        let mut q = Fair::default();
        for tag in 0..20_000 {
            push(&mut q, fake(1, 2, tag));
            push(&mut q, fake(2, 1, tag));
            push(&mut q, fake(3, 1, tag));
        }
        // Tenant 3's items cost ten times the others'.
        let cost = |key: u64| if key == 3 { 500 } else { 50 };
        let mut time = [0u64; 4];
        for _ in 0..6_000 {
            let f = run_one(&mut q, cost).expect("work is queued");
            time[f.key as usize] += cost(f.key);
        }
        let (t1, t2, t3) = (time[1] as f64, time[2] as f64, time[3] as f64);
        assert!((1.8..2.2).contains(&(t1 / t2)), "weight 2 vs 1: {time:?}");
        assert!(
            (0.9..1.1).contains(&(t3 / t2)),
            "equal weights, costly tasks: {time:?}"
        );
    }

    #[test]
    fn an_idle_tenant_banks_no_credit() {
        let mut q = Fair::default();
        for tag in 0..1_000 {
            push(&mut q, fake(1, 1, tag));
        }
        for _ in 0..500 {
            run_one(&mut q, |_| 100);
        }
        // Tenant 2 was idle all along; now it queues a lot at once.
        for tag in 0..200 {
            push(&mut q, fake(2, 1, tag));
        }
        let first_100: Vec<u64> = (0..100)
            .filter_map(|_| run_one(&mut q, |_| 100))
            .map(|f| f.key)
            .collect();
        let of_1 = first_100.iter().filter(|k| **k == 1).count();
        assert!(
            (40..=60).contains(&of_1),
            "the busy tenant keeps about half: {of_1} of 100"
        );
    }

    #[test]
    fn removing_chunks_keeps_the_rest_in_order_and_the_count_right() {
        let mut q = Fair::default();
        for tag in 0..6 {
            push(&mut q, fake(u64::from(tag % 2), 1, tag));
        }
        q.requeue_chunks(vec![fake(0, 1, 100)]);
        let removed: Vec<u32> = q
            .remove_chunks(&mut |f| f.key == 1 || f.tag == 100)
            .iter()
            .map(|f| f.tag)
            .collect();
        assert_eq!(removed, [100, 1, 3, 5]);
        assert_eq!(q.queued(), 3);
        let rest: Vec<u32> = std::iter::from_fn(|| q.pop_chunk())
            .map(|f| f.tag)
            .collect();
        assert_eq!(rest, [0, 2, 4]);
        assert!(q.peek_chunk().is_none());
    }

    #[test]
    fn a_chunk_costing_many_rounds_does_not_stall_the_queue() {
        let mut q = Fair::default();
        // Items learned to cost an hour each, then a huge chunk: taken without spinning.
        push(&mut q, fake(1, 1, 0));
        run_one(&mut q, |_| 3_600_000_000);
        push(
            &mut q,
            Fake {
                key: 1,
                weight: 1,
                items: 1 << 20,
                tag: 1,
            },
        );
        push(&mut q, fake(2, 1, 2));
        let order: Vec<u32> = std::iter::from_fn(|| q.pop_chunk())
            .map(|f| f.tag)
            .collect();
        assert_eq!(order, [2, 1]);
    }
}
