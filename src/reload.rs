//! SIGHUP: read the config file again and take what can change while
//! requests are in flight (the request rules, the listeners' timeouts, the
//! public certificate, the log level); log every other changed key as
//! needing a restart. A config that does not load, validate, or whose
//! certificate does not load, changes nothing.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::log_level::{self, Replaced};
use crate::proxy::server::{LiveTimeouts, Timeouts};
use crate::proxy::Proxy;
use crate::tls::PublicCert;

/// The keys a reload applies. Every other changed key is logged as needing
/// a restart and left as it was.
pub const LIVE_KEYS: &[&str] = &[
    "routing.primary_paths",
    "routing.local_paths",
    "routing.upgrade_protocols",
    "routing.method_rule",
    "routing.path_precedence",
    "routing.primary_wait",
    "public.body_read_timeout",
    "public.header_read_timeout",
    "public.idle_timeout",
    "public.http2_keepalive_interval",
    "public.http2_keepalive_timeout",
    "public.tls_cert",
    "public.tls_key",
    "log.level",
];

pub struct Reloader {
    path: PathBuf,
    /// What the running node uses: the start-up config with every reload's
    /// live keys applied.
    running: Mutex<Config>,
    proxy: Arc<Proxy>,
    /// Present when the public listener terminates TLS.
    public_cert: Option<Arc<PublicCert>>,
    /// The three listeners' timeouts.
    timeouts: LiveTimeouts,
}

/// What one reload did, for its log lines (and tests).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub live: Vec<String>,
    pub need_restart: Vec<String>,
    /// The certificate files were read again (they may have changed on disk
    /// under the same names).
    pub certificate_reloaded: bool,
    /// Live keys that changed but that the environment decides
    /// (`log.level` while `LITEGATE_LOG` is set).
    pub overridden: Vec<String>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        running: Config,
        proxy: Arc<Proxy>,
        public_cert: Option<Arc<PublicCert>>,
        timeouts: LiveTimeouts,
    ) -> Self {
        Self {
            path,
            running: Mutex::new(running),
            proxy,
            public_cert,
            timeouts,
        }
    }

    /// Reads the file with the process's environment overrides, as at
    /// start, and logs the outcome. Never stops the node.
    pub fn reload_and_log(&self) {
        match self.reload(std::env::vars()) {
            Ok(applied) => {
                if !applied.overridden.is_empty() {
                    tracing::warn!(
                        keys = %applied.overridden.join(", "),
                        "config reload: these keys changed but {} is set and decides the log filter; it stays",
                        log_level::ENV
                    );
                }
                if !applied.need_restart.is_empty() {
                    tracing::warn!(
                        keys = %applied.need_restart.join(", "),
                        "config reload: these keys changed but take effect only after a restart; the running values stay"
                    );
                }
                tracing::info!(
                    path = %self.path.display(),
                    applied = %if applied.live.is_empty() { "-".to_owned() } else { applied.live.join(", ") },
                    certificate_reloaded = applied.certificate_reloaded,
                    "config reloaded"
                );
            }
            Err(error) => tracing::error!(
                path = %self.path.display(),
                %error,
                "config reload refused; the running config stays"
            ),
        }
    }

    /// One reload: all of the new config's live part, or none of it.
    pub fn reload(
        &self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Applied, String> {
        let new = Config::load(&self.path, env).map_err(|e| e.to_string())?;
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let changed = changed_keys(&running, &new);
        let (live, need_restart): (Vec<String>, Vec<String>) = changed
            .into_iter()
            .partition(|key| LIVE_KEYS.contains(&key.as_str()));
        // Parsed before anything changes (validation already did, so this
        // cannot fail; it is the filter to swap in below).
        let new_filter = if live.iter().any(|k| k == "log.level") {
            Some(log_level::parse(&new.log.level)?)
        } else {
            None
        };
        let tls_on = !new.public.tls_cert.is_empty();
        // Turning TLS on or off changes what the listener speaks: a restart.
        let certificate_reloaded = match (&self.public_cert, tls_on) {
            (Some(cert), true) => {
                cert.reload(&new.public.tls_cert, &new.public.tls_key)?;
                true
            }
            _ => false,
        };
        let need_restart = if self.public_cert.is_some() != tls_on {
            let mut keys = need_restart;
            keys.extend(
                live.iter()
                    .filter(|k| k.starts_with("public.tls_"))
                    .cloned(),
            );
            keys
        } else {
            need_restart
        };
        let mut live: Vec<String> = live
            .into_iter()
            .filter(|k| !need_restart.contains(k))
            .collect();
        let mut overridden = Vec::new();
        if let Some(filter) = new_filter {
            if log_level::replace(filter) == Replaced::EnvWins {
                live.retain(|k| k != "log.level");
                overridden.push("log.level".to_owned());
            }
        }
        apply_live(&mut running, &new, certificate_reloaded);
        self.proxy.reload_rules(&running);
        self.timeouts
            .store(Arc::new(Timeouts::from_config(&running)));
        Ok(Applied {
            live,
            need_restart,
            certificate_reloaded,
            overridden,
        })
    }
}

