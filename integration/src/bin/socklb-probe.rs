//! Test helper run by the kernel tests: backend servers, and clients that
//! join a test cgroup and network namespace before they open sockets.
//!
//! The cgroup is joined *before* the namespace: entering a namespace does
//! not move /sys, but tools that remount it (ip netns exec) would.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use socklb_integration::probe::{Attempt, now_ns};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve on each address; every connection or datagram is answered with
    /// the address it arrived on, so a client learns which backend it hit.
    Serve {
        /// Run in this network namespace (default: stay where we are).
        #[arg(long)]
        netns: Option<String>,
        #[arg(long = "tcp")]
        tcp: Vec<SocketAddr>,
        #[arg(long = "udp")]
        udp: Vec<SocketAddr>,
        /// TCP listeners that answer and then keep the connection open.
        #[arg(long = "tcp-hold")]
        tcp_hold: Vec<SocketAddr>,
        /// UDP DNS responders: every A query is answered with the
        /// responder's own IPv4 address.
        #[arg(long = "dns")]
        dns: Vec<SocketAddr>,
    },
    /// Connect (or send) repeatedly and print one JSON line per attempt.
    Connect {
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long)]
        netns: Option<String>,
        /// Repeatable: the attempts cycle through the destinations.
        #[arg(long, required = true)]
        to: Vec<SocketAddr>,
        #[arg(long, value_enum, default_value = "tcp")]
        proto: Proto,
        /// Stop after this many attempts.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Keep going until this much time has passed (overrides --count).
        #[arg(long)]
        duration_ms: Option<u64>,
        /// Keep going until this file exists (overrides --count and
        /// --duration-ms): the test decides when the load ends, so a slow
        /// machine cannot end it before the events it must overlap. Ten
        /// minutes at most, so a test that died cannot leave it running.
        #[arg(long)]
        stop_file: Option<PathBuf>,
        /// For UDP: send every datagram from one unconnected socket.
        #[arg(long)]
        one_socket: bool,
    },
    /// Hold a TCP connection open and report when it is reset or closed.
    Hold {
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long)]
        netns: Option<String>,
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        max_ms: u64,
        /// udp: a connected UDP socket that sends once and then waits.
        #[arg(long, value_enum, default_value = "tcp")]
        proto: Proto,
    },
    /// Open a TCP connection and a connected UDP socket through VIPs and
    /// keep them; print what getpeername and a UDP reply's source say, once
    /// at start and again for every line read on stdin, until stdin ends.
    Keep {
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long)]
        netns: Option<String>,
        /// A `--tcp-hold` server behind a VIP.
        #[arg(long)]
        tcp: SocketAddr,
        /// A UDP server behind a VIP.
        #[arg(long)]
        udp: SocketAddr,
    },
    /// One unconnected UDP socket talking to many destinations: print, per
    /// reply, where it came from (recvfrom) and which backend sent it.
    UdpMulti {
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long)]
        netns: Option<String>,
        #[arg(long = "to", required = true)]
        to: Vec<SocketAddr>,
        /// Send to every destination first, then read every reply (replies
        /// in flight together); otherwise one request at a time.
        #[arg(long)]
        burst: bool,
        /// Repeat this many times.
        #[arg(long, default_value_t = 1)]
        rounds: u32,
        /// Pause between rounds (the socket stays idle).
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
    },
    /// Connect many times to each target and print, per target, which
    /// backends answered, their shares and what getpeername reported.
    Table {
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long)]
        netns: Option<String>,
        /// LABEL=ADDR:PORT, with /udp for UDP (repeatable).
        #[arg(long = "target")]
        targets: Vec<String>,
        #[arg(long, default_value_t = 100)]
        count: u64,
    },
    /// Bind a socket and report the result as JSON ({"errno": null|n}).
    Bind {
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long)]
        netns: Option<String>,
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, value_enum, default_value = "tcp")]
        proto: Proto,
    },
    /// Join the cgroup and namespace, then run a command (e.g. dig).
    Exec {
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long)]
        netns: Option<String>,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Install the datapath in a separate process and exit.
    Install {
        #[arg(long)]
        cgroup: PathBuf,
        #[arg(long)]
        bpffs: PathBuf,
    },
}

/// The longest a `--stop-file` client runs.
const STOP_FILE_LIMIT: Duration = Duration::from_secs(600);

