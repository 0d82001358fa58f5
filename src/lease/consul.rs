//! The Consul HTTP calls LiteFS makes (and nothing else): parsing them into
//! [`Op`]s and rendering the answers the way Consul's Go client reads them.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::state::{Behavior, Entry, Session};

/// The shortest and longest session TTL accepted. Shorter than Consul's
/// 10 s on purpose; under 1 s LiteFS's own step-down rule (it gives up
/// when a failed renew leaves less than 1 s) would fire on any hiccup.
pub const MIN_TTL_MS: u64 = 1_000;
pub const MAX_TTL_MS: u64 = 24 * 3_600_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Register,
    CreateSession {
        name: String,
        node: String,
        ttl_ms: u64,
        lock_delay_ms: u64,
        behavior: Behavior,
    },
    RenewSession(String),
    DestroySession(String),
    Get(String),
    Put {
        key: String,
        value: Vec<u8>,
    },
    Acquire {
        key: String,
        value: Vec<u8>,
        session: String,
    },
    Release {
        key: String,
        value: Vec<u8>,
        session: String,
    },
}

/// An HTTP answer, small enough to carry between nodes as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    /// Consul's `X-Consul-Index`.
    pub index: Option<u64>,
    /// Not answered because the leadership moved (an election, a
    /// handoff): worth asking the new leader within the call's bound.
    #[serde(default)]
    pub leader_moved: bool,
}

impl Answer {
    pub fn json(value: &serde_json::Value, index: Option<u64>) -> Self {
        Self {
            status: 200,
            body: value.to_string(),
            index,
            leader_moved: false,
        }
    }

    pub fn bool(value: bool) -> Self {
        Self {
            status: 200,
            body: value.to_string(),
            index: None,
            leader_moved: false,
        }
    }

    pub fn error(status: u16, message: impl Into<String>) -> Self {
        let mut body = message.into();
        body.push('\n');
        Self {
            status,
            body,
            index: None,
            leader_moved: false,
        }
    }