/// Copies the live keys from `new` into `running`, leaving the rest.
fn apply_live(running: &mut Config, new: &Config, certificate_reloaded: bool) {
    let (r, n) = (&mut running.routing, &new.routing);
    r.primary_paths.clone_from(&n.primary_paths);
    r.local_paths.clone_from(&n.local_paths);
    r.upgrade_protocols.clone_from(&n.upgrade_protocols);
    r.method_rule = n.method_rule;
    r.path_precedence = n.path_precedence;
    r.primary_wait = n.primary_wait;
    let (r, n) = (&mut running.public, &new.public);
    r.body_read_timeout = n.body_read_timeout;
    r.header_read_timeout = n.header_read_timeout;
    r.idle_timeout = n.idle_timeout;
    r.http2_keepalive_interval = n.http2_keepalive_interval;
    r.http2_keepalive_timeout = n.http2_keepalive_timeout;
    if certificate_reloaded {
        r.tls_cert.clone_from(&n.tls_cert);
        r.tls_key.clone_from(&n.tls_key);
    }
    running.log.level.clone_from(&new.log.level);
}

/// Every `section.key` whose value differs; a list (such as
/// `cluster.peers`) counts as one key.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(toml::Value::Table(old)), Ok(toml::Value::Table(new))) =
        (toml::Value::try_from(old), toml::Value::try_from(new))
    else {
        return Vec::new();
    };
    let empty = toml::map::Map::new();
    let mut keys = Vec::new();
    let sections: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for section in sections {
        let table = |t: &toml::map::Map<String, toml::Value>| match t.get(section) {
            Some(toml::Value::Table(t)) => t.clone(),
            _ => empty.clone(),
        };
        let (o, n) = (table(&old), table(&new));
        let names: std::collections::BTreeSet<&String> = o.keys().chain(n.keys()).collect();
        for name in names {
            if o.get(name) != n.get(name) {
                keys.push(format!("{section}.{name}"));
            }
        }
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_names_each_key_once() {
        let old = Config::default();
        let mut new = Config::default();
        new.routing.primary_paths = vec!["/admin/*".parse().unwrap()];
        new.upstream.timeout = crate::config::Duration::from_secs(9);
        new.node.id = Some(4);
        assert_eq!(
            changed_keys(&old, &new),
            ["node.id", "routing.primary_paths", "upstream.timeout"]
        );
        assert!(changed_keys(&old, &old.clone()).is_empty());
    }

    #[test]
    fn apply_live_leaves_restart_keys_alone() {
        let mut running = Config::default();
        let mut new = Config::default();
        new.routing.local_paths = vec!["/static/*".parse().unwrap()];
        new.upstream.url = "http://127.0.0.1:9999".into();
        new.log.level = "debug".into();
        apply_live(&mut running, &new, false);
        assert_eq!(running.routing.local_paths, new.routing.local_paths);
        assert_eq!(running.log.level, "debug");
        assert_eq!(running.upstream.url, Config::default().upstream.url);
    }
}
