//! The `__txid` cookie: the same name and format as LiteFS's own proxy
//! (16 hex digits), so a fleet can move between the two.

use http::header::{self, HeaderMap, HeaderValue};

const NAME: &str = "__txid";

/// The position a read asks for; a missing or malformed cookie asks for
/// none (the read is served without waiting).
pub fn requested_txid(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == NAME)
        .and_then(|(_, value)| {
            (value.len() == 16 && value.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u64::from_str_radix(value, 16).ok())
                .flatten()
        })
}

pub fn set_cookie(txid: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{NAME}={txid:016x}; Path=/; HttpOnly; SameSite=Lax; Max-Age=300{secure}"
    ))
    .expect("the cookie is ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn parses_only_well_formed_cookies() {
        assert_eq!(
            requested_txid(&cookies("a=1; __txid=000000000000002a; b=2")),
            Some(42)
        );
        assert_eq!(requested_txid(&cookies("__txid=2a")), None);
        assert_eq!(requested_txid(&cookies("__txid=zzzzzzzzzzzzzzzz")), None);
        assert_eq!(requested_txid(&cookies("__txid=000000000000002a0")), None);
        assert_eq!(requested_txid(&HeaderMap::new()), None);
        assert_eq!(
            set_cookie(42, true),
            "__txid=000000000000002a; Path=/; HttpOnly; SameSite=Lax; Max-Age=300; Secure"
        );
    }
}
