//! Where a classified request goes, given who the primary is: one pure
//! function ([`route`]), so every routing rule is in one place and tested
//! on its own. Whether a write may then really pass to this node's app is
//! the permit's call (`primary::WritePermit`), taken after routing.

use std::time::Instant;

use crate::config::OnReplica;
use crate::primary::{PrimaryState, Role};

/// Where a request goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A read or a `local_paths` request: this node's app, no permit.
    Local,
    /// A write, and this node is the primary inside its lease: this node's
    /// app, under a write permit.
    LocalWrite,
    /// A write for the named primary's litegate.
    Forward(String),
    /// Answered with `fly-replay: instance=NAME`.
    FlyReplay(String),
    /// Answered with a `307` to the named primary's public URL.
    Redirect(String),
    /// No node may take the write now (no primary known, or this node's
    /// lease lapsed): wait for a change, up to `routing.primary_wait`.
    Hold,
}

/// A primary named by a peer that refused a write (`421 not-primary`),
/// newer than this node's own view: tried next, so a node whose view lags
/// does not bounce off the old primary until its own view catches up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    pub term: u64,
    pub primary: String,
}

/// Where a request that does (`needs_primary`) or does not need the primary
/// goes, from this node (`me`) under `state` at `now`.
pub fn route(
    needs_primary: bool,
    state: &PrimaryState,
    now: Instant,
    me: &str,
    on_replica: OnReplica,
    hint: Option<&Hint>,
) -> Route {
    if !needs_primary {
        return Route::Local;
    }
    if state.role == Role::Primary {
        // A leader whose lease lapsed may already be deposed: it holds the
        // write rather than pass it or send it to a guess.
        return if state.may_write(now) {
            Route::LocalWrite
        } else {
            Route::Hold
        };
    }
    let hinted = hint
        .filter(|h| h.term >= state.term && h.primary != me)
        .map(|h| h.primary.as_str());
    let known = state.primary.as_deref().filter(|p| *p != me);
    let Some(primary) = hinted.or(known) else {
        return Route::Hold;
    };
    let primary = primary.to_owned();
    match on_replica {
        OnReplica::Forward => Route::Forward(primary),
        OnReplica::FlyReplay => Route::FlyReplay(primary),
        OnReplica::Redirect => Route::Redirect(primary),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn state(role: Role, term: u64, primary: Option<&str>, lease: Option<Instant>) -> PrimaryState {
        PrimaryState {
            role,
            term,
            primary: primary.map(Arc::from),
            lease_deadline: lease,
        }
    }

    fn at(state: &PrimaryState, needs_primary: bool, hint: Option<&Hint>) -> Route {
        route(
            needs_primary,
            state,
            Instant::now(),
            "me",
            OnReplica::Forward,
            hint,
        )
    }

    #[test]
    fn reads_stay_here_whoever_the_primary_is() {
        for role in [Role::Primary, Role::Replica, Role::Unknown] {
            assert_eq!(at(&state(role, 1, None, None), false, None), Route::Local);
        }
    }

    #[test]
    fn writes_go_to_the_primary() {
        let later = Some(Instant::now() + Duration::from_secs(60));
        let lapsed = Some(Instant::now() - Duration::from_millis(1));
        let primary_here = state(Role::Primary, 3, Some("me"), later);
        assert_eq!(at(&primary_here, true, None), Route::LocalWrite);
        let lease_lapsed = state(Role::Primary, 3, Some("me"), lapsed);
        assert_eq!(at(&lease_lapsed, true, None), Route::Hold);
        let replica = state(Role::Replica, 3, Some("b"), None);
        assert_eq!(at(&replica, true, None), Route::Forward("b".into()));
        let unknown = state(Role::Unknown, 3, None, None);
        assert_eq!(at(&unknown, true, None), Route::Hold);
        // A view naming this node while it is not the primary is no target.
        let confused = state(Role::Replica, 3, Some("me"), None);
        assert_eq!(at(&confused, true, None), Route::Hold);
    }

    #[test]
    fn a_newer_hint_wins_an_older_one_does_not() {
        let replica = state(Role::Replica, 3, Some("b"), None);
        let newer = Hint {
            term: 4,
            primary: "c".into(),
        };
        assert_eq!(at(&replica, true, Some(&newer)), Route::Forward("c".into()));
        let older = Hint {
            term: 2,
            primary: "c".into(),
        };
        assert_eq!(at(&replica, true, Some(&older)), Route::Forward("b".into()));
        let unknown = state(Role::Unknown, 3, None, None);
        assert_eq!(at(&unknown, true, Some(&newer)), Route::Forward("c".into()));
        let names_me = Hint {
            term: 9,
            primary: "me".into(),
        };
        assert_eq!(at(&unknown, true, Some(&names_me)), Route::Hold);
        // The primary itself never follows a hint: its lease decides.
        let primary_here = state(
            Role::Primary,
            3,
            Some("me"),
            Some(Instant::now() + Duration::from_secs(60)),
        );
        assert_eq!(at(&primary_here, true, Some(&newer)), Route::LocalWrite);
    }

    #[test]
    fn replay_and_redirect_modes_name_the_primary() {
        let replica = state(Role::Replica, 3, Some("b"), None);
        let now = Instant::now();
        assert_eq!(
            route(true, &replica, now, "me", OnReplica::FlyReplay, None),
            Route::FlyReplay("b".into())
        );
        assert_eq!(
            route(true, &replica, now, "me", OnReplica::Redirect, None),
            Route::Redirect("b".into())
        );
    }
}
