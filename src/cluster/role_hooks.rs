//! Telling the app its role (docs/design.md §4, `[hooks]`), for work only the
//! primary may do:
//!
//! - `role_file` is rewritten atomically: `primary`, or `replica <name>`
//!   (just `replica` while no primary is known);
//! - `on_promote` / `on_demote` run through `sh -c` with `LITEGATE_ROLE`,
//!   `LITEGATE_TERM` and `LITEGATE_PRIMARY` set.
//!
//! Hooks run on their own task, one at a time and in order; a hook that
//! fails or hangs is logged and never holds up routing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::HooksConfig;
use crate::durable;
use crate::primary::{PrimaryState, PrimaryWatch, Role};
use crate::shutdown::Shutdown;

/// A hook still running after this is killed and logged.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

pub fn spawn(hooks: &HooksConfig, mut watch: PrimaryWatch, mut stop: Shutdown) {
    if hooks.role_file.is_empty() && hooks.on_promote.is_empty() && hooks.on_demote.is_empty() {
        return;
    }
    let hooks = hooks.clone();
    tokio::spawn(async move {
        let mut last: Option<(Role, Option<String>)> = None;
        loop {
            let state = watch.current();
            let seen = (state.role, state.primary.as_deref().map(str::to_owned));
            if last.as_ref() != Some(&seen) {
                let was_primary = last.as_ref().is_some_and(|(r, _)| *r == Role::Primary);
                let is_primary = state.role == Role::Primary;
                if !hooks.role_file.is_empty() {
                    write_role_file(&hooks.role_file, &state);
                }
                if is_primary && !was_primary && !hooks.on_promote.is_empty() {
                    run_hook("on_promote", &hooks.on_promote, &state).await;
                }
                if was_primary && !is_primary && !hooks.on_demote.is_empty() {
                    run_hook("on_demote", &hooks.on_demote, &state).await;
                }
                last = Some(seen);
            }
            tokio::select! {
                _ = watch.changed_before(Instant::now() + Duration::from_secs(3600)) => {}
                () = stop.begun() => break,
            }
        }
    });
}

fn role_line(state: &PrimaryState) -> String {
    match (state.role, state.primary.as_deref()) {
        (Role::Primary, _) => "primary\n".to_owned(),
        (_, Some(primary)) => format!("replica {primary}\n"),
        (_, None) => "replica\n".to_owned(),
    }
}

fn write_role_file(path: &str, state: &PrimaryState) {
    if let Err(error) = durable::replace_file(&PathBuf::from(path), role_line(state).as_bytes()) {
        tracing::error!(%error, path, "cannot write hooks.role_file");
    }
}

async fn run_hook(key: &'static str, command: &str, state: &PrimaryState) {
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("LITEGATE_ROLE", state.role.as_str())
        .env("LITEGATE_TERM", state.term.to_string())
        .env("LITEGATE_PRIMARY", state.primary.as_deref().unwrap_or(""))
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(HOOK_TIMEOUT, child).await {
        Ok(Ok(status)) if status.success() => {
            tracing::info!(hook = key, term = state.term, "hook ran");
        }
        Ok(Ok(status)) => tracing::warn!(hook = key, %status, "hook failed (routing goes on)"),
        Ok(Err(error)) => {
            tracing::warn!(hook = key, %error, "hook could not start (routing goes on)")
        }
        Err(_) => tracing::warn!(
            hook = key,
            "hook still running after {}; killed (routing goes on)",
            humantime::format_duration(HOOK_TIMEOUT)
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn role_file_names_the_primary() {
        let mut state = PrimaryState::unknown();
        assert_eq!(role_line(&state), "replica\n");
        state.primary = Some(Arc::from("app-2"));
        state.role = Role::Replica;
        assert_eq!(role_line(&state), "replica app-2\n");
        state.role = Role::Primary;
        assert_eq!(role_line(&state), "primary\n");
    }
}