fn join(cgroup: Option<&PathBuf>, netns: Option<&str>) -> Result<()> {
    if let Some(cg) = cgroup {
        fs::write(cg.join("cgroup.procs"), std::process::id().to_string())
            .with_context(|| format!("joining cgroup {}", cg.display()))?;
    }
    if let Some(netns) = netns {
        let ns = fs::File::open(format!("/run/netns/{netns}")).context("opening netns")?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
    }
    Ok(())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Serve { netns, tcp, udp, tcp_hold, dns } => serve(netns.as_deref(), &tcp, &udp, &tcp_hold, &dns),
        Cmd::Connect { cgroup, netns, to, proto, count, duration_ms, stop_file, one_socket } => {
            join(cgroup.as_ref(), netns.as_deref())?;
            let deadline = match &stop_file {
                Some(_) => Some(Instant::now() + STOP_FILE_LIMIT),
                None => duration_ms.map(|ms| Instant::now() + Duration::from_millis(ms)),
            };
            let out = std::io::stdout();
            let mut out = out.lock();
            let udp_socket = if proto == Proto::Udp && one_socket {
                Some(UdpSocket::bind(unspecified(&to[0]))?)
            } else {
                None
            };
            let mut n = 0u64;
            loop {
                let done = match deadline {
                    Some(d) => Instant::now() >= d || stop_file.as_ref().is_some_and(|f| f.exists()),
                    None => n >= count,
                };
                if done {
                    break;
                }
                let target = to[(n as usize) % to.len()];
                let mut attempt = match (proto, &udp_socket) {
                    (Proto::Tcp, _) => tcp_attempt(target),
                    (Proto::Udp, Some(sock)) => udp_send_attempt(sock, target),
                    (Proto::Udp, None) => udp_connected_attempt(target),
                };
                if to.len() > 1 {
                    attempt.to = Some(target.to_string());
                }
                serde_json::to_writer(&mut out, &attempt)?;
                out.write_all(b"\n")?;
                n += 1;
            }
            Ok(())
        }
        Cmd::Hold { cgroup, netns, to, max_ms, proto } => {
            join(cgroup.as_ref(), netns.as_deref())?;
            match proto {
                Proto::Tcp => hold(to, max_ms),
                Proto::Udp => hold_udp(to, max_ms),
            }
        }
        Cmd::UdpMulti { cgroup, netns, to, burst, rounds, pause_ms } => {
            join(cgroup.as_ref(), netns.as_deref())?;
            udp_multi(&to, burst, rounds, pause_ms)
        }
        Cmd::Keep { cgroup, netns, tcp, udp } => {
            join(cgroup.as_ref(), netns.as_deref())?;
            keep(tcp, udp)
        }
        Cmd::Table { cgroup, netns, targets, count } => {
            join(cgroup.as_ref(), netns.as_deref())?;
            table(&targets, count)
        }
        Cmd::Bind { cgroup, netns, addr, proto } => {
            join(cgroup.as_ref(), netns.as_deref())?;
            let result = match proto {
                Proto::Tcp => TcpListener::bind(addr).map(drop),
                Proto::Udp => UdpSocket::bind(addr).map(drop),
            };
            println!("{}", serde_json::json!({"errno": result.err().and_then(|e| e.raw_os_error())}));
            Ok(())
        }
        Cmd::Exec { cgroup, netns, command } => {
            join(cgroup.as_ref(), netns.as_deref())?;
            use std::os::unix::process::CommandExt;
            let err = std::process::Command::new(&command[0]).args(&command[1..]).exec();
            Err(err).with_context(|| format!("exec {}", command[0]))
        }
        Cmd::Install { cgroup, bpffs } => {
            let opts = socklb_bpf::loader::InstallOptions::new(cgroup, bpffs);
            let report = socklb_bpf::loader::install(&opts)?.report;
            println!("{report:?}");
            Ok(())
        }
    }
}

fn unspecified(to: &SocketAddr) -> SocketAddr {
    match to {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("literal"),
    }
}

