//! Rate-limited warnings: a condition that repeats (a peer down, LiteFS
//! unreachable, a stream of refused requests) is logged once per interval
//! per key, with how many lines were held back since the last one, instead
//! of once per occurrence.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One limiter per warning site; keys tell its subjects apart (a peer's
/// name, an error code). Keys are few and fixed per site, so the list
/// stays short and is searched linearly.
#[derive(Debug)]
pub struct LogLimit {
    every: Duration,
    keys: Mutex<Vec<Seen>>,
}

#[derive(Debug)]
struct Seen {
    key: String,
    logged_at: Instant,
    suppressed: u64,
}

/// The most keys one site tracks: past it, new keys share the last slot's
/// budget rather than growing the list (keys built from input must not
/// grow memory).
const MAX_KEYS: usize = 64;

impl LogLimit {
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            keys: Mutex::new(Vec::new()),
        }
    }

    /// `Some(suppressed)` when a line for `key` may be written now, with
    /// how many were held back since the last one; `None` to stay quiet.
    pub fn allow(&self, key: &str) -> Option<u64> {
        self.allow_at(key, Instant::now())
    }

    fn allow_at(&self, key: &str, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let found = keys.iter().position(|s| s.key == key);
        let index = match found {
            Some(i) => i,
            None if keys.len() < MAX_KEYS => {
                keys.push(Seen {
                    key: key.to_owned(),
                    logged_at: now,
                    suppressed: 0,
                });
                return Some(0);
            }
            None => MAX_KEYS - 1,
        };
        let seen = &mut keys[index];
        if now.saturating_duration_since(seen.logged_at) >= self.every {
            seen.logged_at = now;
            Some(std::mem::take(&mut seen.suppressed))
        } else {
            seen.suppressed += 1;
            None
        }
    }
}

/// How often a repeated warning is logged.
pub const EVERY: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let limit = LogLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limit.allow_at("a", t0), Some(0));
        for s in 1..10 {
            assert_eq!(limit.allow_at("a", t0 + Duration::from_secs(s)), None);
        }
        // Another key has its own budget.
        assert_eq!(limit.allow_at("b", t0 + Duration::from_secs(5)), Some(0));
        assert_eq!(limit.allow_at("a", t0 + Duration::from_secs(10)), Some(9));
        assert_eq!(limit.allow_at("a", t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn keys_are_bounded() {
        let limit = LogLimit::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..MAX_KEYS * 2 {
            limit.allow_at(&i.to_string(), t0);
        }
        assert_eq!(limit.keys.lock().map(|k| k.len()).unwrap_or(0), MAX_KEYS);
    }
}
