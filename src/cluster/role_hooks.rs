//! Telling the app its role (docs/design.md §4, `[hooks]`), for work only the
//! primary may do:
//!
//! - `role_file` is rewritten atomically: `primary`, or `replica <name>`
//!   (just `replica` while no primary is known), as soon as the role changes —
//!   never after a hook;
//! - `on_promote` / `on_demote` run through `sh -c` with `LITEGATE_ROLE`,
//!   `LITEGATE_TERM` and `LITEGATE_PRIMARY` set, in a process group of their
//!   own.
//!
//! Hooks run one at a time, in order, beside (not before) the role file. A
//! hook still running when the role changes again is stale — it would do
//! primary-only work on a replica, or the reverse — so its whole process
//! group is killed before the next hook starts; one that hangs is killed
//! after [`HOOK_TIMEOUT`]. Either way it is logged and never holds up routing.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::config::HooksConfig;
use crate::durable;
use crate::primary::{PrimaryState, PrimaryWatch, Role};
use crate::shutdown::Shutdown;

/// A hook still running after this is killed and logged.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

pub fn spawn(hooks: &HooksConfig, watch: PrimaryWatch, stop: Shutdown) {
    if hooks.role_file.is_empty() && hooks.on_promote.is_empty() && hooks.on_demote.is_empty() {
        return;
    }
    tokio::spawn(follow(hooks.clone(), watch, stop));
}

async fn follow(hooks: HooksConfig, mut watch: PrimaryWatch, mut stop: Shutdown) {
    let mut last: Option<(Role, Option<String>)> = None;
    let mut running: Option<RunningHook> = None;
    loop {
        let state = watch.current();
        let seen = (state.role, state.primary.as_deref().map(str::to_owned));
        if last.as_ref() != Some(&seen) {
            let was_primary = last.as_ref().is_some_and(|(r, _)| *r == Role::Primary);
            let is_primary = state.role == Role::Primary;
            if !hooks.role_file.is_empty() {
                write_role_file(&hooks.role_file, &state);
            }
            if was_primary != is_primary {
                if let Some(stale) = running.take() {
                    stale.stop("the role changed again").await;
                }
                let (key, command) = if is_primary {
                    ("on_promote", &hooks.on_promote)
                } else {
                    ("on_demote", &hooks.on_demote)
                };
                if !command.is_empty() {
                    running = RunningHook::start(key, command, &state);
                }
            }
            last = Some(seen);
        }
        let far = Instant::now() + Duration::from_secs(3600);
        let deadline = running.as_ref().map_or(far, |r| r.deadline);
        tokio::select! {
            _ = watch.changed_before(far) => {}
            status = wait(&mut running) => {
                if let Some(hook) = running.take() {
                    hook.finished(status);
                }
            }
            () = tokio::time::sleep_until(deadline.into()), if running.is_some() => {
                if let Some(hook) = running.take() {
                    let why = format!("still running after {}", humantime::format_duration(HOOK_TIMEOUT));
                    hook.stop(&why).await;
                }
            }
            () = stop.begun() => break,
        }
    }
    if let Some(hook) = running.take() {
        hook.stop("litegate is stopping").await;
    }
}

/// Waits for the running hook, or forever when there is none.
async fn wait(running: &mut Option<RunningHook>) -> std::io::Result<ExitStatus> {
    match running {
        Some(hook) => hook.child.wait().await,
        None => std::future::pending().await,
    }
}

struct RunningHook {
    key: &'static str,
    term: u64,
    child: tokio::process::Child,
    deadline: Instant,
}

impl RunningHook {
    fn start(key: &'static str, command: &str, state: &PrimaryState) -> Option<Self> {
        let spawned = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("LITEGATE_ROLE", state.role.as_str())
            .env("LITEGATE_TERM", state.term.to_string())
            .env("LITEGATE_PRIMARY", state.primary.as_deref().unwrap_or(""))
            // Its own group, so stopping it reaches what `sh` started too.
            .process_group(0)
            .kill_on_drop(true)
            .spawn();
        match spawned {
            Ok(child) => Some(Self {
                key,
                term: state.term,
                child,
                deadline: Instant::now() + HOOK_TIMEOUT,
            }),
            Err(error) => {
                tracing::warn!(hook = key, %error, "hook could not start (routing goes on)");
                None
            }
        }
    }

