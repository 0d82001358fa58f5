//! `litegate promote` in static mode: read every peer's epoch, propose this
//! node one above the highest, and become the primary only if a majority of
//! the configured nodes accepted (see [`super::static_primary`] for why that
//! is safe). The peers are reached through [`EpochPeers`], so the vote runs
//! the same over the cluster link and in process in tests.

use std::future::Future;

use super::static_primary::{Epoch, EpochState, PromoteError, StaticPrimary, Vote};

/// The other configured nodes, as a promote talks to them.
pub trait EpochPeers {
    /// Each other node's state, or why it did not answer.
    fn poll(&self) -> impl Future<Output = Vec<(String, Result<EpochState, String>)>> + Send;

    /// Each other node's answer to `proposal`, or why it did not answer.
    /// An unanswered proposal may still have been accepted; it is counted
    /// as refused, which can only make a promote fail, never win twice.
    fn propose(
        &self,
        proposal: &Epoch,
    ) -> impl Future<Output = Vec<(String, Result<Vote, String>)>> + Send;
}

/// Runs one promote of `node`; on success it is the primary at the
/// returned epoch (the caller announces it). On failure this node's role is
/// unchanged and the error says who refused and why.
pub async fn promote(node: &StaticPrimary, peers: &impl EpochPeers) -> Result<Epoch, PromoteError> {
    let _one_at_a_time = node.try_begin_promote()?;
    let seen: Vec<EpochState> = peers
        .poll()
        .await
        .into_iter()
        .filter_map(|(_, answer)| answer.ok())
        .collect();
    let proposal = node.propose(&seen)?;
    let mut accepted = 0;
    let mut refusals = Vec::new();
    for (name, answer) in peers.propose(&proposal).await {
        match answer {
            Ok(vote) if vote.accepted => accepted += 1,
            Ok(vote) => {
                node.adopt(&vote.state.known());
                refusals.push(format!("{name} refused: {}", describe(&vote.state)));
            }
            Err(error) => refusals.push(format!("{name} did not answer: {error}")),
        }
    }
    refusals.sort();
    node.conclude(&proposal, accepted, refusals)
}

fn describe(state: &EpochState) -> String {
    match &state.promised {
        Some(p) => format!(
            "it promised epoch {} to {} (it knows {} as primary at epoch {})",
            p.epoch, p.primary, state.primary, state.epoch
        ),
        None => format!(
            "it knows {} as primary at epoch {}",
            state.primary, state.epoch
        ),
    }
}
