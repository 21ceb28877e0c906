//! The `socklb` command.
#![forbid(unsafe_code)]

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use socklb::{
    agent::{self, AgentConfig},
    api_access, http, inspect,
};
use socklb_bpf::{
    fs_checks,
    loader::{self, Capacities},
    maps::AyaMaps,
};
use socklb_k8s::model::nodes::NodePortAddresses;
use socklb_lb::datapath::Datapath;

const DEFAULT_BPFFS: &str = "/sys/fs/bpf/socklb";

#[derive(Parser)]
#[command(name = "socklb", version, about = "Kubernetes Service load balancing at the socket (cgroup BPF)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProtoArg {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// `socklb agent`'s flags.
#[derive(clap::Args)]
struct AgentArgs {
    /// Kubeconfig file; default: $KUBECONFIG, then ~/.kube/config, then in-cluster.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The API server's real address (https://HOST:PORT), replacing the
    /// server of the configuration found (in-cluster or kubeconfig) and
    /// keeping its credentials and CA. Needed without kube-proxy: the
    /// in-cluster address is a ClusterIP, which socklb itself serves.
    #[arg(long, env = "SOCKLB_K8S_API_SERVER", value_name = "URL")]
    k8s_api_server: Option<String>,
    /// Read Services and EndpointSlices from this YAML file instead of the
    /// API server (repeatable); the file is watched.
    #[arg(long = "from-file")]
    from_file: Vec<PathBuf>,
    /// This node's name; default: $NODE_NAME, then the hostname.
    #[arg(long)]
    node_name: Option<String>,
    /// cgroup v2 directory to attach to; default: the cgroup2 mount's root.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Directory on a BPF filesystem for the pinned maps and links.
    #[arg(long, default_value = DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// Addresses of /healthz, /readyz and /metrics, comma-separated;
    /// `host-ip:PORT` is the node's address from $HOST_IP (downward API
    /// status.hostIP), for Prometheus in a pod.
    #[arg(long, default_value = "127.0.0.1:9966")]
    metrics_addr: String,
    /// `serve`, or `remove`: take the datapath off this node and idle (roll
    /// it out through the DaemonSet before deleting the DaemonSet).
    #[arg(long, env = "SOCKLB_MODE", value_enum, default_value = "serve")]
    mode: agent::Mode,
    /// Where NodePorts answer: `primary` (the nodes' addresses from their
    /// Node objects, as kube-proxy's newer default), or CIDRs that select
    /// every node's addresses (a single address is taken as this node's
    /// even if no interface has it); empty or absent: every node's
    /// addresses (this node's interfaces, followed live).
    #[arg(long, value_delimiter = ',')]
    nodeport_addresses: Vec<String>,
    /// How often the maps are read back and repaired if they drifted.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    resync: Duration,
    /// The longest wait between attempts to reach the API server after
    /// an error (exponential backoff with jitter, from 0.5 s).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    api_retry_max: Duration,
    /// /healthz fails (503) when changes have waited longer than this
    /// without a sync that applied them (kube-proxy's rule), or at once
    /// when the datapath is detached.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    health_timeout: Duration,
    /// Log format (the level comes from RUST_LOG, default info).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Serve only Services labelled service.kubernetes.io/service-proxy-name=NAME
    /// (kube-proxy skips those), for a gradual migration.
    #[arg(long)]
    service_proxy_name: Option<String>,
    /// Translate only sockets in the host network namespace; pods keep
    /// the VIP (for service meshes that need to see it).
    #[arg(long)]
    hostns_only: bool,
    /// Destroy established TCP and connected UDP sockets whose backend
    /// left their service, so clients reconnect instead of hanging.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    destroy_stale_sockets: bool,
    /// How long a backend that left its services waits before the sockets
    /// translated to it are destroyed: the EndpointSlice controller moves an
    /// endpoint between slices in two writes, and a healthy pod must not
    /// lose its connections in between.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    stale_socket_grace: Duration,
    /// An unconnected UDP socket that was idle toward a VIP for this long
    /// picks its backend afresh (kube-proxy's UDP conntrack entries expire
    /// after 30 s idle), so long-lived sockets spread onto new backends.
    /// 0s: keep the backend while it stays in the service.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    udp_idle_timeout: Duration,
    /// Capacity of the session-affinity table (client network namespace ×
    /// service). Live entries are never evicted; expired ones are removed;
    /// a full table leaves new clients unpinned (counted).
    #[arg(long, default_value_t = socklb_common::capacity::AFFINITY)]
    max_affinity: u32,
    /// Capacity of the unconnected-UDP reverse table (socket × backend); a
    /// send that does not fit is refused (ENOBUFS) and counted.
    #[arg(long, default_value_t = socklb_common::capacity::UDP_REV)]
    max_udp_reverse: u32,
    /// The most backend sets (one per service port, family and traffic
    /// policy) the maps may grow to; frontends may grow to four times as
    /// many. The maps are sized from what is programmed, not from this.
    #[arg(long, default_value_t = DEFAULT_MAX_SETS)]
    max_services: u32,
    /// The most backend slots (endpoints over all sets) the maps may grow to.
    #[arg(long, default_value_t = DEFAULT_MAX_SLOTS)]
    max_backends: u32,
    /// Export translations and refusals per Service port (two series per
    /// port: bounded only by the cluster). Off: totals only.
    #[arg(long)]
    per_service_metrics: bool,
}

