//! Authentication of node-to-node traffic by a shared secret that never
//! leaves the node: each request carries
//! `Litegate-Cluster-Auth: v1 <unix-seconds> <nonce> <hmac>`, an
//! HMAC-SHA256 under the secret of the method, path and query, timestamp
//! and a random nonce. The receiver accepts it only within
//! [`VALIDITY`] of its own clock and only once (nonces are remembered for
//! that long), so a captured request can be neither replayed nor
//! re-targeted at another path. Bodies are not covered: integrity of what
//! travels needs TLS. (Mutual TLS, the other way to authenticate, is
//! checked during the TLS handshake; see `tls.rs`.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

pub const AUTH_HEADER: HeaderName = HeaderName::from_static("litegate-cluster-auth");

/// Secrets shorter than this are refused at start: they can be guessed.
const MIN_SECRET_BYTES: usize = 16;

/// How far a request's timestamp may be from the receiver's clock, either
/// way: the clock skew between nodes plus the time a request takes to
/// arrive. Nodes need synchronized clocks (NTP) to within this.
pub const VALIDITY: Duration = Duration::from_secs(30);

/// Nonces remembered at once; more requests than this within
/// [`VALIDITY`] are refused rather than let the memory grow.
const MAX_REMEMBERED: usize = 1 << 20;

const NONCE_BYTES: usize = 16;

#[derive(Clone)]
pub struct SharedSecret {
    key: hmac::Key,
    seen: Arc<Mutex<SeenNonces>>,
}

impl std::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedSecret(..)")
    }
}

/// Why a cluster request was refused (logged, never sent back in detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no or malformed Litegate-Cluster-Auth header")]
    Malformed,
    #[error("the request's timestamp is outside the validity window (check the nodes' clocks)")]
    Expired,
    #[error("bad signature (another secret, or the request was altered)")]
    BadSignature,
    #[error("replayed request (this nonce was seen already)")]
    Replayed,
    #[error("too many requests within the validity window to remember their nonces")]
    Overloaded,
}

impl SharedSecret {
    pub fn load(path: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("config key `cluster.secret_file`: cannot read {path}: {e}"))?;
        let secret = text.trim();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "config key `cluster.secret_file`: the secret in {path} is {} bytes; use at least {MIN_SECRET_BYTES}, e.g. `openssl rand -hex 32 > {path}`",
                secret.len()
            ));
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("config key `cluster.secret_file`: the secret in {path} must be printable ASCII (hex or base64)"));
        }
        Ok(Self::new(secret.as_bytes()))
    }

    fn new(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            seen: Arc::default(),
        }
    }

    /// The `Litegate-Cluster-Auth` value for one request.
    pub fn sign(&self, method: &Method, path_and_query: &str) -> HeaderValue {
        let mut nonce = [0u8; NONCE_BYTES];
        // The OS's random source does not fail on Linux once booted; if it
        // did, an all-zero nonce is refused as a replay after its first use,
        // which fails requests but never weakens the check.
        let _ = SystemRandom::new().fill(&mut nonce);
        self.sign_at(method, path_and_query, unix_now(), &hex(&nonce))
    }

    fn sign_at(&self, method: &Method, path: &str, at: u64, nonce: &str) -> HeaderValue {
        let tag = hmac::sign(&self.key, message(method, path, at, nonce).as_bytes());
        let mut value = HeaderValue::from_str(&format!("v1 {at} {nonce} {}", hex(tag.as_ref())))
            .expect("digits, hex and spaces are a valid header value");
        value.set_sensitive(true);
        value
    }

    /// Checks a request's signature, then that its nonce is new.
    pub fn verify(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        self.verify_at(method, path_and_query, headers, unix_now())
    }

    fn verify_at(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        now: u64,
    ) -> Result<(), Refusal> {
        let value = headers
            .get(&AUTH_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or(Refusal::Malformed)?;
        let mut parts = value.split(' ');
        let (Some("v1"), Some(at), Some(nonce), Some(sig), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Refusal::Malformed);
        };
        let at: u64 = at.parse().map_err(|_| Refusal::Malformed)?;
        if nonce.len() != NONCE_BYTES * 2 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Refusal::Malformed);
        }
        let sig = unhex(sig).ok_or(Refusal::Malformed)?;
        if at.abs_diff(now) > VALIDITY.as_secs() {
            return Err(Refusal::Expired);
        }
        hmac::verify(&self.key, message(method, path, at, nonce).as_bytes(), &sig)
            .map_err(|_| Refusal::BadSignature)?;
        // Only signed requests reach the nonce memory, so nobody without
        // the secret can fill it.
        let forget_after = at + VALIDITY.as_secs();
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remember(nonce.to_ascii_lowercase(), forget_after, now)
    }
}

