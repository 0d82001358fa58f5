//! `primary.mode = "static"`: the primary is named, not elected. An operator
//! moves it with `litegate promote`, which moves the cluster to a new epoch
//! — the fencing token — by a vote of a majority of the configured nodes.
//!
//! # What a node holds
//!
//! Each node persists (fsync, atomic rename) two things in
//! `static-epoch.json`:
//!
//! - `epoch`/`primary`, the **known** claim: the highest epoch this node
//!   knows was *chosen*, and its primary. Routing and fencing use only this.
//! - `promised`, the highest **proposal** it accepted above that, if any.
//!
//! A node accepts a proposal `(e, p)` only if `e` is above its known epoch
//! and above its promise — or it is the very proposal it already promised
//! (a repeated message) — and persists the promise before it answers. So a
//! node promises at most one proposal per epoch, ever.
//!
//! # Why two promotes cannot both win
//!
//! A proposal is *chosen* when its proposer counts acceptances from a
//! majority of the configured nodes, itself included; only then does the
//! proposer persist it as its known claim, become primary and announce it.
//! Two proposals for the same epoch would need two majorities, which share
//! a node, which would have promised both — impossible. So at most one
//! claim is chosen per epoch, and every known claim any node holds is that
//! one: known claims come only from the configured initial primary (epoch
//! 1), from the winner's announcement, or from other nodes' known claims
//! (polls, `421` answers, forwarded writes' headers). A losing proposer
//! keeps its own promise — harmless, since only it could complete that
//! proposal and it has given up — but its role and routing are unchanged;
//! it reports the refusals to the operator.
//!
//! A node never changes its known claim at an epoch; it only moves to a
//! higher one. Two different known claims at one epoch can only come from a
//! node running an older litegate or a copied data dir: a node that sees
//! one keeps its own, and if its own names itself, it stops taking writes
//! until an operator promotes a node (which moves everyone to a new epoch).
//! The tie-break is deliberately not "lowest name wins": that could pick a
//! claim no majority chose.
//!
//! # Confirmation at start
//!
//! A node whose known claim names itself does not trust it after a restart:
//! another node may have been promoted meanwhile. It publishes
//! [`Role::Unknown`] (writes held, then `503 no-primary`) until a majority
//! of the configured nodes, itself included, report nothing above its epoch
//! (see [`EpochState::supports`]). Any epoch chosen above it was promised
//! by a majority, which intersects the confirming majority, so a chosen
//! higher epoch is always seen (and adopted) instead. With two nodes that
//! majority is both: a lone node never confirms itself.
//!
//! Static mode has no lease: a primary that is running when another node is
//! promoted keeps taking its own clients' writes until it hears of the new
//! epoch (an announcement, its next poll within a second, or a forwarded
//! write that carries the new epoch). Use `raft` mode where that window
//! matters.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{PrimaryCell, PrimaryState, PrimaryWatch, Role};
use crate::{durable, metrics};

const STATE_FILE: &str = "static-epoch.json";

/// A claim: `primary` is the primary at `epoch`. On the wire it is the
/// announcement body of `POST /_litegate/epoch` and the proposal body of
/// `POST /_litegate/epoch/propose`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epoch {
    pub epoch: u64,
    pub primary: String,
}

/// What a node holds, persisted and answered to `GET /_litegate/epoch`.
/// The known claim's fields stay at the top level, so a file or answer
/// from an older litegate (`{epoch, primary}`) still reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochState {
    pub epoch: u64,
    pub primary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promised: Option<Epoch>,
}

impl EpochState {
    pub fn known(&self) -> Epoch {
        Epoch {
            epoch: self.epoch,
            primary: self.primary.clone(),
        }
    }

    /// The highest epoch this node has known or promised: a new proposal
    /// must go above it.
    pub fn highest(&self) -> u64 {
        self.promised
            .as_ref()
            .map_or(self.epoch, |p| p.epoch.max(self.epoch))
    }

