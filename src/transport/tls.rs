//! TLS with rustls (ring provider, TLS 1.2 and 1.3): the server's config from `[tls]`, and the
//! client's from its dial options.
//!
//! Certificates and keys are read and checked once, at startup, and every error names the config
//! key and the file (`tls.cert: /etc/x.pem: no CERTIFICATE block in the file`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::TlsConfig;

/// The TLS versions percore speaks.
static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// QUIC carries TLS 1.3 only (RFC 9001).
static QUIC_VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// A TLS setting that cannot be used: which key, which file, what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {}{message}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
pub struct TlsError {
    /// The config key or command-line option (`tls.cert`, `--tls-ca`).
    pub key: &'static str,
    /// The file, when one is involved.
    pub path: Option<PathBuf>,
    /// What is wrong.
    pub message: String,
}

impl TlsError {
    fn new(key: &'static str, path: Option<&Path>, message: impl Into<String>) -> TlsError {
        TlsError {
            key,
            path: path.map(Path::to_owned),
            message: message.into(),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file; at least one.
pub fn load_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| TlsError::new(key, Some(path), e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(key, Some(path), format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::new(
            key,
            Some(path),
            "no CERTIFICATE block in the file",
        ));
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file.
pub fn load_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| TlsError::new(key, Some(path), e.to_string()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        TlsError::new(
            key,
            Some(path),
            format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
        )
    })
}

fn load_roots(key: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(key, path)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::new(key, Some(path), format!("not a usable CA: {e}")))?;
    }
    Ok(roots)
}

impl From<TlsError> for crate::config::ConfigError {
    fn from(e: TlsError) -> Self {
        let message = match &e.path {
            Some(path) => format!("{}: {}", path.display(), e.message),
            None => e.message,
        };
        crate::config::ConfigError::Invalid {
            key: e.key,
            message,
        }
    }
}

/// The server's rustls config for `[tls]`, or `None` when TLS is off.
pub fn server_config(tls: &TlsConfig) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    Ok(build_server_config(tls, VERSIONS)?.map(Arc::new))
}

/// The server's rustls config for QUIC listeners from the same `[tls]` section: TLS 1.3 only
/// and ALPN `rpcx` (a client offering another protocol fails with `no_application_protocol`,
/// as quic-go's rpcx server answers). `None` when `[tls]` has no certificate.
pub fn quic_server_config(tls: &TlsConfig) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    Ok(build_server_config(tls, QUIC_VERSIONS)?.map(|mut config| {
        config.alpn_protocols = vec![crate::transport::quic::ALPN.to_vec()];
        Arc::new(config)
    }))
}

fn build_server_config(
    tls: &TlsConfig,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Option<ServerConfig>, TlsError> {
    let (Some(cert_path), Some(key_path)) = (&tls.cert, &tls.key) else {
        return Ok(None);
    };
    let certs = load_certs("tls.cert", cert_path)?;
    let key = load_key("tls.key", key_path)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::new("tls", None, e.to_string()))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = load_roots("tls.client_ca", ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::new("tls.client_ca", Some(ca), e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        TlsError::new(
            "tls.key",
            Some(key_path),
            format!("does not go with tls.cert {}: {e}", cert_path.display()),
        )
    })?;
    Ok(Some(config))
}

/// How a client checks the server (and, for mutual TLS, proves who it is).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM CA certificates the server's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// The name to check the certificate against (and send as SNI); default: the host of the
    /// dialed address (for `unix`, `localhost`).
    pub server_name: Option<String>,
    /// Accept any server certificate (rpcx's examples use Go's `InsecureSkipVerify`). The
    /// connection is encrypted but not authenticated: for tests and trusted networks only.
    pub insecure_skip_verify: bool,
    /// PEM certificate chain to present for mutual TLS.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
}

/// The client's rustls config.
pub fn client_config(opts: &ClientTls) -> Result<Arc<ClientConfig>, TlsError> {
    build_client_config(opts, VERSIONS).map(Arc::new)
}

/// The client's rustls config for `quic@`: TLS 1.3 only, ALPN `rpcx`.
pub fn quic_client_config(opts: &ClientTls) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = build_client_config(opts, QUIC_VERSIONS)?;
    config.alpn_protocols = vec![crate::transport::quic::ALPN.to_vec()];
    Ok(Arc::new(config))
}

fn build_client_config(
    opts: &ClientTls,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<ClientConfig, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| TlsError::new("tls", None, e.to_string()))?;
    let builder = if opts.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify(provider)))
    } else {
        let Some(ca) = &opts.ca else {
            return Err(TlsError::new(
                "tls-ca",
                None,
                "TLS needs a CA file to check the server's certificate (or insecure skip-verify)",
            ));
        };
        builder.with_root_certificates(load_roots("tls-ca", ca)?)
    };
    let config = match (&opts.cert, &opts.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let certs = load_certs("tls-cert", cert)?;
            let key_der = load_key("tls-key", key)?;
            builder
                .with_client_auth_cert(certs, key_der)
                .map_err(|e| TlsError::new("tls-key", Some(key), e.to_string()))?
        }
        (Some(_), None) => return Err(TlsError::new("tls-key", None, "tls-cert needs tls-key")),
        (None, Some(_)) => return Err(TlsError::new("tls-cert", None, "tls-key needs tls-cert")),
    };
    Ok(config)
}

/// The server name to check for `host` (an IP address or a DNS name).
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|e| {
        TlsError::new(
            "tls-server-name",
            None,
            format!("{name:?} is not a DNS name or IP address: {e}"),
        )
    })
}

/// Go's `InsecureSkipVerify`: any certificate is accepted, but handshake signatures are still
/// checked, so the peer does hold the key of the certificate it sent.
#[derive(Debug)]
struct SkipVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key_and_file() {
        let tls = TlsConfig {
            cert: Some("/nonexistent/cert.pem".into()),
            key: Some("/nonexistent/key.pem".into()),
            ..TlsConfig::default()
        };
        let err = server_config(&tls).unwrap_err().to_string();
        assert!(
            err.starts_with("tls.cert: /nonexistent/cert.pem: "),
            "{err}"
        );

        let dir = std::env::temp_dir();
        let empty = dir.join(format!("percore-unit-{}-empty.pem", std::process::id()));
        std::fs::write(&empty, b"not pem\n").unwrap();
        let tls = TlsConfig {
            cert: Some(empty.clone()),
            key: Some(empty.clone()),
            ..TlsConfig::default()
        };
        let err = server_config(&tls).unwrap_err().to_string();
        assert!(err.contains("no CERTIFICATE block"), "{err}");
        std::fs::remove_file(&empty).unwrap();

        let err = client_config(&ClientTls::default())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("tls-ca: "), "{err}");
        assert!(
            client_config(&ClientTls {
                insecure_skip_verify: true,
                ..ClientTls::default()
            })
            .is_ok()
        );
    }
}
