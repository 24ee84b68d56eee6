//! The reader page: `GET /reader` and its three assets, embedded in the binary, so that what a newcomer opens after
//! the README's run command needs nothing but storyline. `GET /` redirects there.
//!
//! The files are the JavaScript client's (`clients/js/src/storyline.js`, the same module npm publishes) and the
//! page's (`clients/js/reader/`), compiled in with `include_str!`. They are public: no token is needed to fetch
//! them (the page asks for one, or reads it from its URL fragment `#story=<id>&token=<jwt>`, which never reaches a
//! server).
//!
//! Only these responses carry a Content-Security-Policy that lets a page run: scripts, styles and connections
//! from this origin only, no inline code, no framing, no forms, no base or plugin elements. Every other response
//! keeps the service's `default-src 'none'` (see `startup`): the security-headers middleware adds its headers only
//! where a response has none of its own.
//!
//! Caching: each file has a strong ETag (a hash of its bytes, computed once) and `Cache-Control: no-cache`, so a
//! browser revalidates on every load (a `304` when nothing changed) and a new release is picked up at once.

use std::{
    hash::{Hash, Hasher},
    sync::OnceLock,
};

use actix_web::{
    HttpRequest, HttpResponse, get,
    http::header::{self, HeaderValue},
};

/// The policy of the reader page and its assets (and of nothing else).
pub(crate) const READER_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                                     img-src 'self' data:; base-uri 'none'; form-action 'none'; \
                                     frame-ancestors 'none'";

/// Where the page lives; `GET /` redirects here.
pub(crate) const READER_PATH: &str = "/reader";

/// One embedded file.
struct Asset {
    body: &'static str,
    content_type: &'static str,
}

const INDEX: Asset =
    Asset { body: include_str!("../../../../clients/js/reader/index.html"), content_type: "text/html; charset=utf-8" };
const CLIENT: Asset = Asset {
    body: include_str!("../../../../clients/js/src/storyline.js"),
    content_type: "text/javascript; charset=utf-8",
};
const PAGE_SCRIPT: Asset = Asset {
    body: include_str!("../../../../clients/js/reader/reader.js"),
    content_type: "text/javascript; charset=utf-8",
};
const STYLES: Asset =
    Asset { body: include_str!("../../../../clients/js/reader/reader.css"), content_type: "text/css; charset=utf-8" };

impl Asset {
    /// A strong validator for the file's bytes, computed once per file.
    fn etag(&self, cell: &'static OnceLock<String>) -> &'static str {
        cell.get_or_init(|| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            self.body.hash(&mut hasher);
            format!("\"{:016x}-{:x}\"", hasher.finish(), self.body.len())
        })
    }

    /// The file, or `304 Not Modified` when the request's `If-None-Match` names its ETag.
    fn serve(&self, req: &HttpRequest, cell: &'static OnceLock<String>) -> HttpResponse {
        let etag = self.etag(cell);
        let fresh = req
            .headers()
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"));
        let mut response = if fresh { HttpResponse::NotModified() } else { HttpResponse::Ok() };
        response
            .insert_header((header::ETAG, etag))
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .insert_header((header::CONTENT_SECURITY_POLICY, READER_CSP));
        if fresh {
            return response.finish();
        }
        response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(self.content_type))).body(self.body)
    }
}

/// `GET /`: the reader page is what a browser pointed at storyline shows.
#[get("/")]
pub(crate) async fn root() -> HttpResponse {
    HttpResponse::SeeOther().insert_header((header::LOCATION, READER_PATH)).finish()
}

/// `GET /reader`: the page.
#[get("/reader")]
pub(crate) async fn page(req: HttpRequest) -> HttpResponse {
    static ETAG: OnceLock<String> = OnceLock::new();
    INDEX.serve(&req, &ETAG)
}

/// `GET /reader/storyline.js`: the JavaScript client, as published.
#[get("/reader/storyline.js")]
pub(crate) async fn client(req: HttpRequest) -> HttpResponse {
    static ETAG: OnceLock<String> = OnceLock::new();
    CLIENT.serve(&req, &ETAG)
}

/// `GET /reader/reader.js`: the page's script.
#[get("/reader/reader.js")]
pub(crate) async fn script(req: HttpRequest) -> HttpResponse {
    static ETAG: OnceLock<String> = OnceLock::new();
    PAGE_SCRIPT.serve(&req, &ETAG)
}

/// `GET /reader/reader.css`: the page's styles.
#[get("/reader/reader.css")]
pub(crate) async fn styles(req: HttpRequest) -> HttpResponse {
    static ETAG: OnceLock<String> = OnceLock::new();
    STYLES.serve(&req, &ETAG)
}