    /// Whether this node's report lets `claim.primary` take writes at
    /// `claim.epoch`: it knows nothing chosen above it (nor a different
    /// claim at it), and has promised nothing above it but to the claimant
    /// (a proposal only the claimant could complete).
    pub fn supports(&self, claim: &Epoch) -> bool {
        let known_ok = self.epoch < claim.epoch || self.known() == *claim;
        let promise_ok = self
            .promised
            .as_ref()
            .is_none_or(|p| p.epoch <= claim.epoch || p.primary == claim.primary);
        known_ok && promise_ok
    }
}

/// A node's answer to a proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub accepted: bool,
    /// The node's state after answering.
    pub state: EpochState,
}

/// Why this node did not become the primary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromoteError {
    #[error("a promote is already under way on this node")]
    InProgress,
    #[error("the cluster is at epoch {0}, the largest there is: it cannot move to a new one. Stop every node, remove static-epoch.json from every cluster.data_dir, and start them again (epochs restart at 1)")]
    Exhausted(u64),
    #[error("{0}")]
    Persist(String),
    #[error("epoch {epoch} was not chosen for this node: it has {accepted} of the {needed} votes it needs, a majority of cluster.peers counting itself ({}); nothing changed on this node's role. See `litegate status` for the primary; promoting again is safe", refusals.join("; "))]
    NoMajority {
        epoch: u64,
        accepted: usize,
        needed: usize,
        refusals: Vec<String>,
    },
}

#[derive(Debug)]
struct Inner {
    state: EpochState,
    /// This process has seen a majority back its own known claim: by
    /// winning the vote, or by confirmation at start. Meaningless when the
    /// known claim names another node.
    confirmed: bool,
    /// A different known claim at our known epoch, seen from a peer.
    conflict: Option<Epoch>,
}

#[derive(Debug)]
pub struct StaticPrimary {
    me: String,
    names: HashSet<String>,
    path: PathBuf,
    /// Serializes read-check-persist-publish, so a proposal, an adoption
    /// and a promote cannot interleave between the check and the write.
    inner: Mutex<Inner>,
    /// One promote at a time on this node.
    promoting: tokio::sync::Mutex<()>,
    cell: Arc<PrimaryCell>,
}

impl StaticPrimary {
    /// Loads the persisted state from `data_dir`, or starts a new cluster
    /// at epoch 1 with `initial` as the primary. A node that finds itself
    /// named starts unconfirmed.
    pub fn open(
        data_dir: &Path,
        me: &str,
        names: HashSet<String>,
        initial: &str,
    ) -> Result<Self, String> {
        durable::ensure_data_dir(data_dir)?;
        let path = data_dir.join(STATE_FILE);
        let damaged = "restore it from a backup or remove it to rejoin at the cluster's epoch";
        let state = match durable::read_json::<EpochState>(&path, damaged)? {
            Some(state) => state,
            None => {
                let first = EpochState {
                    epoch: 1,
                    primary: initial.to_owned(),
                    promised: None,
                };
                persist(&path, &first)?;
                first
            }
        };
        if !names.contains(&state.primary) {
            return Err(format!(
                "{} names {:?} as primary, which is not in cluster.peers",
                path.display(),
                state.primary
            ));
        }
        let inner = Inner {
            state,
            confirmed: false,
            conflict: None,
        };
        let initial_state = published(me, &inner);
        metrics::set_is_primary(initial_state.role == Role::Primary);
        Ok(Self {
            me: me.to_owned(),
            names,
            path,
            cell: PrimaryCell::new(initial_state),
            inner: Mutex::new(inner),
            promoting: tokio::sync::Mutex::new(()),
        })
    }

    pub fn watch(&self) -> PrimaryWatch {
        self.cell.watch()
    }

    /// What this node holds, for `GET /_litegate/epoch`.
    pub fn state(&self) -> EpochState {
        self.lock().state.clone()
    }

