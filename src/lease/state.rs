//! The Consul sessions and KV entries LiteFS's lease uses, as a
//! deterministic state machine: every change is a [`LeaseCommand`] applied
//! from the Raft log at its log index, so every node holds the same state.
//!
//! Only what is replicated lives in [`LeaseState`] (and so in snapshots).
//! Lock delays are per node and in memory, as in Consul: each node starts a
//! key's delay when it applies the invalidation, and only the leader checks
//! it before it proposes an acquire.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What a session does to the keys it holds when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Behavior {
    Release,
    Delete,
}

impl Behavior {
    pub fn as_str(self) -> &'static str {
        match self {
            Behavior::Release => "release",
            Behavior::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub name: String,
    pub node: String,
    pub ttl_ms: u64,
    pub lock_delay_ms: u64,
    pub behavior: Behavior,
    pub create_index: u64,
    /// The litegate node whose LiteFS created it or last acquired with it.
    pub owner: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub value: Vec<u8>,
    pub flags: u64,
    pub session: Option<String>,
    pub lock_index: u64,
    pub create_index: u64,
    pub modify_index: u64,
}

/// One change, proposed by the leader and applied from the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseCommand {
    CreateSession(Session),
    /// An explicit destroy or a TTL expiry decided by the leader.
    DestroySession {
        id: String,
    },
    Put {
        key: String,
        value: Vec<u8>,
    },
    /// `origin` is the node whose LiteFS asked, `leader` the node that
    /// proposed the entry: the lock is granted only where they are equal,
    /// so LiteFS's primary is always on the node that led when it got it —
    /// or, with `handoff`, to the leader's handoff target re-acquiring with
    /// the holder's own session (LiteFS's handoff), just before leadership
    /// follows it.
    Acquire {
        key: String,
        value: Vec<u8>,
        session: String,
        origin: u64,
        leader: u64,
        #[serde(default)]
        handoff: bool,
    },
    Release {
        key: String,
        value: Vec<u8>,
        session: String,
    },
}

/// The replicated part: serialized whole into Raft snapshots. Fields
/// default, so a snapshot written before a field existed still reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseState {
    pub sessions: BTreeMap<String, Session>,
    pub kv: BTreeMap<String, Entry>,
    /// The log index of the last change, Consul's `X-Consul-Index`.
    pub index: u64,
}

/// The lease state and the lock delays this node started.
#[derive(Debug, Default)]
pub struct LeaseTable {
    pub state: LeaseState,
    lock_delays: HashMap<String, Instant>,
}

impl LeaseTable {
    /// Applies `command` at log `index`; the result is Consul's answer
    /// (`true`/`false` for acquire and release, `true` otherwise).
    pub fn apply(&mut self, command: LeaseCommand, index: u64, now: Instant) -> bool {
        self.state.index = self.state.index.max(index);
        match command {
            LeaseCommand::CreateSession(mut session) => {
                session.create_index = index;
                self.state.sessions.insert(session.id.clone(), session);
                true
            }
            LeaseCommand::DestroySession { id } => {
                self.invalidate(&id, index, now);
                true
            }
            LeaseCommand::Put { key, value } => {
                let entry = self.state.kv.entry(key).or_insert_with(|| Entry {
                    value: Vec::new(),
                    flags: 0,
                    session: None,
                    lock_index: 0,
                    create_index: index,
                    modify_index: index,
                });
                // A plain put keeps the lock, as Consul's does.
                entry.value = value;
                entry.modify_index = index;
                true
            }
            LeaseCommand::Acquire {
                key,
                value,
                session,
                origin,
                leader,
                handoff,
            } => {
                let takes_over_the_holders_session = handoff
                    && self.state.kv.get(&key).and_then(|e| e.session.as_deref())
                        == Some(session.as_str());
                if origin != leader && !takes_over_the_holders_session {
                    return false;
                }
                let Some(owner) = self.state.sessions.get_mut(&session) else {
                    return false;
                };
                match self.state.kv.get_mut(&key) {
                    Some(entry) => match &entry.session {
                        Some(holder) if *holder != session => return false,
                        Some(_) => {
                            // The holder again (LiteFS's handoff re-acquires
                            // with the old primary's session): no new lock.
                            entry.value = value;
                            entry.modify_index = index;
                        }
                        None => {
                            entry.value = value;
                            entry.session = Some(session);
                            entry.lock_index += 1;
                            entry.modify_index = index;
                        }
                    },
                    None => {
                        self.state.kv.insert(
                            key,
                            Entry {
                                value,
                                flags: 0,
                                session: Some(session),
                                lock_index: 1,
                                create_index: index,
                                modify_index: index,
                            },
                        );
                    }
                }
                owner.owner = origin;
                true
            }
            LeaseCommand::Release {
                key,
                value,
                session,
            } => match self.state.kv.get_mut(&key) {
                Some(entry) if entry.session.as_deref() == Some(session.as_str()) => {
                    // Consul replaces the entry: the value becomes the
                    // request's body (LiteFS sends none, which is how its
                    // replicas see "no primary").
                    entry.value = value;
                    entry.session = None;
                    entry.modify_index = index;
                    true
                }
                _ => false,
            },
        }
    }

