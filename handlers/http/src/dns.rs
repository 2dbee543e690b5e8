//! The DNS service's HTTP routes, when the DNS service is on beside the gateway:
//!
//! | route | what |
//! |---|---|
//! | `GET /dns-query?dns=…`, `POST /dns-query` | DNS over HTTPS (RFC 8484), `application/dns-message` |
//! | `GET /<z32 key>` | the pkarr relay: the signed packet held for the key |
//! | `PUT /<z32 key>` | the pkarr relay: store a signed packet (verified; newer than the one held) |
//!
//! Like DoQ these need no credentials: DNS answers are public, a pkarr packet proves itself
//! by its signature, and each source address has the DNS service's query budget (DoH, DoQ
//! and relay writes together).

use crate::api::{Request, error, media_type};
use crate::body::Body;
use alknet_core::AuthContext;
use alknet_dns::pkarr::PutError;
use alknet_dns::{Admit, Dns, Unanswerable};
use base64::Engine;
use http::{HeaderValue, Method, Response, StatusCode, header};

/// The DoH media type.
const DNS_MESSAGE: &str = "application/dns-message";

/// The pkarr relay payload's media type.
const PKARR_PAYLOAD: &str = "application/pkarr.org/relays#payload";

fn allow(r: &mut Response<Body>, methods: &'static str) {
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(methods));
}

fn over_budget() -> Response<Body> {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        "too many DNS queries from this address (queries_per_second under [services.dns])",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// `/dns-query`.
pub(crate) async fn doh(dns: &Dns, req: Request, conn: &AuthContext) -> Response<Body> {
    let query = match req.method {
        Method::GET => {
            let param = req.query.as_deref().and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "dns")
                    .map(|(_, v)| v.into_owned())
            });
            let Some(param) = param else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BAD_REQUEST",
                    "GET /dns-query needs ?dns=<the query, base64url without padding>",
                );
            };
            match base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(param.trim_end_matches('='))
            {
                Ok(q) => q,
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "BAD_REQUEST",
                        "the dns parameter is not base64url",
                    );
                }
            }
        }
        Method::POST => {
            if media_type(&req.headers) != DNS_MESSAGE {
                return error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UNSUPPORTED_MEDIA_TYPE",
                    "POST /dns-query takes Content-Type: application/dns-message",
                );
            }
            req.body.to_vec()
        }
        _ => {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "this route takes GET or POST",
            );
            allow(&mut r, "GET, POST");
            return r;
        }
    };
    match dns.resolve_wire(&query, conn.remote_addr.ip()).await {
        Ok((answer, ttl)) => {
            let mut r = Response::new(Body::full(answer));
            let h = r.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(DNS_MESSAGE));
            if let Ok(v) = HeaderValue::from_str(&format!("max-age={ttl}")) {
                h.insert(header::CACHE_CONTROL, v);
            }
            r
        }
        Err(Unanswerable::Malformed(m)) => error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            &format!("not a DNS query: {m}"),
        ),
        Err(Unanswerable::Excess) => over_budget(),
    }
}

/// `/<z32>`: the pkarr relay.
pub(crate) fn relay(dns: &Dns, req: Request, z32: &str, conn: &AuthContext) -> Response<Body> {
    match req.method {
        Method::GET => match dns.pkarr().get(z32) {
            Some(held) => {
                let mut r = Response::new(Body::full(held.payload.clone()));
                let h = r.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(PKARR_PAYLOAD),
                );
                if let Ok(v) = HeaderValue::from_str(&alknet_dns::pkarr::http_date(held.timestamp))
                {
                    h.insert(header::LAST_MODIFIED, v);
                }
                h.insert(
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=300"),
                );
                r
            }
            None => error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "no signed packet is held for this key",
            ),
        },
        Method::PUT => {
            if dns.admit(conn.remote_addr.ip()) != Admit::Yes {
                return over_budget();
            }
            match dns.pkarr().put(z32, &req.body) {
                Ok(_) => {
                    let mut r = Response::new(Body::empty());
                    *r.status_mut() = StatusCode::NO_CONTENT;
                    r
                }
                Err(e @ PutError::Invalid(_)) => {
                    error(StatusCode::BAD_REQUEST, "BAD_REQUEST", &e.to_string())
                }
                Err(e @ PutError::NotNewer) => {
                    error(StatusCode::CONFLICT, "CONFLICT", &e.to_string())
                }
                Err(e @ PutError::Full(_)) => error(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "UNAVAILABLE",
                    &format!("{e} (max_pkarr_packets under [services.dns])"),
                ),
                Err(e @ PutError::Storage(_)) => {
                    tracing::error!(error = %e, "pkarr relay: a packet could not be stored");
                    error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "INTERNAL",
                        "the packet could not be stored",
                    )
                }
            }
        }
        _ => {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "this route takes GET or PUT",
            );
            allow(&mut r, "GET, PUT");
            r
        }
    }
}
