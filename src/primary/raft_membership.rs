//! Runtime membership changes (raft mode; `litegate member add | remove |
//! replace`, docs/design.md §5): only the leader changes the membership,
//! and every change goes through openraft's joint consensus.
//!
//! - Add: the node joins as a learner, the leader waits until its log has
//!   caught up, then makes it a voter. A witness joins as a voter too (it
//!   votes; it is never routed to, see `super::raft`).
//! - Remove: a leader asked to remove itself hands leadership off first
//!   and leaves the change to the new leader ([`ChangeError::HandedOff`]).
//! - Replace: the new node catches up as a learner, then one joint change
//!   swaps the old voter for it.
//!
//! A removed node is dropped from the membership altogether (not kept as
//! a learner); it should then be stopped.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::{ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::raft::{HandoffError, RaftLeadership};
use crate::cluster::raft::member::MemberNode;

/// How long an added node may take to catch up before the leader gives up
/// making it a voter (it stays a learner; adding it again resumes).
pub const CATCH_UP_LIMIT: Duration = Duration::from_secs(60);

/// A node to add, as `POST /members` takes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    /// Its `node.id`: never one a member had before.
    pub id: u64,
    pub name: String,
    /// host:port of its cluster listener.
    pub cluster: String,
    /// Where clients are redirected to it; empty for a witness.
    #[serde(default)]
    pub public_url: String,
    #[serde(default)]
    pub witness: bool,
}

/// One membership change, as the admin API and the cluster link carry it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum MemberChange {
    Add { node: NewMember },
    Remove { name: String },
    Replace { old: String, node: NewMember },
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// Only the leader changes the membership; the caller forwards there.
    #[error("this node is not the leader; {}", leader.as_ref().map_or("no leader is known: retry once one is elected".to_owned(), |(name, _)| format!("the leader is {name}")))]
    NotLeader {
        /// The leader's name and cluster address, when known.
        leader: Option<(String, String)>,
    },
    /// This leader was asked to remove itself and handed leadership to
    /// `to`; the change is for the new leader to make.
    #[error("this node handed leadership to {to} before leaving the cluster")]
    HandedOff { to: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("could not hand leadership off before removing this node: {0}")]
    Handoff(#[from] HandoffError),
    #[error("{name} (node {id}) did not catch up within {}; it stays a learner. Check that it runs and that the leader reaches it at {addr}, then add it again", humantime::format_duration(*waited))]
    CatchUp {
        id: u64,
        name: String,
        addr: String,
        waited: Duration,
    },
    #[error("the membership change failed: {0}")]
    Raft(String),
}

impl NewMember {
    fn check(&self) -> Result<MemberNode, ChangeError> {
        let invalid = |why: String| Err(ChangeError::Invalid(why));
        if self.id == 0 {
            return invalid("`id` must be the new node's node.id, a number from 1".into());
        }
        if self.name.trim().is_empty() {
            return invalid("`name` is empty: give the new node's node.name".into());
        }
        if self.cluster.parse::<http::uri::Authority>().is_err() || !self.cluster.contains(':') {
            return invalid(format!(
                "`cluster` {:?} is not host:port of the new node's cluster listener",
                self.cluster
            ));
        }
        if self.witness {
            if !self.public_url.is_empty() {
                return invalid("a witness has no app: leave `public_url` empty".into());
            }
        } else if !(self.public_url.starts_with("http://")
            || self.public_url.starts_with("https://"))
            || self.public_url.parse::<http::Uri>().is_err()
        {
            return invalid(format!(
                "`public_url` {:?} is not an http(s) URL; an app node needs the URL clients reach it at",
                self.public_url
            ));
        }
        Ok(MemberNode {
            addr: self.cluster.clone(),
            name: self.name.clone(),
            public_url: self.public_url.clone(),
            witness: self.witness,
        })
    }
}

