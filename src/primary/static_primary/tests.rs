use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use super::super::static_promote::{promote, EpochPeers};
use super::*;

static DIRS: AtomicU64 = AtomicU64::new(0);

/// A fresh data dir per node per test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let n = DIRS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("litegate-static-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn names(of: &[&str]) -> HashSet<String> {
    of.iter().map(|s| s.to_string()).collect()
}

fn claim(epoch: u64, primary: &str) -> Epoch {
    Epoch {
        epoch,
        primary: primary.into(),
    }
}

fn role(node: &StaticPrimary) -> Role {
    node.watch().current().role
}

/// In-process nodes of one cluster, each in its own data dir.
struct Cluster {
    nodes: HashMap<String, Arc<StaticPrimary>>,
    _dirs: Vec<TempDir>,
}

impl Cluster {
    fn new(of: &[&str], initial: &str) -> Self {
        let mut nodes = HashMap::new();
        let mut dirs = Vec::new();
        for name in of {
            let dir = TempDir::new();
            let node = StaticPrimary::open(&dir.0, name, names(of), initial).unwrap();
            nodes.insert(name.to_string(), Arc::new(node));
            dirs.push(dir);
        }
        Self { nodes, _dirs: dirs }
    }

    fn node(&self, name: &str) -> &StaticPrimary {
        &self.nodes[name]
    }

    /// `me`'s view of the others; `down` do not answer. With `gate`, each
    /// proposer waits there after reading the others' epochs and again
    /// before sending its proposal, so concurrent promotes have all read
    /// the same epochs, and all promised locally, before any is sent.
    fn peers_of(
        &self,
        me: &str,
        down: &[&str],
        gate: Option<Arc<tokio::sync::Barrier>>,
    ) -> InProcess {
        InProcess {
            others: self
                .nodes
                .iter()
                .filter(|(n, _)| *n != me)
                .map(|(n, node)| (n.clone(), Arc::clone(node)))
                .collect(),
            down: down.iter().map(|s| s.to_string()).collect(),
            gate,
        }
    }

    /// Every node's known claim at `epoch`, if any: they must all agree.
    fn known_at(&self, epoch: u64) -> HashSet<String> {
        self.nodes
            .values()
            .map(|n| n.state())
            .filter(|s| s.epoch == epoch)
            .map(|s| s.primary)
            .collect()
    }
}

struct InProcess {
    others: Vec<(String, Arc<StaticPrimary>)>,
    down: HashSet<String>,
    gate: Option<Arc<tokio::sync::Barrier>>,
}

impl EpochPeers for InProcess {
    fn poll(&self) -> impl Future<Output = Vec<(String, Result<EpochState, String>)>> + Send {
        let answers = self
            .others
            .iter()
            .map(|(name, node)| {
                let answer = if self.down.contains(name) {
                    Err("unreachable".to_owned())
                } else {
                    Ok(node.state())
                };
                (name.clone(), answer)
            })
            .collect();
        let gate = self.gate.clone();
        async move {
            if let Some(gate) = gate {
                gate.wait().await;
            }
            answers
        }
    }

    fn propose(
        &self,
        proposal: &Epoch,
    ) -> impl Future<Output = Vec<(String, Result<Vote, String>)>> + Send {
        let gate = self.gate.clone();
        let proposal = proposal.clone();
        let others = self.others.clone();
        let down = self.down.clone();
        async move {
            if let Some(gate) = gate {
                gate.wait().await;
            }
            let mut answers = Vec::new();
            for (name, node) in others {
                let answer = if down.contains(&name) {
                    Err("unreachable".to_owned())
                } else {
                    node.accept(&proposal)
                };
                answers.push((name, answer));
                // Let the other proposer interleave between peers.
                tokio::task::yield_now().await;
            }
            answers
        }
    }
}

#[test]
fn epochs_persist_and_only_go_up() {
    let dir = TempDir::new();
    let b = StaticPrimary::open(&dir.0, "b", names(&["a", "b", "c"]), "a").unwrap();
    assert_eq!(b.state().known(), claim(1, "a"));
    assert!(b.adopt(&claim(3, "c")));
    assert!(!b.adopt(&claim(2, "a")));
    assert!(
        !b.adopt(&claim(9, "b")),
        "only b's own vote makes b primary"
    );
    assert!(!b.adopt(&claim(9, "zed")));
    assert_eq!(role(&b), Role::Replica);
    drop(b);
    let again = StaticPrimary::open(&dir.0, "b", names(&["a", "b", "c"]), "a").unwrap();
    assert_eq!(again.state().known(), claim(3, "c"));
    assert_eq!(role(&again), Role::Replica);
}

