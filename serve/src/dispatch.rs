//! The service's queue: accepted work waits here (and in the store) per tenant, and goes to
//! the pools in weighted round robin across tenants, each tenant within its `running` quota
//! and the service within its cap of work in flight. The pools then queue what they are
//! given (fairly across tenants, once the pool has fair queuing).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::tenants::Registry;
use crate::tenants::Tenant;

/// One unit of work: a task, or a chunk of one map's items.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// A task, by id.
    Task(String),
    /// A chunk of map items, by id, sent to a worker together.
    Items {
        /// The map.
        map: String,
        /// The items' task ids.
        ids: Vec<String>,
    },
}

impl Work {
    /// How many items it is.
    pub fn items(&self) -> usize {
        match self {
            Work::Task(_) => 1,
            Work::Items { ids, .. } => ids.len(),
        }
    }
}

#[derive(Debug, Default)]
struct TenantQueue {
    work: VecDeque<Work>,
    /// Items in `work`.
    queued: usize,
    /// Items handed to the pools and not finished.
    running: usize,
}

#[derive(Debug, Default)]
struct DispatchState {
    queues: HashMap<String, TenantQueue>,
    /// Tenants in turn order.
    ring: Vec<String>,
    cursor: usize,
    /// Work taken from the tenant at the cursor in this turn.
    served: u32,
    inflight: usize,
}

/// The per-tenant queues.
#[derive(Debug)]
pub struct Dispatcher {
    state: Mutex<DispatchState>,
    /// Woken when work arrives or finishes.
    pub wake: Notify,
    max_inflight: usize,
}

