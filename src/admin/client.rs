//! The operator's side of the admin listener: `litegate status`.

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// GETs `{admin}/status` and returns the JSON document.
pub async fn fetch_status(admin: &str) -> Result<serde_json::Value, String> {
    let base = admin.trim_end_matches('/');
    let uri: Uri = format!("{base}/status").parse().map_err(|_| {
        format!("{admin:?} is not a URL: give the admin listener, e.g. http://127.0.0.1:9191")
    })?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let req = Request::get(uri.clone())
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| format!("{uri} did not answer within 5s"))?
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
            String::from_utf8_lossy(&body)
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
            out.push_str(&format!(
                "  {:>3}  {:<16} {:<24} {}\n",
                p["id"],
                p["name"].as_str().unwrap_or("-"),
                p["cluster"].as_str().unwrap_or("-"),
                p["public_url"].as_str().unwrap_or("-"),
            ));
        }
    }
    out
}