    /// Ends session `id`: its keys are deleted or released by its behavior,
    /// and each gets the session's lock delay.
    fn invalidate(&mut self, id: &str, index: u64, now: Instant) {
        let Some(session) = self.state.sessions.remove(id) else {
            return;
        };
        let held: Vec<String> = self
            .state
            .kv
            .iter()
            .filter(|(_, e)| e.session.as_deref() == Some(id))
            .map(|(k, _)| k.clone())
            .collect();
        for key in held {
            match session.behavior {
                Behavior::Delete => {
                    self.state.kv.remove(&key);
                }
                Behavior::Release => {
                    if let Some(entry) = self.state.kv.get_mut(&key) {
                        entry.session = None;
                        entry.modify_index = index;
                    }
                }
            }
            if session.lock_delay_ms > 0 {
                self.lock_delays
                    .insert(key, now + Duration::from_millis(session.lock_delay_ms));
            }
        }
    }

    /// Whether `key` is still in a lock delay this node started.
    pub fn lock_delayed(&self, key: &str, now: Instant) -> bool {
        self.lock_delay_left(key, now).is_some()
    }

    /// How much of `key`'s lock delay is left at `now`, if any.
    pub fn lock_delay_left(&self, key: &str, now: Instant) -> Option<Duration> {
        self.lock_delays
            .get(key)
            .map(|until| until.saturating_duration_since(now))
            .filter(|left| !left.is_zero())
    }

    /// Who holds `key`: the session and the lock index, Consul's fencing pair.
    pub fn holder(&self, key: &str) -> Option<(&Session, u64)> {
        let entry = self.state.kv.get(key)?;
        let session = self.state.sessions.get(entry.session.as_deref()?)?;
        Some((session, entry.lock_index))
    }

    pub fn restore(&mut self, state: LeaseState) {
        self.state = state;
        self.lock_delays.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, lock_delay_ms: u64) -> Session {
        Session {
            id: id.into(),
            name: "litefs".into(),
            node: String::new(),
            ttl_ms: 10_000,
            lock_delay_ms,
            behavior: Behavior::Delete,
            create_index: 0,
            owner: 1,
        }
    }

    fn acquire(key: &str, value: &str, session: &str, origin: u64) -> LeaseCommand {
        LeaseCommand::Acquire {
            key: key.into(),
            value: value.into(),
            session: session.into(),
            origin,
            leader: 1,
            handoff: false,
        }
    }

    #[test]
    fn acquire_release_follow_consul() {
        let now = Instant::now();
        let mut t = LeaseTable::default();
        assert!(t.apply(LeaseCommand::CreateSession(session("s1", 1000)), 1, now));
        assert!(t.apply(LeaseCommand::CreateSession(session("s2", 1000)), 2, now));
        assert!(t.apply(acquire("k", "n1", "s1", 1), 3, now));
        let e = &t.state.kv["k"];
        assert_eq!(
            (e.lock_index, e.session.as_deref(), e.modify_index),
            (1, Some("s1"), 3)
        );
        // Held by another session: refused, nothing changes.
        assert!(!t.apply(acquire("k", "n2", "s2", 1), 4, now));
        assert_eq!(t.state.kv["k"].value, b"n1");
        // The holder again: new value, same lock.
        assert!(t.apply(acquire("k", "n1b", "s1", 1), 5, now));
        assert_eq!(
            (t.state.kv["k"].lock_index, t.state.kv["k"].value.as_slice()),
            (1, &b"n1b"[..])
        );
        // Release by a non-holder: false; by the holder: the value becomes the body.
        assert!(!t.apply(release("k", "s2"), 6, now));
        assert!(t.apply(release("k", "s1"), 7, now));
        let e = &t.state.kv["k"];
        assert_eq!(
            (e.session.as_deref(), e.value.as_slice(), e.modify_index),
            (None, &b""[..], 7)
        );
        // A new lock bumps the lock index.
        assert!(t.apply(acquire("k", "n2", "s2", 1), 8, now));
        assert_eq!(
            t.holder("k").map(|(s, li)| (s.id.as_str(), li)),
            Some(("s2", 2))
        );
        // A graceful release + destroy leaves no lock delay.
        assert!(t.apply(release("k", "s2"), 9, now));
        assert!(t.apply(LeaseCommand::DestroySession { id: "s2".into() }, 10, now));
        assert!(!t.lock_delayed("k", now));
        assert_eq!(t.state.index, 10);
    }

