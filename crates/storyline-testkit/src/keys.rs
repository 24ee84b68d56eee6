//! Test-only signing keys (in `fixtures/`, never used anywhere else), tokens signed with them, and a tiny HTTP
//! server that serves a JWKS document the test can change, to play an identity provider rotating its keys.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Path of a file in the test kit's `fixtures/` directory.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// The JWK set of the named fixture keys (`rsa-1`, `rsa-2`, `ec-1`), as one document.
pub fn jwks_of(names: &[&str]) -> Value {
    let keys: Vec<Value> = names
        .iter()
        .flat_map(|name| {
            let text = std::fs::read_to_string(fixture(&format!("{name}.jwks.json"))).expect("fixture JWKS");
            let doc: Value = serde_json::from_str(&text).expect("fixture JWKS is JSON");
            doc["keys"].as_array().cloned().unwrap_or_default()
        })
        .collect();
    serde_json::json!({ "keys": keys })
}

/// A token signed with fixture key `key` (`rsa-1`, `rsa-2`, `ec-1`) using `alg`, with header `kid`, carrying
/// `claims` (an `exp` an hour out is added unless given).
pub fn sign_with_fixture(key: &str, alg: Algorithm, kid: Option<&str>, mut claims: Value) -> String {
    let pem = std::fs::read(fixture(&format!("{key}.pem"))).expect("fixture key");
    let encoding = if key.starts_with("ec") {
        EncodingKey::from_ec_pem(&pem).expect("EC fixture key")
    } else {
        EncodingKey::from_rsa_pem(&pem).expect("RSA fixture key")
    };
    if claims.get("exp").is_none() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        claims["exp"] = (now + 3600).into();
    }
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &encoding).expect("sign with fixture key")
}

/// Serves `GET <anything>` with the current body and status, one request per connection; over HTTPS with the
/// test certificate (`fixtures/tls-cert.pem`, for `localhost` and `127.0.0.1`, signed by `fixtures/tls-ca.pem`)
/// when started with [`JwksServer::start_https`].
#[derive(Debug)]
pub struct JwksServer {
    addr: SocketAddr,
    reply: Arc<Mutex<(u16, String)>>,
    task: tokio::task::JoinHandle<()>,
    /// The HTTPS server's handle, to stop its worker on drop.
    https: Option<actix_web::dev::ServerHandle>,
}

impl JwksServer {
    pub async fn start(body: &Value) -> Self {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind JWKS server");
        let addr = listener.local_addr().expect("JWKS server address");
        let reply = Arc::new(Mutex::new((200, body.to_string())));
        let shared = Arc::clone(&reply);
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (status, body) = shared.lock().expect("reply lock").clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await {
                            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self { addr, reply, task, https: None }
    }

    /// The same server over HTTPS (rustls, HTTP/1.1 and HTTP/2), with the test certificate.
    pub async fn start_https(body: &Value) -> Self {
        use actix_web::{App, HttpResponse, HttpServer, http::StatusCode, web};
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind JWKS server");
        let addr = listener.local_addr().expect("JWKS server address");
        let reply = Arc::new(Mutex::new((200, body.to_string())));
        let shared = web::Data::from(Arc::clone(&reply));
        let tls = storyline_server::tls::server_config(&fixture("tls-cert.pem"), &fixture("tls-key.pem"))
            .expect("the test certificate");
        let server = HttpServer::new(move || {
            App::new().app_data(shared.clone()).default_service(web::to(
                |reply: web::Data<Mutex<(u16, String)>>| async move {
                    let (status, body) = reply.lock().expect("reply lock").clone();
                    HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
                        .content_type("application/json")
                        .body(body)
                },
            ))
        })
        .workers(1)
        .disable_signals()
        .listen_rustls_0_23(listener, (*tls).clone())
        .expect("serve HTTPS")
        .run();
        let handle = server.handle();
        let task = tokio::spawn(async move {
            let _ = server.await;
        });
        Self { addr, reply, task, https: Some(handle) }
    }

    pub fn url(&self) -> String {
        let scheme = if self.https.is_some() { "https" } else { "http" };
        format!("{scheme}://{}/.well-known/jwks.json", self.addr)
    }

    /// From now on, answer with this status and body.
    pub fn serve(&self, status: u16, body: &str) {
        *self.reply.lock().expect("reply lock") = (status, body.to_owned());
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        if let Some(handle) = &self.https {
            drop(handle.stop(false));
        }
        self.task.abort();
    }
}
