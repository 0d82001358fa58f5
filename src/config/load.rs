//! Reading a config file, overlaying `LITEGATE_<SECTION>_<KEY>` variables and
//! turning every failure into a message that names the key.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::{validate, Config};

/// The sections of docs/design.md §9, longest first so `LITEGATE_CONSISTENCY_…` is
/// never read as a shorter section's key.
const SECTIONS: &[&str] = &[
    "consistency",
    "upstream",
    "routing",
    "primary",
    "cluster",
    "public",
    "litefs",
    "admin",
    "lease",
    "hooks",
    "log",
    "node",
];

/// Variables with the `LITEGATE_` prefix that are not config keys.
const NOT_KEYS: &[&str] = &["LITEGATE_CONFIG", "LITEGATE_LOG"];

/// Where a configuration value came from, so an error can point there.
#[derive(Debug, Clone)]
pub enum Origin {
    File(PathBuf),
    Env(String),
    Flags,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(p) => write!(f, "in {}", p.display()),
            Origin::Env(var) => write!(f, "set by the environment variable {var}"),
            Origin::Flags => f.write_str("from the command line"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config key `{key}` ({origin}): {message}")]
    Key {
        key: String,
        origin: Origin,
        message: String,
    },
}

impl ConfigError {
    pub fn key(key: impl Into<String>, origin: &Origin, message: impl Into<String>) -> Self {
        ConfigError::Key {
            key: key.into(),
            origin: origin.clone(),
            message: message.into(),
        }
    }
}

pub(super) fn load(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut table: Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
    let file_origin = Origin::File(path.to_owned());
    let overrides = overlay_env(&mut table, env)?;
    let config = deserialize(table, &overrides, &file_origin)?;
    // Cross-key checks report the file, unless every key involved came from
    // the environment; the key name is what matters most.
    validate::validate(&config, &file_origin).map_err(|e| match e {
        ConfigError::Key { key, message, .. } if overrides.contains_key(&key) => ConfigError::Key {
            origin: Origin::Env(overrides[&key].var.clone()),
            key,
            message,
        },
        other => other,
    })?;
    Ok(config)
}

struct Override {
    var: String,
    raw: String,
}

/// Writes each `LITEGATE_<SECTION>_<KEY>` into the table. A value that parses
/// as a TOML value (a number, a bool, an array, an inline table) is taken as
/// one; anything else is a string.
fn overlay_env(
    table: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, Override>, ConfigError> {
    let mut overrides = BTreeMap::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix("LITEGATE_") else {
            continue;
        };
        if NOT_KEYS.contains(&var.as_str()) {
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        let Some((section, key)) = SECTIONS.iter().find_map(|s| {
            lower
                .strip_prefix(s)
                .and_then(|k| k.strip_prefix('_'))
                .filter(|k| !k.is_empty())
                .map(|k| (*s, k.to_owned()))
        }) else {
            // Not ours to refuse: other tools (test harnesses, wrappers)
            // use the prefix too. A misspelt key in a real section is still
            // an error, below.
            tracing::warn!(variable = %var, "ignoring an environment variable that names no config section");
            continue;
        };
        let section_table = table
            .entry(section)
            .or_insert_with(|| Value::Table(Table::new()));
        let Value::Table(section_table) = section_table else {
            return Err(ConfigError::key(
                section,
                &Origin::Env(var),
                "must be a table ([section])",
            ));
        };
        section_table.insert(key.clone(), parse_env_value(&raw));
        overrides.insert(format!("{section}.{key}"), Override { var, raw });
    }
    Ok(overrides)
}

fn parse_env_value(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

/// Deserializes the merged table. An environment value read as a number or a
/// bool where the key wants a string (a node named `123`) is retried as the
/// string it was written as.
fn deserialize(
    mut table: Table,
    overrides: &BTreeMap<String, Override>,
    file_origin: &Origin,
) -> Result<Config, ConfigError> {
    for _ in 0..=overrides.len() {
        let result: Result<Config, _> =
            serde_path_to_error::deserialize(Value::Table(table.clone()));
        let err = match result {
            Ok(config) => return Ok(config),
            Err(err) => err,
        };
        let key = err.path().to_string();
        let message = err.inner().to_string();
        if let Some(o) = overrides.get(&key) {
            let (section, name) = key.split_once('.').expect("override keys are section.key");
            let slot = table
                .get_mut(section)
                .and_then(Value::as_table_mut)
                .and_then(|t| t.get_mut(name));
            if let Some(slot) = slot {
                if !slot.is_str() {
                    *slot = Value::String(o.raw.clone());
                    continue;
                }
            }
            return Err(ConfigError::key(key, &Origin::Env(o.var.clone()), message));
        }
        return Err(describe_serde_error(key, message, file_origin));
    }
    unreachable!("each retry turns one more override into a string")
}

/// serde says "unknown field `x`, expected one of …"; the path already ends
/// in the unknown key, so say what to do instead.
fn describe_serde_error(path: String, message: String, origin: &Origin) -> ConfigError {
    let key = if path.is_empty() || path == "." {
        "(top level)".to_owned()
    } else {
        path
    };
    // toml appends "\nin `section`", which the key already says.
    let message = message.split('\n').next().unwrap_or_default().to_owned();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let expected = rest.split_once('`').map(|(_, e)| e).unwrap_or_default();
        let hint = expected
            .trim_start_matches(',')
            .trim()
            .replace("expected one of", "the keys allowed here are")
            .replace("expected", "the key allowed here is");
        return ConfigError::key(
            key,
            origin,
            format!("unknown key: remove it or fix its spelling ({hint})"),
        );
    }
    ConfigError::key(key, origin, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!(
            "litegate-config-test-{}-{}",
            std::process::id(),
            text.len() + env.len() * 1000
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("litegate.toml");
        std::fs::write(&path, text).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let result = load(&path, env);
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    const DEV: &str = "[primary]\nmode = \"dev\"\n";

    #[test]
    fn unknown_key_is_named() {
        let err = load_str("[public]\nlisen = \"0.0.0.0:1\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`public.lisen`"), "{err}");
        assert!(err.contains("listen"), "{err}");
    }

    #[test]
    fn bad_duration_is_named() {
        let err = load_str(&format!("{DEV}[upstream]\ntimeout = \"5 parsecs\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`upstream.timeout`"), "{err}");
        assert!(err.contains("\"5s\""), "{err}");
    }

    #[test]
    fn huge_duration_is_refused_with_the_key() {
        let err = load_str(
            &format!("{DEV}[routing]\nprimary_wait = \"100000000000years\"\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`routing.primary_wait`"), "{err}");
        assert!(err.contains("at most \"1h\""), "{err}");
        let err = load_str(
            DEV,
            &[("LITEGATE_ROUTING_UPGRADE_PROTOCOLS", "websocket, h2c")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`routing.upgrade_protocols`"), "{err}");
        assert!(err.contains("LITEGATE_ROUTING_UPGRADE_PROTOCOLS"), "{err}");
    }

    #[test]
    fn env_overrides_and_lists() {
        let c = load_str(
            DEV,
            &[
                ("LITEGATE_UPSTREAM_URL", "http://127.0.0.1:9000"),
                ("LITEGATE_ROUTING_PRIMARY_PATHS", "/oauth/*, /session"),
                ("LITEGATE_NODE_NAME", "123"),
                ("LITEGATE_UPSTREAM_TIMEOUT", "250ms"),
                ("PATH", "/usr/bin"),
            ],
        )
        .unwrap();
        assert_eq!(c.upstream.url, "http://127.0.0.1:9000");
        assert_eq!(c.routing.primary_paths.len(), 2);
        assert!(c.routing.primary_paths[0].matches("/oauth/cb"));
        assert_eq!(c.node.name, "123");
        assert_eq!(c.upstream.timeout.get().as_millis(), 250);
    }

    #[test]
    fn env_error_names_the_variable() {
        let err = load_str(DEV, &[("LITEGATE_UPSTREAM_TIMEOUT", "soon")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("LITEGATE_UPSTREAM_TIMEOUT"), "{err}");
        let err = load_str(DEV, &[("LITEGATE_UPSTREAM_URL", "ftp://x")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("LITEGATE_UPSTREAM_URL"), "{err}");
        let err = load_str(DEV, &[("LITEGATE_UPSTREAM_URLL", "http://x:1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("LITEGATE_UPSTREAM_URLL"), "{err}");
        assert!(load_str(DEV, &[("LITEGATE_BIN", "/usr/bin/litegate")]).is_ok());
    }

    #[test]
    fn effective_config_round_trips() {
        let c = load_str(DEV, &[]).unwrap();
        let text = c.to_toml();
        assert!(text.contains("mode = \"dev\""), "{text}");
        let again: Config = toml::from_str(&text).unwrap();
        assert_eq!(again.upstream.timeout, c.upstream.timeout);
    }
}