    fn release(key: &str, session: &str) -> LeaseCommand {
        LeaseCommand::Release {
            key: key.into(),
            value: Vec::new(),
            session: session.into(),
        }
    }

    #[test]
    fn expiry_deletes_held_keys_and_starts_the_lock_delay() {
        let now = Instant::now();
        let mut t = LeaseTable::default();
        t.apply(LeaseCommand::CreateSession(session("s1", 1000)), 1, now);
        t.apply(acquire("k", "n1", "s1", 1), 2, now);
        t.apply(
            LeaseCommand::Put {
                key: "k/clusterid".into(),
                value: b"LFSC".to_vec(),
            },
            3,
            now,
        );
        t.apply(LeaseCommand::DestroySession { id: "s1".into() }, 4, now);
        assert!(
            !t.state.kv.contains_key("k"),
            "Behavior=delete removes the key"
        );
        assert!(
            t.state.kv.contains_key("k/clusterid"),
            "keys it did not hold stay"
        );
        assert!(t.state.sessions.is_empty());
        assert!(t.lock_delayed("k", now + Duration::from_millis(999)));
        assert!(!t.lock_delayed("k", now + Duration::from_millis(1000)));
        assert_eq!(
            t.lock_delay_left("k", now + Duration::from_millis(400)),
            Some(Duration::from_millis(600))
        );
        assert_eq!(
            t.lock_delay_left("k", now + Duration::from_millis(1000)),
            None
        );
        assert_eq!(t.lock_delay_left("other", now), None);
    }

    #[test]
    fn only_the_leaders_node_gets_the_lock() {
        let now = Instant::now();
        let mut t = LeaseTable::default();
        t.apply(LeaseCommand::CreateSession(session("s1", 0)), 1, now);
        assert!(!t.apply(acquire("k", "n2", "s1", 2), 2, now));
        assert!(!t.state.kv.contains_key("k"));
        assert!(
            !t.apply(acquire("k", "x", "unknown", 1), 3, now),
            "no such session"
        );
        assert!(t.apply(acquire("k", "n1", "s1", 1), 4, now));
    }

    #[test]
    fn a_handoff_target_takes_over_only_the_holders_own_session() {
        let now = Instant::now();
        let mut t = LeaseTable::default();
        t.apply(LeaseCommand::CreateSession(session("s1", 0)), 1, now);
        t.apply(LeaseCommand::CreateSession(session("s2", 0)), 2, now);
        let handed = |key: &str, session: &str| LeaseCommand::Acquire {
            key: key.into(),
            value: b"n2".to_vec(),
            session: session.into(),
            origin: 2,
            leader: 1,
            handoff: true,
        };
        assert!(!t.apply(handed("k", "s1"), 3, now), "nobody holds k yet");
        assert!(t.apply(acquire("k", "n1", "s1", 1), 4, now));
        assert!(
            !t.apply(handed("k", "s2"), 5, now),
            "not the holder's session"
        );
        assert!(t.apply(handed("k", "s1"), 6, now));
        let e = &t.state.kv["k"];
        assert_eq!((e.lock_index, e.value.as_slice()), (1, &b"n2"[..]));
        let (holder, _) = t.holder("k").unwrap();
        assert_eq!(holder.owner, 2, "the lease is the target's now");
    }

    #[test]
    fn an_acquire_logged_before_handoffs_existed_still_reads() {
        let old = r#"{"Acquire":{"key":"k","value":[110],"session":"s1","origin":1,"leader":1}}"#;
        let command: LeaseCommand = serde_json::from_str(old).unwrap();
        assert_eq!(command, acquire("k", "n", "s1", 1));
    }

    #[test]
    fn state_round_trips_through_a_snapshot_blob() {
        let now = Instant::now();
        let mut t = LeaseTable::default();
        t.apply(LeaseCommand::CreateSession(session("s1", 0)), 1, now);
        t.apply(acquire("k", "n1", "s1", 1), 2, now);
        let blob = serde_json::to_vec(&t.state).unwrap();
        let mut again = LeaseTable::default();
        again.restore(serde_json::from_slice(&blob).unwrap());
        assert_eq!(again.state, t.state);
        assert_eq!(
            again.holder("k").map(|(s, li)| (s.id.clone(), li)),
            Some(("s1".into(), 1))
        );
    }
}