impl RaftLeadership {
    /// Makes `change` on this node, which must be the leader.
    pub async fn change_members(
        self: &Arc<Self>,
        change: &MemberChange,
    ) -> Result<serde_json::Value, ChangeError> {
        self.require_leader()?;
        match change {
            MemberChange::Add { node } => {
                let member = node.check()?;
                self.check_new(node, None)?;
                self.catch_up(node, member).await?;
                self.change(ChangeMembers::AddVoterIds(BTreeSet::from([node.id])))
                    .await?;
                tracing::info!(id = node.id, name = %node.name, "added a voter");
                Ok(json!({ "added": node.name, "id": node.id }))
            }
            MemberChange::Remove { name } => {
                let (id, voter) = self.find(name)?;
                if voter && self.voter_ids().len() <= 1 {
                    return Err(ChangeError::Conflict(format!(
                        "{name} is the only voter: a cluster cannot remove its last voter"
                    )));
                }
                self.leave_if_me(id).await?;
                let change = if voter {
                    ChangeMembers::RemoveVoters(BTreeSet::from([id]))
                } else {
                    ChangeMembers::RemoveNodes(BTreeSet::from([id]))
                };
                self.change(change).await?;
                tracing::info!(id, %name, "removed a member");
                Ok(json!({ "removed": name, "id": id }))
            }
            MemberChange::Replace { old, node } => {
                let member = node.check()?;
                let (old_id, old_voter) = self.find(old)?;
                if old_id == node.id {
                    return Err(ChangeError::Invalid(format!(
                        "the new node needs a new node.id, not {old_id}: an id that lost its data must not vote again"
                    )));
                }
                self.check_new(node, Some(old_id))?;
                self.leave_if_me(old_id).await?;
                self.catch_up(node, member).await?;
                if old_voter {
                    // One joint change; without `retain` the old node
                    // leaves the membership altogether.
                    let mut voters = self.voter_ids();
                    voters.remove(&old_id);
                    voters.insert(node.id);
                    self.change(ChangeMembers::ReplaceAllVoters(voters)).await?;
                } else {
                    self.change(ChangeMembers::AddVoterIds(BTreeSet::from([node.id])))
                        .await?;
                    self.change(ChangeMembers::RemoveNodes(BTreeSet::from([old_id])))
                        .await?;
                }
                tracing::info!(old_id, %old, id = node.id, name = %node.name, "replaced a member");
                Ok(
                    json!({ "removed": old, "removed_id": old_id, "added": node.name, "id": node.id }),
                )
            }
        }
    }

    fn require_leader(&self) -> Result<(), ChangeError> {
        let m = self.raft().metrics().borrow_watched().clone();
        if m.state == ServerState::Leader {
            return Ok(());
        }
        let leader = m.current_leader.and_then(|id| {
            let node = m.membership_config.membership().get_node(&id).cloned()?;
            let name = self
                .peers()
                .by_id(id)
                .map_or_else(|| id.to_string(), |p| p.name);
            Some((name, node.addr))
        });
        Err(ChangeError::NotLeader { leader })
    }

