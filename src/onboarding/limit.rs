//! Fixed-window request counters per key (a source address, an enrolment token's hash).

use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Keys remembered at most. Past it, expired windows are dropped; if that is not enough, new
/// keys are refused until windows expire, so a flood of distinct addresses cannot grow memory.
const MAX_KEYS: usize = 100_000;

/// At most `limit` requests per key per `window`.
#[derive(Debug)]
pub(crate) struct RateLimit {
    limit: u32,
    window: Duration,
    seen: DashMap<String, (Instant, u32)>,
}

impl RateLimit {
    pub(crate) fn per_minute(limit: u32) -> Self {
        Self {
            limit,
            window: Duration::from_secs(60),
            seen: DashMap::new(),
        }
    }

    /// Counts one request for `key` at `now`; false when the key is over its limit.
    pub(crate) fn allow(&self, key: &str, now: Instant) -> bool {
        if !self.seen.contains_key(key) && self.seen.len() >= MAX_KEYS {
            self.seen
                .retain(|_, (start, _)| now.duration_since(*start) < self.window);
            if self.seen.len() >= MAX_KEYS {
                return false;
            }
        }
        let mut entry = self.seen.entry(key.to_owned()).or_insert((now, 0));
        let (start, count) = &mut *entry;
        if now.duration_since(*start) >= self.window {
            *start = now;
            *count = 0;
        }
        if *count >= self.limit {
            return false;
        }
        *count += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_limit_per_window_and_keys_are_counted_apart() {
        let limit = RateLimit::per_minute(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limit.allow("10.0.0.1", t0));
        }
        assert!(!limit.allow("10.0.0.1", t0 + Duration::from_secs(59)));
        assert!(limit.allow("10.0.0.2", t0));
        assert!(limit.allow("10.0.0.1", t0 + Duration::from_secs(60)));
    }
}
