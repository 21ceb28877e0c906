//! The benchmark report: Markdown tables with ratios to the floor and to
//! each peer, and SVG plots.

use std::{collections::BTreeMap, fmt::Write as _, path::Path, time::Duration};

use anyhow::Result;
use plotters::prelude::*;
use serde::Serialize;

use super::{env::Peer, stats::Summary};

#[derive(Clone, Debug, Serialize)]
pub struct DatapathRow {
    pub n: usize,
    pub e: usize,
    /// "first", "last", "random", "non-service", "udp".
    pub target: String,
    pub peer: Peer,
    pub summary: Summary,
}

#[derive(Clone, Debug, Serialize)]
pub struct ControlPlane {
    pub n: usize,
    pub e: usize,
    /// From the agent's start (with a JSON file) until `/readyz`.
    pub socklb_ready: Duration,
    /// Map writes of the first full sync.
    pub socklb_first_map_writes: Option<Duration>,
    /// Map writes for one service's endpoints changing.
    pub socklb_change_map_writes: Duration,
    /// Map writes for one service added.
    pub socklb_add_map_writes: Duration,
    pub iptables_load: Option<Duration>,
    pub nftables_load: Option<Duration>,
    /// kube-proxy's iptables mode rewrites the table: a full restore.
    pub iptables_change: Option<Duration>,
    /// kube-proxy's nftables mode rewrites one service's chains.
    pub nftables_change: Option<Duration>,
    pub agent_peak_rss: Option<u64>,
    pub map_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub quick: bool,
    pub load_bound: Duration,
    pub datapath: Vec<DatapathRow>,
    pub control: Vec<ControlPlane>,
    /// Per N: file change to the first successful connect to the new VIP.
    pub event_latency: BTreeMap<usize, Vec<Duration>>,
    /// Per N: an API server watch event to the first successful connect.
    pub api_event_latency: BTreeMap<usize, Vec<Duration>>,
}

impl Results {
    pub fn new(quick: bool, load_bound: Duration) -> Self {
        Self {
            quick,
            load_bound,
            datapath: Vec::new(),
            control: Vec::new(),
            event_latency: BTreeMap::new(),
            api_event_latency: BTreeMap::new(),
        }
    }

