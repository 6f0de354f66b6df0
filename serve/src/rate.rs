//! Submission rate quotas: a token bucket per tenant, holding one second's worth of
//! submissions (at least one).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Every tenant's bucket.
#[derive(Debug, Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimits {
    /// Takes one submission from `tenant`'s bucket, refilled at `rate` a second; when it is
    /// empty, the whole seconds until the next token.
    pub fn take(&self, tenant: &str, rate: f64) -> Result<(), u64> {
        let capacity = rate.max(1.0);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = buckets.entry(tenant.to_string()).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let elapsed = now.duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(capacity);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / rate;
            Err(wait.ceil().max(1.0) as u64)
        }
    }

    /// The submissions `tenant` may make now.
    pub fn available(&self, tenant: &str, rate: f64) -> f64 {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets.get(tenant).map_or(rate.max(1.0), |b| {
            (b.tokens + b.at.elapsed().as_secs_f64() * rate).min(rate.max(1.0))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_seconds_worth_then_refused() {
        let r = RateLimits::default();
        assert!(r.take("a", 2.0).is_ok());
        assert!(r.take("a", 2.0).is_ok());
        assert_eq!(r.take("a", 2.0), Err(1));
        assert!(r.take("b", 2.0).is_ok(), "each tenant has its own bucket");
    }
}
