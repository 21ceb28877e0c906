//! How the agent reaches the API server.
//!
//! In a pod, client libraries use `KUBERNETES_SERVICE_HOST`: the ClusterIP of
//! the `kubernetes` Service. socklb serves that address itself, so on a node
//! without kube-proxy (a fresh node, or after `socklb uninstall`) nothing
//! translates it and the agent could never program the node. Cilium solves
//! the same chicken-and-egg with `k8sServiceHost`; socklb has
//! `--k8s-api-server`, which replaces the server address of whatever
//! configuration was found and keeps its credentials and CA.

use std::{fmt, net::SocketAddr, path::Path, time::Duration};

use http::Uri;

/// The flag, and its environment variable, as messages name them.
pub const FLAG: &str = "--k8s-api-server";
pub const ENV: &str = "SOCKLB_K8S_API_SERVER";

/// Where the server address came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerOrigin {
    /// `--k8s-api-server`.
    Flag,
    /// The in-cluster configuration: `KUBERNETES_SERVICE_HOST`, which is the
    /// `kubernetes` Service's ClusterIP.
    InCluster,
    /// A kubeconfig file.
    Kubeconfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiAccessError {
    #[error("{FLAG} {text:?}: {why}")]
    BadServer { text: String, why: String },
    #[error("--kubeconfig {path}: {source}")]
    Kubeconfig { path: String, source: Box<dyn std::error::Error + Send + Sync> },
    #[error(
        "no Kubernetes configuration found (in-cluster, KUBECONFIG or ~/.kube/config): {0}; \
         use --kubeconfig or --from-file"
    )]
    NotFound(String),
}

/// Parses `--k8s-api-server`: a URL (`https://10.0.0.1:6443`) or a bare
/// `host:port` (HTTPS is assumed). An empty value means "not set".
pub fn parse_server(text: &str) -> Result<Option<Uri>, ApiAccessError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let bad = |why: &str| ApiAccessError::BadServer { text: text.to_string(), why: why.to_string() };
    let with_scheme = if text.contains("://") { text.to_string() } else { format!("https://{text}") };
    let uri: Uri = with_scheme.parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    match uri.scheme_str() {
        Some("https" | "http") => {}
        _ => return Err(bad("the scheme must be https (or http)")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty()) {
        return Err(bad("give only the scheme, host and port"));
    }
    Ok(Some(uri))
}

/// Loads the client configuration: `--kubeconfig` if given, else the
/// environment (KUBECONFIG, ~/.kube/config, then in-cluster), and replaces
/// its server with `server` if given.
pub async fn load_config(
    kubeconfig: Option<&Path>,
    server: Option<&Uri>,
) -> Result<(kube::Config, ServerOrigin), ApiAccessError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let err = |e: Box<dyn std::error::Error + Send + Sync>| ApiAccessError::Kubeconfig {
                path: path.display().to_string(),
                source: e,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| err(Box::new(e)))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| err(Box::new(e)))?
        }
        None => kube::Config::infer().await.map_err(|e| ApiAccessError::NotFound(e.to_string()))?,
    };
    let origin = match server {
        Some(url) => {
            config.cluster_url = url.clone();
            ServerOrigin::Flag
        }
        None if kubeconfig.is_none() && is_in_cluster(&config) => ServerOrigin::InCluster,
        None => ServerOrigin::Kubeconfig,
    };
    Ok((config, origin))
}

/// Whether `config` is the in-cluster one (it points at
/// `KUBERNETES_SERVICE_HOST`).
fn is_in_cluster(config: &kube::Config) -> bool {
    let Ok(host) = std::env::var("KUBERNETES_SERVICE_HOST") else {
        return false;
    };
    let configured =
        config.cluster_url.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    !host.is_empty() && configured == host.trim_start_matches('[').trim_end_matches(']')
}

/// The server's address, when its host is an IP literal.
pub fn server_socket_addr(url: &Uri) -> Option<SocketAddr> {
    let host = url.host()?.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = host.parse().ok()?;
    let port = url.port_u16().unwrap_or(if url.scheme_str() == Some("http") { 80 } else { 443 });
    Some(SocketAddr::new(ip, port))
}

