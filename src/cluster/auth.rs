//! Authentication of node-to-node traffic by a shared secret, sent in the
//! `Litegate-Cluster-Secret` header and compared in constant time. (Mutual
//! TLS, the other way, is checked during the TLS handshake; see `tls.rs`.)

use http::{HeaderMap, HeaderName, HeaderValue};
use subtle::ConstantTimeEq;

pub const SECRET_HEADER: HeaderName = HeaderName::from_static("litegate-cluster-secret");

/// Secrets shorter than this are refused at start: they can be guessed.
const MIN_SECRET_BYTES: usize = 16;

#[derive(Clone)]
pub struct SharedSecret(HeaderValue);

impl std::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedSecret(..)")
    }
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
        let mut value = HeaderValue::from_str(secret).map_err(|_| {
            format!("config key `cluster.secret_file`: the secret in {path} must be printable ASCII (hex or base64)")
        })?;
        value.set_sensitive(true);
        Ok(Self(value))
    }

    pub fn header(&self) -> HeaderValue {
        self.0.clone()
    }

    pub fn verify(&self, headers: &HeaderMap) -> bool {
        headers
            .get(&SECRET_HEADER)
            .is_some_and(|sent| bool::from(sent.as_bytes().ct_eq(self.0.as_bytes())))
    }
}
