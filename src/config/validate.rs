//! Checks that need more than one key, or more than a value's syntax.

use std::collections::HashSet;

use super::{Config, ConfigError, Origin, PrimaryMode};

pub(super) fn validate(c: &Config, origin: &Origin) -> Result<(), ConfigError> {
    let err = |key: &str, msg: String| -> Result<(), ConfigError> {
        Err(ConfigError::key(key, origin, msg))
    };

    if let Err(m) = upstream_url(&c.upstream.url) {
        return err("upstream.url", m);
    }
    for (key, d) in [
        ("upstream.connect_timeout", c.upstream.connect_timeout),
        ("upstream.timeout", c.upstream.timeout),
        ("upstream.health_interval", c.upstream.health_interval),
        ("public.header_read_timeout", c.public.header_read_timeout),
        ("consistency.wait_timeout", c.consistency.wait_timeout),
    ] {
        if d.get().is_zero() {
            return err(key, "must be longer than 0, e.g. \"5s\"".into());
        }
    }
    if c.upstream.max_concurrency == 0 {
        return err(
            "upstream.max_concurrency",
            "must be at least 1 (it bounds requests in flight to the app)".into(),
        );
    }
    if c.public.max_header_bytes < 1024 {
        return err(
            "public.max_header_bytes",
            format!(
                "{} is too small for real browsers: use at least 1024 (default 65536)",
                c.public.max_header_bytes
            ),
        );
    }
    if c.public.tls_cert.is_empty() != c.public.tls_key.is_empty() {
        return err(
            "public.tls_cert",
            "set both public.tls_cert and public.tls_key to terminate TLS, or neither".into(),
        );
    }
    if c.node.name.is_empty() {
        return err("node.name", "must not be empty".into());
    }

    if !c.litefs.mount.is_empty() {
        let api: Result<http::Uri, _> = c.litefs.api.parse();
        if !matches!(api.as_ref().map(|u| u.scheme_str()), Ok(Some("http"))) {
            return err(
                "litefs.api",
                format!("{:?} is not LiteFS's API URL: write http://HOST:PORT, e.g. \"http://127.0.0.1:20202\"", c.litefs.api),
            );
        }
        if c.litefs.db.is_empty() || c.litefs.db.contains('/') {
            return err(
                "litefs.db",
                "the database's file name in the LiteFS mount, e.g. \"db.sqlite3\"".into(),
            );
        }
    }
    if c.primary.mode == PrimaryMode::Dev {
        return Ok(());
    }

    let Some(id) = c.node.id else {
        return err(
            "node.id",
            format!(
                "required when primary.mode = \"{}\": give every node a unique number that is never reused, e.g. `id = 1`",
                c.primary.mode.as_str()
            ),
        );
    };

    let [lo, hi] = c.cluster.election_timeout;
    if lo >= hi {
        return err(
            "cluster.election_timeout",
            format!("the range [\"{lo}\", \"{hi}\"] is empty: write [min, max] with min < max, e.g. [\"150ms\", \"300ms\"]"),
        );
    }
    if c.cluster.heartbeat >= lo {
        return err(
            "cluster.heartbeat",
            format!("{} is not shorter than the election timeout's minimum {lo}: followers would campaign between heartbeats; make it a third of it or less", c.cluster.heartbeat),
        );
    }

    let mut ids = HashSet::new();
    let mut names = HashSet::new();
    for (i, p) in c.cluster.peers.iter().enumerate() {
        let key = format!("cluster.peers[{i}]");
        if !ids.insert(p.id) {
            return err(
                &key,
                format!("peer id {} appears twice: ids must be unique", p.id),
            );
        }
        if p.name.is_empty() || !names.insert(p.name.as_str()) {
            return err(
                &key,
                format!(
                    "peer name {:?} is empty or appears twice: names must be unique",
                    p.name
                ),
            );
        }
        host_port(&p.cluster).map_err(|m| ConfigError::key(format!("{key}.cluster"), origin, m))?;
        if p.witness {
            if c.primary.mode != PrimaryMode::Raft {
                return err(
                    &format!("{key}.witness"),
                    "witnesses only vote in Raft elections: set primary.mode = \"raft\" or drop the witness".into(),
                );
            }
        } else {
            public_url(&p.public_url)
                .map_err(|m| ConfigError::key(format!("{key}.public_url"), origin, m))?;
        }
    }
    match c.cluster.peers.iter().find(|p| p.id == id) {
        None => {
            return err(
                "cluster.peers",
                format!("this node (node.id = {id}) is not in the list: every node lists all nodes, itself included"),
            )
        }
        Some(me) if me.name != c.node.name => {
            return err(
                "node.name",
                format!("{:?} differs from the name {:?} that cluster.peers gives node {id}: make them equal", c.node.name, me.name),
            )
        }
        Some(me) if me.witness != c.node.witness => {
            return err(
                "node.witness",
                format!("is {} but cluster.peers gives node {id} witness = {}: make them agree", c.node.witness, me.witness),
            )
        }
        Some(_) => {}
    }
    if c.primary.mode == PrimaryMode::Raft {
        let witnesses = c.cluster.peers.iter().filter(|p| p.witness).count();
        let app_nodes = c.cluster.peers.len() - witnesses;
        if c.cluster.peers.len() == 2 && witnesses == 0 {
            return err(
                "cluster.peers",
                "two Raft voters cannot fail over: losing either one loses the majority. Use primary.mode = \"static\" for two nodes (its promote needs both nodes up), or add a third voter — a witness (`witness = true`, no app) is enough".into(),
            );
        }
        if app_nodes == 0 {
            return err(
                "cluster.peers",
                "every node is a witness: at least one node must run the app".into(),
            );
        }
    }

    if c.primary.mode == PrimaryMode::Static
        && !c
            .cluster
            .peers
            .iter()
            .any(|p| p.name == c.primary.static_primary)
    {
        return err(
            "primary.static",
            format!("{:?} is not the name of any node in cluster.peers: name the node that starts as primary", c.primary.static_primary),
        );
    }

    let authenticated = !c.cluster.secret_file.is_empty() || !c.cluster.tls_cert.is_empty();
    if !authenticated && !c.cluster.insecure && !c.cluster.listen.0.ip().is_loopback() {
        return err(
            "cluster.listen",
            format!("{} is reachable from other hosts but cluster traffic is not authenticated: set cluster.secret_file (or tls_ca, tls_cert and tls_key), or set cluster.insecure = true if the network is private on purpose", c.cluster.listen.0),
        );
    }
    let tls = [&c.cluster.tls_ca, &c.cluster.tls_cert, &c.cluster.tls_key];
    if tls.iter().any(|s| !s.is_empty()) && tls.iter().any(|s| s.is_empty()) {
        return err(
            "cluster.tls_cert",
            "mutual TLS needs all three of cluster.tls_ca, cluster.tls_cert and cluster.tls_key"
                .into(),
        );
    }
    if c.primary.mode == PrimaryMode::Litefs && c.litefs.mount.is_empty() {
        return err(
            "litefs.mount",
            "required when primary.mode = \"litefs\": the LiteFS FUSE mount directory, e.g. \"/litefs\"".into(),
        );
    }
    Ok(())
}

/// The app: plain HTTP on a host and port, no path (the request's own path is
/// sent as it came).
pub fn upstream_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url.parse().map_err(|_| {
        format!(
            "{url:?} is not a URL: write it as http://HOST:PORT, e.g. \"http://127.0.0.1:8000\""
        )
    })?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "{url:?} must start with http:// (litegate talks plain HTTP to the app next to it), e.g. \"http://127.0.0.1:8000\""
        ));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host: write it as http://HOST:PORT"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{url:?} has a path or query: give only http://HOST:PORT; requests keep their own path"
        ));
    }
    Ok(uri)
}

fn public_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("{url:?} is not a URL: write e.g. \"https://app-1.example.com\""))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(h)) if !h.is_empty() => Ok(()),
        _ => Err(format!(
            "{url:?} must be an absolute http:// or https:// URL, e.g. \"http://10.0.0.1:8080\""
        )),
    }
}

fn host_port(addr: &str) -> Result<(), String> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!(
            "{addr:?} is not host:port: write e.g. \"10.0.0.1:7070\""
        )),
    }
}
