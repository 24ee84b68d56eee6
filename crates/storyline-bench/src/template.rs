//! URL, header and body templates: `{name}` placeholders filled per stream or per event.
//!
//! Only `{identifier}` is a placeholder; every other brace is literal, so JSON bodies need no escaping
//! (`{"data":{"seq":{seq}}}` has one placeholder). An unknown `{identifier}` is an error, not silently literal:
//! a typo such as `{sequence}` would otherwise produce payloads the subscribers cannot measure.
//!
//! Targets are `http://` only and must be loopback addresses (an IP literal or `localhost`; no DNS): this tool
//! generates load and must never be pointed at someone else's machine by accident.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

/// A value a template can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// The story name (`--story-prefix` + index).
    Story,
    /// `--token`.
    Token,
    /// The global index of the stream (stream templates only).
    Index,
    /// The per-story sequence number of the event (body only).
    Seq,
    /// Send time in microseconds since the Unix epoch (body only).
    SentUs,
    /// Filler that brings the body to `--payload-bytes` (body only).
    Pad,
}

impl Var {
    fn name(self) -> &'static str {
        match self {
            Var::Story => "story",
            Var::Token => "token",
            Var::Index => "index",
            Var::Seq => "seq",
            Var::SentUs => "sent_us",
            Var::Pad => "pad",
        }
    }

    fn from_name(name: &str) -> Option<Var> {
        [Var::Story, Var::Token, Var::Index, Var::Seq, Var::SentUs, Var::Pad].into_iter().find(|v| v.name() == name)
    }
}

/// Placeholders allowed in the stream URL and stream headers.
pub const STREAM_VARS: &[Var] = &[Var::Story, Var::Token, Var::Index];
/// Placeholders allowed in the publish URL and publish headers.
pub const PUBLISH_VARS: &[Var] = &[Var::Story, Var::Token];
/// Placeholders allowed in the publish body.
pub const BODY_VARS: &[Var] = &[Var::Story, Var::Token, Var::Seq, Var::SentUs, Var::Pad];

