//! LiteFS's HTTP API: `/info`, the `/events` stream, and `/promote` (a
//! replica asks the primary to hand it the lease).
//!
//! Every call is bounded by [`CALL_TIMEOUT`]: a LiteFS that accepts a
//! connection and never answers must not freeze what this node believes
//! about the primary. The `/events` body is open-ended by design; its
//! liveness is the watcher's concern (see `watcher`).

use bytes::BytesMut;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;
use std::time::Duration;

/// The longest a call to LiteFS may take, from sending the request to the
/// last byte of `/info` (or to the response head of `/events`). LiteFS
/// answers these from memory, so even a loaded node answers well within it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

pub type ApiClient = Client<HttpConnector, Empty<bytes::Bytes>>;

pub fn client() -> ApiClient {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .build_http()
}

/// `GET /info` (LiteFS's `NodeInfo`).
#[derive(Debug, Clone, Deserialize)]
pub struct NodeInfo {
    #[serde(rename = "isPrimary")]
    pub is_primary: bool,
    #[serde(default)]
    pub primary: PrimaryInfo,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PrimaryInfo {
    #[serde(default)]
    pub hostname: String,
}

/// One line of `GET /events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// First on every stream, and on every primary change.
    Primary { is_primary: bool, hostname: String },
    /// A transaction was applied to `db` on this node.
    Tx { db: String, txid: u64 },
    /// A type this version does not know; skipped.
    Other,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    db: String,
    #[serde(default)]
    data: serde_json::Value,
}

pub fn parse_event(line: &[u8]) -> Result<Event, String> {
    let raw: RawEvent = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    Ok(match raw.kind.as_str() {
        "init" | "primaryChange" => Event::Primary {
            is_primary: raw.data["isPrimary"].as_bool().unwrap_or(false),
            hostname: raw.data["hostname"].as_str().unwrap_or_default().to_owned(),
        },
        "tx" => {
            let txid = raw.data["txID"]
                .as_str()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or_else(|| format!("tx event without a hex txID: {}", raw.data))?;
            Event::Tx { db: raw.db, txid }
        }
        _ => Event::Other,
    })
}

pub async fn info(client: &ApiClient, api: &Uri) -> Result<NodeInfo, String> {
    let call = async {
        let resp = get(client, api, "/info").await?;
        resp.into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())
            .map(|body| body.to_bytes())
    };
    let bytes = tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| timed_out("/info"))??;
    serde_json::from_slice(&bytes).map_err(|e| format!("LiteFS /info is not NodeInfo JSON: {e}"))
}

/// Opens `GET /events`; read it with [`EventReader`].
pub async fn events(client: &ApiClient, api: &Uri) -> Result<EventReader, String> {
    let resp = tokio::time::timeout(CALL_TIMEOUT, get(client, api, "/events"))
        .await
        .map_err(|_| timed_out("/events"))??;
    Ok(EventReader {
        body: resp.into_body(),
        buf: BytesMut::new(),
    })
}

/// `POST /promote` on a replica: it asks its primary to hand the lease
/// over (LiteFS's own handoff, through its replication stream). Success
/// means the primary accepted; the lease moves a moment later.
pub async fn promote(client: &ApiClient, api: &Uri) -> Result<(), String> {
    let call = async {
        let resp = send(client, api, http::Method::POST, "/promote").await?;
        if resp.status().is_success() {
            return Ok(());
        }
        let status = resp.status();
        let text = resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
            .unwrap_or_default();
        Err(format!("LiteFS answered {status} to /promote: {text}"))
    };
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| timed_out("/promote"))?
}

fn timed_out(path: &str) -> String {
    format!(
        "LiteFS API did not answer {path} within {}",
        humantime::format_duration(CALL_TIMEOUT)
    )
}

async fn get(
    client: &ApiClient,
    api: &Uri,
    path: &str,
) -> Result<http::Response<Incoming>, String> {
    let resp = send(client, api, http::Method::GET, path).await?;
    if !resp.status().is_success() {
        return Err(format!("LiteFS API answered {} to {path}", resp.status()));
    }
    Ok(resp)
}

async fn send(
    client: &ApiClient,
    api: &Uri,
    method: http::Method,
    path: &str,
) -> Result<http::Response<Incoming>, String> {
    let uri: Uri = format!("{}{path}", api.to_string().trim_end_matches('/'))
        .parse()
        .map_err(|e| format!("bad LiteFS API URL: {e}"))?;
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    client
        .request(req)
        .await
        .map_err(|e| format!("LiteFS API unreachable: {e}"))
}

pub struct EventReader {
    body: Incoming,
    buf: BytesMut,
}

impl EventReader {
    /// The next event; `None` when LiteFS closes the stream.
    pub async fn next(&mut self) -> Option<Result<Event, String>> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(end + 1);
                let line = &line[..end];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(parse_event(line));
            }
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Err(e) => return Some(Err(e.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_as_litefs_writes_them() {
        assert_eq!(
            parse_event(br#"{"type":"init","data":{"isPrimary":false,"hostname":"node-1"}}"#)
                .unwrap(),
            Event::Primary {
                is_primary: false,
                hostname: "node-1".into()
            }
        );
        assert_eq!(
            parse_event(br#"{"type":"tx","db":"db","data":{"txID":"000000000000002a","postApplyChecksum":"a1b2c3d4e5f60718","pageSize":4096,"commit":2,"timestamp":"2026-01-01T00:00:00Z"}}"#).unwrap(),
            Event::Tx { db: "db".into(), txid: 42 }
        );
        assert_eq!(
            parse_event(br#"{"type":"primaryChange","data":{"isPrimary":true}}"#).unwrap(),
            Event::Primary {
                is_primary: true,
                hostname: String::new()
            }
        );
        assert_eq!(parse_event(br#"{"type":"someday"}"#).unwrap(), Event::Other);
        assert!(parse_event(b"not json").is_err());
    }
}