fn serve(
    netns: Option<&str>,
    tcp: &[SocketAddr],
    udp: &[SocketAddr],
    tcp_hold: &[SocketAddr],
    dns: &[SocketAddr],
) -> Result<()> {
    join(None, netns)?;
    let mut threads = Vec::new();
    for &addr in dns {
        let sock = UdpSocket::bind(addr).with_context(|| format!("bind dns {addr}"))?;
        threads.push(thread::spawn(move || {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
                if let Some(reply) = dns_answer(&buf[..n], &addr) {
                    let _ = sock.send_to(&reply, from);
                }
            }
        }));
    }
    for &addr in tcp_hold {
        let listener = TcpListener::bind(addr).with_context(|| format!("bind tcp {addr}"))?;
        threads.push(thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let local = conn.local_addr().unwrap_or(addr);
                thread::spawn(move || {
                    let _ = conn.write_all(format!("{local}\n").as_bytes());
                    let mut sink = Vec::new();
                    let _ = conn.read_to_end(&mut sink);
                });
            }
        }));
    }
    for &addr in tcp {
        let listener = TcpListener::bind(addr).with_context(|| format!("bind tcp {addr}"))?;
        threads.push(thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                // The address the connection arrived on (the listener's, or
                // for a wildcard listener the one the client reached).
                let local = conn.local_addr().unwrap_or(addr);
                // Answer at once and close: the server side keeps TIME_WAIT.
                let _ = conn.write_all(format!("{local}\n").as_bytes());
            }
        }));
    }
    for &addr in udp {
        let sock = UdpSocket::bind(addr).with_context(|| format!("bind udp {addr}"))?;
        threads.push(thread::spawn(move || {
            let mut buf = [0u8; 512];
            loop {
                let Ok((_, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let _ = sock.send_to(format!("{addr}\n").as_bytes(), from);
            }
        }));
    }
    println!("ready");
    std::io::stdout().flush()?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn tcp_attempt(to: SocketAddr) -> Attempt {
    let t_start_ns = now_ns();
    let mut a = Attempt { t_start_ns, ..Default::default() };
    match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
        Ok(mut s) => {
            a.peer = s.peer_addr().ok().map(|p| p.to_string());
            a.local = s.local_addr().ok().map(|p| p.to_string());
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut reply = String::new();
            match s.read_to_string(&mut reply) {
                Ok(_) if !reply.is_empty() => {
                    a.ok = true;
                    a.backend = Some(reply.trim().to_string());
                }
                Ok(_) => a.error = Some("empty reply".into()),
                Err(e) => {
                    a.errno = e.raw_os_error();
                    a.error = Some(e.to_string());
                }
            }
        }
        Err(e) => {
            a.errno = e.raw_os_error();
            a.error = Some(e.to_string());
        }
    }
    a.t_end_ns = now_ns();
    a
}

fn udp_connected_attempt(to: SocketAddr) -> Attempt {
    let t_start_ns = now_ns();
    let mut a = Attempt { t_start_ns, ..Default::default() };
    let result = (|| -> std::io::Result<()> {
        let sock = UdpSocket::bind(unspecified(&to))?;
        sock.connect(to)?;
        a.peer = sock.peer_addr().ok().map(|p| p.to_string());
        a.local = sock.local_addr().ok().map(|p| p.to_string());
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        sock.send(b"?")?;
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf)?;
        a.backend = Some(String::from_utf8_lossy(&buf[..n]).trim().to_string());
        a.ok = true;
        Ok(())
    })();
    if let Err(e) = result {
        a.errno = e.raw_os_error();
        a.error = Some(e.to_string());
    }
    a.t_end_ns = now_ns();
    a
}

fn udp_send_attempt(sock: &UdpSocket, to: SocketAddr) -> Attempt {
    let t_start_ns = now_ns();
    let mut a = Attempt { t_start_ns, ..Default::default() };
    let result = (|| -> std::io::Result<()> {
        a.local = sock.local_addr().ok().map(|p| p.to_string());
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        sock.send_to(b"?", to)?;
        let mut buf = [0u8; 512];
        let (n, from) = sock.recv_from(&mut buf)?;
        a.peer = Some(from.to_string());
        a.backend = Some(String::from_utf8_lossy(&buf[..n]).trim().to_string());
        a.ok = true;
        Ok(())
    })();
    if let Err(e) = result {
        a.errno = e.raw_os_error();
        a.error = Some(e.to_string());
    }
    a.t_end_ns = now_ns();
    a
}