/// Ceilings of the maps' growth: far above any cluster's needs, so that
/// only a runaway stops there.
const DEFAULT_MAX_SETS: u32 = 2_097_152;
const DEFAULT_MAX_SLOTS: u32 = 16_777_216;

/// Where `socklb list` and `explain` ask the agent for the Services' names.
const DEFAULT_AGENT: &str = "127.0.0.1:9966";

#[derive(Subcommand)]
enum Cmd {
    /// Attach (or adopt) the datapath and keep it in sync with the cluster.
    Agent(Box<AgentArgs>),
    /// Show the programmed frontends, their backends and counters.
    List {
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// The agent's metrics address, for the Services' names (the
        /// kernel keeps none); without an answer, sets show by id.
        #[arg(long, default_value = DEFAULT_AGENT)]
        agent: SocketAddr,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Output,
    },
    /// Show which frontend, scope and backends a destination maps to.
    Explain {
        /// ADDR:PORT (IPv6 as [ADDR]:PORT).
        destination: SocketAddr,
        #[arg(long, value_enum, default_value = "tcp")]
        proto: ProtoArg,
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// The agent's metrics address, for the Services' names.
        #[arg(long, default_value = DEFAULT_AGENT)]
        agent: SocketAddr,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Output,
    },
    /// Show the attached programs, the pinned maps and their fill, and the
    /// kernel features found.
    Status {
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Output,
    },
    /// Prepare this node's mounts (the DaemonSet's init container): a
    /// cgroup2 mount for the programs and a shared bpffs for the pins, made
    /// in the host's mount namespace. Needs privileges and hostPID.
    NodeInit {
        /// The mount namespace to work in.
        #[arg(long, default_value = "/proc/1/ns/mnt")]
        mount_ns: PathBuf,
        #[arg(long, default_value = "/sys/fs/bpf")]
        bpffs: PathBuf,
        #[arg(long, default_value = "/run/socklb/cgroupv2")]
        cgroup2: PathBuf,
    },
    /// Detach the programs and remove every pin.
    Uninstall {
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
}

const KUBE_CLIENT_QUIET: &str = "kube_client::client::builder=off";

fn init_logs(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // kube-client logs every failed request as an error with no URL and no
    // OS error ("client error (Connect)"); the watchers report failures
    // themselves, once per streak and with both. RUST_LOG can bring it back.
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("kube_client")) {
        filter = filter.add_directive(KUBE_CLIENT_QUIET.parse().expect("a valid directive"));
    }
    // Colours only on a terminal: `kubectl logs` and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn cgroup_or_root(cgroup: Option<PathBuf>) -> Result<PathBuf> {
    match cgroup {
        Some(c) => Ok(c),
        None => Ok(fs_checks::cgroup2_mount()?),
    }
}

fn node_name(flag: Option<String>) -> Result<String> {
    if let Some(n) = flag.filter(|n| !n.is_empty()) {
        return Ok(n);
    }
    if let Ok(n) = std::env::var("NODE_NAME") {
        if !n.is_empty() {
            return Ok(n);
        }
    }
    let host = nix::unistd::gethostname().context("reading the hostname")?;
    Ok(host.to_string_lossy().into_owned())
}

/// The Services' names from the agent's `/sets`, or none (no agent there).
fn set_names(agent: SocketAddr) -> inspect::SetNames {
    use std::io::{Read, Write};
    let fetch = || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&agent, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(format!("GET {} HTTP/1.0\r\nHost: {agent}\r\n\r\n", http::SETS).as_bytes())?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    };
    match fetch() {
        Ok(text) if text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200") => {
            inspect::parse_set_names(text.split_once("\r\n\r\n").map_or("", |(_, body)| body))
        }
        _ => {
            eprintln!("(no agent answered at {agent}: sets are shown by id; see --agent)");
            inspect::SetNames::new()
        }
    }
}