impl Dispatcher {
    /// A dispatcher that keeps at most `max_inflight` items in the pools at once.
    pub fn new(max_inflight: usize) -> Dispatcher {
        Dispatcher {
            state: Mutex::new(DispatchState::default()),
            wake: Notify::new(),
            max_inflight: max_inflight.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, DispatchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `work` for `tenant`.
    pub fn push(&self, tenant: &str, work: Work) {
        let mut s = self.lock();
        if !s.queues.contains_key(tenant) {
            s.ring.push(tenant.to_string());
        }
        let q = s.queues.entry(tenant.to_string()).or_default();
        q.queued += work.items();
        q.work.push_back(work);
        drop(s);
        self.wake.notify_one();
    }

    /// Items of `tenant` accepted and not finished (queued or running).
    pub fn pending(&self, tenant: &str) -> (usize, usize) {
        self.lock()
            .queues
            .get(tenant)
            .map_or((0, 0), |q| (q.queued, q.running))
    }

    /// Takes task `id` out of `tenant`'s queue; whether it was there.
    pub fn remove_task(&self, tenant: &str, id: &str) -> bool {
        let mut s = self.lock();
        let Some(q) = s.queues.get_mut(tenant) else {
            return false;
        };
        let before = q.work.len();
        q.work.retain(|w| !matches!(w, Work::Task(t) if t == id));
        let removed = q.work.len() != before;
        if removed {
            q.queued -= 1;
        }
        removed
    }

    /// Takes every queued chunk of map `map` out of `tenant`'s queue; how many items they
    /// held.
    pub fn remove_map(&self, tenant: &str, map: &str) -> usize {
        let mut s = self.lock();
        let Some(q) = s.queues.get_mut(tenant) else {
            return 0;
        };
        let mut removed = 0;
        q.work.retain(|w| match w {
            Work::Items { map: m, ids } if m == map => {
                removed += ids.len();
                false
            }
            _ => true,
        });
        q.queued -= removed;
        removed
    }

    /// The next work to run, by weighted round robin: the tenant at the cursor may take up
    /// to its weight in units of work before the turn passes, and a tenant at its `running`
    /// quota (or whose queue is empty, or who is no longer in the tenants file) is passed
    /// over. The work is counted as running until [`finished`](Dispatcher::finished).
    pub fn next(&self, registry: &Registry) -> Option<(Tenant, Work)> {
        let mut s = self.lock();
        if s.inflight >= self.max_inflight || s.ring.is_empty() {
            return None;
        }
        let tenants = registry.all();
        let n = s.ring.len();
        for _ in 0..=n {
            let cursor = s.cursor % n;
            let name = s.ring[cursor].clone();
            let tenant = tenants.iter().find(|t| t.name() == name);
            let served = s.served;
            let room = self.max_inflight - s.inflight;
            let idle = s.inflight == 0;
            let q = s.queues.get_mut(&name);
            let pick = match (tenant, q) {
                (Some(t), Some(q)) if served < t.entry.weight => match q.work.front() {
                    Some(w) => {
                        let limit = t.quotas().running as usize;
                        let fits = q.running + w.items() <= limit && w.items() <= room;
                        // A chunk larger than the quota (or the room) runs alone rather
                        // than never.
                        let alone = q.running == 0 && (w.items() <= room || idle);
                        if fits || alone {
                            let w = q.work.pop_front()?;
                            q.queued -= w.items();
                            q.running += w.items();
                            Some((t.clone(), w))
                        } else {
                            None
                        }
                    }
                    None => None,
                },
                _ => None,
            };
            match pick {
                Some((t, w)) => {
                    s.served += 1;
                    s.inflight += w.items();
                    return Some((t, w));
                }
                None => {
                    s.cursor = (cursor + 1) % n;
                    s.served = 0;
                }
            }
        }
        None
    }

    /// Counts `items` of `tenant`'s running work as finished.
    pub fn finished(&self, tenant: &str, items: usize) {
        let mut s = self.lock();
        s.inflight = s.inflight.saturating_sub(items);
        if let Some(q) = s.queues.get_mut(tenant) {
            q.running = q.running.saturating_sub(items);
        }
        drop(s);
        self.wake.notify_one();
    }

    /// Queued and running items per tenant, for `/metrics`.
    pub fn depths(&self) -> Vec<(String, usize, usize)> {
        let s = self.lock();
        let mut v: Vec<_> = s
            .queues
            .iter()
            .map(|(k, q)| (k.clone(), q.queued, q.running))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::tenants::{hex, token_digest};

    fn registry(tenants: &[(&str, u32, u32)]) -> (Registry, std::path::PathBuf) {
        let mut text = String::new();
        for (name, weight, running) in tenants {
            text.push_str(&format!(
                "[[tenant]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\nweight = {weight}\n\
                 [tenant.quotas]\nrunning = {running}\n",
                hex(&token_digest(name))
            ));
        }
        let path = std::env::temp_dir().join(format!(
            "wp-dispatch-{}-{}.toml",
            std::process::id(),
            tenants.len()
        ));
        std::fs::write(&path, text).unwrap();
        (Registry::load(&path).unwrap(), path)
    }

    #[test]
    fn turns_follow_the_weights_and_the_running_quota_holds() {
        let (reg, path) = registry(&[("a", 2, 100), ("b", 1, 100)]);
        let d = Dispatcher::new(1000);
        for i in 0..10 {
            d.push("a", Work::Task(format!("a{i}")));
            d.push("b", Work::Task(format!("b{i}")));
        }
        let order: String = (0..9)
            .map(|_| d.next(&reg).unwrap().0.name().to_string())
            .collect();
        assert_eq!(order, "aabaabaab");
        std::fs::remove_file(path).unwrap();

        let (reg, path) = registry(&[("c", 1, 2)]);
        let d = Dispatcher::new(1000);
        for i in 0..5 {
            d.push("c", Work::Task(format!("c{i}")));
        }
        assert!(d.next(&reg).is_some());
        assert!(d.next(&reg).is_some());
        assert!(d.next(&reg).is_none(), "c is at its running quota");
        d.finished("c", 1);
        assert!(d.next(&reg).is_some());
        assert_eq!(d.pending("c"), (2, 2));
        assert!(d.remove_task("c", "c4"));
        assert_eq!(d.pending("c"), (1, 2));
        std::fs::remove_file(path).unwrap();
    }
}