/// Connects, then waits for the server to go away or the socket to be
/// reset; prints one Attempt whose t_end_ns is when that happened.
fn hold(to: SocketAddr, max_ms: u64) -> Result<()> {
    let mut a = Attempt { t_start_ns: now_ns(), ..Default::default() };
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
    a.peer = s.peer_addr().ok().map(|p| p.to_string());
    s.set_read_timeout(Some(Duration::from_millis(max_ms)))?;
    let mut first = [0u8; 128];
    let n = s.read(&mut first)?;
    a.backend = Some(String::from_utf8_lossy(&first[..n]).trim().to_string());
    println!("{}", serde_json::to_string(&a)?);
    std::io::stdout().flush()?;
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => a.error = Some("closed".into()),
        Err(e) => {
            a.errno = e.raw_os_error();
            a.error = Some(e.to_string());
        }
    }
    a.t_end_ns = now_ns();
    println!("{}", serde_json::to_string(&a)?);
    if a.errno.is_none() && a.error.is_none() {
        bail!("hold ended without an event");
    }
    Ok(())
}

fn table(targets: &[String], count: u64) -> Result<()> {
    println!(
        "{:<14} {:<28} {:>8}  {:<24} BACKENDS (share of answers)",
        "SERVICE", "FRONTEND", "OK", "GETPEERNAME"
    );
    for t in targets {
        let (label, rest) =
            t.split_once('=').with_context(|| format!("target {t:?} is not LABEL=ADDR:PORT"))?;
        let (addr, udp) = match rest.strip_suffix("/udp") {
            Some(a) => (a, true),
            None => (rest, false),
        };
        let to: SocketAddr = addr.parse().with_context(|| format!("target {t:?}"))?;
        let sock = if udp { Some(UdpSocket::bind(unspecified(&to))?) } else { None };
        let attempts: Vec<Attempt> = (0..count)
            .map(|_| match &sock {
                Some(s) => udp_send_attempt(s, to),
                None => tcp_attempt(to),
            })
            .collect();
        let ok = attempts.iter().filter(|a| a.ok).count();
        let mut shares: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
        let mut peers: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        let mut errors: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
        for a in &attempts {
            if let Some(b) = a.backend.as_ref().filter(|_| a.ok) {
                *shares.entry(b.clone()).or_default() += 1;
            }
            if let Some(p) = &a.peer {
                peers.insert(p.clone());
            }
            if let Some(e) = &a.error {
                *errors.entry(e.clone()).or_default() += 1;
            }
        }
        let mut detail: Vec<String> =
            shares.iter().map(|(b, n)| format!("{b} {:.0}%", 100.0 * *n as f64 / ok.max(1) as f64)).collect();
        detail.extend(errors.iter().map(|(e, n)| format!("error x{n}: {e}")));
        let peer =
            if peers.is_empty() { "-".to_string() } else { peers.into_iter().collect::<Vec<_>>().join(",") };
        let frontend = format!("{to}/{}", if udp { "UDP" } else { "TCP" });
        println!(
            "{label:<14} {frontend:<28} {:>8}  {peer:<24} {}",
            format!("{ok}/{count}"),
            detail.join("  ")
        );
    }
    Ok(())
}

/// A minimal DNS answer: the query's id and question, and one A record
/// holding the responder's own IPv4 address (so the client learns which
/// backend answered).
fn dns_answer(query: &[u8], me: &SocketAddr) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question ends after the name's terminating zero, qtype and qclass.
    let mut i = 12;
    while *query.get(i)? != 0 {
        i += usize::from(query[i]) + 1;
    }
    let question_end = i + 5;
    let question = query.get(12..question_end)?;
    let ip = match me.ip() {
        std::net::IpAddr::V4(v4) => v4.octets(),
        std::net::IpAddr::V6(_) => [192, 0, 2, 1],
    };
    let mut r = Vec::with_capacity(question_end + 16);
    r.extend_from_slice(&query[0..2]); // id
    r.extend_from_slice(&[0x81, 0x80]); // response, recursion desired and available
    r.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 0]); // 1 question, 1 answer
    r.extend_from_slice(question);
    r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
    r.extend_from_slice(&ip);
    Some(r)
}

