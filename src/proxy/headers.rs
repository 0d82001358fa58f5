//! Header rules of docs/design.md §2: what is hop-by-hop, what a client may not set,
//! and the `X-Forwarded-*` chain.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub const LITEGATE_ERROR: HeaderName = HeaderName::from_static("litegate-error");
pub const LITEGATE_SERVED_BY: HeaderName = HeaderName::from_static("litegate-served-by");
pub const LITEGATE_ROLE: HeaderName = HeaderName::from_static("litegate-role");
pub const LITEGATE_TERM: HeaderName = HeaderName::from_static("litegate-term");
pub const LITEGATE_PRIMARY: HeaderName = HeaderName::from_static("litegate-primary");
/// The primary's position after a forwarded write, for the forwarding node
/// to turn into the client's `__txid` cookie. Never reaches a client.
pub const LITEGATE_TXID: HeaderName = HeaderName::from_static("litegate-txid");

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// RFC 9110 §7.6.1, plus `Proxy-Connection`, which old clients still send.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    PROXY_CONNECTION,
    KEEP_ALIVE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, and those the `Connection` header names. When
/// `upgrade` is set, the `Upgrade` handshake is put back for the next hop.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<HeaderValue>) {
    if let Some(connection) = headers.get(header::CONNECTION) {
        let named: Vec<HeaderName> = connection
            .to_str()
            .unwrap_or_default()
            .split(',')
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

/// `Litegate-*` headers are litegate's own signals to apps and peers; a
/// client that sends one is spoofing, so all of them go.
pub fn strip_litegate(headers: &mut HeaderMap) {
    // Collect first: HeaderMap cannot be mutated while iterated. The common
    // case finds none and allocates nothing.
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("litegate-"))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// The `Upgrade` value when this is an HTTP/1.1 upgrade request (WebSocket).
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection = headers.get(header::CONNECTION)?.to_str().ok()?;
    let wants_upgrade = connection
        .split(',')
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    wants_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// The size of a request head as it would be on the wire, for the 431 limit.
pub fn head_size(headers: &HeaderMap, uri_len: usize) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + uri_len
        + 16
}

/// What the next hop learns about the client.
pub struct ForwardedFor<'a> {
    pub client: IpAddr,
    /// The client is a proxy we trust, so its `X-Forwarded-Proto` and
    /// `X-Forwarded-Host` are kept.
    pub trusted: bool,
    pub proto: &'static str,
    pub host: Option<&'a HeaderValue>,
}

impl ForwardedFor<'_> {
    pub fn apply(&self, headers: &mut HeaderMap) {
        // Appended, never replaced: apps that trust N proxies read the N-th
        // entry from the right, which is the one litegate writes.
        let client = self.client.to_string();
        let mut chain = Vec::new();
        // Several X-Forwarded-For lines are one list (RFC 9110 §5.3).
        for prior in headers.get_all(&X_FORWARDED_FOR) {
            if !prior.is_empty() {
                chain.extend_from_slice(prior.as_bytes());
                chain.extend_from_slice(b", ");
            }
        }
        chain.extend_from_slice(client.as_bytes());
        headers.remove(&X_FORWARDED_FOR);
        if let Ok(chain) = HeaderValue::from_bytes(&chain) {
            headers.insert(X_FORWARDED_FOR, chain);
        }

        if !self.trusted || !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(self.proto));
        }
        if !self.trusted || !headers.contains_key(&X_FORWARDED_HOST) {
            match self.host {
                Some(host) => {
                    headers.insert(X_FORWARDED_HOST, host.clone());
                }
                None => {
                    headers.remove(&X_FORWARDED_HOST);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn upgrade_is_carried() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        let proto = upgrade_protocol(&h);
        assert_eq!(proto.as_ref().unwrap(), "websocket");
        strip_hop_by_hop(&mut h, proto);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
    }

    #[test]
    fn litegate_headers_are_stripped() {
        let mut h = map(&[
            ("litegate-role", "primary"),
            ("Litegate-Term", "9"),
            ("x", "1"),
        ]);
        strip_litegate(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn forwarded_chain() {
        let host = HeaderValue::from_static("example.com");
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let fwd = ForwardedFor {
            client: "10.0.0.9".parse().unwrap(),
            trusted: false,
            proto: "http",
            host: Some(&host),
        };
        fwd.apply(&mut h);
        assert_eq!(h.get(X_FORWARDED_FOR).unwrap(), "1.1.1.1, 10.0.0.9");
        assert_eq!(h.get(X_FORWARDED_PROTO).unwrap(), "http");
        assert_eq!(h.get(X_FORWARDED_HOST).unwrap(), "example.com");

        let mut h = map(&[("x-forwarded-proto", "https")]);
        ForwardedFor {
            trusted: true,
            ..fwd
        }
        .apply(&mut h);
        assert_eq!(h.get(X_FORWARDED_PROTO).unwrap(), "https");
        assert_eq!(h.get(X_FORWARDED_FOR).unwrap(), "10.0.0.9");
    }
}