    fn get(&self, n: usize, e: usize, target: &str, peer: Peer) -> Option<&Summary> {
        self.datapath
            .iter()
            .find(|r| r.n == n && r.e == e && r.target == target && r.peer == peer)
            .map(|r| &r.summary)
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn fine_ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn opt_ms(d: Option<Duration>, bound: Duration) -> String {
    d.map_or_else(|| format!("skipped (> {} s)", bound.as_secs()), ms)
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[(((p / 100.0) * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)]
}

/// The datapath table: per N, E, target and peer, with ratios.
pub fn summary_table(r: &Results) -> String {
    let mut out = String::new();
    out.push_str("| N | E | target | peer | p50 µs | p99 µs | conn/s | p50 / floor | added p50 µs | added vs socklb |\n");
    out.push_str("|---:|---:|---|---|---:|---:|---:|---:|---:|---:|\n");
    for row in &r.datapath {
        let floor = r.get(row.n, row.e, &row.target, Peer::Floor);
        let socklb = r.get(row.n, row.e, &row.target, Peer::Socklb);
        let s = &row.summary;
        let ratio = floor.map_or("-".into(), |f| format!("{:.3}", s.p50_us / f.p50_us));
        let added = floor.map(|f| s.p50_us - f.p50_us);
        let added_s = added.map_or("-".into(), |a| format!("{a:+.1}"));
        let vs = match (added, socklb, floor) {
            (Some(a), Some(sl), Some(f)) if row.peer != Peer::Socklb && row.peer != Peer::Floor => {
                let sl_added = sl.p50_us - f.p50_us;
                if sl_added < 1.0 { "socklb ≈ floor".into() } else { format!("{:.1}×", a / sl_added) }
            }
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.0} | {} | {} | {} |",
            row.n,
            row.e,
            row.target,
            row.peer.label(),
            s.p50_us,
            s.p99_us,
            s.per_sec,
            ratio,
            added_s,
            vs
        );
    }
    out
}

pub fn control_table(r: &Results) -> String {
    let mut out = String::new();
    out.push_str("| N | E | socklb: start to ready | socklb: first sync map writes | iptables-restore | nft -f | socklb: one service changed (map writes) | socklb: one service added | iptables: change (full restore) | nftables: change (one service) | agent peak RSS | BPF map memory |\n");
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for c in &r.control {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.n,
            c.e,
            ms(c.socklb_ready),
            c.socklb_first_map_writes.map_or("-".into(), ms),
            opt_ms(c.iptables_load, r.load_bound),
            opt_ms(c.nftables_load, r.load_bound),
            fine_ms(c.socklb_change_map_writes),
            fine_ms(c.socklb_add_map_writes),
            opt_ms(c.iptables_change, r.load_bound),
            opt_ms(c.nftables_change, r.load_bound),
            c.agent_peak_rss.map_or("-".into(), mib),
            mib(c.map_bytes),
        );
    }
    out
}

pub fn event_table(r: &Results) -> String {
    let mut out = String::from("| source | N | trials | p50 | p99 | max |\n|---|---:|---:|---:|---:|---:|\n");
    for (source, map) in [("file", &r.event_latency), ("API server watch", &r.api_event_latency)] {
        for (n, v) in map {
            let max = v.iter().max().copied().unwrap_or_default();
            let _ = writeln!(
                out,
                "| {source} | {n} | {} | {} | {} | {} |",
                v.len(),
                ms(percentile(v, 50.0)),
                ms(percentile(v, 99.0)),
                ms(max)
            );
        }
    }
    out
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let version = |cmd: &str, arg: &str| {
        std::process::Command::new(cmd)
            .arg(arg)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    format!(
        "- CPU: {cpu} ({cpus} vCPU)\n- Kernel: {}\n- {}\n- {}\n- socklb {}\n- IPVS: not measured; this kernel has `CONFIG_IP_VS` unset.\n",
        socklb_bpf::features::kernel_release(),
        version("iptables", "--version"),
        version("nft", "--version"),
        env!("CARGO_PKG_VERSION"),
    )
}

/// Writes the Markdown report and the plots.
pub fn write(r: &Results, out: &Path, plots: &Path) -> Result<()> {
    plot_latency(r, &plots.join("latency-vs-n.svg"))?;
    plot_programming(r, &plots.join("programming-vs-n.svg"))?;
    let rel = |p: &str| {
        let base = out.parent().unwrap_or(Path::new("."));
        plots
            .join(p)
            .strip_prefix(base)
            .map(|x| x.display().to_string())
            .unwrap_or_else(|_| plots.join(p).display().to_string())
    };
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Produced by `scripts/bench.sh{}` (the committed harness, `integration/src/bin/socklb-bench.rs`). \
         Every peer runs in its own network namespace on this machine, in the same run; the \
         configurations are interleaved round by round; the client is pinned to CPU 0 and the \
         server to CPU 1; the server resets each connection after its reply, so no TIME_WAIT \
         state builds up.\n",
        if r.quick { " --quick" } else { "" }
    );
    let _ = writeln!(md, "## Machine\n\n{}", machine());
    let _ = writeln!(
        md,
        "## Peers\n\n\
         - **floor**: the client connects to the backend directly.\n\
         - **socklb**: the real agent (`--from-file`, a release build), the client in its cgroup.\n\
         - **iptables**: kube-proxy's iptables layout (`KUBE-SERVICES` → `KUBE-SVC-*` with `statistic` → `KUBE-SEP-*` DNAT, masquerade chains), loaded with `iptables-restore` (iptables-nft).\n\
         - **nftables**: kube-proxy's nftables layout (table `ip kube-proxy`, the `service-ips` verdict map, `numgen` per service, `endpoint-*` DNAT chains), loaded with `nft -f`.\n\n\
         A rule load that takes longer than {} s is stopped and that size is skipped for that peer.\n",
        r.load_bound.as_secs()
    );
    let _ = writeln!(
        md,
        "## Datapath: connect + 1-byte request/reply + close\n\n\
         `added` is the peer's p50 minus the floor's; `added vs socklb` is the peer's added \
         latency divided by socklb's. `non-service` connects to a backend address directly with \
         the rules loaded (the tax on traffic that is not to a service); `udp` is a \
         `sendto`/`recvfrom` round trip on one socket.\n\n{}\n![latency vs N]({})\n",
        summary_table(r),
        rel("latency-vs-n.svg")
    );
    let _ = writeln!(
        md,
        "## Control plane\n\n\
         `start to ready` includes reading and parsing the JSON file; `map writes` is the time the \
         agent spent writing the BPF maps (`socklb_map_write_seconds`).\n\n{}\n![programming time vs N]({})\n",
        control_table(r),
        rel("programming-vs-n.svg")
    );
    let _ = writeln!(
        md,
        "## Event to datapath\n\nFrom a change that adds a service to the first successful connect to its VIP \
         (a client polls every 0.2 ms). With a file, every change re-reads the whole file, so the time grows \
         with N; with the API server (the test API server of `integration/`, real list/watch over HTTP) a \
         change is one watch event.\n\n{}",
        event_table(r)
    );
    let _ = writeln!(
        md,
        "## Reproduce\n\n```sh\nsudo scripts/bench.sh{}\n```",
        if r.quick { " --quick" } else { "" }
    );
    std::fs::write(out, md)?;
    std::fs::write(out.with_extension("json"), serde_json::to_string_pretty(r)?)?;
    Ok(())
}

fn plot_latency(r: &Results, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let ns: Vec<usize> = r.control.iter().map(|c| c.n).collect();
    let max_n = ns.iter().copied().max().unwrap_or(1).max(10) as f64;
    let max_y =
        r.datapath.iter().filter(|d| d.target == "random").map(|d| d.summary.p50_us).fold(1.0, f64::max)
            * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption("p50 connect latency vs services (random target)", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((1f64..max_n).log_scale(), 0f64..max_y)?;
    chart.configure_mesh().x_desc("services (N)").y_desc("p50 µs").draw()?;
    let colors = [BLACK, BLUE, RED, GREEN];
    for (peer, color) in Peer::ALL.into_iter().zip(colors) {
        for e in [1usize, 10] {
            let pts: Vec<(f64, f64)> = r
                .datapath
                .iter()
                .filter(|d| d.peer == peer && d.e == e && d.target == "random")
                .map(|d| (d.n.max(1) as f64, d.summary.p50_us))
                .collect();
            if pts.is_empty() {
                continue;
            }
            let style = if e == 1 { color.stroke_width(2) } else { color.stroke_width(1) };
            chart
                .draw_series(LineSeries::new(pts, style))?
                .label(format!("{} E={e}", peer.label()))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

fn plot_programming(r: &Results, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_n = r.control.iter().map(|c| c.n).max().unwrap_or(1).max(10) as f64;
    let max_y = r
        .control
        .iter()
        .flat_map(|c| [Some(c.socklb_ready), c.iptables_load, c.nftables_load])
        .flatten()
        .map(|d| d.as_secs_f64())
        .fold(0.01, f64::max)
        * 1.5;
    let mut chart = ChartBuilder::on(&root)
        .caption("time to program N services from nothing", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((1f64..max_n).log_scale(), (0.0001f64..max_y).log_scale())?;
    chart.configure_mesh().x_desc("services (N)").y_desc("seconds").draw()?;
    type Pick = fn(&ControlPlane) -> Option<Duration>;
    let series: [(&str, RGBColor, Pick); 4] = [
        ("socklb start to ready", BLUE, |c| Some(c.socklb_ready)),
        ("socklb map writes", MAGENTA, |c| c.socklb_first_map_writes),
        ("iptables-restore", RED, |c| c.iptables_load),
        ("nft -f", GREEN, |c| c.nftables_load),
    ];
    for (label, color, pick) in series {
        for e in [1usize, 10] {
            let pts: Vec<(f64, f64)> = r
                .control
                .iter()
                .filter(|c| c.e == e)
                .filter_map(|c| pick(c).map(|d| (c.n.max(1) as f64, d.as_secs_f64().max(0.0001))))
                .collect();
            if pts.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(if e == 1 { 2 } else { 1 })))?
                .label(format!("{label} E={e}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
