//! HTTPS served directly: with a certificate and key configured, storyline speaks TLS (no plaintext on that
//! port), offers HTTP/2 by ALPN, and serves requests and streams over it.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::Duration,
};

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use storyline_server::ServerConfig;
use storyline_testkit::{fixture, test_config};

use crate::helpers::{Kind, spawn_with};

fn tls_config() -> ServerConfig {
    let tls = storyline_server::tls::server_config(&fixture("tls-cert.pem"), &fixture("tls-key.pem")).unwrap();
    ServerConfig { tls: Some(tls), ..test_config() }
}

/// A TLS client trusting only the test CA, offering `alpn`.
fn connect(addr: SocketAddr, alpn: &[&[u8]]) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(fixture("tls-ca.pem")).unwrap()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let conn = rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap()).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    stream
}

/// Reads until `needle` has arrived (or the peer closes), returning everything read.
fn read_until(stream: &mut impl Read, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn with_a_certificate_configured_storyline_serves_https_with_http2_and_streams_over_it() {
    let app = spawn_with(Kind::Memory, storyline_core::Retention::default(), tls_config()).await;
    let addr = app.addr;
    let token = app.admin_token();
    tokio::task::spawn_blocking(move || {
        // HTTP/2 is offered first and chosen by a client that wants it.
        let h2 = connect(addr, &[b"h2", b"http/1.1"]);
        assert_eq!(h2.conn.alpn_protocol(), Some(&b"h2"[..]), "HTTP/2 negotiated");

        // HTTP/1.1 over TLS: a request, with the security headers.
        let mut h1 = connect(addr, &[b"http/1.1"]);
        h1.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").unwrap();
        let response = read_until(&mut h1, "\r\n\r\n");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.to_ascii_lowercase().contains("x-content-type-options: nosniff"), "{response}");

        // A stream over TLS starts with its retry: frame.
        let mut sse = connect(addr, &[b"http/1.1"]);
        let request = format!(
            "GET /v1/stories/s/stream HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\naccept: text/event-stream\r\n\r\n"
        );
        sse.write_all(request.as_bytes()).unwrap();
        let head = read_until(&mut sse, "retry:");
        assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/event-stream"), "{head}");
        assert!(head.contains("retry:"), "{head}");
    })
    .await
    .unwrap();

    // No plaintext on the TLS port.
    let plain = storyline_testkit::http_client().get(format!("http://{addr}/healthz")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success(), "plain HTTP is not served on the TLS port");
}
