//! The operator's side of the admin listener: `litegate status`,
//! `litegate promote`, `litegate handoff` and `litegate exec`.

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// GETs `{admin}/status` and returns the JSON document.
pub async fn fetch_status(admin: &str) -> Result<serde_json::Value, String> {
    call(admin, Method::GET, "/status", None).await
}

/// GETs `{admin}/members`: the Raft membership from the log.
pub async fn fetch_members(admin: &str) -> Result<serde_json::Value, String> {
    call(admin, Method::GET, "/members", None).await
}

/// A node's answer to a readiness check: ready, or not and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady(String),
}

/// GETs `{admin}/readyz` (or `/readyz/writes`): `200` is ready, `503` not
/// ready (with the node's reason); anything else is an error.
pub async fn fetch_readiness(admin: &str, writes: bool) -> Result<Readiness, String> {
    let path = if writes { "/readyz/writes" } else { "/readyz" };
    let (status, body) = send(admin, Method::GET, path, None, Vec::new(), SHORT_WAIT).await?;
    let body = String::from_utf8_lossy(&body);
    match status {
        http::StatusCode::OK => Ok(Readiness::Ready),
        http::StatusCode::SERVICE_UNAVAILABLE => Ok(Readiness::NotReady(
            body.trim().trim_start_matches("not ready: ").to_owned(),
        )),
        other => Err(format!("{admin}{path} answered {other}: {}", body.trim())),
    }
}

/// POSTs `{admin}/promote`: this node becomes the primary.
pub async fn promote(admin: &str, token: Option<&str>) -> Result<serde_json::Value, String> {
    call(admin, Method::POST, "/promote", token).await
}

/// POSTs `{admin}/handoff[?to=NAME]`: the leader hands leadership off.
pub async fn handoff(
    admin: &str,
    to: Option<&str>,
    token: Option<&str>,
) -> Result<serde_json::Value, String> {
    let path = match to {
        Some(name) => format!(
            "/handoff?{}",
            form_urlencoded::Serializer::new(String::new())
                .append_pair("to", name)
                .finish()
        ),
        None => "/handoff".to_owned(),
    };
    call(admin, Method::POST, &path, token).await
}

/// What a node says it is, once it knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KnownRole {
    Primary,
    Replica(String),
}