    fn finished(self, status: std::io::Result<ExitStatus>) {
        let key = self.key;
        match status {
            Ok(status) if status.success() => {
                tracing::info!(hook = key, term = self.term, "hook ran");
            }
            Ok(status) => tracing::warn!(hook = key, %status, "hook failed (routing goes on)"),
            Err(error) => tracing::warn!(hook = key, %error, "hook lost (routing goes on)"),
        }
    }

    /// Kills the hook's process group and reaps `sh`.
    async fn stop(mut self, why: &str) {
        if let Some(pid) = self.child.id() {
            // The group id is the pid (`process_group(0)`). Signalling a
            // group needs `kill(2)` with a negative pid, which std does not
            // offer without `unsafe`; procps' kill does it for us.
            let group = format!("-{pid}");
            let killed = tokio::process::Command::new("kill")
                .args(["-KILL", "--", &group])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await;
            if !killed.is_ok_and(|s| s.success()) {
                tracing::warn!(
                    hook = self.key,
                    pid,
                    "could not signal the hook's process group; killing only its shell"
                );
            }
        }
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        tracing::warn!(
            hook = self.key,
            term = self.term,
            "hook killed: {why} (routing goes on)"
        );
    }
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
#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::primary::PrimaryCell;

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

    fn leader(term: u64) -> PrimaryState {
        PrimaryState {
            role: Role::Primary,
            term,
            primary: Some(Arc::from("app-1")),
            lease_deadline: None,
        }
    }

    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..100 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("not within 5 s: {what}");
    }

    fn process_gone(pid: &str) -> bool {
        // Gone, or a zombie waiting for whoever inherited it to reap it.
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
    }

    /// Regression (issue 13): `on_promote` was awaited before the next role
    /// change was looked at, so a node demoted during a slow hook kept
    /// `role_file = primary` until the hook ended (up to 60 s), and the hook
    /// went on doing primary-only work on a replica.
    #[tokio::test]
    async fn a_demotion_during_a_slow_hook_rewrites_the_role_file_and_kills_the_hook() {
        let dir = std::env::temp_dir().join(format!("litegate-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let role_file = dir.join("role");
        let sleeper_pid = dir.join("sleeper.pid");
        let _ = std::fs::remove_file(&sleeper_pid);
        let hooks = HooksConfig {
            role_file: role_file.display().to_string(),
            // The sleep is a child of sh, not exec'd: killing only the
            // shell would leave it running.
            on_promote: format!("sleep 30 & echo $! > {}; wait", sleeper_pid.display()),
            on_demote: String::new(),
        };
        let cell = PrimaryCell::new(PrimaryState::unknown());
        let (trigger, stop) = crate::shutdown::channel();
        let task = tokio::spawn(follow(hooks, cell.watch(), stop));

        cell.publish(leader(3));
        eventually("the promote hook started", || {
            sleeper_pid.exists()
                && std::fs::read_to_string(&sleeper_pid).is_ok_and(|s| !s.trim().is_empty())
        })
        .await;
        assert_eq!(std::fs::read_to_string(&role_file).unwrap(), "primary\n");
        let sleeper = std::fs::read_to_string(&sleeper_pid)
            .unwrap()
            .trim()
            .to_owned();

        cell.publish(PrimaryState {
            role: Role::Replica,
            term: 4,
            primary: Some(Arc::from("app-2")),
            lease_deadline: None,
        });
        eventually("role_file says replica", || {
            std::fs::read_to_string(&role_file).is_ok_and(|s| s == "replica app-2\n")
        })
        .await;
        eventually("the stale hook's process group is gone", || {
            process_gone(&sleeper)
        })
        .await;

        trigger.fire();
        task.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