#[test]
fn a_file_from_an_older_litegate_still_reads() {
    let dir = TempDir::new();
    std::fs::create_dir_all(&dir.0).unwrap();
    std::fs::write(dir.0.join(STATE_FILE), br#"{"epoch":4,"primary":"a"}"#).unwrap();
    let b = StaticPrimary::open(&dir.0, "b", names(&["a", "b"]), "a").unwrap();
    assert_eq!(
        b.state(),
        EpochState {
            epoch: 4,
            primary: "a".into(),
            promised: None
        }
    );
}

#[test]
fn a_node_promises_each_epoch_once() {
    let dir = TempDir::new();
    let a = StaticPrimary::open(&dir.0, "a", names(&["a", "b", "c"]), "a").unwrap();
    assert!(a.accept(&claim(2, "b")).unwrap().accepted);
    assert!(
        a.accept(&claim(2, "b")).unwrap().accepted,
        "a repeated message gets the same answer"
    );
    let refused = a.accept(&claim(2, "c")).unwrap();
    assert!(!refused.accepted, "a second proposal at one epoch");
    assert_eq!(refused.state.promised, Some(claim(2, "b")));
    assert!(!a.accept(&claim(1, "c")).unwrap().accepted);
    assert!(!a.accept(&claim(5, "zed")).unwrap().accepted);
    assert!(a.accept(&claim(3, "c")).unwrap().accepted);
    // The promise survives a restart.
    drop(a);
    let a = StaticPrimary::open(&dir.0, "a", names(&["a", "b", "c"]), "a").unwrap();
    assert!(!a.accept(&claim(3, "b")).unwrap().accepted);
    // Adopting a chosen epoch at or above the promise drops it.
    assert!(a.adopt(&claim(3, "c")));
    assert_eq!(a.state().promised, None);
}

#[tokio::test]
async fn two_promotes_that_read_the_same_epoch_leave_one_primary() {
    let cluster = Cluster::new(&["a", "b", "c"], "a");
    let gate = Arc::new(tokio::sync::Barrier::new(2));
    let to_b = cluster.peers_of("b", &[], Some(Arc::clone(&gate)));
    let to_c = cluster.peers_of("c", &[], Some(gate));
    let (b, c) = tokio::join!(
        promote(cluster.node("b"), &to_b),
        promote(cluster.node("c"), &to_c)
    );
    let winners: Vec<_> = [&b, &c].iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "b: {b:?}, c: {c:?}");
    let won = winners[0].clone();
    assert_eq!(won.epoch, 2);
    let (winner, loser) = if won.primary == "b" {
        ("b", "c")
    } else {
        ("c", "b")
    };
    assert_eq!(role(cluster.node(winner)), Role::Primary);
    let lost = if winner == "b" { &c } else { &b };
    match lost {
        Err(PromoteError::NoMajority {
            epoch: 2, refusals, ..
        }) => assert!(
            refusals.iter().any(|r| r.contains(&format!("to {winner}"))),
            "the loser is told who holds the epoch: {refusals:?}"
        ),
        other => panic!("the loser should report the conflict: {other:?}"),
    }
    // The loser's role is unchanged, and nobody believes two primaries.
    assert_eq!(role(cluster.node(loser)), Role::Replica);
    assert_eq!(cluster.node(loser).watch().current().term, 1);
    assert!(cluster.known_at(2).len() <= 1);

    // The winner's announcement settles everyone at epoch 2.
    for node in ["a", loser] {
        cluster.node(node).adopt(&won);
    }
    assert_eq!(cluster.known_at(2), names(&[winner]));
    assert_eq!(role(cluster.node(loser)), Role::Replica);
    assert_eq!(role(cluster.node("a")), Role::Replica);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_promotes_never_choose_two_primaries_for_one_epoch() {
    let cluster = Arc::new(Cluster::new(&["a", "b", "c"], "a"));
    let mut chosen: HashMap<u64, Vec<String>> = HashMap::new();
    for _round in 0..30 {
        let mut runs = tokio::task::JoinSet::new();
        for name in ["a", "b", "c"] {
            let cluster = Arc::clone(&cluster);
            runs.spawn(async move {
                let peers = cluster.peers_of(name, &[], None);
                promote(cluster.node(name), &peers).await
            });
        }
        while let Some(outcome) = runs.join_next().await {
            if let Ok(won) = outcome.unwrap() {
                chosen.entry(won.epoch).or_default().push(won.primary);
            }
        }
    }
    assert!(!chosen.is_empty());
    for (epoch, primaries) in &chosen {
        assert_eq!(primaries.len(), 1, "epoch {epoch} chose {primaries:?}");
    }
    let highest = *chosen.keys().max().unwrap();
    for node in cluster.nodes.values() {
        let state = node.state();
        if let Some(primaries) = chosen.get(&state.epoch) {
            assert_eq!(
                primaries[0], state.primary,
                "a node knows a claim that was not chosen"
            );
        }
    }
    let primaries_at_highest = cluster
        .nodes
        .values()
        .filter(|n| {
            let s = n.watch().current();
            s.role == Role::Primary && s.term == highest
        })
        .count();
    assert_eq!(primaries_at_highest, 1);
}

#[tokio::test]
async fn promote_needs_a_majority_of_the_configured_nodes() {
    let cluster = Cluster::new(&["a", "b", "c"], "a");
    // One peer down: two of three is a majority.
    let won = promote(cluster.node("b"), &cluster.peers_of("b", &["a"], None))
        .await
        .unwrap();
    assert_eq!(won, claim(2, "b"));
    assert_eq!(role(cluster.node("b")), Role::Primary);

    // Both peers down: no majority, nothing changes.
    let lost = promote(cluster.node("c"), &cluster.peers_of("c", &["a", "b"], None)).await;
    assert!(matches!(
        lost,
        Err(PromoteError::NoMajority {
            accepted: 1,
            needed: 2,
            ..
        })
    ));
    assert_eq!(cluster.node("c").watch().current().term, 1);
    assert_ne!(role(cluster.node("c")), Role::Primary);

    // Two nodes: the other one is needed.
    let pair = Cluster::new(&["a", "b"], "a");
    let lost = promote(pair.node("b"), &pair.peers_of("b", &["a"], None)).await;
    assert!(
        matches!(lost, Err(PromoteError::NoMajority { needed: 2, .. })),
        "{lost:?}"
    );
    assert_eq!(role(pair.node("b")), Role::Replica);
    promote(pair.node("b"), &pair.peers_of("b", &[], None))
        .await
        .unwrap();
    assert_eq!(role(pair.node("b")), Role::Primary);
}

#[tokio::test]
async fn the_largest_epoch_refuses_to_promote() {
    let dir = TempDir::new();
    std::fs::create_dir_all(&dir.0).unwrap();
    let at_max = format!(r#"{{"epoch":{},"primary":"a"}}"#, u64::MAX);
    std::fs::write(dir.0.join(STATE_FILE), at_max).unwrap();
    let b = Arc::new(StaticPrimary::open(&dir.0, "b", names(&["a", "b"]), "a").unwrap());
    let peers = InProcess {
        others: Vec::new(),
        down: HashSet::new(),
        gate: None,
    };
    let refused = promote(&b, &peers).await;
    assert_eq!(refused, Err(PromoteError::Exhausted(u64::MAX)));
    assert!(refused
        .unwrap_err()
        .to_string()
        .contains("static-epoch.json"));
    assert_eq!(b.state().epoch, u64::MAX);
    assert_eq!(b.state().promised, None);
    assert_eq!(role(&b), Role::Replica);

    // A peer's promise at the maximum counts too.
    let pair = Cluster::new(&["a", "b"], "a");
    assert!(
        pair.node("a")
            .accept(&claim(u64::MAX, "a"))
            .unwrap()
            .accepted
    );
    let refused = promote(pair.node("b"), &pair.peers_of("b", &[], None)).await;
    assert_eq!(refused, Err(PromoteError::Exhausted(u64::MAX)));
}

#[test]
fn a_restarted_primary_waits_for_a_majority() {
    let cluster = Cluster::new(&["a", "b", "c"], "a");
    let a = cluster.node("a");
    let reports =
        |of: &[&str]| -> Vec<EpochState> { of.iter().map(|n| cluster.node(n).state()).collect() };
    // Named in its own file, but nobody has answered yet.
    assert_eq!(role(a), Role::Unknown);
    assert_eq!(a.watch().current().primary, None);
    assert!(!a.confirm(&[]));
    assert_eq!(role(a), Role::Unknown);
    assert_eq!(a.confirmation(), (false, None));
    // One peer at the same epoch: with itself, two of three.
    assert!(a.confirm(&reports(&["b"])));
    assert_eq!(role(a), Role::Primary);
    assert_eq!(a.confirmation(), (true, None));
}

#[test]
fn a_promise_to_another_node_above_the_claim_blocks_confirmation() {
    let cluster = Cluster::new(&["a", "b", "c"], "a");
    // b promised epoch 2 to c; c's outcome is unknown to a.
    assert!(cluster.node("b").accept(&claim(2, "c")).unwrap().accepted);
    let b = cluster.node("b").state();
    assert!(!b.supports(&claim(1, "a")));
    assert!(!cluster.node("a").confirm(std::slice::from_ref(&b)));
    // c, untouched, backs a.
    assert!(cluster.node("a").confirm(&[b, cluster.node("c").state()]));
}

#[test]
fn a_restarted_primary_that_was_replaced_never_confirms() {
    let cluster = Cluster::new(&["a", "b", "c"], "a");
    // While a was down, b won epoch 2 with c.
    for n in ["b", "c"] {
        assert!(cluster.node(n).accept(&claim(2, "b")).unwrap().accepted);
    }
    let b_won = claim(2, "b");
    assert!(cluster.node("b").conclude(&b_won, 1, Vec::new()).is_ok());
    let a = cluster.node("a");
    let reports = [cluster.node("b").state(), cluster.node("c").state()];
    assert!(!a.confirm(&reports), "a must not confirm epoch 1");
    assert_ne!(role(a), Role::Primary);
    // It learns the new epoch from the same reports (the poller adopts them).
    for r in &reports {
        a.adopt(&r.known());
    }
    assert_eq!(role(a), Role::Replica);
    assert_eq!(a.watch().current().primary.as_deref(), Some("b"));
}

#[test]
fn two_nodes_confirm_only_with_the_other_one() {
    let pair = Cluster::new(&["a", "b"], "a");
    let a = pair.node("a");
    assert!(!a.confirm(&[]), "a lone node of two never confirms itself");
    assert_eq!(role(a), Role::Unknown);
    assert!(a.confirm(&[pair.node("b").state()]));
    assert_eq!(role(a), Role::Primary);
}

#[test]
fn a_lost_proposal_of_its_own_does_not_block_confirmation() {
    let pair = Cluster::new(&["a", "b"], "a");
    let a = pair.node("a");
    // a crashed in the middle of a promote to epoch 2: b promised it.
    assert!(a.accept(&claim(2, "a")).unwrap().accepted);
    assert!(pair.node("b").accept(&claim(2, "a")).unwrap().accepted);
    // Only a could complete that proposal, and it will not on its own.
    assert!(a.confirm(&[pair.node("b").state()]));
    assert_eq!(a.watch().current().term, 1);
}

#[tokio::test]
async fn two_known_claims_at_one_epoch_stop_the_primary() {
    let cluster = Cluster::new(&["a", "b", "c"], "a");
    let a = cluster.node("a");
    assert!(a.confirm(&[cluster.node("b").state()]));
    assert_eq!(role(a), Role::Primary);
    // A node that believes c is primary at epoch 1 (copied data dir).
    assert!(!a.adopt(&claim(1, "c")));
    assert_eq!(role(a), Role::Unknown);
    assert_eq!(a.confirmation(), (false, Some(claim(1, "c"))));
    assert_eq!(a.state().known(), claim(1, "a"), "keeps its own claim");
    // A replica keeps following its own claim.
    let b = cluster.node("b");
    assert!(!b.adopt(&claim(1, "c")));
    assert_eq!(b.watch().current().primary.as_deref(), Some("a"));
    // A promote moves everyone past the conflict.
    let won = promote(cluster.node("b"), &cluster.peers_of("b", &[], None))
        .await
        .unwrap();
    assert_eq!(won, claim(2, "b"));
    assert!(a.adopt(&won));
    assert_eq!(a.confirmation(), (true, None));
    assert_eq!(role(a), Role::Replica);
}
