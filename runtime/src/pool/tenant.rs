//! Whose work a submission is: the unit a pool shares its workers between fairly.

use std::num::NonZeroU32;

use crate::error::{Error, Result};

/// Whose work a submission is, and how large a share of the pool's workers it is owed.
///
/// A pool queues each tenant's work apart and takes it in weighted deficit round robin,
/// charging each tenant by the worker time its tasks really took: when several tenants
/// have work queued, a tenant of weight 2 gets about twice the worker time of a tenant of
/// weight 1, however many tasks or maps each submits, and a light tenant's task waits about
/// one round (each queued tenant's turn: 2 ms of worker time × its weight), not behind a
/// flood. Work of one tenant runs in submission order, as in Python. Submissions through a
/// handle that names no tenant ([`Pool::with_tenant`](crate::Pool::with_tenant)) belong to
/// [`Tenant::DEFAULT`].
///
/// ```
/// use wasmpool::Tenant;
/// let heavy = Tenant::new(7, 2)?;
/// assert_eq!((heavy.id(), heavy.weight()), (7, 2));
/// assert!(Tenant::new(8, 0).is_err());
/// # Ok::<(), wasmpool::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tenant {
    id: u64,
    weight: NonZeroU32,
}

impl Tenant {
    /// The tenant of every submission that names none: id 0, weight 1.
    pub const DEFAULT: Tenant = Tenant {
        id: 0,
        weight: NonZeroU32::MIN,
    };

    /// The largest weight a tenant may have.
    pub const MAX_WEIGHT: u32 = 10_000;

    /// Tenant `id` with `weight`, from 1 to [`Tenant::MAX_WEIGHT`].
    ///
    /// # Errors
    ///
    /// [`Error::State`] for a weight of 0 or over [`Tenant::MAX_WEIGHT`].
    pub fn new(id: u64, weight: u32) -> Result<Tenant> {
        match NonZeroU32::new(weight) {
            Some(weight) if weight.get() <= Self::MAX_WEIGHT => Ok(Tenant { id, weight }),
            _ => Err(Error::State(format!(
                "a tenant's weight must be from 1 to {}, not {weight}",
                Self::MAX_WEIGHT
            ))),
        }
    }

    /// Its id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Its weight.
    pub fn weight(&self) -> u32 {
        self.weight.get()
    }
}

impl Default for Tenant {
    fn default() -> Tenant {
        Tenant::DEFAULT
    }
}
