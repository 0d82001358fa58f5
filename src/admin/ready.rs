//! Readiness for load balancers and orchestrators (docs/design.md §6):
//! `/readyz` says whether reads can be served here, `/readyz/writes`
//! whether a write sent here can be placed now. Neither depends on the
//! other: a cluster with no primary still serves reads.

use std::time::{Duration, Instant};

use crate::config::PrimaryMode;
use crate::primary::Role;

use super::AdminState;

/// `/readyz`: the local app accepts connections (a witness has none and
/// is ready while it runs) and, with `max_lag`, this node is not further
/// behind the primary than that.
pub fn reads(state: &AdminState, max_lag: Option<Duration>) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    if !state.config.node.witness && !state.health.is_up() {
        problems.push("the app does not accept connections".to_owned());
    }
    if let Some(max_lag) = max_lag {
        match &state.position {
            None => problems.push(
                "max_lag needs litefs.mount: without LiteFS this node knows no replication position"
                    .to_owned(),
            ),
            Some(position) => {
                let lag = position.lag();
                if lag > max_lag {
                    problems.push(format!(
                        "replication lag {} is over max_lag {}",
                        humantime::format_duration(round_ms(lag)),
                        humantime::format_duration(max_lag)
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// `/readyz/writes`: a write sent to this node now would be placed — this
/// node may write (and its app accepts connections), or another node is
/// known as the primary to send it to.
pub fn writes(state: &AdminState) -> Result<(), Vec<String>> {
    let primary = state.source.watch().current();
    let app_up = state.config.node.witness || state.health.is_up();
    let here_writes =
        state.config.primary.mode == PrimaryMode::Dev || primary.may_write(Instant::now());
    let problem = if here_writes {
        (!app_up).then_some("this node is the primary but its app does not accept connections")
    } else {
        match (&primary.primary, primary.role) {
            (None, _) => Some("no primary is known"),
            (Some(_), Role::Primary) => {
                Some("this node is the primary but may not write now (its lease lapsed, or a handoff is under way)")
            }
            (Some(p), _) if **p == *state.config.node.name => {
                Some("this node is named the primary but does not hold the role yet")
            }
            (Some(_), _) => None,
        }
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(vec![problem.to_owned()]),
    }
}

/// The `max_lag` query parameter, if given.
pub fn max_lag(query: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(value) = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "max_lag")
            .map(|(_, v)| v.into_owned())
    }) else {
        return Ok(None);
    };
    value
        .parse::<crate::config::Duration>()
        .map(|d| Some(d.get()))
        .map_err(|e| format!("max_lag: {e}"))
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_lag_parameter() {
        assert_eq!(max_lag(None), Ok(None));
        assert_eq!(max_lag(Some("x=1")), Ok(None));
        assert_eq!(
            max_lag(Some("max_lag=5s")),
            Ok(Some(Duration::from_secs(5)))
        );
        assert_eq!(
            max_lag(Some("max_lag=250ms&x=1")),
            Ok(Some(Duration::from_millis(250)))
        );
        assert!(max_lag(Some("max_lag=soon")).is_err());
    }
}