/// Asks `{admin}/status` until the node knows its role, for up to `wait`.
pub async fn wait_for_role(admin: &str, wait: std::time::Duration) -> Result<KnownRole, String> {
    // Elapsed time against `wait`, not a deadline: `now + wait` overflows
    // for a `--wait` of centuries.
    let started = tokio::time::Instant::now();
    loop {
        let status = fetch_status(admin).await?;
        match (status["role"].as_str(), status["primary"].as_str()) {
            (Some("primary"), _) => return Ok(KnownRole::Primary),
            (Some("replica"), Some(primary)) => return Ok(KnownRole::Replica(primary.to_owned())),
            _ => {}
        }
        if started.elapsed() >= wait {
            return Err(format!(
                "no primary is known after {} (election under way, or the cluster has no majority): nothing was run; try again, or raise --wait",
                humantime::format_duration(wait)
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `litegate member add | remove | replace`: sends a membership change
/// to any node's admin listener; the leader makes it. Waits as long as the
/// leader may (a new node catching up, a handoff).
pub async fn change_members(
    admin: &str,
    change: &crate::primary::raft_membership::MemberChange,
    token: Option<&str>,
) -> Result<serde_json::Value, String> {
    use crate::primary::raft_membership::{MemberChange, CATCH_UP_LIMIT};
    let (method, path, node) = match change {
        MemberChange::Add { node } => (Method::POST, "/members".to_owned(), Some(node)),
        MemberChange::Remove { name } => (Method::DELETE, format!("/members/{name}"), None),
        MemberChange::Replace { old, node } => {
            (Method::POST, format!("/members/{old}/replace"), Some(node))
        }
    };
    let body = node
        .map(serde_json::to_vec)
        .transpose()
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let wait = CATCH_UP_LIMIT + std::time::Duration::from_secs(90);
    call_with(admin, method, &path, token, body, wait).await
}

/// A request without a body, answered within 10 s; JSON back.
async fn call(
    admin: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> Result<serde_json::Value, String> {
    call_with(admin, method, path, token, Vec::new(), SHORT_WAIT).await
}

/// How long a plain admin call may take.
const SHORT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A request with a JSON `body` (none when empty), answered within
/// `wait`; a non-2xx answer is an error carrying the node's reason.
async fn call_with(
    admin: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
    wait: std::time::Duration,
) -> Result<serde_json::Value, String> {
    let (status, body) = send(admin, method, path, token, body, wait).await?;
    let uri = format!("{}{path}", admin.trim_end_matches('/'));
    if !status.is_success() {
        return Err(format!(
            "{uri} answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{uri} did not return JSON: {e}"))
}

/// One request to the admin listener: its status and whole body.
async fn send(
    admin: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
    wait: std::time::Duration,
) -> Result<(http::StatusCode, Bytes), String> {
    let base = admin.trim_end_matches('/');
    let uri: Uri = format!("{base}{path}").parse().map_err(|_| {
        format!("{admin:?} is not a URL: give the admin listener, e.g. http://127.0.0.1:9191")
    })?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder()
        .method(method)
        .uri(uri.clone())
        .header(super::ADMIN_HEADER, "1");
    if let Some(token) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if !body.is_empty() {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(wait, client.request(req))
        .await
        .map_err(|_| {
            format!(
                "{uri} did not answer within {}",
                humantime::format_duration(wait)
            )
        })?
        .map_err(|e| {
            format!(
                "cannot reach {uri}: {e} (is litegate running, and is --admin its admin.listen?)"
            )
        })?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading {uri}: {e}"))?
        .to_bytes();
    Ok((status, body))
}

/// The human form of `/status`.
pub fn render_status(s: &serde_json::Value) -> String {
    let field = |k: &str| match &s[k] {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(v) => v.clone(),
        other => other.to_string(),
    };
    let upstream = if s["upstream"].is_null() {
        "none (witness)".to_owned()
    } else {
        format!(
            "{} ({})",
            s["upstream"]["url"].as_str().unwrap_or("-"),
            if s["upstream"]["up"].as_bool() == Some(true) {
                "up"
            } else {
                "DOWN"
            }
        )
    };
    let mut out = format!(
        "node      {}\nmode      {}\nrole      {}\nterm      {}\nprimary   {}\nupstream  {upstream}\nversion   {}\n",
        field("node"),
        field("mode"),
        field("role"),
        field("term"),
        field("primary"),
        field("version"),
    );
    let epoch = &s["static"];
    if !epoch.is_null() {
        let confirmed = if epoch["conflict"].is_object() {
            format!(
                "CONFLICT: {} also claims epoch {}; no writes pass here as primary until a promote",
                epoch["conflict"]["primary"].as_str().unwrap_or("-"),
                epoch["conflict"]["epoch"]
            )
        } else if epoch["confirmed"].as_bool() == Some(true) {
            "confirmed".to_owned()
        } else {
            format!(
                "UNCONFIRMED: writes held until {} nodes report no newer epoch",
                epoch["majority"]
            )
        };
        out.push_str(&format!("epoch     {confirmed}\n"));
        if epoch["promised"].is_object() {
            out.push_str(&format!(
                "promised  epoch {} to {} (a promote not known to have won)\n",
                epoch["promised"]["epoch"],
                epoch["promised"]["primary"].as_str().unwrap_or("-")
            ));
        }
    }
    let raft = &s["raft"];
    if !raft.is_null() {
        let opt = |v: &serde_json::Value| {
            if v.is_null() {
                "-".to_owned()
            } else {
                v.to_string()
            }
        };
        out.push_str(&format!(
            "raft      {} · leader {} · log {} · committed {} · quorum ack {} ms ago{}\n",
            raft["state"].as_str().unwrap_or("-"),
            raft["leader"].as_str().unwrap_or("-"),
            opt(&raft["last_log_index"]),
            opt(&raft["committed_index"]),
            opt(&raft["quorum_ack_ms_ago"]),
            if raft["handing_off"].as_bool() == Some(true) {
                " · HANDING OFF"
            } else {
                ""
            },
        ));
    }
    let progress = |id: &serde_json::Value| -> String {
        let Some(p) = raft["peers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| &p["id"] == id))
        else {
            return String::new();
        };
        let mut tags = Vec::new();
        if p["leader"].as_bool() == Some(true) {
            tags.push("leader".to_owned());
        }
        if p["witness"].as_bool() == Some(true) {
            tags.push("witness".to_owned());
        }
        if let Some(m) = p["matched_index"].as_u64() {
            tags.push(format!("matched {m}"));
        }
        if let Some(a) = p["last_ack_ms_ago"].as_u64() {
            tags.push(format!("ack {a} ms ago"));
        }
        if tags.is_empty() {
            String::new()
        } else {
            format!("  [{}]", tags.join(", "))
        }
    };
    if let Some(peers) = s["peers"].as_array().filter(|p| !p.is_empty()) {
        out.push_str("peers\n");
        for p in peers {
            let reach = match (p["self"].as_bool(), p["reachable"].as_bool()) {
                (Some(true), _) => "self",
                (_, Some(true)) => "up",
                (_, Some(false)) => "UNREACHABLE",
                _ => "-",
            };
            out.push_str(&format!(
                "  {:>3}  {:<16} {:<22} {:<11} term {:<5} {}{}\n",
                p["id"],
                p["name"].as_str().unwrap_or("-"),
                p["cluster"].as_str().unwrap_or("-"),
                reach,
                p["term"]
                    .as_u64()
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "-".into()),
                p["public_url"]
                    .as_str()
                    .filter(|u| !u.is_empty())
                    .unwrap_or("-"),
                progress(&p["id"]),
            ));
        }
    }
    out
}