/// Nonces of accepted requests until their timestamp leaves the window.
#[derive(Debug, Default)]
struct SeenNonces {
    until: HashMap<String, u64>,
    pruned_at: u64,
}

impl SeenNonces {
    fn remember(&mut self, nonce: String, forget_after: u64, now: u64) -> Result<(), Refusal> {
        if now != self.pruned_at {
            self.until.retain(|_, until| *until >= now);
            self.pruned_at = now;
        }
        if self.until.contains_key(&nonce) {
            return Err(Refusal::Replayed);
        }
        if self.until.len() >= MAX_REMEMBERED {
            return Err(Refusal::Overloaded);
        }
        self.until.insert(nonce, forget_after);
        Ok(())
    }
}

fn message(method: &Method, path: &str, at: u64, nonce: &str) -> String {
    format!("litegate-cluster-v1\n{method}\n{path}\n{at}\n{nonce}")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: HeaderValue) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTH_HEADER, value);
        h
    }

    #[test]
    fn a_signed_request_is_accepted_once_and_its_replay_refused() {
        let secret = SharedSecret::new(b"0123456789abcdef-secret");
        let h = headers(secret.sign(&Method::POST, "/journal?x=1"));
        assert_eq!(secret.verify(&Method::POST, "/journal?x=1", &h), Ok(()));
        assert_eq!(
            secret.verify(&Method::POST, "/journal?x=1", &h),
            Err(Refusal::Replayed)
        );
    }

    #[test]
    fn another_path_method_secret_or_time_is_refused() {
        let secret = SharedSecret::new(b"0123456789abcdef-secret");
        let now = unix_now();
        let nonce = "00112233445566778899aabbccddeeff";
        let signed = headers(secret.sign_at(&Method::POST, "/a", now, nonce));
        assert_eq!(
            secret.verify(&Method::POST, "/b", &signed),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            secret.verify(&Method::PUT, "/a", &signed),
            Err(Refusal::BadSignature)
        );
        let other = SharedSecret::new(b"another-secret-0123456789");
        assert_eq!(
            other.verify(&Method::POST, "/a", &signed),
            Err(Refusal::BadSignature)
        );
        let old = headers(secret.sign_at(&Method::POST, "/a", now - 31, nonce));
        assert_eq!(
            secret.verify(&Method::POST, "/a", &old),
            Err(Refusal::Expired)
        );
        assert_eq!(
            secret.verify(&Method::POST, "/a", &HeaderMap::new()),
            Err(Refusal::Malformed)
        );
        let bearer = headers(HeaderValue::from_static("0123456789abcdef-secret"));
        assert_eq!(
            secret.verify(&Method::POST, "/a", &bearer),
            Err(Refusal::Malformed)
        );
    }

    #[test]
    fn a_nonce_is_forgotten_only_after_its_window() {
        let mut seen = SeenNonces::default();
        assert_eq!(seen.remember("n".into(), 130, 100), Ok(()));
        assert_eq!(seen.remember("n".into(), 130, 130), Err(Refusal::Replayed));
        assert_eq!(seen.remember("n".into(), 162, 131), Ok(()));
    }
}
