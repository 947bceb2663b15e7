//! Rate limits: a token bucket per caller and budget. A budget of N per
//! minute holds up to N requests and refills N/60 per second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::lock;

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The budget (requests per minute).
    pub limit: u32,
    /// Requests left right now.
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
    /// When refused: seconds until one request is allowed.
    pub retry_after_secs: u64,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Buckets kept before idle ones (full again) are dropped.
const PRUNE_AT: usize = 10_000;

impl RateLimiter {
    /// Takes one request from `key`'s bucket of `per_minute`.
    pub fn check(&self, key: &str, per_minute: u32, now: Instant) -> Verdict {
        let cap = f64::from(per_minute.max(1));
        let rate = cap / 60.0;
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= PRUNE_AT {
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < cap
            });
        }
        let b = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: cap,
            at: now,
        });
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate).min(cap);
        b.at = now;
        let allowed = b.tokens >= 1.0;
        if allowed {
            b.tokens -= 1.0;
        }
        let secs = |missing: f64| {
            Duration::from_secs_f64(missing.max(0.0) / rate)
                .as_secs_f64()
                .ceil() as u64
        };
        Verdict {
            allowed,
            limit: per_minute,
            remaining: b.tokens.floor() as u32,
            reset_secs: secs(cap - b.tokens),
            retry_after_secs: if allowed {
                0
            } else {
                secs(1.0 - b.tokens).max(1)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_drains_and_refills() {
        let l = RateLimiter::default();
        let t0 = Instant::now();
        for i in 0..60 {
            let v = l.check("uid:1000:write", 60, t0);
            assert!(v.allowed, "request {i}");
            assert_eq!(v.remaining, 59 - i);
        }
        let v = l.check("uid:1000:write", 60, t0);
        assert!(!v.allowed);
        assert_eq!((v.remaining, v.retry_after_secs, v.reset_secs), (0, 1, 60));
        // Callers have their own buckets.
        assert!(l.check("uid:1001:write", 60, t0).allowed);
        // One second later one request passes again.
        let v = l.check("uid:1000:write", 60, t0 + Duration::from_secs(1));
        assert!(v.allowed);
        assert_eq!(v.remaining, 0);
        // A minute of rest fills the bucket, not more.
        let v = l.check("uid:1000:write", 60, t0 + Duration::from_secs(600));
        assert_eq!(v.remaining, 59);
    }
}
