//! The agent's footprint at one cluster size, from a file or from the test
//! API server: time to ready, map writes of the first sync, peak RSS, the
//! maps' kernel memory, the log lines of the first sync, a `/metrics`
//! scrape, and event-to-datapath latency, alone and during a resync.

use std::{
    io::Read,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde::Serialize;

use super::{
    env::{Env, map_memory, peak_rss},
    workload::{self, Workload},
};
use crate::{agent::http_get, apiserver::FakeApiServer, sandbox::bin_path};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum Source {
    File,
    Api,
}

/// One measurement.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Footprint {
    pub services: usize,
    pub endpoints: usize,
    pub source: String,
    pub ready_s: f64,
    pub first_map_writes_s: f64,
    pub peak_rss_bytes: u64,
    pub map_bytes: u64,
    /// Lines the agent logged (at info) up to ready.
    pub log_lines_first_sync: usize,
    /// One `/metrics` scrape: its time, its size, and the RSS around it.
    pub scrape_ms: f64,
    pub scrape_bytes: usize,
    pub rss_before_scrape: u64,
    pub rss_after_scrape: u64,
    /// The resident memory after the first sync, by kind (`RssAnon`: the
    /// heap and stacks; `RssFile`: the binary's pages and mapped files).
    pub rss_anon: u64,
    pub rss_file: u64,
    /// A new Service to its first answered connect, one trial each.
    pub event_ms: Vec<f64>,
    /// The same while a resync reads the maps back.
    pub event_during_resync_ms: Vec<f64>,
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

fn rss_now(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:")
}

fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, body) = http_get(SocketAddr::from(([127, 0, 0, 1], port)), "/metrics")?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// A change built in full beforehand (the file written beside its final
/// name, the objects made); calling it makes the change visible (the
/// rename, or the API server's apply), and that is when the clock starts.
pub type Commit<'a> = Box<dyn FnOnce() -> Result<()> + 'a>;

/// Time from a change to the first answered connect of the new Service's
/// VIP (a client already polls it).
pub fn trial<'a>(
    env: &Env,
    extra: &workload::Service,
    prepare: impl FnOnce() -> Result<Commit<'a>>,
) -> Result<Duration> {
    let commit = prepare()?;
    let vip = SocketAddr::from((extra.vip, workload::TCP_PORT));
    let mut poll = Command::new(bin_path("socklb-bench"))
        .args(["poll", "--netns", &env.netns(super::env::Peer::Socklb), "--to", &vip.to_string()])
        .args(["--timeout-ms", "120000"])
        .arg("--cgroup")
        .arg(&env.cgroup)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdout = poll.stdout.take().context("poll stdout")?;
    let mut ready_line = [0u8; 6];
    stdout.read_exact(&mut ready_line)?;
    let changed = crate::probe::now_ns();
    commit()?;
    let mut text = String::new();
    stdout.read_to_string(&mut text)?;
    let _ = poll.wait();
    let reached: u64 = text.trim().parse().context("poll result")?;
    Ok(Duration::from_nanos(reached.saturating_sub(changed)))
}

/// Writes the workload beside `file`; the commit renames it into place.
pub fn file_change<'a>(file: &'a Path, w: &Workload) -> Result<Commit<'a>> {
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, w.cluster_json())?;
    Ok(Box::new(move || Ok(std::fs::rename(&tmp, file)?)))
}

/// Builds one Service and its slice; the commit applies them to the API
/// server.
pub fn api_change<'a>(api: &'a FakeApiServer, extra: &workload::Service) -> Result<Commit<'a>> {
    let items: serde_json::Value = serde_json::from_str(&Workload::single_json(extra))?;
    Ok(Box::new(move || {
        for item in items["items"].as_array().into_iter().flatten() {
            api.apply(item.clone());
        }
        Ok(())
    }))
}