/// What the operator should do when the configured server cannot be
/// reached: one sentence that names the flag, or `None` when the flag set
/// the server (then the address itself is the problem).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advice {
    pub server: String,
    pub origin: ServerOrigin,
    /// The datapath serves this address (it is a Service frontend).
    pub translated: bool,
}

impl Advice {
    pub fn new(url: &Uri, origin: ServerOrigin, translated: bool) -> Self {
        Self { server: url.to_string(), origin, translated }
    }

    /// Whether a failure to reach the server should carry this advice.
    pub fn applies(&self) -> bool {
        self.origin != ServerOrigin::Flag
    }
}

impl fmt::Display for Advice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.origin == ServerOrigin::Flag {
            return write!(f, "{} was set by {FLAG}", self.server);
        }
        if self.origin == ServerOrigin::InCluster || self.translated {
            write!(
                f,
                "{} is a Service address (the in-cluster KUBERNETES_SERVICE_HOST), which only a service \
                 proxy translates; on a node without kube-proxy socklb must program it before anything can \
                 reach it. ",
                self.server
            )?;
        }
        write!(
            f,
            "Set {FLAG} (env {ENV}) to a real address of the API server, the one kubelet uses \
             (the server: line of kubelet's kubeconfig)"
        )
    }
}

/// Tries a TCP connection to the server, so that a server that cannot be
/// reached is reported at start, with advice, instead of as a retry loop.
pub async fn probe_reachable(url: &Uri, timeout: Duration) -> Result<(), String> {
    let host = url.host().ok_or("no host")?.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = url.port_u16().unwrap_or(if url.scheme_str() == Some("http") { 80 } else { 443 });
    let attempt = async {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("resolving {host}: {e}"))?
            .collect();
        let mut last = format!("{host} resolves to no address");
        for addr in addrs {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(_) => return Ok(()),
                Err(e) => last = format!("connect to {addr}: {e}"),
            }
        }
        Err(last)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("connect to {host}:{port}: no answer within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_parse_as_urls_or_host_and_port() {
        let u = parse_server("https://10.0.0.1:6443").expect("ok").expect("some");
        assert_eq!(server_socket_addr(&u), Some("10.0.0.1:6443".parse().expect("addr")));
        let u = parse_server("10.0.0.1:6443").expect("ok").expect("some");
        assert_eq!(u.scheme_str(), Some("https"));
        let u = parse_server("https://[fd00::1]:6443").expect("ok").expect("some");
        assert_eq!(server_socket_addr(&u), Some("[fd00::1]:6443".parse().expect("addr")));
        let u = parse_server("https://api.example.com").expect("ok").expect("some");
        assert_eq!(server_socket_addr(&u), None);
        assert_eq!(parse_server("  ").expect("ok"), None);
    }

    #[test]
    fn bad_servers_are_refused_with_the_flag_named() {
        for bad in ["ftp://x:1", "https://", "https://x:1/api/v1", "http://a b"] {
            let e = parse_server(bad).expect_err(bad).to_string();
            assert!(e.contains(FLAG), "{e}");
        }
    }

    #[test]
    fn advice_names_the_flag_and_says_why_for_a_service_address() {
        let url: Uri = "https://10.96.0.1:443".parse().expect("uri");
        let a = Advice::new(&url, ServerOrigin::InCluster, false);
        assert!(a.applies());
        let text = a.to_string();
        assert!(text.contains(FLAG) && text.contains(ENV) && text.contains("Service address"), "{text}");
        let a = Advice::new(&url, ServerOrigin::Kubeconfig, false);
        assert!(!a.to_string().contains("Service address"));
        assert!(a.to_string().contains(FLAG));
        let a = Advice::new(&url, ServerOrigin::Kubeconfig, true);
        assert!(a.to_string().contains("Service address"));
        assert!(!Advice::new(&url, ServerOrigin::Flag, false).applies());
    }

    #[tokio::test]
    async fn an_unreachable_server_is_reported_with_the_os_error() {
        // A port nobody listens on: bind, learn the port, close.
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let url: Uri = format!("http://127.0.0.1:{port}").parse().expect("uri");
        let e = probe_reachable(&url, Duration::from_secs(5)).await.expect_err("nobody listens");
        assert!(e.contains("refused"), "{e}");
    }
}
