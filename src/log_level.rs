//! Which log lines are written: `LITEGATE_LOG` when it is set, else the
//! config's `log.level`, else `info`. The filter sits behind a reload
//! handle so a SIGHUP can apply a changed `log.level` to the running
//! process; while `LITEGATE_LOG` is set it wins, at start and on reload.

use std::sync::OnceLock;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::{reload, Registry};

/// The environment variable that overrides `log.level`.
pub const ENV: &str = "LITEGATE_LOG";

/// The filter layer the CLI puts first on its subscriber.
pub type FilterLayer = reload::Layer<Targets, Registry>;

struct Running {
    handle: reload::Handle<Targets, Registry>,
    /// `LITEGATE_LOG` was set at start: a reload leaves the filter alone.
    env_wins: bool,
}

/// Set once, when the CLI installs its subscriber.
static RUNNING: OnceLock<Running> = OnceLock::new();

/// A filter such as `info` or `info,litegate=debug,hyper=warn`:
/// comma-separated directives, each a level (`trace`, `debug`, `info`,
/// `warn`, `error`, `off`) or `target=level`. A bare word that is not a
/// level is refused (the filter syntax would take it as a target, at
/// `trace`, and silence everything else). openraft narrates every
/// election at info: unless the filter names it, it is held at warn.
pub fn parse(spec: &str) -> Result<Targets, String> {
    const HINT: &str = "use trace, debug, info, warn, error or off, optionally per target (\"info,litegate=debug\")";
    if spec.trim().is_empty() {
        return Err(format!("is empty: {HINT}"));
    }
    for directive in spec.split(',') {
        let level = match directive.split_once('=') {
            Some((target, _)) if target.trim().is_empty() => {
                return Err(format!("{directive:?} names no target: {HINT}"))
            }
            Some((_, level)) => level,
            None => directive,
        };
        if level.trim().parse::<LevelFilter>().is_err() {
            return Err(format!("{directive:?} is not a level: {HINT}"));
        }
    }
    let targets = spec
        .parse::<Targets>()
        .map_err(|e| format!("{spec:?}: {e}; {HINT}"))?;
    Ok(hold_openraft_at_warn(spec, targets))
}

fn hold_openraft_at_warn(spec: &str, targets: Targets) -> Targets {
    if spec.contains("openraft") {
        return targets;
    }
    let warn = LevelFilter::WARN;
    let level = targets.default_level().map_or(warn, |l| l.min(warn));
    targets.with_target("openraft", level)
}

fn default_filter() -> Targets {
    hold_openraft_at_warn("", Targets::new().with_default(LevelFilter::INFO))
}

/// The filter for this process: `LITEGATE_LOG` when set, else
/// `configured` (the config's `log.level`; none for commands without a
/// config file), else `info`. The error, to be logged once logging is on,
/// says a `LITEGATE_LOG` that does not parse was replaced by `info`.
pub fn layer(configured: Option<&str>) -> (FilterLayer, Option<String>) {
    // Set but empty is unset, as `LITEGATE_LOG= litegate run` means.
    let env = std::env::var(ENV).ok().filter(|v| !v.trim().is_empty());
    let (targets, error) = match env.as_deref() {
        Some(spec) => match parse(spec) {
            Ok(targets) => (targets, None),
            Err(error) => (
                default_filter(),
                Some(format!("{ENV} {error}; logging at info")),
            ),
        },
        None => (
            configured
                .and_then(|spec| parse(spec).ok())
                .unwrap_or_else(default_filter),
            None,
        ),
    };
    let (layer, handle) = reload::Layer::new(targets);
    let _ = RUNNING.set(Running {
        handle,
        env_wins: env.is_some(),
    });
    (layer, error)
}

/// What a reload did with a changed `log.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replaced {
    /// Lines are filtered by it from now on.
    Applied,
    /// `LITEGATE_LOG` is set and keeps deciding.
    EnvWins,
    /// No filter layer was installed (a library user, a test).
    NotInstalled,
}

/// Makes `targets` (from [`parse`]) the running filter, unless
/// `LITEGATE_LOG` decides it.
pub fn replace(targets: Targets) -> Replaced {
    match RUNNING.get() {
        None => Replaced::NotInstalled,
        Some(running) if running.env_wins => Replaced::EnvWins,
        Some(running) => match running.handle.reload(targets) {
            Ok(()) => Replaced::Applied,
            // Only when the subscriber is gone, at exit.
            Err(_) => Replaced::NotInstalled,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_per_target_directives_parse() {
        for spec in [
            "info",
            "DEBUG",
            "warn,litegate=debug",
            "litegate=trace",
            "off",
        ] {
            assert!(parse(spec).is_ok(), "{spec}");
        }
    }

    #[test]
    fn a_word_that_is_no_level_is_refused() {
        for spec in ["", " ", "loud", "info,loud", "litegate=loud", "=debug"] {
            let error = parse(spec).unwrap_err();
            assert!(error.contains("trace, debug, info"), "{spec}: {error}");
        }
    }

    #[test]
    fn openraft_is_held_at_warn_unless_named() {
        let debug = parse("debug").unwrap();
        assert!(!debug.would_enable("openraft::core", &tracing::Level::INFO));
        assert!(debug.would_enable("litegate::proxy", &tracing::Level::DEBUG));
        let named = parse("debug,openraft=info").unwrap();
        assert!(named.would_enable("openraft::core", &tracing::Level::INFO));
        // A quieter default keeps openraft quieter too.
        let error = parse("error").unwrap();
        assert!(!error.would_enable("openraft::core", &tracing::Level::WARN));
    }
}
