//! The service's state and its background work: the dispatch loop, the start-up recovery,
//! the tenants file's reload and the sweeper of expired results.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::dispatch::{Dispatcher, Work};
use crate::error::ServeError;
use crate::execute::{CancelSlot, Executor, ItemOutcome};
use crate::metrics::{Metrics, inc};
use crate::rate::RateLimits;
use crate::store::{Finished, RunSpec, Store, TaskError, UsageRow};
use crate::tenants::{Registry, Tenant};

/// A task's (or map item's) state changed.
#[derive(Debug, Clone)]
pub struct Change {
    /// Its tenant.
    pub tenant: String,
    /// The task.
    pub task: String,
    /// Its map, if an item.
    pub map: Option<String>,
}

/// Limits of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// The largest JSON or NDJSON body, in bytes.
    pub max_body_bytes: usize,
    /// The largest module upload, in bytes.
    pub max_module_bytes: usize,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
    /// The longest `?wait=` honoured.
    pub max_wait: Duration,
}

/// Everything the handlers and the background tasks share.
#[derive(Debug)]
pub struct App {
    /// The tenants in force.
    pub tenants: Registry,
    /// The state store.
    pub store: Store,
    /// The pools.
    pub exec: Executor,
    /// The queues.
    pub dispatch: Dispatcher,
    /// State changes, for waiters and streams.
    pub changes: broadcast::Sender<Change>,
    /// Rate quotas.
    pub rates: RateLimits,
    /// Counters.
    pub metrics: Metrics,
    /// HTTP limits.
    pub http: HttpLimits,
    running: Mutex<HashMap<String, Arc<CancelSlot>>>,
    maps: Mutex<MapRuns>,
}

/// The chunks of maps running, and the maps cancelled lately (a chunk taken from the
/// queue as its map is cancelled sees it when it starts).
#[derive(Debug, Default)]
struct MapRuns {
    running: HashMap<String, Vec<Arc<CancelSlot>>>,
    cancelled: HashMap<String, Instant>,
}

/// How long a cancelled map is remembered for a chunk that starts after the cancel.
const CANCELLED_KEPT: Duration = Duration::from_secs(600);

impl App {
    /// The shared state.
    pub fn new(
        tenants: Registry,
        store: Store,
        exec: Executor,
        dispatch: Dispatcher,
        http: HttpLimits,
    ) -> App {
        App {
            tenants,
            store,
            exec,
            dispatch,
            changes: broadcast::channel(4096).0,
            rates: RateLimits::default(),
            metrics: Metrics::default(),
            http,
            running: Mutex::new(HashMap::new()),
            maps: Mutex::new(MapRuns::default()),
        }
    }

    fn announce(&self, tenant: &str, task: &str, map: Option<&str>) {
        // No receiver is no error.
        let _ = self.changes.send(Change {
            tenant: tenant.to_string(),
            task: task.to_string(),
            map: map.map(str::to_string),
        });
    }

    /// Stores how a task ended (with its usage) and tells whoever waits.
    fn store_finished(&self, tenant: &Tenant, spec: &RunSpec, item: ItemOutcome) {
        let ok = item.outcome.is_ok();
        let done = Finished {
            id: spec.id.clone(),
            outcome: item.outcome,
            line: item.line,
            output: item.output,
            usage: UsageRow { ok, ..item.usage },
        };
        match self
            .store
            .finish(tenant.name(), tenant.quotas().result_ttl_s, &done)
        {
            Ok(true) => {
                inc(if ok {
                    &self.metrics.succeeded
                } else {
                    &self.metrics.failed
                });
            }
            Ok(false) => {}
            Err(e) => tracing::error!("storing the result of {}: {e}", spec.id),
        }
        self.announce(tenant.name(), &spec.id, spec.map_id.as_deref());
    }

    /// Stores how several of a map's items ended, in one transaction, and tells whoever
    /// waits.
    fn store_batch(&self, tenant: &Tenant, specs: &[RunSpec], batch: Vec<ItemOutcome>) {
        let mut done = Vec::with_capacity(batch.len());
        let mut ids = Vec::with_capacity(batch.len());
        for item in batch {
            let Some(spec) = specs.get(item.index) else {
                continue;
            };
            let ok = item.outcome.is_ok();
            ids.push(spec);
            done.push(Finished {
                id: spec.id.clone(),
                outcome: item.outcome,
                line: item.line,
                output: item.output,
                usage: UsageRow { ok, ..item.usage },
            });
        }
        match self
            .store
            .finish_many(tenant.name(), tenant.quotas().result_ttl_s, &done)
        {
            Ok(stored) => {
                for (d, stored) in done.iter().zip(stored) {
                    if stored {
                        inc(if d.outcome.is_ok() {
                            &self.metrics.succeeded
                        } else {
                            &self.metrics.failed
                        });
                    }
                }
            }
            Err(e) => tracing::error!("storing {} results: {e}", done.len()),
        }
        for spec in ids {
            self.announce(tenant.name(), &spec.id, spec.map_id.as_deref());
        }
    }