/// Why a template, URL or header was rejected. Each names the option (`what`) it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{what}: unknown placeholder {{{name}}}; this template accepts {allowed}")]
    UnknownPlaceholder { what: &'static str, name: String, allowed: String },
    #[error("{what}: the placeholder {{{name}}} is required")]
    MissingPlaceholder { what: &'static str, name: &'static str },
    #[error("{what}: line breaks are not allowed (they would inject lines into the HTTP request)")]
    LineBreak { what: &'static str },
    #[error("{what}: {url:?} must start with http:// (https and other schemes are not supported)")]
    Scheme { what: &'static str, url: String },
    #[error("{what}: placeholders and user info are not allowed in the host or port of {url:?}")]
    BadAuthority { what: &'static str, url: String },
    #[error("{what}: bad port in {url:?}")]
    BadPort { what: &'static str, url: String },
    #[error("{what}: host {host:?} must be a loopback IP literal or `localhost` (no DNS lookups)")]
    BadHost { what: &'static str, host: String },
    #[error("{what}: {addr} is not a loopback address; storyline-bench sends load to loopback only")]
    NotLoopback { what: &'static str, addr: IpAddr },
    #[error("{what}: bad header {header:?}; expected 'Name: value'")]
    BadHeader { what: &'static str, header: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Var(Var),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    segments: Vec<Segment>,
}

/// The values a template is filled with; fields a template does not use are ignored.
#[derive(Debug, Clone, Copy, Default)]
pub struct Values<'a> {
    pub story: &'a str,
    pub token: &'a str,
    pub index: u64,
    pub seq: u64,
    pub sent_us: u64,
    pub pad: usize,
}

impl Template {
    /// Parses `text`, accepting only the placeholders in `allowed`.
    pub fn parse(what: &'static str, text: &str, allowed: &[Var]) -> Result<Template, TemplateError> {
        if text.contains(['\r', '\n']) {
            return Err(TemplateError::LineBreak { what });
        }
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            literal.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let name_len = after.bytes().take_while(|b| b.is_ascii_lowercase() || *b == b'_').count();
            if name_len > 0 && after.as_bytes().get(name_len) == Some(&b'}') {
                let name = &after[..name_len];
                let var = Var::from_name(name).filter(|v| allowed.contains(v)).ok_or_else(|| {
                    TemplateError::UnknownPlaceholder {
                        what,
                        name: name.to_owned(),
                        allowed: allowed.iter().map(|v| format!("{{{}}}", v.name())).collect::<Vec<_>>().join(", "),
                    }
                })?;
                if !literal.is_empty() {
                    segments.push(Segment::Literal(std::mem::take(&mut literal)));
                }
                segments.push(Segment::Var(var));
                rest = &after[name_len + 1..];
            } else {
                literal.push('{');
                rest = after;
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Template { segments })
    }

    pub fn contains(&self, var: Var) -> bool {
        self.segments.contains(&Segment::Var(var))
    }

    /// Fails unless the template uses `var`.
    pub fn require(&self, what: &'static str, var: Var) -> Result<(), TemplateError> {
        if self.contains(var) { Ok(()) } else { Err(TemplateError::MissingPlaceholder { what, name: var.name() }) }
    }

    /// Appends the filled template to `out`.
    pub fn fill_into(&self, out: &mut String, values: &Values<'_>) {
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Var(Var::Story) => out.push_str(values.story),
                Segment::Var(Var::Token) => out.push_str(values.token),
                // Writing to a String cannot fail.
                Segment::Var(Var::Index) => _ = write!(out, "{}", values.index),
                Segment::Var(Var::Seq) => _ = write!(out, "{}", values.seq),
                Segment::Var(Var::SentUs) => _ = write!(out, "{}", values.sent_us),
                Segment::Var(Var::Pad) => out.extend(std::iter::repeat_n('x', values.pad)),
            }
        }
    }

    pub fn fill(&self, values: &Values<'_>) -> String {
        let mut out = String::new();
        self.fill_into(&mut out, values);
        out
    }

    /// Fills a body so that it is `target_len` bytes long when it has a `{pad}` and the rest is shorter
    /// (never truncates: a body longer than the target stays as it is).
    pub fn fill_padded(&self, values: &Values<'_>, target_len: usize) -> String {
        let bare = self.fill(&Values { pad: 0, ..*values });
        let pads = self.segments.iter().filter(|s| **s == Segment::Var(Var::Pad)).count();
        let missing = target_len.saturating_sub(bare.len());
        if pads == 0 || missing == 0 {
            return bare;
        }
        // Several {pad} share the filler; the first takes the remainder.
        let mut out = String::with_capacity(target_len);
        let mut first = true;
        for segment in &self.segments {
            let pad = if first { missing - missing / pads * (pads - 1) } else { missing / pads };
            if *segment == Segment::Var(Var::Pad) {
                first = false;
            }
            let single = Template { segments: vec![segment.clone()] };
            single.fill_into(&mut out, &Values { pad, ..*values });
        }
        out
    }
}

/// An `http://` URL template whose host and port are fixed and whose path and query are a [`Template`].
#[derive(Debug, Clone)]
pub struct UrlTemplate {
    /// Where to connect.
    pub addr: SocketAddr,
    /// `host[:port]` as written, for the `Host` header and for rebuilding full URLs.
    pub authority: String,
    /// Path and query (starting with `/`).
    pub path: Template,
}

impl UrlTemplate {
    pub fn parse(what: &'static str, url: &str, allowed: &[Var]) -> Result<UrlTemplate, TemplateError> {
        let rest = url
            .get(..7)
            .filter(|scheme| scheme.eq_ignore_ascii_case("http://"))
            .map(|_| &url[7..])
            .ok_or_else(|| TemplateError::Scheme { what, url: url.to_owned() })?;
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() || authority.contains(['{', '}', '@']) {
            return Err(TemplateError::BadAuthority { what, url: url.to_owned() });
        }
        let (host, port) =
            split_host_port(authority).ok_or_else(|| TemplateError::BadPort { what, url: url.to_owned() })?;
        let ip = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.parse::<IpAddr>().map_err(|_| TemplateError::BadHost { what, host: host.to_owned() })?
        };
        if !ip.is_loopback() {
            return Err(TemplateError::NotLoopback { what, addr: ip });
        }
        let path = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        Ok(UrlTemplate {
            addr: SocketAddr::new(ip, port),
            authority: authority.to_owned(),
            path: Template::parse(what, &path, allowed)?,
        })
    }

    /// The full URL for `values`.
    pub fn url(&self, values: &Values<'_>) -> String {
        let mut out = format!("http://{}", self.authority);
        self.path.fill_into(&mut out, values);
        out
    }
}

/// `host:port`, `[v6]:port`, `host` or `[v6]` (port 80).
fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6.find(']')?;
        let after = &v6[end + 1..];
        (&v6[..end], if after.is_empty() { None } else { Some(after.strip_prefix(':')?) })
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => 80,
        Some(p) => p.parse().ok()?,
    };
    Some((host, port))
}

/// A `Name: value` header whose value is a template.
#[derive(Debug, Clone)]
pub struct HeaderTemplate {
    pub name: String,
    pub value: Template,
}

impl HeaderTemplate {
    pub fn parse(what: &'static str, header: &str, allowed: &[Var]) -> Result<HeaderTemplate, TemplateError> {
        let bad = || TemplateError::BadHeader { what, header: header.to_owned() };
        let (name, value) = header.split_once(':').ok_or_else(bad)?;
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b)) {
            return Err(bad());
        }
        Ok(HeaderTemplate { name: name.to_owned(), value: Template::parse(what, value.trim(), allowed)? })
    }
}

