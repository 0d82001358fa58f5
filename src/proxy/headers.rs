//! Header rules of docs/design.md §2: what is hop-by-hop, what a client may not set,
//! and the `X-Forwarded-*` chain.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub const LITEGATE_ERROR: HeaderName = HeaderName::from_static("litegate-error");
pub const LITEGATE_SERVED_BY: HeaderName = HeaderName::from_static("litegate-served-by");
pub const LITEGATE_ROLE: HeaderName = HeaderName::from_static("litegate-role");
pub const LITEGATE_TERM: HeaderName = HeaderName::from_static("litegate-term");
pub const LITEGATE_PRIMARY: HeaderName = HeaderName::from_static("litegate-primary");
pub const LITEGATE_LEASE_SESSION: HeaderName = HeaderName::from_static("litegate-lease-session");
pub const LITEGATE_LEASE_INDEX: HeaderName = HeaderName::from_static("litegate-lease-index");
/// The primary's position after a forwarded write, for the forwarding node
/// to turn into the client's `__txid` cookie. Never reaches a client.
pub const LITEGATE_TXID: HeaderName = HeaderName::from_static("litegate-txid");

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// RFC 9110 §7.6.1, plus `Proxy-Connection`, which old clients still send,
/// and `HTTP2-Settings`, which only an h2c upgrade uses — and litegate never
/// passes one on, so it goes even when `Connection` does not name it.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    PROXY_CONNECTION,
    KEEP_ALIVE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HTTP2_SETTINGS,
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
    // Most messages carry none of these: one pass over the few names present
    // costs less than looking up all eight on every request and response.
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(name))
        .cloned()
        .collect();
    for name in present {
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

/// The one protocol a request asks to upgrade to: `Connection` lists the
/// `upgrade` token and `Upgrade` names exactly one protocol. A request that
/// offers several is not treated as an upgrade: litegate would have to pick
/// one for the app, and an app may pick another (RFC 9110 §7.8).
pub fn requested_upgrade(headers: &HeaderMap) -> Option<&HeaderValue> {
    let wants_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or_default().split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !wants_upgrade {
        return None;
    }
    let mut values = headers.get_all(header::UPGRADE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    upgrade_protocol(value).map(|_| value)
}

/// The name of the protocol in an `Upgrade` value that names exactly one
/// (`name` or `name/version`, RFC 9110 §7.8), e.g. `websocket`.
pub fn upgrade_protocol(value: &HeaderValue) -> Option<&str> {
    let protocol = value.to_str().ok()?.trim();
    let (name, version) = match protocol.split_once('/') {
        Some((name, version)) => (name, Some(version)),
        None => (protocol, None),
    };
    (is_token(name) && version.is_none_or(is_token)).then_some(name)
}

/// True when an app's `101` switches to the protocol the client asked for.
pub fn upgrade_agreed(requested: &HeaderValue, response: &HeaderMap) -> bool {
    let mut values = response.get_all(header::UPGRADE).iter();
    let (Some(answered), None) = (values.next(), values.next()) else {
        return false;
    };
    upgrade_protocol(answered).is_some()
        && match (requested.to_str(), answered.to_str()) {
            (Ok(requested), Ok(answered)) => requested.trim().eq_ignore_ascii_case(answered.trim()),
            _ => false,
        }
}

/// An RFC 9110 §5.6.2 token: what a header field's protocol name may be.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Marks a request body of unknown length as chunked for the HTTP/1.1 hop
/// to the app or peer: hyper's client sends a `GET` (or `HEAD`) whose body
/// has no declared length as having no body at all, which would drop a
/// chunked HTTP/1.1 body or HTTP/2 `DATA` the client did send.
pub fn frame_body(headers: &mut HeaderMap, body: &impl http_body::Body) {
    if !body.is_end_stream()
        && body.size_hint().exact().is_none()
        && !headers.contains_key(header::CONTENT_LENGTH)
    {
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
}

/// HTTP/2 lets a client split its cookies over several `cookie` fields;
/// HTTP/1.1 allows one, so they are joined with `"; "` when the request goes
/// on as HTTP/1.1 (RFC 9113 §8.2.3).
pub fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    // Each part was a valid header value, and so is "; " between them.
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
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
        let client = IpText::new(self.client);
        // Several X-Forwarded-For lines are one list (RFC 9110 §5.3).
        let prior: Vec<&[u8]> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .map(HeaderValue::as_bytes)
            .filter(|prior| !prior.is_empty())
            .collect();
        let chain = if prior.is_empty() {
            HeaderValue::from_bytes(client.as_bytes())
        } else {
            let mut chain = Vec::new();
            for prior in prior {
                chain.extend_from_slice(prior);
                chain.extend_from_slice(b", ");
            }
            chain.extend_from_slice(client.as_bytes());
            HeaderValue::from_bytes(&chain)
        };
        // `insert` replaces every earlier line.
        match chain {
            Ok(chain) => {
                headers.insert(X_FORWARDED_FOR, chain);
            }
            Err(_) => {
                headers.remove(&X_FORWARDED_FOR);
            }
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

/// A number as a header value, in one allocation (`HeaderValue::from(u64)`
/// takes two); stamped on every request an app gets.
pub fn number(n: u64) -> HeaderValue {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    let mut rest = n;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    HeaderValue::from_bytes(&digits[start..]).expect("ASCII digits are a valid header value")
}

/// An address as text, on the stack: written for every request, so without
/// a `String` per request.
struct IpText {
    buf: [u8; 64],
    len: usize,
}

impl IpText {
    fn new(ip: IpAddr) -> Self {
        let mut text = Self {
            buf: [0; 64],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write;
                let mut cursor = std::io::Cursor::new(&mut text.buf[..]);
                // At most 45 characters (RFC 4291 §2.2, with an embedded
                // IPv4 address): it always fits.
                let _ = write!(cursor, "{v6}");
                text.len = usize::try_from(cursor.position()).unwrap_or(0);
            }
        }
        text
    }

    fn push(&mut self, byte: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "192.168.1.9",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:1.2.3.4",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().expect("a valid address");
            assert_eq!(IpText::new(ip).as_bytes(), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn numbers_are_written_as_http_writes_them() {
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(number(n), HeaderValue::from(n));
        }
    }

    #[test]
    fn forwarded_for_appends_to_every_earlier_line() {
        let forwarded = |prior: &[&'static str]| {
            let mut h = HeaderMap::new();
            for p in prior {
                h.append(X_FORWARDED_FOR, HeaderValue::from_static(p));
            }
            ForwardedFor {
                client: "10.1.2.3".parse().expect("a valid address"),
                trusted: false,
                proto: "http",
                host: None,
            }
            .apply(&mut h);
            h.get_all(X_FORWARDED_FOR)
                .iter()
                .map(|v| v.to_str().expect("ASCII").to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(forwarded(&[]), ["10.1.2.3"]);
        assert_eq!(forwarded(&[""]), ["10.1.2.3"]);
        assert_eq!(
            forwarded(&["1.1.1.1", "2.2.2.2, 3.3.3.3"]),
            ["1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3"]
        );
    }

    #[test]
    fn hop_by_hop_headers_go_and_others_stay() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-mine"),
        );
        h.insert("x-mine", HeaderValue::from_static("1"));
        h.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(HTTP2_SETTINGS, HeaderValue::from_static("AAA"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h, None);
        let left: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["accept"]);
    }

    #[test]
    fn http2_cookie_fields_become_one_header() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2; c=3"));
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
    }

    #[test]
    fn a_body_of_unknown_length_is_sent_chunked() {
        use crate::proxy::body;
        let mut h = HeaderMap::new();
        frame_body(&mut h, &body::empty());
        assert!(!h.contains_key(header::TRANSFER_ENCODING));
        let (_tx, streamed) = http_body_util::channel::Channel::<bytes::Bytes>::new(1);
        frame_body(&mut h, &streamed);
        assert_eq!(h[header::TRANSFER_ENCODING], "chunked");
        let mut with_length = HeaderMap::new();
        with_length.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        frame_body(&mut with_length, &streamed);
        assert!(!with_length.contains_key(header::TRANSFER_ENCODING));
    }

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
        let proto = requested_upgrade(&h).cloned();
        assert_eq!(proto.as_ref().unwrap(), "websocket");
        strip_hop_by_hop(&mut h, proto);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
    }

    #[test]
    fn an_upgrade_not_carried_is_dropped() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "foo"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h, None);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn http2_settings_is_always_stripped() {
        // Not named in Connection: removed all the same.
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ]);
        strip_hop_by_hop(&mut h, None);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn requested_upgrades() {
        let asked = |pairs: &[(&str, &str)]| requested_upgrade(&map(pairs)).cloned();
        assert_eq!(
            asked(&[
                ("connection", "keep-alive"),
                ("connection", "upgrade"),
                ("upgrade", "websocket")
            ])
            .unwrap(),
            "websocket"
        );
        assert_eq!(
            asked(&[("connection", "upgrade"), ("upgrade", " websocket/13 ")]).unwrap(),
            " websocket/13 "
        );
        // No `upgrade` token in Connection, no Upgrade, several protocols,
        // or a malformed one: not an upgrade.
        assert!(asked(&[("upgrade", "websocket")]).is_none());
        assert!(asked(&[("connection", "upgraded"), ("upgrade", "websocket")]).is_none());
        assert!(asked(&[("connection", "upgrade")]).is_none());
        assert!(asked(&[("connection", "upgrade"), ("upgrade", "websocket, h2c")]).is_none());
        assert!(asked(&[
            ("connection", "upgrade"),
            ("upgrade", "websocket"),
            ("upgrade", "h2c")
        ])
        .is_none());
        assert!(asked(&[("connection", "upgrade"), ("upgrade", "web socket")]).is_none());
        assert!(asked(&[("connection", "upgrade"), ("upgrade", "")]).is_none());
        assert_eq!(
            upgrade_protocol(&HeaderValue::from_static("WebSocket/13")),
            Some("WebSocket")
        );
    }

    #[test]
    fn a_101_must_switch_to_the_protocol_asked_for() {
        let asked = HeaderValue::from_static("websocket");
        assert!(upgrade_agreed(&asked, &map(&[("upgrade", "websocket")])));
        assert!(upgrade_agreed(&asked, &map(&[("upgrade", "WebSocket")])));
        assert!(!upgrade_agreed(&asked, &map(&[("upgrade", "h2c")])));
        assert!(!upgrade_agreed(&asked, &map(&[])));
        assert!(!upgrade_agreed(
            &asked,
            &map(&[("upgrade", "websocket"), ("upgrade", "h2c")])
        ));
        assert!(!upgrade_agreed(
            &asked,
            &map(&[("upgrade", "websocket, h2c")])
        ));
    }

    #[test]
    fn tokens() {
        assert!(is_token("websocket"));
        assert!(is_token("x-my.proto~1"));
        for bad in ["", "a b", "a/b", "a,b", "a\"b", "é"] {
            assert!(!is_token(bad), "{bad:?}");
        }
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
