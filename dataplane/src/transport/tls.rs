//! TLS server configuration of a listener from its PEM files (`tls_cert`,
//! `tls_key`), for the transports that use TLS: QUIC (TLS 1.3 inside) and
//! WebSocket (`wss`).

use std::io;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The TLS versions a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// TLS 1.3 only (QUIC).
    Tls13,
    /// rustls's safe defaults: TLS 1.2 and 1.3.
    SafeDefault,
}

/// The rustls server config of listener `i` from its certificate chain and
/// private key (PEM; PKCS#8, RSA or SEC1), offering `alpn`. Errors name the
/// config key and the file.
pub fn server_config(
    i: usize,
    cert: &str,
    key: &str,
    versions: Versions,
    alpn: &[u8],
) -> io::Result<rustls::ServerConfig> {
    let invalid = |k: &str, path: &str, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("listeners[{i}].{k} = {path:?}: {e}"))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| invalid("tls_cert", cert, &e))?;
    if certs.is_empty() {
        return Err(invalid("tls_cert", cert, &"no CERTIFICATE in the file"));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid("tls_key", key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider);
    let builder = match versions {
        Versions::Tls13 => builder.with_protocol_versions(&[&rustls::version::TLS13]),
        Versions::SafeDefault => builder.with_safe_default_protocol_versions(),
    }
    .map_err(|e| invalid("tls_cert", cert, &e))?;
    let mut config =
        builder.with_no_client_auth().with_single_cert(certs, private).map_err(|e| invalid("tls_key", key, &e))?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}