    fn voter_ids(&self) -> BTreeSet<u64> {
        self.raft()
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// A member's id by name, and whether it is a voter.
    fn find(&self, name: &str) -> Result<(u64, bool), ChangeError> {
        let voters = self.voter_ids();
        let peers = self.peers().all();
        peers
            .iter()
            .find(|p| p.name == name)
            .map(|p| (p.id, voters.contains(&p.id)))
            .ok_or_else(|| {
                ChangeError::Invalid(format!(
                    "{name:?} is not a member; `litegate member list` shows the members"
                ))
            })
    }

    /// Refuses a new node whose id, name or address a member other than
    /// `replacing` already has (a learner left by an unfinished add of the
    /// same node is fine).
    fn check_new(&self, node: &NewMember, replacing: Option<u64>) -> Result<(), ChangeError> {
        let voters = self.voter_ids();
        if voters.contains(&node.id) {
            return Err(ChangeError::Conflict(format!(
                "node id {} is already a voter",
                node.id
            )));
        }
        let peers = self.peers().all();
        for p in peers.iter().filter(|p| Some(p.id) != replacing) {
            if p.id == node.id && (p.name != node.name || p.cluster != node.cluster) {
                return Err(ChangeError::Conflict(format!(
                    "node id {} is already {} at {}: give the new node an unused node.id",
                    p.id, p.name, p.cluster
                )));
            }
            if p.id != node.id && p.name == node.name {
                return Err(ChangeError::Conflict(format!(
                    "the name {:?} belongs to node {}: names must be unique",
                    p.name, p.id
                )));
            }
            if p.id != node.id && p.cluster == node.cluster {
                return Err(ChangeError::Conflict(format!(
                    "{} is node {}'s cluster address",
                    p.cluster, p.id
                )));
            }
        }
        Ok(())
    }

    /// A leader removing itself hands off first: the cluster does not wait
    /// out an election timeout, and writes are held, not failed, meanwhile.
    async fn leave_if_me(self: &Arc<Self>, id: u64) -> Result<(), ChangeError> {
        if id != self.me() {
            return Ok(());
        }
        let to = self.handoff(None).await?;
        Err(ChangeError::HandedOff { to })
    }

    /// Adds `node` as a learner and waits until its log matches this
    /// leader's as of that moment.
    async fn catch_up(&self, node: &NewMember, member: MemberNode) -> Result<(), ChangeError> {
        let added = self
            .raft()
            .add_learner(node.id, member, false)
            .await
            .map_err(|e| ChangeError::Raft(e.to_string()))?;
        let target = added.log_id.index;
        tracing::info!(id = node.id, name = %node.name, "added a learner; waiting for it to catch up");
        let mut metrics = self.raft().metrics();
        let caught_up = tokio::time::timeout(CATCH_UP_LIMIT, async {
            loop {
                {
                    let m = metrics.borrow_watched();
                    if m.state != ServerState::Leader {
                        return Err(ChangeError::Raft(
                            "this node lost leadership while the new node caught up; add it again"
                                .into(),
                        ));
                    }
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&node.id).cloned().flatten())
                        .map(|log_id| log_id.index);
                    if matched.is_some_and(|i| i >= target) {
                        return Ok(());
                    }
                }
                if metrics.changed().await.is_err() {
                    return Err(ChangeError::Raft("Raft stopped".into()));
                }
            }
        })
        .await;
        match caught_up {
            Ok(result) => result,
            Err(_) => Err(ChangeError::CatchUp {
                id: node.id,
                name: node.name.clone(),
                addr: node.cluster.clone(),
                waited: CATCH_UP_LIMIT,
            }),
        }
    }

    async fn change(&self, change: ChangeMembers<u64, MemberNode>) -> Result<(), ChangeError> {
        self.raft()
            .change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(|e| ChangeError::Raft(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_member() -> NewMember {
        NewMember {
            id: 4,
            name: "node-4".into(),
            cluster: "10.0.0.4:7070".into(),
            public_url: "http://10.0.0.4:8080".into(),
            witness: false,
        }
    }

    #[test]
    fn a_well_formed_new_member_is_recorded_as_given() {
        let node = new_member().check().unwrap();
        assert_eq!(node.addr, "10.0.0.4:7070");
        assert_eq!(node.name, "node-4");
        assert_eq!(node.public_url, "http://10.0.0.4:8080");
    }

    #[test]
    fn bad_new_members_are_refused_with_the_field_named() {
        let refused = |edit: fn(&mut NewMember), field: &str| {
            let mut m = new_member();
            edit(&mut m);
            match m.check() {
                Err(ChangeError::Invalid(why)) => assert!(why.contains(field), "{why}"),
                other => panic!("{field}: {other:?}"),
            }
        };
        refused(|m| m.id = 0, "`id`");
        refused(|m| m.name = " ".into(), "`name`");
        refused(|m| m.cluster = "10.0.0.4".into(), "`cluster`");
        refused(|m| m.cluster = "http://x:1/".into(), "`cluster`");
        refused(|m| m.public_url = String::new(), "`public_url`");
        refused(|m| m.public_url = "10.0.0.4:8080".into(), "`public_url`");
        refused(
            |m| {
                m.witness = true;
            },
            "`public_url`",
        );
        let mut witness = new_member();
        witness.witness = true;
        witness.public_url.clear();
        assert!(witness.check().unwrap().witness);
    }

    #[test]
    fn a_change_reads_from_the_json_the_admin_api_and_cluster_link_carry() {
        let change: MemberChange = serde_json::from_str(
            r#"{"op":"replace","old":"node-3","node":{"id":4,"name":"node-4","cluster":"10.0.0.4:7070","public_url":"http://10.0.0.4:8080"}}"#,
        )
        .unwrap();
        assert!(
            matches!(change, MemberChange::Replace { ref old, ref node } if old == "node-3" && node.id == 4)
        );
        assert!(serde_json::from_str::<NewMember>(
            r#"{"id":4,"name":"n","cluster":"h:1","typo":1}"#
        )
        .is_err());
    }
}