/// Fails when a value that will be substituted into requests contains a line break.
pub fn check_value(what: &'static str, value: &str) -> Result<(), TemplateError> {
    if value.contains(['\r', '\n']) { Err(TemplateError::LineBreak { what }) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"type":"bench","data":{"seq":{seq},"sent_us":{sent_us},"pad":"{pad}"}}"#;

    #[test]
    fn json_braces_are_literal_and_known_placeholders_are_filled() {
        let t = Template::parse("body", BODY, BODY_VARS).unwrap();
        let body = t.fill(&Values { seq: 7, sent_us: 1_700_000_000_000_000, pad: 3, ..Values::default() });
        assert_eq!(body, r#"{"type":"bench","data":{"seq":7,"sent_us":1700000000000000,"pad":"xxx"}}"#);
    }

    #[test]
    fn padding_brings_the_body_to_the_target_length() {
        let t = Template::parse("body", BODY, BODY_VARS).unwrap();
        for seq in [0, 9, 10, 123_456] {
            let body = t.fill_padded(&Values { seq, sent_us: 1_700_000_000_000_000, ..Values::default() }, 200);
            assert_eq!(body.len(), 200, "seq {seq}: {body}");
            assert!(body.contains(&format!("\"seq\":{seq},")), "seq {seq}: {body}");
        }
    }

    #[test]
    fn a_body_longer_than_the_target_is_not_truncated() {
        let t = Template::parse("body", BODY, BODY_VARS).unwrap();
        let body = t.fill_padded(&Values { seq: 1, sent_us: 2, ..Values::default() }, 10);
        assert_eq!(body, r#"{"type":"bench","data":{"seq":1,"sent_us":2,"pad":""}}"#);
    }

    #[test]
    fn two_pads_share_the_filler() {
        let t = Template::parse("body", "{pad}-{seq}-{pad}", BODY_VARS).unwrap();
        let body = t.fill_padded(&Values { seq: 1, ..Values::default() }, 10);
        assert_eq!(body, "xxxx-1-xxx");
    }

    #[test]
    fn unknown_and_misplaced_placeholders_are_errors() {
        let err = Template::parse("--publish-body", "{sequence}", BODY_VARS).unwrap_err();
        assert!(err.to_string().contains("unknown placeholder {sequence}"), "{err}");
        let err = Template::parse("--stream-url", "/a/{seq}", STREAM_VARS).unwrap_err();
        assert!(matches!(err, TemplateError::UnknownPlaceholder { .. }), "{err}");
    }

    #[test]
    fn required_placeholders_are_checked() {
        let t = Template::parse("--publish-body", r#"{"seq":{seq}}"#, BODY_VARS).unwrap();
        assert!(t.require("--publish-body", Var::Seq).is_ok());
        let err = t.require("--publish-body", Var::SentUs).unwrap_err();
        assert_eq!(err.to_string(), "--publish-body: the placeholder {sent_us} is required");
    }

    #[test]
    fn line_breaks_are_rejected() {
        assert!(matches!(Template::parse("h", "a\r\nb", STREAM_VARS), Err(TemplateError::LineBreak { .. })));
        assert!(check_value("--token", "abc\n").is_err());
    }

    #[test]
    fn stream_urls_parse_into_address_and_path() {
        let u = UrlTemplate::parse(
            "--stream-url",
            "http://127.0.0.1:8080/v1/stories/{story}/stream?access_token={token}",
            STREAM_VARS,
        )
        .unwrap();
        assert_eq!(u.addr, "127.0.0.1:8080".parse().unwrap());
        let values = Values { story: "bench-1", token: "t", ..Values::default() };
        assert_eq!(u.path.fill(&values), "/v1/stories/bench-1/stream?access_token=t");
        assert_eq!(u.url(&values), "http://127.0.0.1:8080/v1/stories/bench-1/stream?access_token=t");
    }

    #[test]
    fn url_forms() {
        let cases = [
            ("http://localhost/sub", "127.0.0.1:80", "/sub"),
            ("HTTP://127.0.0.2:81", "127.0.0.2:81", "/"),
            ("http://[::1]:9000?id={story}", "[::1]:9000", "/?id={story}"),
        ];
        for (url, addr, path) in cases {
            let u = UrlTemplate::parse("url", url, STREAM_VARS).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(u.addr, addr.parse().unwrap(), "{url}");
            assert_eq!(u.path, Template::parse("url", path, STREAM_VARS).unwrap(), "{url}");
        }
    }

    #[test]
    fn bad_urls_are_refused() {
        let cases = [
            ("https://127.0.0.1/", "must start with http://"),
            ("http://10.0.0.1:80/", "not a loopback address"),
            ("http://example.com/", "loopback IP literal or `localhost`"),
            ("http://{story}:80/", "host or port"),
            ("http://127.0.0.1:http/", "bad port"),
            ("http://127.0.0.1:99999/", "bad port"),
            ("http://user@127.0.0.1/", "host or port"),
        ];
        for (url, expected) in cases {
            let err = UrlTemplate::parse("url", url, STREAM_VARS).unwrap_err().to_string();
            assert!(err.contains(expected), "{url}: {err}");
        }
    }

    #[test]
    fn headers_parse_name_and_value_template() {
        let h = HeaderTemplate::parse("--publish-header", "Authorization: Bearer {token}", PUBLISH_VARS).unwrap();
        assert_eq!(h.name, "Authorization");
        assert_eq!(h.value.fill(&Values { token: "abc", ..Values::default() }), "Bearer abc");
        assert!(HeaderTemplate::parse("--publish-header", "no colon", PUBLISH_VARS).is_err());
        assert!(HeaderTemplate::parse("--publish-header", "bad name: x", PUBLISH_VARS).is_err());
    }
}
