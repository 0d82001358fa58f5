//! Start-up quiet: for `election_timeout` max after it starts, a node
//! grants no vote or pre-vote, acts on no leadership transfer, and does not
//! campaign.
//!
//! A leader's write lease relies on its followers not voting for anyone
//! for `election_timeout` max after a heartbeat they acknowledged. openraft
//! keeps that promise in memory only: it loads the stored vote with no
//! lease, so a follower restarted right after an acknowledgement would
//! vote for a challenger at once while the old leader still writes. Being
//! quiet for `election_timeout` max from the start, which is later than
//! any acknowledgement the previous run sent, keeps the promise across the
//! restart. Appends are still taken, so a restarted node follows a live
//! leader at once.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct StartupQuiet {
    ends: Instant,
}

/// The Raft endpoints a quiet node refuses: each either grants a vote or
/// makes this node campaign.
const REFUSED_WHILE_QUIET: [&str; 3] = ["vote", "pre-vote", "transfer-leader"];

impl StartupQuiet {
    /// Quiet for `length` from `started`, which must be before this process
    /// could have acknowledged anything.
    pub fn new(started: Instant, length: Duration) -> Self {
        Self {
            ends: started + length,
        }
    }

    pub fn holds(&self, now: Instant) -> bool {
        now < self.ends
    }

    pub fn ends(&self) -> Instant {
        self.ends
    }

    /// Why `endpoint` is refused at `now`, if it is.
    pub fn refusal(&self, endpoint: &str, now: Instant) -> Option<String> {
        (self.holds(now) && REFUSED_WHILE_QUIET.contains(&endpoint)).then(|| {
            format!(
                "this node started recently and takes no part in elections for another {} (election_timeout max after start)",
                humantime::format_duration(Duration::from_millis(
                    u64::try_from((self.ends - now).as_millis()).unwrap_or(u64::MAX)
                ))
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_takes_no_part_in_elections_for_election_timeout_max_after_start() {
        let started = Instant::now();
        let quiet = StartupQuiet::new(started, Duration::from_secs(2));
        let just_before_end = started + Duration::from_millis(1999);
        for endpoint in ["vote", "pre-vote", "transfer-leader"] {
            assert!(
                quiet.refusal(endpoint, started).is_some(),
                "{endpoint} at start"
            );
            let reason = quiet.refusal(endpoint, just_before_end).expect(endpoint);
            assert!(reason.contains("1ms"), "{reason}");
        }
        assert!(quiet.holds(just_before_end));
        // Following a leader is never refused.
        assert_eq!(quiet.refusal("append", started), None);
        assert_eq!(quiet.refusal("snapshot", started), None);

        let end = started + Duration::from_secs(2);
        assert!(!quiet.holds(end));
        for endpoint in ["vote", "pre-vote", "transfer-leader"] {
            assert_eq!(
                quiet.refusal(endpoint, end),
                None,
                "{endpoint} after the quiet period"
            );
        }
    }
}