fn open_pinned(bpffs: &std::path::Path) -> Result<AyaMaps> {
    AyaMaps::open(bpffs)
        .with_context(|| format!("no socklb datapath pinned at {} (is the agent running?)", bpffs.display()))
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Agent(args) => {
            let AgentArgs {
                kubeconfig,
                k8s_api_server,
                from_file,
                node_name: name,
                cgroup,
                bpffs,
                metrics_addr,
                mode,
                nodeport_addresses,
                resync,
                api_retry_max,
                health_timeout,
                log_format,
                service_proxy_name,
                hostns_only,
                destroy_stale_sockets,
                max_services,
                max_backends,
                per_service_metrics,
                stale_socket_grace,
                udp_idle_timeout,
                max_affinity,
                max_udp_reverse,
            } = *args;
            init_logs(log_format);
            let k8s_api_server = match k8s_api_server.as_deref() {
                Some(text) => api_access::parse_server(text)?,
                None => None,
            };
            let cfg = AgentConfig {
                kubeconfig,
                k8s_api_server,
                from_files: from_file,
                node_name: node_name(name)?,
                cgroup: cgroup_or_root(cgroup)?,
                bpffs,
                metrics_addrs: http::parse_listen(&metrics_addr, std::env::var("HOST_IP").ok().as_deref())?,
                mode,
                nodeport_addresses: NodePortAddresses::parse(&nodeport_addresses)
                    .context("--nodeport-addresses")?,
                resync,
                api_retry_max,
                health_timeout,
                capacities: Capacities {
                    affinity: max_affinity.max(1),
                    udp_reverse: max_udp_reverse.max(1),
                    ..Capacities::default()
                },
                limits: socklb::reconcile::Limits { max_services, max_backends },
                per_service_metrics,
                service_proxy_name,
                hostns_only,
                destroy_stale_sockets,
                // Only the kernel tests set it, to test the programs that
                // old kernels get on this one.
                without_set_retval: std::env::var_os("SOCKLB_TEST_NO_SET_RETVAL").is_some(),
                test_fail_storage: std::env::var_os("SOCKLB_TEST_FAIL_STORAGE").is_some(),
                stale_socket_grace,
                udp_idle_timeout,
            };
            // Two arenas: the event loop's and one for every other thread.
            socklb_common::sys::limit_malloc_arenas(2);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(agent::run(cfg))
        }
        Cmd::List { bpffs, agent, output } => {
            let maps = open_pinned(&bpffs)?;
            let state = maps.read_state()?;
            let counters = maps.read_counters()?;
            let names = set_names(agent);
            let rows = inspect::set_rows(&inspect::frontend_rows(&state, &counters, &names));
            match output {
                Output::Table => print!("{}", inspect::render_table(&rows)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
            }
            Ok(())
        }
        Cmd::Explain { destination, proto, bpffs, agent, output } => {
            let maps = open_pinned(&bpffs)?;
            let number = match proto {
                ProtoArg::Tcp => socklb_common::PROTO_TCP,
                ProtoArg::Udp => socklb_common::PROTO_UDP,
            };
            let e = inspect::explain(&maps.read_state()?, destination, number, &set_names(agent));
            match output {
                Output::Table => print!("{}", inspect::render_explanation(&e)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&e)?),
            }
            Ok(())
        }
        Cmd::Status { cgroup, bpffs, output } => {
            let cgroup = cgroup_or_root(cgroup)?;
            let status = inspect::status(&cgroup, &bpffs);
            match output {
                Output::Table => print!("{}", inspect::render_status(&status)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
            }
            Ok(())
        }
        Cmd::NodeInit { mount_ns, bpffs, cgroup2 } => {
            // Single-threaded here: entering a mount namespace needs it.
            let opts = socklb_bpf::node_init::NodeInit { mount_ns, bpffs, cgroup2 };
            let report = socklb_bpf::node_init::run(&opts)?;
            println!(
                "bpffs {}: {}; cgroup2 {}: {}",
                opts.bpffs.display(),
                match (report.bpffs_mounted, report.bpffs_made_shared) {
                    (true, _) => "mounted (shared)",
                    (false, true) => "made shared",
                    (false, false) => "already a shared bpffs",
                },
                opts.cgroup2.display(),
                if report.cgroup2_mounted { "mounted" } else { "already mounted" }
            );
            Ok(())
        }
        Cmd::Uninstall { cgroup, bpffs } => {
            let cgroup = cgroup_or_root(cgroup)?;
            let report = loader::uninstall(&cgroup, &bpffs)?;
            println!(
                "detached {} hooks, removed {} maps from {}",
                report.links_detached.len(),
                report.maps_removed.len(),
                bpffs.display()
            );
            Ok(())
        }
    }
}

/// The error and its causes on one line, each message once: many errors
/// quote their source in their own message ("{path}: {source}"), which
/// `{:#}` would print twice.
fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("socklb: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}