    /// For `/status`: whether this node's role is settled (false while a
    /// node named primary waits for a majority, or after a conflict), and
    /// the conflicting claim if one was seen.
    pub fn confirmation(&self) -> (bool, Option<Epoch>) {
        let inner = self.lock();
        let settled =
            inner.conflict.is_none() && (inner.state.primary != self.me || inner.confirmed);
        (settled, inner.conflict.clone())
    }

    /// How many nodes, this one included, make a majority.
    pub fn majority(&self) -> usize {
        self.names.len() / 2 + 1
    }

    /// A peer's known claim (an announcement, a poll, a `421`, a forwarded
    /// write's headers): taken if it is newer than ours. A claim that makes
    /// *this* node the primary at an epoch it never won is refused: only
    /// this node's own vote can do that.
    pub fn adopt(&self, seen: &Epoch) -> bool {
        if !self.names.contains(&seen.primary) {
            return false;
        }
        let mut inner = self.lock();
        if seen.epoch < inner.state.epoch {
            return false;
        }
        if seen.epoch == inner.state.epoch {
            if seen.primary != inner.state.primary && inner.conflict.as_ref() != Some(seen) {
                tracing::error!(
                    epoch = seen.epoch,
                    ours = %inner.state.primary,
                    theirs = %seen.primary,
                    "two nodes claim to be primary at one epoch (an older litegate or a copied data dir?); keeping ours, no writes pass here as primary: run `litegate promote` on the node that should be primary"
                );
                inner.conflict = Some(seen.clone());
                self.publish(&inner);
            }
            return false;
        }
        if seen.primary == self.me {
            tracing::warn!(
                epoch = seen.epoch,
                "a peer claims this node is primary at an epoch it never won; ignored"
            );
            return false;
        }
        let next = EpochState {
            epoch: seen.epoch,
            primary: seen.primary.clone(),
            promised: inner
                .state
                .promised
                .clone()
                .filter(|p| p.epoch > seen.epoch),
        };
        if let Err(error) = persist(&self.path, &next) {
            tracing::error!(%error, "cannot persist the new epoch; not adopting it");
            return false;
        }
        tracing::info!(epoch = seen.epoch, primary = %seen.primary, "adopted a newer epoch");
        inner.state = next;
        inner.confirmed = false;
        inner.conflict = None;
        self.publish(&inner);
        true
    }

    /// A peer proposes `proposal`: accepted (and persisted before the
    /// answer) only if it is above everything this node knows or promised,
    /// or is exactly the proposal already promised.
    pub fn accept(&self, proposal: &Epoch) -> Result<Vote, String> {
        let mut inner = self.lock();
        let state = &inner.state;
        let repeated = state.promised.as_ref() == Some(proposal);
        let fresh = proposal.epoch > state.highest();
        if !self.names.contains(&proposal.primary) || !(repeated || fresh) {
            return Ok(Vote {
                accepted: false,
                state: state.clone(),
            });
        }
        if fresh {
            let next = EpochState {
                promised: Some(proposal.clone()),
                ..state.clone()
            };
            persist(&self.path, &next)?;
            inner.state = next;
        }
        Ok(Vote {
            accepted: true,
            state: inner.state.clone(),
        })
    }

    /// The first step of a promote: adopts what `seen` (peers' states)
    /// knows, then proposes this node at an epoch above everything seen,
    /// promising it locally first.
    pub fn propose(&self, seen: &[EpochState]) -> Result<Epoch, PromoteError> {
        for state in seen {
            self.adopt(&state.known());
        }
        let highest = seen
            .iter()
            .map(EpochState::highest)
            .fold(self.lock().state.highest(), u64::max);
        let epoch = highest
            .checked_add(1)
            .ok_or(PromoteError::Exhausted(highest))?;
        let proposal = Epoch {
            epoch,
            primary: self.me.clone(),
        };
        let vote = self.accept(&proposal).map_err(PromoteError::Persist)?;
        if !vote.accepted {
            // A peer's proposal reached us between the read and now.
            return Err(PromoteError::NoMajority {
                epoch,
                accepted: 0,
                needed: self.majority(),
                refusals: vec![format!(
                    "this node already promised epoch {} to {}",
                    vote.state.highest(),
                    vote.state
                        .promised
                        .as_ref()
                        .map_or(vote.state.primary.as_str(), |p| p.primary.as_str())
                )],
            });
        }
        Ok(proposal)
    }