    /// A `500` because this node no longer leads (or no leader is known).
    pub fn leader_moved(message: impl Into<String>) -> Self {
        Self {
            leader_moved: true,
            ..Self::error(500, message)
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    node: String,
    #[serde(default, rename = "TTL")]
    ttl: String,
    #[serde(default)]
    lock_delay: Option<serde_json::Value>,
    #[serde(default)]
    behavior: String,
}

fn unsupported(method: &str, path: &str) -> Answer {
    Answer::error(
        404,
        format!("{method} {path} is not supported: litegate serves only the Consul calls LiteFS makes (catalog register, session create/renew/destroy, KV get/put/acquire/release)"),
    )
}

/// Parses one request; an unsupported or malformed one is answered at once.
pub fn parse(method: &str, path: &str, query: Option<&str>, body: &[u8]) -> Result<Op, Answer> {
    let mut params = Vec::new();
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        params.push((name.into_owned(), value.into_owned()));
    }
    let only = |allowed: &[&str]| -> Result<(), Answer> {
        match params.iter().find(|(n, _)| !allowed.contains(&n.as_str())) {
            Some((name, _)) => Err(Answer::error(
                400,
                format!("query parameter `{name}` is not supported on {method} {path}: litegate serves only the Consul calls LiteFS makes"),
            )),
            None => Ok(()),
        }
    };
    if let Some(key) = path.strip_prefix("/v1/kv/") {
        if key.is_empty() {
            return Err(Answer::error(400, "missing key"));
        }
        let key = key.to_owned();
        return match method {
            "GET" => {
                only(&[])?;
                Ok(Op::Get(key))
            }
            "PUT" => {
                only(&["acquire", "release"])?;
                let value = body.to_vec();
                match params.first() {
                    Some((n, _)) if params.len() > 1 => Err(Answer::error(
                        400,
                        format!("`acquire` and `release` cannot be combined (got `{n}` and more)"),
                    )),
                    Some((n, session)) if n == "acquire" => Ok(Op::Acquire {
                        key,
                        value,
                        session: session.clone(),
                    }),
                    Some((_, session)) => Ok(Op::Release {
                        key,
                        value,
                        session: session.clone(),
                    }),
                    None => Ok(Op::Put { key, value }),
                }
            }
            _ => Err(Answer::error(
                405,
                format!("{method} on /v1/kv/ is not supported: only GET and PUT (LiteFS sends no other)"),
            )),
        };
    }
    if method != "PUT" {
        return Err(unsupported(method, path));
    }
    only(&[])?;
    match path {
        "/v1/catalog/register" => Ok(Op::Register),
        "/v1/session/create" => create(body),
        _ => {
            if let Some(id) = path.strip_prefix("/v1/session/renew/") {
                Ok(Op::RenewSession(session_id(id)?))
            } else if let Some(id) = path.strip_prefix("/v1/session/destroy/") {
                Ok(Op::DestroySession(session_id(id)?))
            } else {
                Err(unsupported(method, path))
            }
        }
    }
}

fn session_id(id: &str) -> Result<String, Answer> {
    if id.is_empty() || id.contains('/') {
        return Err(Answer::error(400, "missing session id"));
    }
    Ok(id.to_owned())
}

fn create(body: &[u8]) -> Result<Op, Answer> {
    let b: CreateBody = serde_json::from_slice(if body.is_empty() { b"{}" } else { body })
        .map_err(|e| Answer::error(400, format!("session create: request body: {e}")))?;
    if b.ttl.is_empty() {
        return Err(Answer::error(
            400,
            "session create: a TTL is required here (a session without one would hold LiteFS's lease forever)",
        ));
    }
    let ttl_ms = go_duration_ms(&b.ttl).ok_or_else(|| {
        Answer::error(
            400,
            format!("session create: TTL {:?} is not a duration", b.ttl),
        )
    })?;
    if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&ttl_ms) {
        return Err(Answer::error(
            400,
            format!(
                "Invalid Session TTL '{}', must be between [1s=24h0m0s]",
                b.ttl
            ),
        ));
    }
    let lock_delay_ms = match b.lock_delay {
        None | Some(serde_json::Value::Null) => 15_000,
        Some(serde_json::Value::String(s)) => go_duration_ms(&s).ok_or_else(|| {
            Answer::error(
                400,
                format!("session create: LockDelay {s:?} is not a duration"),
            )
        })?,
        // A bare number is nanoseconds (Go's time.Duration), as Consul reads it.
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|ns| ns / 1_000_000).ok_or_else(|| {
                Answer::error(
                    400,
                    "session create: LockDelay must be a non-negative duration",
                )
            })?
        }
        Some(_) => {
            return Err(Answer::error(
                400,
                "session create: LockDelay must be a duration",
            ))
        }
    };
    let behavior = match b.behavior.as_str() {
        "" | "release" => Behavior::Release,
        "delete" => Behavior::Delete,
        other => {
            return Err(Answer::error(
                400,
                format!("session create: Behavior {other:?} is not \"release\" or \"delete\""),
            ))
        }
    };
    Ok(Op::CreateSession {
        name: b.name,
        node: b.node,
        ttl_ms,
        lock_delay_ms: lock_delay_ms.min(60_000),
        behavior,
    })
}

