//! `primary.mode = "static"`: the primary is named, not elected. An operator
//! moves it with `litegate promote`, which raises the epoch — the fencing
//! token — by one. The epoch is persisted before it is acted on, and a node
//! adopts the highest epoch it hears of from any peer.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{PrimaryCell, PrimaryState, PrimaryWatch, Role};
use crate::{durable, metrics};

const STATE_FILE: &str = "static-epoch.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Epoch {
    pub epoch: u64,
    pub primary: String,
}

#[derive(Debug)]
pub struct StaticPrimary {
    me: String,
    names: HashSet<String>,
    path: PathBuf,
    /// Serializes read-modify-persist-publish, so two adoptions cannot
    /// interleave between the check and the write.
    current: Mutex<Epoch>,
    cell: Arc<PrimaryCell>,
}

impl StaticPrimary {
    /// Loads the persisted epoch from `data_dir`, or starts a new cluster at
    /// epoch 1 with `initial` as the primary.
    pub fn open(
        data_dir: &Path,
        me: &str,
        names: HashSet<String>,
        initial: &str,
    ) -> Result<Self, String> {
        durable::ensure_data_dir(data_dir)?;
        let path = data_dir.join(STATE_FILE);
        let damaged = "restore it from a backup or remove it to rejoin at the cluster's epoch";
        let epoch = match durable::read_json::<Epoch>(&path, damaged)? {
            Some(epoch) => epoch,
            None => {
                let first = Epoch {
                    epoch: 1,
                    primary: initial.to_owned(),
                };
                persist(&path, &first)?;
                first
            }
        };
        if !names.contains(&epoch.primary) {
            return Err(format!(
                "{} names {:?} as primary, which is not in cluster.peers",
                path.display(),
                epoch.primary
            ));
        }
        let cell = PrimaryCell::new(state(me, &epoch));
        metrics::set_is_primary(epoch.primary == me);
        Ok(Self {
            me: me.to_owned(),
            names,
            path,
            current: Mutex::new(epoch),
            cell,
        })
    }

    pub fn watch(&self) -> PrimaryWatch {
        self.cell.watch()
    }

    pub fn current(&self) -> Epoch {
        self.lock().clone()
    }

    /// Takes `seen` if it is newer than ours. A claim that makes *this* node
    /// the primary at an epoch it never issued is refused: only a node's own
    /// promote can do that.
    pub fn adopt(&self, seen: &Epoch) -> bool {
        let mut current = self.lock();
        if seen.epoch <= current.epoch || !self.names.contains(&seen.primary) {
            return false;
        }
        if seen.primary == self.me {
            tracing::warn!(
                epoch = seen.epoch,
                "a peer claims this node is primary at an epoch it never issued; ignored"
            );
            return false;
        }
        if let Err(error) = persist(&self.path, seen) {
            tracing::error!(%error, "cannot persist the new epoch; not adopting it");
            return false;
        }
        tracing::info!(epoch = seen.epoch, primary = %seen.primary, "adopted a newer epoch");
        *current = seen.clone();
        self.publish(&current);
        true
    }

    /// Makes this node the primary at an epoch above every one in `seen`.
    pub fn promote(&self, seen: impl IntoIterator<Item = u64>) -> Result<Epoch, String> {
        let mut current = self.lock();
        let highest = seen.into_iter().fold(current.epoch, u64::max);
        let next = Epoch {
            epoch: highest + 1,
            primary: self.me.clone(),
        };
        persist(&self.path, &next)?;
        tracing::info!(epoch = next.epoch, "promoted: this node is the primary");
        *current = next.clone();
        self.publish(&current);
        Ok(next)
    }

    fn publish(&self, epoch: &Epoch) {
        metrics::set_is_primary(epoch.primary == self.me);
        metrics::count_primary_change();
        self.cell.publish(state(&self.me, epoch));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Epoch> {
        // A panic while holding this lock cannot leave the epoch half-written
        // (it is replaced whole), so a poisoned lock is still good to use.
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn state(me: &str, epoch: &Epoch) -> PrimaryState {
    PrimaryState {
        role: if epoch.primary == me {
            Role::Primary
        } else {
            Role::Replica
        },
        term: epoch.epoch,
        primary: Some(Arc::from(epoch.primary.as_str())),
        lease_deadline: None,
    }
}

fn persist(path: &Path, epoch: &Epoch) -> Result<(), String> {
    let bytes = serde_json::to_vec(epoch).map_err(|e| e.to_string())?;
    durable::replace_file(path, &bytes)
        .map_err(|e| format!("cannot persist the epoch to {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> HashSet<String> {
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn epochs_persist_and_only_go_up() {
        let dir = std::env::temp_dir().join(format!("litegate-static-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let b = StaticPrimary::open(&dir, "b", names(), "a").unwrap();
        assert_eq!(
            b.current(),
            Epoch {
                epoch: 1,
                primary: "a".into()
            }
        );
        assert!(b.adopt(&Epoch {
            epoch: 3,
            primary: "c".into()
        }));
        assert!(!b.adopt(&Epoch {
            epoch: 2,
            primary: "a".into()
        }));
        assert!(
            !b.adopt(&Epoch {
                epoch: 9,
                primary: "b".into()
            }),
            "only b's own promote makes b primary"
        );
        assert!(!b.adopt(&Epoch {
            epoch: 9,
            primary: "zed".into()
        }));
        assert_eq!(
            b.promote([5, 4]).unwrap(),
            Epoch {
                epoch: 6,
                primary: "b".into()
            }
        );
        assert_eq!(b.watch().current().role, Role::Primary);
        drop(b);
        let again = StaticPrimary::open(&dir, "b", names(), "a").unwrap();
        assert_eq!(
            again.current(),
            Epoch {
                epoch: 6,
                primary: "b".into()
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
