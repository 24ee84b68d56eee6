//! The client's TLS: a rustls configuration built here with the ring provider and handed to reqwest whole, so
//! no process-wide crypto provider has to be installed (reqwest is built without one; its default, aws-lc-rs, is
//! a C build). Server certificates are checked against the system's roots through the platform verifier, plus
//! any extra roots (PEM) the builder was given, for a private CA. ALPN offers `h2` first, then `http/1.1`.

use std::sync::Arc;

use rustls::{
    ClientConfig, RootCertStore,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, pem::PemObject},
};

use crate::error::Error;

/// The ALPN protocols offered, in order of preference: storyline serves HTTP/2 over TLS, and HTTP/1.1 is the
/// fallback for servers (or proxies) that do not.
pub(crate) const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The certificates in a PEM bundle; an error when it holds none or one does not parse.
pub(crate) fn parse_pem_roots(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidRequest(format!("root certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::InvalidRequest("root certificate PEM: no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// The rustls configuration of a client: ring, the platform verifier with `extra_roots`, ALPN h2 then HTTP/1.1.
///
/// With no system roots (a minimal container) and no extra ones there is nothing to verify a server against:
/// that is an error for an `https://` base, and for a plain `http://` base a configuration that trusts nothing
/// (reqwest needs one either way; only a redirect to `https://` would use it, and fail).
pub(crate) fn client_config(extra_roots: Vec<CertificateDer<'static>>, https: bool) -> Result<ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidRequest(format!("TLS versions: {e}")))?;
    let no_extra_roots = extra_roots.is_empty();
    let mut config = match verifier(extra_roots, provider) {
        Ok(verifier) => builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth(),
        Err(e) if https || !no_extra_roots => {
            return Err(Error::InvalidRequest(format!(
                "TLS roots: {e} (add the server's CA with ClientBuilder::add_root_certificates_pem)"
            )));
        }
        Err(_) => builder.with_root_certificates(RootCertStore::empty()).with_no_client_auth(),
    };
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// This crate's rustls client configuration (ring, the system's roots through the platform verifier, ALPN `h2`
/// then `http/1.1`) trusting, besides the system's roots, the CA certificates in `extra_roots_pem` (PEM, at least
/// one): for programs that build an HTTPS client of their own against a private CA (the storyline binary's
/// OTLP/HTTP exporter, whose client is reqwest's blocking one).
pub fn rustls_config_with_roots(extra_roots_pem: &[u8]) -> Result<ClientConfig, Error> {
    client_config(parse_pem_roots(extra_roots_pem)?, true)
}

/// A reqwest client builder with this crate's TLS (ring, the system's roots, ALPN `h2` then `http/1.1`), for
/// programs that make their own requests beside a [`crate::Client`] (storyline-bench): reqwest in this build has
/// no crypto provider of its own, so a plain `reqwest::Client::new()` panics unless the process installed one.
/// For a client that speaks HTTP/1.1 only, see [`http1_client_builder`].
pub fn http_client_builder() -> Result<reqwest::ClientBuilder, Error> {
    Ok(reqwest::Client::builder().tls_backend_preconfigured(client_config(Vec::new(), false)?))
}

/// [`http_client_builder`] for HTTP/1.1 only: ALPN offers `http/1.1` alone, so a server that prefers `h2` does
/// not pick a protocol the client will not speak.
pub fn http1_client_builder() -> Result<reqwest::ClientBuilder, Error> {
    let mut tls = client_config(Vec::new(), false)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(reqwest::Client::builder().tls_backend_preconfigured(tls).http1_only())
}

fn verifier(
    extra_roots: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
) -> Result<rustls_platform_verifier::Verifier, rustls::Error> {
    #[cfg(any(all(unix, not(target_os = "android")), target_os = "windows"))]
    {
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider)
    }
    #[cfg(not(any(all(unix, not(target_os = "android")), target_os = "windows")))]
    {
        if extra_roots.is_empty() {
            rustls_platform_verifier::Verifier::new(provider)
        } else {
            Err(rustls::Error::General("extra root certificates are not supported on this platform".into()))
        }
    }
}

/// The TLS failure behind a request error, if there is one: a rustls error anywhere in its source chain (the
/// I/O errors on the way wrap it, and an `io::Error`'s `source()` skips what it wraps, hence `get_ref`).
pub(crate) fn tls_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(current) = next {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = tls_cause(inner)
        {
            return Some(tls);
        }
        next = current.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_offers_http2_first_then_http1() {
        let config = client_config(Vec::new(), false).unwrap();
        assert_eq!(config.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn pem_roots_must_hold_a_certificate() {
        assert!(parse_pem_roots(b"").is_err(), "empty");
        assert!(parse_pem_roots(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err(), "a key");
        assert!(parse_pem_roots(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err(), "bad");
    }

    #[test]
    fn a_rustls_error_is_found_behind_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let wrapped = std::io::Error::new(std::io::ErrorKind::InvalidData, tls.clone());
        let outer = std::io::Error::other(wrapped);
        assert_eq!(tls_cause(&outer), Some(&tls));
        assert_eq!(tls_cause(&std::io::Error::other("plain")), None);
    }
}
