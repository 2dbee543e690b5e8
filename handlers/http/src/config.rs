//! `[services.http]`: where the TCP listener is, and the limits every request meets.

use alknet_core::config::ConfigDuration;
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// The gateway's settings, checked at load.
///
/// ```toml
/// [services.http]
/// enabled = true
/// tcp_listen = "[::]:4433"          # default: the QUIC listen address, over TCP
/// max_body = 1048576                # bytes of a request body
/// max_header_bytes = 16384          # bytes of a request's headers
/// max_headers = 64                  # headers of a request
/// max_requests_per_connection = 64  # in flight on one connection (h2 streams)
/// max_requests_per_token = 32       # in flight per token or peer, on every connection
/// request_timeout = "30s"           # a request's whole life, call included
/// idle_timeout = "60s"              # a connection without a request in flight
/// header_timeout = "10s"            # the request line and headers (HTTP/1.1)
/// cors_origins = []                 # origins allowed cross-origin; none by default
/// max_mcp_sessions = 1024           # MCP sessions held; the least recently used goes
/// mcp_session_idle = "30m"          # an MCP session unused this long is forgotten
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawSettings")]
pub struct HttpSettings {
    /// The TCP+TLS listener's address; `None` for the QUIC listen address.
    pub tcp_listen: Option<SocketAddr>,
    /// Largest request body.
    pub max_body: usize,
    /// Largest request header block.
    pub max_header_bytes: usize,
    /// Most headers in a request.
    pub max_headers: usize,
    /// Requests in flight on one connection.
    pub max_requests_per_connection: u32,
    /// Requests in flight per caller (token, or peer by its key).
    pub max_requests_per_token: u32,
    /// A request's whole life.
    pub request_timeout: Duration,
    /// A connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// Time to send the request line and headers.
    pub header_timeout: Duration,
    /// Origins allowed cross-origin (`*` for any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// MCP sessions held at once.
    pub max_mcp_sessions: usize,
    /// An MCP session unused this long is forgotten.
    pub mcp_session_idle: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            tcp_listen: None,
            max_body: 1 << 20,
            max_header_bytes: 16 << 10,
            max_headers: 64,
            max_requests_per_connection: 64,
            max_requests_per_token: 32,
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            cors_origins: Vec::new(),
            max_mcp_sessions: 1024,
            mcp_session_idle: Duration::from_secs(1800),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSettings {
    tcp_listen: Option<SocketAddr>,
    max_body: usize,
    max_header_bytes: usize,
    max_headers: usize,
    max_requests_per_connection: u32,
    max_requests_per_token: u32,
    request_timeout: ConfigDuration,
    idle_timeout: ConfigDuration,
    header_timeout: ConfigDuration,
    cors_origins: Vec<String>,
    max_mcp_sessions: usize,
    mcp_session_idle: ConfigDuration,
}

impl Default for RawSettings {
    fn default() -> Self {
        let d = HttpSettings::default();
        Self {
            tcp_listen: d.tcp_listen,
            max_body: d.max_body,
            max_header_bytes: d.max_header_bytes,
            max_headers: d.max_headers,
            max_requests_per_connection: d.max_requests_per_connection,
            max_requests_per_token: d.max_requests_per_token,
            request_timeout: ConfigDuration(d.request_timeout),
            idle_timeout: ConfigDuration(d.idle_timeout),
            header_timeout: ConfigDuration(d.header_timeout),
            cors_origins: d.cors_origins,
            max_mcp_sessions: d.max_mcp_sessions,
            mcp_session_idle: ConfigDuration(d.mcp_session_idle),
        }
    }
}

fn within(name: &str, v: Duration, lo: Duration, hi: Duration) -> Result<Duration, String> {
    if v < lo || v > hi {
        return Err(format!(
            "`{name}` must be between {}s and {}s",
            lo.as_secs(),
            hi.as_secs()
        ));
    }
    Ok(v)
}

impl TryFrom<RawSettings> for HttpSettings {
    type Error = String;
    fn try_from(r: RawSettings) -> Result<Self, String> {
        let s = Duration::from_secs;
        if !(1024..=64 << 20).contains(&r.max_body) {
            return Err("`max_body` must be 1024..=67108864 bytes".into());
        }
        if !(1024..=1 << 20).contains(&r.max_header_bytes) {
            return Err("`max_header_bytes` must be 1024..=1048576 bytes".into());
        }
        if !(8..=1024).contains(&r.max_headers) {
            return Err("`max_headers` must be 8..=1024".into());
        }
        if !(1..=10_000).contains(&r.max_requests_per_connection) {
            return Err("`max_requests_per_connection` must be 1..=10000".into());
        }
        if !(1..=100_000).contains(&r.max_requests_per_token) {
            return Err("`max_requests_per_token` must be 1..=100000".into());
        }
        if !(1..=1_000_000).contains(&r.max_mcp_sessions) {
            return Err("`max_mcp_sessions` must be 1..=1000000".into());
        }
        for o in &r.cors_origins {
            let ok = o == "*"
                || ((o.starts_with("https://") || o.starts_with("http://"))
                    && !o.ends_with('/')
                    && o.bytes().all(|b| b.is_ascii_graphic()));
            if !ok {
                return Err(format!(
                    "`cors_origins` entry {o:?} is not an origin: write `https://host[:port]` (no path, no trailing /) or `*`"
                ));
            }
        }
        Ok(Self {
            tcp_listen: r.tcp_listen,
            max_body: r.max_body,
            max_header_bytes: r.max_header_bytes,
            max_headers: r.max_headers,
            max_requests_per_connection: r.max_requests_per_connection,
            max_requests_per_token: r.max_requests_per_token,
            request_timeout: within("request_timeout", r.request_timeout.0, s(1), s(86_400))?,
            idle_timeout: within("idle_timeout", r.idle_timeout.0, s(1), s(86_400))?,
            header_timeout: within("header_timeout", r.header_timeout.0, s(1), s(600))?,
            cors_origins: r.cors_origins,
            max_mcp_sessions: r.max_mcp_sessions,
            mcp_session_idle: within(
                "mcp_session_idle",
                r.mcp_session_idle.0,
                s(10),
                s(7 * 86_400),
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<HttpSettings, String> {
        toml::from_str::<HttpSettings>(t).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_refusals() {
        assert_eq!(parse("").unwrap(), HttpSettings::default());
        let s = parse("tcp_listen = \"127.0.0.1:8443\"\nrequest_timeout = \"5s\"").unwrap();
        assert_eq!(s.tcp_listen, Some("127.0.0.1:8443".parse().unwrap()));
        assert_eq!(s.request_timeout, Duration::from_secs(5));
        for (bad, says) in [
            ("max_body = 10", "max_body"),
            ("max_headers = 2", "max_headers"),
            ("request_timeout = \"0s\"", "request_timeout"),
            ("cors_origins = [\"example.org\"]", "cors_origins"),
            ("cors_origins = [\"https://a.example/\"]", "cors_origins"),
            ("nope = 1", "nope"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(parse("cors_origins = [\"https://a.example:8443\", \"*\"]").is_ok());
    }
}
