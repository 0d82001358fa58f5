//! The file-descriptor budget (`RLIMIT_NOFILE`). A flood of client
//! connections must never leave the node unable to open a socket to its
//! app, its peers or its own admin listener, so the public and cluster
//! listeners are capped to shares of the limit and the rest is kept back.

/// Descriptors kept back for everything that is not a listener's
/// connection: stdio, the listeners themselves, the runtime's epoll and
/// wakers, Raft's and the epoch's files, hooks' pipes.
pub const FIXED_RESERVE: u64 = 64;

/// The soft and hard `RLIMIT_NOFILE` after start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimits {
    pub soft: u64,
    pub hard: u64,
}

impl FdLimits {
    /// Reads the limit and raises the soft limit to the hard one where the
    /// kernel allows it. `None` when the limit cannot be read; the caps from
    /// the configuration then apply unchanged.
    pub fn raise() -> Option<FdLimits> {
        let (soft, hard) = match rlimit::Resource::NOFILE.get() {
            Ok(pair) => pair,
            Err(error) => {
                tracing::warn!(%error, "cannot read RLIMIT_NOFILE; connection caps are taken from the configuration as they are");
                return None;
            }
        };
        if soft < hard {
            match rlimit::Resource::NOFILE.set(hard, hard) {
                Ok(()) => return Some(FdLimits { soft: hard, hard }),
                Err(error) => {
                    tracing::info!(%error, soft, hard, "cannot raise the soft RLIMIT_NOFILE to the hard limit")
                }
            }
        }
        Some(FdLimits { soft, hard })
    }

    /// What is left for connections once [`FIXED_RESERVE`] is kept back.
    fn budget(self) -> u64 {
        self.soft.saturating_sub(FIXED_RESERVE)
    }

    /// The public listener may hold at most half the budget, so the other
    /// half stays for sockets to the app, the peers, and the other listeners.
    pub fn public_cap(self, configured: usize) -> usize {
        cap(configured, self.budget() / 2)
    }

    /// The cluster listener may hold at most a quarter of the budget.
    pub fn cluster_cap(self, configured: usize) -> usize {
        cap(configured, self.budget() / 4)
    }

    /// The admin listener may hold at most an eighth of the budget.
    pub fn admin_cap(self, configured: usize) -> usize {
        cap(configured, self.budget() / 8)
    }

    /// Client connections holding a connection to the app of their own
    /// (`proxy/affinity.rs`) take at most a sixteenth of the budget, so
    /// half of the eighth the listeners leave stays for the pools to the
    /// app and the peers. Past it, reads use the pool.
    pub fn app_affinity_cap(self, configured: usize) -> usize {
        cap(configured, self.budget() / 16)
    }
}

/// At least one connection, so a tiny limit still lets the node serve.
fn cap(configured: usize, share: u64) -> usize {
    let share = usize::try_from(share).unwrap_or(usize::MAX);
    configured.min(share).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_leave_room_for_the_app_and_peers() {
        let limits = FdLimits {
            soft: 256,
            hard: 256,
        };
        let public = limits.public_cap(10_000);
        let cluster = limits.cluster_cap(1024);
        let admin = limits.admin_cap(64);
        let affinity = limits.app_affinity_cap(1024);
        assert_eq!((public, cluster, admin, affinity), (96, 48, 24, 12));
        // What the three listeners and the client connections' own app
        // connections can hold together leaves the reserve and a
        // sixteenth of the budget for the pools' upstream and peer sockets.
        let held = (public + cluster + admin + affinity) as u64;
        assert!(held + FIXED_RESERVE + limits.budget() / 16 <= limits.soft);
    }

    #[test]
    fn a_large_limit_keeps_the_configured_cap() {
        let limits = FdLimits {
            soft: 1 << 20,
            hard: 1 << 20,
        };
        assert_eq!(limits.public_cap(10_000), 10_000);
    }

    #[test]
    fn a_tiny_limit_still_allows_one_connection() {
        let limits = FdLimits { soft: 10, hard: 10 };
        assert_eq!(limits.public_cap(10_000), 1);
    }
}
