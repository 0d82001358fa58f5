//! The operator's side of the admin listener: `litegate status` and
//! `litegate promote`.

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// GETs `{admin}/status` and returns the JSON document.
pub async fn fetch_status(admin: &str) -> Result<serde_json::Value, String> {
    call(admin, Method::GET, "/status", None).await
}

/// POSTs `{admin}/promote`: this node becomes the primary.
pub async fn promote(admin: &str, token: Option<&str>) -> Result<serde_json::Value, String> {
    call(admin, Method::POST, "/promote", token).await
}

async fn call(
    admin: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
) -> Result<serde_json::Value, String> {
    let base = admin.trim_end_matches('/');
    let uri: Uri = format!("{base}{path}").parse().map_err(|_| {
        format!("{admin:?} is not a URL: give the admin listener, e.g. http://127.0.0.1:9191")
    })?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = Request::builder().method(method).uri(uri.clone());
    if let Some(token) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| format!("{uri} did not answer within 10s"))?
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
    if !status.is_success() {
        return Err(format!(
            "{uri} answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{uri} did not return JSON: {e}"))
}

/// The human form of `/status`.
pub fn render_status(s: &serde_json::Value) -> String {
    let field = |k: &str| match &s[k] {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(v) => v.clone(),
        other => other.to_string(),
    };
    let mut out = format!(
        "node      {}\nmode      {}\nrole      {}\nterm      {}\nprimary   {}\nupstream  {} ({})\nversion   {}\n",
        field("node"),
        field("mode"),
        field("role"),
        field("term"),
        field("primary"),
        s["upstream"]["url"].as_str().unwrap_or("-"),
        if s["upstream"]["up"].as_bool() == Some(true) { "up" } else { "DOWN" },
        field("version"),
    );
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
                "  {:>3}  {:<16} {:<22} {:<11} term {:<5} {}\n",
                p["id"],
                p["name"].as_str().unwrap_or("-"),
                p["cluster"].as_str().unwrap_or("-"),
                reach,
                p["term"]
                    .as_u64()
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "-".into()),
                p["public_url"].as_str().unwrap_or("-"),
            ));
        }
    }
    out
}