/// Measures one size. `trials` new Services are added one at a time
/// (through the file or the API server) after the first sync; with
/// `resync_trials`, as many more while the agent resyncs (every second).
pub fn measure(
    run_id: &str,
    socklb: &Path,
    n: usize,
    e: usize,
    source: Source,
    trials: usize,
    resync_trials: usize,
) -> Result<Footprint> {
    let mut w = Workload::new(n, e);
    let mut env = Env::create(run_id, &format!("fp{n}x{e}"))?;
    env.start_servers()?;
    let port = crate::agent::free_port();

    let file = env.workdir.join("cluster.json");
    let api = match source {
        Source::File => {
            let tmp = file.with_extension("tmp");
            std::fs::write(&tmp, w.cluster_json())?;
            std::fs::rename(&tmp, &file)?;
            None
        }
        Source::Api => {
            let api = FakeApiServer::start();
            let list: serde_json::Value = serde_json::from_str(&w.cluster_json())?;
            for item in list["items"].as_array().into_iter().flatten() {
                api.apply(item.clone());
            }
            Some(api)
        }
    };
    let kubeconfig = env.workdir.join("kubeconfig");
    let source_args: Vec<String> = match &api {
        None => vec!["--from-file".into(), file.display().to_string()],
        Some(api) => {
            std::fs::write(&kubeconfig, api.kubeconfig())?;
            vec!["--kubeconfig".into(), kubeconfig.display().to_string()]
        }
    };
    let mut args: Vec<&str> = source_args.iter().map(String::as_str).collect();
    args.extend(["--resync", "5m"]);
    let ready = env.start_agent_logging(socklb, &args, port, "info")?;
    let pid = env.agent_pid().context("agent pid")?;
    let mut out = Footprint {
        services: n,
        endpoints: e,
        source: format!("{source:?}").to_lowercase(),
        ready_s: ready.as_secs_f64(),
        first_map_writes_s: metric(port, "socklb_map_write_seconds_sum").unwrap_or(0.0),
        peak_rss_bytes: peak_rss(pid).unwrap_or(0),
        map_bytes: map_memory(&env.bpffs),
        log_lines_first_sync: env.agent_log().lines().count(),
        ..Footprint::default()
    };

    out.rss_anon = status_kb(pid, "RssAnon:");
    out.rss_file = status_kb(pid, "RssFile:");
    let before = rss_now(pid);
    let t = Instant::now();
    let body =
        http_get(SocketAddr::from(([127, 0, 0, 1], port)), "/metrics").map(|(_, b)| b).unwrap_or_default();
    out.scrape_ms = t.elapsed().as_secs_f64() * 1e3;
    out.scrape_bytes = body.len();
    out.rss_before_scrape = before;
    out.rss_after_scrape = rss_now(pid);

    let add = |env: &Env, w: &mut Workload, k: usize| -> Result<Duration> {
        let extra = w.extra(k);
        trial(env, &extra, || match &api {
            None => {
                w.push(extra.clone());
                file_change(&file, w)
            }
            Some(api) => api_change(api, &extra),
        })
    };
    for k in 1..=trials {
        out.event_ms.push(add(&env, &mut w, k)?.as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(50));
    }
    out.peak_rss_bytes = out.peak_rss_bytes.max(peak_rss(pid).unwrap_or(0));
    let _ = std::fs::copy(
        env.workdir.join("agent.log"),
        std::env::temp_dir().join(format!("socklb-footprint-{n}x{e}-{}.log", out.source)),
    );
    if resync_trials > 0 {
        // The same maps, adopted by an agent that resyncs every second
        // (each round reads every set back; at 100k one takes longer than
        // a second, so a resync is always under way).
        env.stop_agent();
        let mut args: Vec<&str> = source_args.iter().map(String::as_str).collect();
        args.extend(["--resync", "1s"]);
        env.start_agent_logging(socklb, &args, port, "info")?;
        std::thread::sleep(Duration::from_secs(2));
        for k in 0..resync_trials {
            std::thread::sleep(Duration::from_millis(137));
            out.event_during_resync_ms.push(add(&env, &mut w, trials + 1 + k)?.as_secs_f64() * 1e3);
        }
    }
    Ok(out)
}
