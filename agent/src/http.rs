//! The agent's only listener: `/healthz`, `/readyz` and `/metrics`, on the
//! metrics address (loopback by default).

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get};

use crate::metrics::Metrics;

pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";
pub const METRICS: &str = "/metrics";
/// Which Service each backend set id belongs to (the kernel keeps no
/// names): one `id<TAB>namespace/name:port/PROTO family policy` line each.
pub const SETS: &str = "/sets";

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(HEALTHZ, get(healthz))
        .route(READYZ, get(readyz))
        .route(METRICS, get(metrics_text))
        .route(SETS, get(sets))
        .with_state(metrics)
}

async fn healthz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    // The datapath check makes syscalls: off the async workers.
    let verdict = tokio::task::spawn_blocking(move || m.health.verdict(std::time::Instant::now())).await;
    match verdict {
        Ok(Ok(())) => (StatusCode::OK, "ok\n".to_string()),
        Ok(Err(why)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("health check failed: {e}\n")),
    }
}

async fn readyz(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "waiting for the first full sync\n")
    }
}

async fn metrics_text(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let body = tokio::task::spawn_blocking(move || m.encode()).await.unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
}

async fn sets(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    let tx = m.sets_query.lock().ok().and_then(|g| g.clone());
    let Some(tx) = tx else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no agent loop\n".to_string());
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    if tx.send(reply).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "the agent loop stopped\n".to_string());
    }
    match answer.await {
        Ok(text) => (StatusCode::OK, text),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "no answer\n".to_string()),
    }
}

/// Binds first (so a taken port is an error at start), then serves.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Binds every address (see [`parse_listen`]).
pub async fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<tokio::net::TcpListener>, ListenError> {
    let mut out = Vec::new();
    for &addr in addrs {
        out.push(bind(addr).await.map_err(|source| ListenError::Bind { addr, source })?);
    }
    Ok(out)
}

pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    if let Err(e) = axum::serve(listener, router(metrics)).await {
        tracing::error!(error = %e, "metrics server stopped");
    }
}

/// The token of `--metrics-addr` that stands for the node's address, read
/// from `$HOST_IP` (the downward API's `status.hostIP`), so that one
/// ConfigMap value serves every node.
pub const HOST_IP_TOKEN: &str = "host-ip";

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("--metrics-addr {text:?}: {why}")]
    Parse { text: String, why: String },
    #[error("--metrics-addr {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Parses `--metrics-addr`: comma-separated `ADDR:PORT` items, where ADDR
/// may be `host-ip` (the value of `host_ip`, i.e. `$HOST_IP`).
pub fn parse_listen(text: &str, host_ip: Option<&str>) -> Result<Vec<SocketAddr>, ListenError> {
    let err = |why: String| ListenError::Parse { text: text.to_string(), why };
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let addr = match item.strip_prefix(HOST_IP_TOKEN).and_then(|rest| rest.strip_prefix(':')) {
            Some(port) => {
                let ip = host_ip.filter(|v| !v.is_empty()).ok_or_else(|| {
                    err(format!("{HOST_IP_TOKEN} needs $HOST_IP (downward API status.hostIP)"))
                })?;
                let ip: std::net::IpAddr =
                    ip.parse().map_err(|_| err(format!("$HOST_IP {ip:?} is not an IP")))?;
                let port: u16 = port.parse().map_err(|_| err(format!("{port:?} is not a port")))?;
                SocketAddr::new(ip, port)
            }
            None => {
                item.parse().map_err(|_| err(format!("{item:?} is not ADDR:PORT or {HOST_IP_TOKEN}:PORT")))?
            }
        };
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    if out.is_empty() {
        return Err(err("no address".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_take_the_host_ip_token() {
        let got = parse_listen("127.0.0.1:9966, host-ip:9966", Some("192.168.1.5")).expect("ok");
        assert_eq!(got, ["127.0.0.1:9966".parse().expect("a"), "192.168.1.5:9966".parse().expect("a")]);
        let got = parse_listen("host-ip:9966", Some("fd00::5")).expect("ok");
        assert_eq!(got, ["[fd00::5]:9966".parse().expect("a")]);
        assert!(parse_listen("host-ip:9966", None).is_err_and(|e| e.to_string().contains("HOST_IP")));
        assert!(parse_listen("nonsense", None).is_err());
        assert!(parse_listen("", None).is_err());
    }
}
