//! How the API watchers retry after an error or while the API server is
//! away, and how they report it.
//!
//! kube-rs's stream backoff resets on every `Ok` item, and its watcher yields
//! `Event::Init` *before* each list attempt, so a server that cannot be
//! reached was retried every 0.5–1 s forever. The watchers therefore drive
//! their own retries: the delay resets only on real progress (a complete
//! list, or an object event), grows exponentially with jitter up to
//! `--api-retry-max` (thousands of nodes must not retry in step), and a
//! `410 Gone` relists at once, because the server answered and only the
//! watch position is lost.
//!
//! Reporting is per failure streak: the first failure is logged with the URL
//! and the OS error, a reminder every minute while it lasts, and one line
//! when the server answers again, instead of a line per attempt.

use std::time::{Duration, Instant};

use backon::BackoffBuilder as _;

const FIRST: Duration = Duration::from_millis(500);
/// While a streak lasts, one reminder this often.
pub const REMIND_EVERY: Duration = Duration::from_secs(60);

/// Exponential with jitter, never longer than `max`. backon adds a jitter
/// of up to the base delay, so the base doubles up to `max / 2`.
pub struct WatchBackoff {
    builder: backon::ExponentialBuilder,
    delays: backon::ExponentialBackoff,
}

impl WatchBackoff {
    pub fn new(max: Duration) -> Self {
        let base_max = max / 2;
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(FIRST.min(base_max))
            .with_max_delay(base_max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self { delays: builder.build(), builder }
    }

    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.delays.next()
    }
}

/// What a failure should produce in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// The first failure of a streak: log it in full.
    First,
    /// The streak goes on; a reminder with the count so far.
    StillFailing { failures: u64, since: Duration },
    /// Nothing to log (it was reported recently).
    Quiet,
    /// A watch expired (410 Gone): relisting, no backoff.
    Expired,
}

/// The end of a streak, when the server answered again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovered {
    pub failures: u64,
    pub lasted: Duration,
}

/// One watcher's retry state: the backoff and the current failure streak.
pub struct Retry {
    backoff: WatchBackoff,
    streak: Option<Streak>,
}

struct Streak {
    started: Instant,
    failures: u64,
    last_report: Instant,
}

impl Retry {
    pub fn new(max: Duration) -> Self {
        Self { backoff: WatchBackoff::new(max), streak: None }
    }

    /// A failure at `now`: how long to wait before the next attempt, and
    /// what to log. `gone` is a 410: the watch position expired.
    pub fn failed(&mut self, now: Instant, gone: bool) -> (Duration, Report) {
        // A first 410 relists at once; a 410 that repeats within a streak
        // backs off like any other error.
        if gone && self.streak.is_none() {
            return (Duration::ZERO, Report::Expired);
        }
        let delay = self.backoff.next().unwrap_or(FIRST);
        let report = match &mut self.streak {
            None => {
                self.streak = Some(Streak { started: now, failures: 1, last_report: now });
                Report::First
            }
            Some(s) => {
                s.failures += 1;
                if now.duration_since(s.last_report) >= REMIND_EVERY {
                    s.last_report = now;
                    Report::StillFailing { failures: s.failures, since: now.duration_since(s.started) }
                } else {
                    Report::Quiet
                }
            }
        };
        (delay, report)
    }

    /// Real progress (a complete list, an object event): the backoff starts
    /// again from its first delay. Returns the streak that ended, if any.
    pub fn progressed(&mut self, now: Instant) -> Option<Recovered> {
        self.backoff.reset();
        self.streak.take().map(|s| Recovered { failures: s.failures, lasted: now.duration_since(s.started) })
    }
}

/// Every message of an error and its sources, without the repetitions that
/// wrapping errors add ("client error (Connect): tcp connect error:
/// Connection refused (os error 111)").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Whether the error (or one of its sources) is an OS-level I/O error: the
/// server could not be reached at all.
pub fn is_transport_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_ceiling_and_never_stop() {
        let mut b = WatchBackoff::new(Duration::from_secs(10));
        let delays: Vec<Duration> = (0..50).map(|_| b.next().expect("never gives up")).collect();
        assert!(delays[0] >= FIRST && delays[0] <= 2 * FIRST, "{:?}", delays[0]);
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)), "{delays:?}");
        assert!(delays[40..].iter().all(|d| *d >= Duration::from_secs(5)), "{delays:?}");
    }

    #[test]
    fn only_progress_resets_the_backoff() {
        let t0 = Instant::now();
        let mut r = Retry::new(Duration::from_secs(8));
        let mut last = Duration::ZERO;
        for i in 0..8 {
            let (d, _) = r.failed(t0 + Duration::from_secs(i), false);
            last = d;
        }
        assert!(last >= Duration::from_secs(4), "{last:?}");
        r.progressed(t0 + Duration::from_secs(9));
        let (d, report) = r.failed(t0 + Duration::from_secs(10), false);
        assert!(d <= 2 * FIRST, "{d:?}");
        assert_eq!(report, Report::First);
    }

    #[test]
    fn a_streak_is_reported_once_then_reminded_then_closed() {
        let t0 = Instant::now();
        let mut r = Retry::new(Duration::from_secs(4));
        assert_eq!(r.failed(t0, false).1, Report::First);
        let mut reports = Vec::new();
        for s in 1..=130 {
            reports.push(r.failed(t0 + Duration::from_secs(s), false).1);
        }
        let reminders: Vec<_> = reports.iter().filter(|r| matches!(r, Report::StillFailing { .. })).collect();
        assert_eq!(reminders.len(), 2, "{reminders:?}");
        assert_eq!(reminders[0], &Report::StillFailing { failures: 61, since: Duration::from_secs(60) });
        let rec = r.progressed(t0 + Duration::from_secs(131)).expect("a streak ended");
        assert_eq!(rec, Recovered { failures: 131, lasted: Duration::from_secs(131) });
        assert_eq!(r.progressed(t0 + Duration::from_secs(132)), None);
    }

    #[test]
    fn a_first_410_relists_at_once_and_a_repeated_one_backs_off() {
        let t0 = Instant::now();
        let mut r = Retry::new(Duration::from_secs(4));
        assert_eq!(r.failed(t0, true), (Duration::ZERO, Report::Expired));
        // The relist itself fails: now it is a streak.
        let (d, report) = r.failed(t0, false);
        assert!(d >= FIRST);
        assert_eq!(report, Report::First);
        let (d, _) = r.failed(t0, true);
        assert!(d > Duration::ZERO, "a 410 inside a streak backs off");
    }

    #[test]
    fn error_chains_keep_the_os_error_once() {
        let io = std::io::Error::from_raw_os_error(113);
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(io);
        let text = error_chain(&e);
        assert!(text.starts_with("client error (Connect): "), "{text}");
        assert!(text.contains("os error 113"), "{text}");
        assert!(is_transport_error(&e));
    }
}