/// A connected UDP socket: one round trip, then a blocking receive that
/// only an error (the socket being destroyed) or the timeout ends.
fn hold_udp(to: SocketAddr, max_ms: u64) -> Result<()> {
    let mut a = Attempt { t_start_ns: now_ns(), ..Default::default() };
    let sock = UdpSocket::bind(unspecified(&to))?;
    sock.connect(to)?;
    a.peer = sock.peer_addr().ok().map(|p| p.to_string());
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    sock.send(b"?")?;
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf)?;
    a.backend = Some(String::from_utf8_lossy(&buf[..n]).trim().to_string());
    println!("{}", serde_json::to_string(&a)?);
    std::io::stdout().flush()?;
    sock.set_read_timeout(Some(Duration::from_millis(max_ms)))?;
    match sock.recv(&mut buf) {
        Ok(_) => a.error = Some("unexpected datagram".into()),
        Err(e) => {
            a.errno = e.raw_os_error();
            a.error = Some(e.to_string());
        }
    }
    a.t_end_ns = now_ns();
    // A timeout is not an event: only print real breakage.
    if !matches!(a.errno, Some(11) | Some(110)) {
        println!("{}", serde_json::to_string(&a)?);
    }
    Ok(())
}

/// See `Cmd::Keep`.
fn keep(tcp: SocketAddr, udp: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&tcp, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut first = [0u8; 128];
    let n = stream.read(&mut first)?;
    let tcp_backend = String::from_utf8_lossy(&first[..n]).trim().to_string();
    let sock = UdpSocket::bind(unspecified(&udp))?;
    sock.connect(udp)?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    let check = |stream: &TcpStream| -> serde_json::Value {
        // A reset connection reports itself on a non-blocking peek.
        let _ = stream.set_nonblocking(true);
        let mut buf = [0u8; 1];
        let tcp_state = match stream.peek(&mut buf) {
            Ok(0) => "closed".to_string(),
            Ok(_) => "data".to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => "open".to_string(),
            Err(e) => e.to_string(),
        };
        let _ = stream.set_nonblocking(false);
        let mut reply = [0u8; 512];
        // recv_from asks for the source address, so recvmsg runs.
        let udp_reply = sock.send(b"?").and_then(|_| sock.recv_from(&mut reply));
        serde_json::json!({
            "tcp_peer": stream.peer_addr().map(|p| p.to_string()).unwrap_or_else(|e| e.to_string()),
            "tcp_backend": tcp_backend,
            "tcp_state": tcp_state,
            "udp_peer": sock.peer_addr().map(|p| p.to_string()).unwrap_or_else(|e| e.to_string()),
            "udp_reply_from": udp_reply.as_ref().map(|(_, from)| from.to_string()).unwrap_or_else(|e| e.to_string()),
            "udp_backend": udp_reply.as_ref().map(|(n, _)| String::from_utf8_lossy(&reply[..*n]).trim().to_string()).unwrap_or_default(),
        })
    };
    println!("{}", check(&stream));
    std::io::stdout().flush()?;
    for line in std::io::stdin().lines() {
        line?;
        println!("{}", check(&stream));
        std::io::stdout().flush()?;
    }
    Ok(())
}

/// See `Cmd::UdpMulti`.
fn udp_multi(to: &[SocketAddr], burst: bool, rounds: u32, pause_ms: u64) -> Result<()> {
    let v6 = to.iter().any(SocketAddr::is_ipv6);
    let sock = UdpSocket::bind(if v6 { "[::]:0" } else { "0.0.0.0:0" })?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 512];
    let print =
        |to: Option<&SocketAddr>, round: u32, reply: std::io::Result<(usize, SocketAddr)>, buf: &[u8]| {
            let line = match reply {
                Ok((n, from)) => serde_json::json!({"round": round, "to": to.map(ToString::to_string),
                "from": from.to_string(), "backend": String::from_utf8_lossy(&buf[..n]).trim()}),
                Err(e) => serde_json::json!({"round": round, "to": to.map(ToString::to_string),
                "error": e.to_string(), "errno": e.raw_os_error()}),
            };
            println!("{line}");
        };
    for round in 0..rounds {
        if round > 0 && pause_ms > 0 {
            thread::sleep(Duration::from_millis(pause_ms));
        }
        if burst {
            let mut sent = 0;
            for t in to {
                match sock.send_to(b"?", t) {
                    Ok(_) => sent += 1,
                    Err(e) => print(Some(t), round, Err(e), &buf),
                }
            }
            for _ in 0..sent {
                let reply = sock.recv_from(&mut buf);
                print(None, round, reply, &buf.clone());
            }
        } else {
            for t in to {
                let reply = sock.send_to(b"?", t).and_then(|_| sock.recv_from(&mut buf));
                print(Some(t), round, reply, &buf.clone());
            }
        }
    }
    std::io::stdout().flush()?;
    Ok(())
}