/// Go's `time.Duration` text ("10s", "1000ms", "1m30s", "1.5s"), in whole
/// milliseconds.
pub fn go_duration_ms(text: &str) -> Option<u64> {
    let mut rest = text.trim();
    if rest == "0" {
        return Some(0);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-6,
            "us" | "µs" => 1e-3,
            "ms" => 1.0,
            "s" => 1e3,
            "m" => 60e3,
            "h" => 3600e3,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    (total.is_finite() && total < 1e15).then_some(total as u64)
}

pub fn session_json(s: &Session) -> serde_json::Value {
    json!({
        "ID": s.id,
        "Name": s.name,
        "Node": s.node,
        "LockDelay": s.lock_delay_ms * 1_000_000,
        "Behavior": s.behavior.as_str(),
        "TTL": format!("{}ms", s.ttl_ms),
        "NodeChecks": [],
        "ServiceChecks": null,
        "CreateIndex": s.create_index,
        "ModifyIndex": s.create_index,
    })
}

pub fn entry_json(key: &str, e: &Entry) -> serde_json::Value {
    let mut v = json!({
        "LockIndex": e.lock_index,
        "Key": key,
        "Flags": e.flags,
        "Value": (!e.value.is_empty()).then(|| base64::engine::general_purpose::STANDARD.encode(&e.value)),
        "CreateIndex": e.create_index,
        "ModifyIndex": e.modify_index,
    });
    if let Some(session) = &e.session {
        v["Session"] = json!(session);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration_ms("10s"), Some(10_000));
        assert_eq!(go_duration_ms("1000ms"), Some(1_000));
        assert_eq!(go_duration_ms("1m30s"), Some(90_000));
        assert_eq!(go_duration_ms("1.5s"), Some(1_500));
        assert_eq!(go_duration_ms("0"), Some(0));
        assert_eq!(go_duration_ms("10"), None);
        assert_eq!(go_duration_ms("s"), None);
        assert_eq!(go_duration_ms("5 parsecs"), None);
    }

    #[test]
    fn litefs_calls_parse() {
        let body = br#"{"Behavior":"delete","LockDelay":"1000ms","Name":"litefs","Node":"p/litefs","NodeChecks":[],"TTL":"2s"}"#;
        assert_eq!(
            parse("PUT", "/v1/session/create", None, body),
            Ok(Op::CreateSession {
                name: "litefs".into(),
                node: "p/litefs".into(),
                ttl_ms: 2_000,
                lock_delay_ms: 1_000,
                behavior: Behavior::Delete
            })
        );
        assert_eq!(
            parse("PUT", "/v1/kv/litefs/primary", Some("acquire=abc"), b"{}"),
            Ok(Op::Acquire {
                key: "litefs/primary".into(),
                value: b"{}".to_vec(),
                session: "abc".into()
            })
        );
        assert_eq!(
            parse("PUT", "/v1/kv/k", Some("release=abc"), b""),
            Ok(Op::Release {
                key: "k".into(),
                value: vec![],
                session: "abc".into()
            })
        );
        assert_eq!(
            parse("PUT", "/v1/session/renew/abc", None, b""),
            Ok(Op::RenewSession("abc".into()))
        );
        assert_eq!(
            parse("GET", "/v1/kv/k/clusterid", None, b""),
            Ok(Op::Get("k/clusterid".into()))
        );
        assert_eq!(
            parse("PUT", "/v1/catalog/register", None, b"{}"),
            Ok(Op::Register)
        );
    }

    #[test]
    fn everything_else_is_refused_by_name() {
        let err = parse("GET", "/v1/kv/k", Some("index=5&wait=1s"), b"").unwrap_err();
        assert_eq!(err.status, 400);
        assert!(err.body.contains("`index`"), "{}", err.body);
        let err = parse("PUT", "/v1/kv/k", Some("cas=0"), b"").unwrap_err();
        assert!(err.body.contains("`cas`"), "{}", err.body);
        let err = parse("DELETE", "/v1/kv/k", None, b"").unwrap_err();
        assert_eq!(err.status, 405);
        let err = parse("PUT", "/v1/txn", None, b"").unwrap_err();
        assert_eq!(err.status, 404);
        assert!(err.body.contains("PUT /v1/txn"), "{}", err.body);
        let err = parse("PUT", "/v1/session/create", None, br#"{"TTL":"500ms"}"#).unwrap_err();
        assert!(err.body.contains("Invalid Session TTL"), "{}", err.body);
        let err = parse(
            "PUT",
            "/v1/session/create",
            None,
            br#"{"Behavior":"delete"}"#,
        )
        .unwrap_err();
        assert!(err.body.contains("TTL is required"), "{}", err.body);
    }
}
