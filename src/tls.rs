//! TLS with rustls and the ring provider: the public listener's certificate
//! (ALPN h2 and http/1.1) and mutual TLS between cluster nodes.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The one crypto provider litegate uses, chosen explicitly rather than by
/// whichever feature flags happen to be on.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(key: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(Path::new(path))
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!("config key `{key}`: cannot read PEM certificates from {path}: {e}")
        })?;
    if certs.is_empty() {
        return Err(format!(
            "config key `{key}`: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certs)
}

fn private_key(key: &str, path: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(Path::new(path)).map_err(|e| {
        format!("config key `{key}`: cannot read a PEM private key (PKCS#8, PKCS#1 or SEC1) from {path}: {e}")
    })
}

fn roots(key: &str, path: &str) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for cert in certs(key, path)? {
        store.add(cert).map_err(|e| {
            format!("config key `{key}`: {path} is not a usable CA certificate: {e}")
        })?;
    }
    Ok(store)
}

/// The public listener's certificate and key, swappable while the listener
/// runs: a SIGHUP loads the files again, and each new handshake takes
/// whichever pair is current (connections already open keep theirs).
#[derive(Debug)]
pub struct PublicCert {
    current: ArcSwap<CertifiedKey>,
}

impl PublicCert {
    /// Reads `public.tls_cert` and `public.tls_key`, checking that they pair.
    pub fn load(cert: &str, key: &str) -> Result<Self, String> {
        Ok(Self {
            current: ArcSwap::from_pointee(certified_key(cert, key)?),
        })
    }

    /// Reads the files again; on any error the pair in use stays.
    pub fn reload(&self, cert: &str, key: &str) -> Result<(), String> {
        self.current.store(Arc::new(certified_key(cert, key)?));
        Ok(())
    }
}

impl ResolvesServerCert for PublicCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn certified_key(cert: &str, key: &str) -> Result<CertifiedKey, String> {
    CertifiedKey::from_der(
        certs("public.tls_cert", cert)?,
        private_key("public.tls_key", key)?,
        &provider(),
    )
    .map_err(|e| format!("config key `public.tls_key`: does not match public.tls_cert: {e}"))
}

/// The public listener: ALPN h2 and http/1.1, the certificate from `cert`.
pub fn public_server(cert: Arc<PublicCert>) -> Result<Arc<ServerConfig>, String> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Files for mutual TLS between nodes: every node's certificate is signed
/// by `ca`, and each side checks the other's.
#[derive(Debug, Clone)]
pub struct MutualTls {
    pub ca: String,
    pub cert: String,
    pub key: String,
}

impl MutualTls {
    pub fn server(&self) -> Result<Arc<ServerConfig>, String> {
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots("cluster.tls_ca", &self.ca)?),
            provider(),
        )
        .build()
        .map_err(|e| format!("config key `cluster.tls_ca`: {e}"))?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                certs("cluster.tls_cert", &self.cert)?,
                private_key("cluster.tls_key", &self.key)?,
            )
            .map_err(|e| {
                format!("config key `cluster.tls_key`: does not match cluster.tls_cert: {e}")
            })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    pub fn client(&self) -> Result<ClientConfig, String> {
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots("cluster.tls_ca", &self.ca)?)
            .with_client_auth_cert(
                certs("cluster.tls_cert", &self.cert)?,
                private_key("cluster.tls_key", &self.key)?,
            )
            .map_err(|e| {
                format!("config key `cluster.tls_key`: does not match cluster.tls_cert: {e}")
            })
    }
}

/// A client config for plain-HTTP cluster traffic: the connector needs one,
/// and it trusts nothing, so an `https` peer cannot be reached by accident.
pub fn no_tls_client() -> Result<ClientConfig, String> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth())
}