    /// Runs `work` of `tenant` to its end, on this (blocking) thread.
    fn run(&self, tenant: &Tenant, work: Work) {
        let items = work.items();
        let ids = match &work {
            Work::Task(id) => vec![id.clone()],
            Work::Items { ids, .. } => ids.clone(),
        };
        let specs = match self.store.start(&ids) {
            Ok(specs) => specs,
            Err(e) => {
                tracing::error!("starting {ids:?}: {e}");
                Vec::new()
            }
        };
        for s in &specs {
            self.announce(&s.tenant, &s.id, s.map_id.as_deref());
        }
        match (&work, specs.first()) {
            (Work::Task(id), Some(spec)) => {
                let slot = Arc::new(CancelSlot::default());
                self.lock_running().insert(id.clone(), slot.clone());
                let item = self.exec.run_task(tenant, spec, &slot);
                self.lock_running().remove(id);
                self.store_finished(tenant, spec, item);
            }
            (Work::Items { map, .. }, Some(_)) => {
                let slot = Arc::new(CancelSlot::default());
                {
                    let mut maps = self.lock_maps();
                    maps.running
                        .entry(map.clone())
                        .or_default()
                        .push(slot.clone());
                    if maps.cancelled.contains_key(map) {
                        slot.request();
                    }
                }
                // Group commit: items that finish while a batch is being written go in the
                // next transaction together, so a chunk of tiny items costs a few commits.
                let (sender, finished) = std::sync::mpsc::channel::<ItemOutcome>();
                std::thread::scope(|scope| {
                    let specs = &specs;
                    scope.spawn(move || {
                        while let Ok(first) = finished.recv() {
                            let mut batch = vec![first];
                            while batch.len() < 512 {
                                match finished.try_recv() {
                                    Ok(item) => batch.push(item),
                                    Err(_) => break,
                                }
                            }
                            self.store_batch(tenant, specs, batch);
                        }
                    });
                    self.exec.run_items(tenant, specs, &slot, |item| {
                        // The writer ends only when this sender is dropped.
                        let _ = sender.send(item);
                    });
                    drop(sender);
                });
                let mut maps = self.lock_maps();
                if let Some(slots) = maps.running.get_mut(map) {
                    slots.retain(|s| !Arc::ptr_eq(s, &slot));
                    if slots.is_empty() {
                        maps.running.remove(map);
                    }
                }
            }
            _ => {}
        }
        self.dispatch.finished(tenant.name(), items);
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<CancelSlot>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_maps(&self) -> std::sync::MutexGuard<'_, MapRuns> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cancels what of `tenant`'s map `map` has not finished: its queued items fail at once
    /// (`cancelled`, with their records), its running chunks are stopped and their items
    /// not finished fail the same way. Returns how many queued items were cancelled and
    /// how many chunks were running.
    ///
    /// The map's queued chunks leave the dispatcher before its running ones are stopped:
    /// stopped first, they would free their workers' places for the next of its chunks,
    /// which would then start (and be cancelled as it started) instead of being counted as
    /// queued. A chunk that the dispatcher took just before the cancel but had not yet
    /// started sees the cancel as it starts, and is counted in neither number.
    pub fn cancel_map(&self, tenant: &Tenant, map: &str) -> Result<(usize, usize), ServeError> {
        {
            let mut maps = self.lock_maps();
            let now = Instant::now();
            maps.cancelled
                .retain(|_, at| now.duration_since(*at) < CANCELLED_KEPT);
            maps.cancelled.insert(map.to_string(), now);
        }
        let removed = self.dispatch.remove_map(tenant.name(), map);
        let running = {
            let slots = self
                .lock_maps()
                .running
                .get(map)
                .cloned()
                .unwrap_or_default();
            for slot in &slots {
                slot.request();
            }
            slots.len()
        };
        let queued = self.store.queued_items(tenant.name(), map)?;
        let mut done = Vec::with_capacity(queued.len());
        for (id, task, args) in queued {
            let error = crate::execute::cancelled_items(&task);
            let input = serde_json::from_str(&args).unwrap_or_default();
            let mut w = wasmpool::lines::RecordWriter::new(&task, Vec::new());
            let _ = w.write_error(&input, &error.message);
            let line = String::from_utf8(w.into_inner()).unwrap_or_default();
            done.push(Finished {
                id,
                outcome: Err(error),
                output: None,
                usage: UsageRow {
                    bytes_in: args.len() as u64,
                    bytes_out: line.len() as u64,
                    ..UsageRow::default()
                },
                line: Some(line),
            });
        }
        let stored = self
            .store
            .finish_many(tenant.name(), tenant.quotas().result_ttl_s, &done)?;
        let mut cancelled = 0;
        for (d, stored) in done.iter().zip(stored) {
            if stored {
                cancelled += 1;
                inc(&self.metrics.failed);
            }
            self.announce(tenant.name(), &d.id, Some(map));
        }
        if removed > 0 {
            self.dispatch.wake.notify_one();
        }
        Ok((cancelled, running))
    }

    /// Cancels task `id` of `tenant`: a queued one at once; a running one is asked to stop.
    /// Returns whether the cancellation took (or was asked for).
    pub fn cancel(&self, tenant: &Tenant, id: &str) -> Result<bool, ServeError> {
        if self.dispatch.remove_task(tenant.name(), id) {
            let done = Finished {
                id: id.to_string(),
                outcome: Err(TaskError {
                    code: "cancelled".into(),
                    message: "the task was cancelled before it started".into(),
                }),
                line: None,
                output: None,
                usage: UsageRow::default(),
            };
            let stored = self
                .store
                .finish(tenant.name(), tenant.quotas().result_ttl_s, &done)?;
            if stored {
                inc(&self.metrics.failed);
            }
            self.announce(tenant.name(), id, None);
            return Ok(stored);
        }
        if let Some(slot) = self.lock_running().get(id) {
            slot.request();
            return Ok(true);
        }
        Ok(false)
    }

    /// Puts the work the store holds back in the queues, after a restart: tasks the service
    /// stopped under fail (`worker_lost`) unless they have retries left, in which case they
    /// are queued again, as every task not started is.
    pub fn recover(&self) -> Result<(usize, usize), ServeError> {
        let (lost, queued) = self.store.recover()?;
        for spec in &lost {
            let Some(tenant) = self.tenants.by_name(&spec.tenant) else {
                continue;
            };
            let message = format!(
                "the service stopped while task `{}` ran (attempt {} of {}); it is not run again",
                spec.task,
                spec.attempt,
                spec.retries + 1
            );
            let line = spec.map_id.as_ref().map(|_| {
                let input = serde_json::from_str(&spec.args).unwrap_or_default();
                let mut w = wasmpool::lines::RecordWriter::new(&spec.task, Vec::new());
                let _ = w.write_error(&input, &message);
                String::from_utf8(w.into_inner()).unwrap_or_default()
            });
            let item = ItemOutcome {
                index: 0,
                outcome: Err(TaskError {
                    code: "worker_lost".into(),
                    message,
                }),
                line,
                output: None,
                usage: UsageRow {
                    id: spec.id.clone(),
                    bytes_in: spec.args.len() as u64,
                    ..UsageRow::default()
                },
            };
            self.store_finished(&tenant, spec, item);
        }
        let count = queued.len();
        // Map items go back in chunks of their map's size, as they were accepted.
        let mut chunk: Option<(String, String, Vec<String>, usize)> = None;
        for row in queued {
            match row.map_id {
                None => {
                    if let Some((tenant, map, ids, _)) = chunk.take() {
                        self.dispatch.push(&tenant, Work::Items { map, ids });
                    }
                    self.dispatch.push(&row.tenant, Work::Task(row.id));
                }
                Some(map) => {
                    let same =
                        matches!(&chunk, Some((_, m, ids, size)) if *m == map && ids.len() < *size);
                    if !same {
                        if let Some((tenant, map, ids, _)) = chunk.take() {
                            self.dispatch.push(&tenant, Work::Items { map, ids });
                        }
                        let size = self.store.map_chunksize(&map)?.max(1) as usize;
                        chunk = Some((row.tenant.clone(), map, Vec::new(), size));
                    }
                    if let Some((_, _, ids, _)) = chunk.as_mut() {
                        ids.push(row.id);
                    }
                }
            }
        }
        if let Some((tenant, map, ids, _)) = chunk.take() {
            self.dispatch.push(&tenant, Work::Items { map, ids });
        }
        Ok((lost.len(), count))
    }
}

/// Hands queued work to blocking threads, for ever.
pub async fn dispatch_loop(app: Arc<App>) {
    loop {
        let woken = app.dispatch.wake.notified();
        while let Some((tenant, work)) = app.dispatch.next(&app.tenants) {
            let app = app.clone();
            tokio::task::spawn_blocking(move || app.run(&tenant, work));
        }
        // A wake-up can be missed only between `next` and here; the timeout bounds that.
        let _ = tokio::time::timeout(Duration::from_secs(1), woken).await;
    }
}

/// Reloads the tenants file when its modification time changes, checked every second.
pub async fn reload_loop(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        match app.tenants.reload_if_changed(false) {
            Ok(true) => {
                tracing::info!("reloaded the tenants file");
                app.dispatch.wake.notify_one();
            }
            Ok(false) => {}
            Err(e) => tracing::error!("{e}; keeping the tenants as they were"),
        }
    }
}

/// How often the store's write-ahead log is checkpointed.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Checkpoints the store's write-ahead log every [`CHECKPOINT_EVERY`], off the requests'
/// path (see `store::WAL_CEILING_PAGES`): often, so that each copies little.
pub async fn checkpoint_loop(app: Arc<App>) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let a = app.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || a.store.checkpoint()).await {
            tracing::error!("checkpointing the store: {e}");
        }
    }
}

/// Deletes expired results every second.
pub async fn sweep_loop(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let a = app.clone();
        match tokio::task::spawn_blocking(move || a.store.sweep()).await {
            Ok(Ok(n)) if n > 0 => tracing::debug!("swept {n} expired tasks"),
            Ok(Err(e)) => tracing::error!("sweeping: {e}"),
            _ => {}
        }
    }
}
