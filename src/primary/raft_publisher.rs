//! The one place that turns openraft's metrics, and whether a handoff is
//! under way, into the [`PrimaryState`] the request path reads (see
//! [`super::raft`]).
//!
//! Reading the metrics, computing the state and publishing it happen under
//! one lock, which a handoff also takes to raise or lower its flag and
//! close or open the [`WriteGate`]. So a state computed before a handoff
//! began is never published after the handoff's "unknown", and while the
//! handoff runs nothing publishes "primary".

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use openraft::{RaftMetrics, ServerState};

use super::write_gate::{GatePass, WriteGate};
use super::{PrimaryCell, PrimaryState, Role};
use crate::cluster::peers::PeerTable;
use crate::cluster::raft::TypeConfig;
use crate::metrics;

#[derive(Debug, Clone)]
pub struct Member {
    pub name: Arc<str>,
    pub witness: bool,
}

impl From<crate::config::Peer> for Member {
    fn from(peer: crate::config::Peer) -> Self {
        Self {
            name: Arc::from(peer.name),
            witness: peer.witness,
        }
    }
}

/// What the publisher remembers between two metrics updates.
#[derive(Debug, Default)]
struct View {
    handing_off: bool,
    /// The term this node was last elected in, and when it first saw that.
    elected: Option<(u64, Instant)>,
}

pub struct LeadershipPublisher {
    cell: Arc<PrimaryCell>,
    gate: Arc<WriteGate>,
    me: u64,
    witness: bool,
    /// Who is who: the peer table, which follows the Raft membership.
    members: Arc<PeerTable>,
    /// How long after a quorum acknowledgement this node may write.
    write_lease: Duration,
    /// How long a newly elected leader waits before its first write.
    takeover_hold: Duration,
    /// Whether Raft's leadership is what the role gauges report. With
    /// `[lease]` the primary is the lease holder, which `RaftLease`
    /// reports instead: a leader whose LiteFS has not taken the lease is
    /// not the primary.
    reports_role: bool,
    view: Mutex<View>,
    #[cfg(test)]
    before_publish: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for LeadershipPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeadershipPublisher")
            .field("me", &self.me)
            .field("state", &self.cell.current())
            .finish_non_exhaustive()
    }
}

impl LeadershipPublisher {
    pub fn new(
        me: u64,
        witness: bool,
        members: Arc<PeerTable>,
        write_lease: Duration,
        takeover_hold: Duration,
        reports_role: bool,
    ) -> Self {
        Self {
            cell: PrimaryCell::new(PrimaryState::unknown()),
            gate: Arc::new(WriteGate::default()),
            me,
            witness,
            members,
            write_lease,
            takeover_hold,
            reports_role,
            view: Mutex::new(View::default()),
            #[cfg(test)]
            before_publish: Mutex::new(None),
        }
    }

    pub fn cell(&self) -> &Arc<PrimaryCell> {
        &self.cell
    }

    pub fn member(&self, id: u64) -> Option<Member> {
        self.members.by_id(id).map(Member::from)
    }

    pub fn members(&self) -> Vec<(u64, Member)> {
        self.members
            .all()
            .iter()
            .map(|p| (p.id, Member::from(p.clone())))
            .collect()
    }

    /// A permit to pass a write to this node's app, or `None` while a
    /// handoff is under way. The caller still checks the published state.
    pub fn write_permit(&self) -> Option<GatePass> {
        self.gate.enter()
    }

    pub fn writes_in_flight(&self) -> usize {
        self.gate.in_flight()
    }

    pub fn handing_off(&self) -> bool {
        self.lock().handing_off
    }

    /// When the current takeover hold ends, if one is running.
    pub fn hold_ends(&self, now: Instant) -> Option<Instant> {
        self.lock()
            .elected
            .map(|(_, at)| at + self.takeover_hold)
            .filter(|end| *end > now)
    }

    /// Publishes the state the metrics `read` returns call for; `read` runs
    /// under the lock, so the newest metrics are published last. Returns
    /// when to refresh again if the state will change without a metrics
    /// update (a takeover hold ends).
    pub fn refresh(&self, read: impl FnOnce() -> RaftMetrics<TypeConfig>) -> Option<Instant> {
        let mut view = self.lock();
        self.publish_locked(&mut view, &read())
    }

    /// Stops new writes: publishes "unknown" and closes the gate; the
    /// permits already out stay counted. False if a handoff is under way.
    pub fn begin_handoff(&self, read: impl FnOnce() -> RaftMetrics<TypeConfig>) -> bool {
        let mut view = self.lock();
        if view.handing_off {
            return false;
        }
        view.handing_off = true;
        self.publish_locked(&mut view, &read());
        self.gate.close();
        true
    }

