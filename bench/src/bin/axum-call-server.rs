//! The baseline for the HTTP gateway benchmark: an axum server on a current-thread tokio
//! runtime, TLS 1.3 with an Ed25519 certificate (rustls, as Alknet), h2 and HTTP/1.1, doing
//! the work `POST /api/call/node/info` does in Alknet: check the bearer token (SHA-256 of it
//! against the stored hash, constant time), read the JSON input, answer the node facts as
//! JSON.
//!
//! Usage: `axum-call-server ADDR TOKEN`; prints `listening ADDR` once bound.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;

struct Facts {
    token_hash: [u8; 32],
    started: Instant,
    fingerprint: String,
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

async fn node_info(
    State(f): State<Arc<Facts>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, (StatusCode, Json<Value>)> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let h = sha256(token.as_bytes());
    if h.iter()
        .zip(&f.token_hash)
        .fold(0u8, |a, (x, y)| a | (x ^ y))
        != 0
    {
        return Err((
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"code": "UNAUTHENTICATED"}})),
        ));
    }
    if !body.is_empty() {
        let _: Value = serde_json::from_slice(&body).map_err(|_| {
            (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"code": "BAD_REQUEST"}})),
            )
        })?;
    }
    Ok(Json(json!({
        "fingerprint": f.fingerprint,
        "version": env!("CARGO_PKG_VERSION"),
        "alpns": ["h3"],
        "workers": 1,
        "uptime_secs": f.started.elapsed().as_secs(),
    })))
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: std::net::SocketAddr = args.next().expect("ADDR").parse()?;
    let token = args.next().expect("TOKEN");
    let tls = alknet_bench::baseline_tls(&[b"h2", b"http/1.1"])?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let facts = Arc::new(Facts {
        token_hash: sha256(token.as_bytes()),
        started: Instant::now(),
        fingerprint: format!("ed25519:{}", "0".repeat(64)),
    });
    let app = axum::Router::new()
        .route("/api/call/node/info", post(node_info))
        .with_state(facts);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!("listening {}", listener.local_addr()?);
        loop {
            let (tcp, _) = listener.accept().await?;
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let mut app = app.clone();
                        async move {
                            use tower::Service;
                            app.call(req.map(axum::body::Body::new)).await
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
        }
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    })
}
