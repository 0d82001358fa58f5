//! App-aware leadership (raft mode, docs/design.md §4): the primary exists
//! to pass writes to its app, so a leader whose app is down is no use.
//!
//! - A leader whose own app has been unreachable for
//!   `primary.app_down_handoff` hands leadership to a node whose app is up
//!   (the handoff holds writes meanwhile; it does not fail them).
//! - A node whose app is down does not campaign while another app node
//!   reports a healthy app; when none does, it campaigns as usual, so a
//!   cluster whose apps are all down still has a leader.
//!
//! Peers' app health comes from the 1 s epoch polls (`app_up` in
//! `GET /_litegate/epoch`), and only a recent answer counts. While this
//! node's app is down it is probed every [`RECHECK`], not just every
//! `upstream.health_interval`, so it counts as up again promptly and a
//! single failed probe followed by a recovery does not move leadership.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::peers::PeerTable;
use crate::proxy::health::{self, UpstreamHealth};
use crate::shutdown::Shutdown;

/// How often the app is probed while it is down, and how often the
/// leadership task looks at app health.
pub const RECHECK: Duration = Duration::from_millis(250);

/// What the leadership task needs to know about apps.
#[derive(Debug)]
pub struct AppWatch {
    pub own: Arc<UpstreamHealth>,
    pub peers: Arc<PeerTable>,
    /// 0: never hand off because of the app.
    pub down_handoff: Duration,
}

impl AppWatch {
    /// Starts re-probing the app while it is down.
    pub fn new(
        own: Arc<UpstreamHealth>,
        peers: Arc<PeerTable>,
        down_handoff: Duration,
        app_address: String,
        connect_timeout: Duration,
        mut stop: Shutdown,
    ) -> Self {
        let health = Arc::clone(&own);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RECHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.begun() => return,
                }
                if !health.is_up() {
                    health.set(health::probe(&app_address, connect_timeout).await);
                }
            }
        });
        Self {
            own,
            peers,
            down_handoff,
        }
    }

    /// Whether `name`'s app is known to be up, from a recent poll.
    pub fn peer_app_up(&self, name: &str) -> bool {
        self.peers.app_up(name) == Some(true)
    }
}

/// Tracks how long this node's app has been down.
#[derive(Debug, Default)]
pub struct DownClock {
    since: Option<Instant>,
}

impl DownClock {
    /// Records the app's state now; returns for how long it has been down.
    pub fn observe(&mut self, up: bool, now: Instant) -> Option<Duration> {
        if up {
            self.since = None;
            return None;
        }
        let since = *self.since.get_or_insert(now);
        Some(now.saturating_duration_since(since))
    }
}

/// Whether a node may campaign: always with its app up; with it down, only
/// when no other app node reports a healthy app.
pub fn may_campaign(own_up: bool, a_peer_app_is_up: bool) -> bool {
    own_up || !a_peer_app_is_up
}

/// Whether a leader should hand off because of its app.
pub fn should_hand_off(
    down_for: Option<Duration>,
    limit: Duration,
    a_peer_app_is_up: bool,
) -> bool {
    !limit.is_zero() && a_peer_app_is_up && down_for.is_some_and(|d| d >= limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_down_clock_restarts_when_the_app_answers() {
        let t0 = Instant::now();
        let mut clock = DownClock::default();
        assert_eq!(clock.observe(false, t0), Some(Duration::ZERO));
        assert_eq!(
            clock.observe(false, t0 + Duration::from_secs(2)),
            Some(Duration::from_secs(2))
        );
        assert_eq!(clock.observe(true, t0 + Duration::from_secs(3)), None);
        assert_eq!(
            clock.observe(false, t0 + Duration::from_secs(4)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn a_node_without_its_app_campaigns_only_when_no_app_is_up() {
        assert!(may_campaign(true, true));
        assert!(may_campaign(true, false));
        assert!(!may_campaign(false, true));
        assert!(may_campaign(false, false));
    }

    #[test]
    fn a_leader_hands_off_only_after_the_limit_and_only_to_a_healthy_app() {
        let limit = Duration::from_secs(1);
        assert!(!should_hand_off(None, limit, true));
        assert!(!should_hand_off(
            Some(Duration::from_millis(999)),
            limit,
            true
        ));
        assert!(should_hand_off(Some(limit), limit, true));
        assert!(!should_hand_off(Some(limit), limit, false));
        assert!(!should_hand_off(Some(limit), Duration::ZERO, true));
    }
}