    pub fn end_handoff(&self, read: impl FnOnce() -> RaftMetrics<TypeConfig>) -> Option<Instant> {
        let mut view = self.lock();
        view.handing_off = false;
        self.gate.open();
        self.publish_locked(&mut view, &read())
    }

    fn lock(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish_locked(&self, view: &mut View, m: &RaftMetrics<TypeConfig>) -> Option<Instant> {
        let (state, refresh_at) = self.state_from(view, m, Instant::now());
        #[cfg(test)]
        {
            let pause = self
                .before_publish
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(pause) = pause {
                pause();
            }
        }
        let (role, term, primary) = (state.role, state.term, state.primary.clone());
        if self.cell.publish(state) {
            tracing::info!(
                role = role.as_str(),
                term,
                primary = primary.as_deref().unwrap_or("-"),
                "leadership changed"
            );
            if self.reports_role {
                metrics::set_is_primary(role == Role::Primary);
                metrics::observe_primary(primary.as_deref());
            }
        }
        metrics::set_raft_term(term);
        refresh_at
    }

    fn state_from(
        &self,
        view: &mut View,
        m: &RaftMetrics<TypeConfig>,
        now: Instant,
    ) -> (PrimaryState, Option<Instant>) {
        let unknown = PrimaryState {
            term: m.current_term,
            ..PrimaryState::unknown()
        };
        let leader_here = m.current_leader == Some(self.me) && m.state == ServerState::Leader;
        if leader_here {
            if view.elected.is_none_or(|(term, _)| term != m.current_term) {
                view.elected = Some((m.current_term, now));
            }
        } else {
            view.elected = None;
        }
        if view.handing_off {
            return (unknown, None);
        }
        match m.current_leader {
            Some(id) if leader_here => {
                if self.witness {
                    return (unknown, None);
                }
                let voters = m.membership_config.membership().voter_ids().count();
                // A lone voter has nobody who could elect another leader.
                if voters <= 1 {
                    return (self.primary(id, m.current_term, None), None);
                }
                // The voters that elected us may have broken their promise
                // not to vote for `election_timeout` max after a heartbeat
                // (a leadership transfer lifts it, see `super::raft`): our
                // predecessor's lease ran out by the time that promise would
                // have, counted from our election.
                let hold_ends = view.elected.map_or(now, |(_, at)| at + self.takeover_hold);
                if now < hold_ends {
                    return (unknown, Some(hold_ends));
                }
                let lease_deadline = m.last_quorum_acked.as_ref().map_or(now, |acked| {
                    now.checked_sub(age(**acked)).unwrap_or(now) + self.write_lease
                });
                (self.primary(id, m.current_term, Some(lease_deadline)), None)
            }
            Some(id) if id != self.me => match self.member(id) {
                Some(p) if !p.witness => (
                    PrimaryState {
                        role: Role::Replica,
                        term: m.current_term,
                        primary: Some(p.name),
                        lease_deadline: None,
                    },
                    None,
                ),
                // Leadership is on its way from a witness to an app node.
                _ => (unknown, None),
            },
            _ => (unknown, None),
        }
    }

    fn primary(&self, id: u64, term: u64, lease_deadline: Option<Instant>) -> PrimaryState {
        PrimaryState {
            role: Role::Primary,
            term,
            primary: self.member(id).map(|p| p.name),
            lease_deadline,
        }
    }
}

/// How long ago an instant of openraft's clock was.
pub fn age<I: openraft::Instant>(at: I) -> Duration {
    I::now() - at
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::mpsc;
    use std::thread;

    use openraft::metrics::SerdeInstant;
    use openraft::type_config::alias::{InstantOf, StoredMembershipOf};
    use openraft::Membership;

    use super::*;

    const ME: u64 = 1;

    fn publisher(takeover_hold: Duration) -> Arc<LeadershipPublisher> {
        let peers: Vec<crate::config::Peer> = (1..=3)
            .map(|id| crate::config::Peer {
                id,
                name: format!("node-{id}"),
                cluster: format!("127.0.0.1:{}", 7000 + id),
                public_url: String::new(),
                witness: false,
            })
            .collect();
        Arc::new(LeadershipPublisher::new(
            ME,
            false,
            Arc::new(PeerTable::new("node-1", &peers)),
            Duration::from_secs(60),
            takeover_hold,
            true,
        ))
    }

    /// This node leads `term` in a 3-voter cluster; a quorum acked just now.
    fn leading(term: u64) -> RaftMetrics<TypeConfig> {
        let mut m = RaftMetrics::<TypeConfig>::new_initial(ME);
        m.current_term = term;
        m.state = ServerState::Leader;
        m.current_leader = Some(ME);
        let voters: BTreeSet<u64> = (1..=3).collect();
        m.membership_config = Arc::new(StoredMembershipOf::<TypeConfig>::new(
            None,
            Membership::new_with_defaults(vec![voters], Vec::<u64>::new()),
        ));
        m.last_quorum_acked = Some(SerdeInstant::new(
            <InstantOf<TypeConfig> as openraft::Instant>::now(),
        ));
        m
    }

    fn following(term: u64, leader: u64) -> RaftMetrics<TypeConfig> {
        let mut m = leading(term);
        m.state = ServerState::Follower;
        m.current_leader = Some(leader);
        m.last_quorum_acked = None;
        m
    }

    #[test]
    fn a_state_computed_before_a_handoff_is_never_published_after_it() {
        let publisher = publisher(Duration::ZERO);
        publisher.refresh(|| leading(2));
        assert!(publisher.cell().current().may_write(Instant::now()));

        // The metrics task computes "primary" and stops right before
        // publishing it.
        let (paused_tx, paused) = mpsc::channel();
        let (resume, resumed) = mpsc::channel::<()>();
        *publisher.before_publish.lock().expect("hook") = Some(Box::new(move || {
            paused_tx.send(()).expect("test alive");
            let _ = resumed.recv();
        }));
        let metrics_task = {
            let publisher = Arc::clone(&publisher);
            thread::spawn(move || publisher.refresh(|| leading(2)))
        };
        paused.recv().expect("the metrics task paused");

        // A handoff begins meanwhile. It must not get ahead of the paused
        // publish; give it every chance to.
        let (began_tx, began) = mpsc::channel();
        let handoff = {
            let publisher = Arc::clone(&publisher);
            thread::spawn(move || {
                let started = publisher.begin_handoff(|| leading(2));
                let _ = began_tx.send(());
                started
            })
        };
        let _ = began.recv_timeout(Duration::from_millis(200));
        resume.send(()).expect("metrics task alive");
        metrics_task.join().expect("metrics task");
        assert!(handoff.join().expect("handoff"), "the handoff started");

        let state = publisher.cell().current();
        assert_eq!(
            state.role,
            Role::Unknown,
            "published after the handoff began: {state:?}"
        );
        assert!(!state.may_write(Instant::now()));
        assert!(
            publisher.write_permit().is_none(),
            "no permit during a handoff"
        );
        assert!(
            !publisher.begin_handoff(|| leading(2)),
            "one handoff at a time"
        );
    }

    #[test]
    fn permits_granted_before_a_handoff_are_counted_and_none_after() {
        let publisher = publisher(Duration::ZERO);
        publisher.refresh(|| leading(2));
        let before = publisher.write_permit().expect("leader grants");
        assert!(publisher.begin_handoff(|| leading(2)));
        assert_eq!(publisher.writes_in_flight(), 1);
        assert!(publisher.write_permit().is_none());
        // A metrics update during the handoff publishes no "primary".
        publisher.refresh(|| leading(2));
        assert_eq!(publisher.cell().current().role, Role::Unknown);
        drop(before);
        assert_eq!(publisher.writes_in_flight(), 0);

        // The transfer failed: still the leader, writes again.
        publisher.end_handoff(|| leading(2));
        assert!(publisher.cell().current().may_write(Instant::now()));
        assert!(publisher.write_permit().is_some());
    }

    #[test]
    fn a_new_leader_takes_no_write_until_its_takeover_hold_ends() {
        let hold = Duration::from_secs(60);
        let publisher = publisher(hold);
        publisher.refresh(|| following(2, 2));
        assert_eq!(publisher.cell().current().role, Role::Replica);

        let elected = Instant::now();
        let refresh_at = publisher
            .refresh(|| leading(3))
            .expect("a refresh when the hold ends");
        assert!(refresh_at >= elected + hold);
        let state = publisher.cell().current();
        assert_eq!((state.role, state.term), (Role::Unknown, 3));
        assert!(publisher.hold_ends(Instant::now()).is_some());
        // Later metrics of the same term do not restart the hold.
        assert_eq!(publisher.refresh(|| leading(3)), Some(refresh_at));

        // Deposed and elected again: a new term, a new hold.
        publisher.refresh(|| following(4, 2));
        let again = publisher.refresh(|| leading(5)).expect("a new hold");
        assert!(again >= refresh_at);

        // Without a hold the leader writes at once.
        let unheld = self::publisher(Duration::ZERO);
        assert_eq!(unheld.refresh(|| leading(3)), None);
        assert!(unheld.cell().current().may_write(Instant::now()));
    }
}