    /// The last step of a promote: `accepted_by` peers (not counting this
    /// node) accepted `proposal`. With a majority, this node is the primary
    /// at its epoch — unless something newer arrived meanwhile.
    pub fn conclude(
        &self,
        proposal: &Epoch,
        accepted_by: usize,
        refusals: Vec<String>,
    ) -> Result<Epoch, PromoteError> {
        let needed = self.majority();
        let accepted = accepted_by + 1;
        let mut inner = self.lock();
        let still_ours = inner.state.promised.as_ref() == Some(proposal);
        if accepted < needed || !still_ours {
            let mut refusals = refusals;
            if !still_ours {
                refusals.push(format!(
                    "meanwhile this node learned of epoch {} (primary {})",
                    inner.state.highest(),
                    inner.state.primary
                ));
            }
            return Err(PromoteError::NoMajority {
                epoch: proposal.epoch,
                accepted,
                needed,
                refusals,
            });
        }
        let next = EpochState {
            epoch: proposal.epoch,
            primary: self.me.clone(),
            promised: None,
        };
        persist(&self.path, &next).map_err(PromoteError::Persist)?;
        tracing::info!(
            epoch = next.epoch,
            accepted,
            "promoted: a majority chose this node as the primary"
        );
        inner.state = next;
        inner.confirmed = true;
        inner.conflict = None;
        self.publish(&inner);
        Ok(proposal.clone())
    }

    /// At start: a node whose known claim names itself becomes the primary
    /// once a majority, itself included, supports that claim. Returns
    /// whether this node's role is settled.
    pub fn confirm(&self, reports: &[EpochState]) -> bool {
        let mut inner = self.lock();
        if inner.state.primary != self.me || inner.confirmed {
            return inner.conflict.is_none();
        }
        if inner.conflict.is_some() {
            return false;
        }
        let claim = inner.state.known();
        let backing = std::iter::once(&inner.state)
            .chain(reports)
            .filter(|r| r.supports(&claim))
            .count();
        if backing < self.majority() {
            return false;
        }
        tracing::info!(
            epoch = claim.epoch,
            backing,
            "a majority confirmed no newer epoch: this node is the primary"
        );
        inner.confirmed = true;
        self.publish(&inner);
        true
    }

    /// Held for the whole of one promote.
    pub fn try_begin_promote(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, PromoteError> {
        self.promoting
            .try_lock()
            .map_err(|_| PromoteError::InProgress)
    }

    fn publish(&self, inner: &Inner) {
        let next = published(&self.me, inner);
        metrics::set_is_primary(next.role == Role::Primary);
        let primary = next.primary.clone();
        if self.cell.publish(next) {
            metrics::observe_primary(primary.as_deref());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the state
        // half-written (it is replaced whole), so a poisoned lock is still
        // good to use.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn published(me: &str, inner: &Inner) -> PrimaryState {
    let state = &inner.state;
    let named_me = state.primary == me;
    let (role, primary) = if named_me && inner.confirmed && inner.conflict.is_none() {
        (Role::Primary, Some(Arc::from(me)))
    } else if named_me {
        // Not yet (or no longer) sure: no primary is known, writes are held.
        (Role::Unknown, None)
    } else {
        (Role::Replica, Some(Arc::from(state.primary.as_str())))
    };
    PrimaryState {
        role,
        term: state.epoch,
        primary,
        lease_deadline: None,
    }
}

fn persist(path: &Path, state: &EpochState) -> Result<(), String> {
    let bytes = serde_json::to_vec(state).map_err(|e| e.to_string())?;
    durable::replace_file(path, &bytes)
        .map_err(|e| format!("cannot persist the epoch to {}: {e}", path.display()))
}

#[cfg(test)]
mod tests;
