//! How the API watchers retry after an error or while the API server is
//! away.
//!
//! kube-rs's default (client-go's: 0.8 s doubling to 30 s, with jitter up to
//! the delay again) can leave a node up to a minute behind after the API
//! server returns, all that time serving the state from before the outage.
//! A node agent that only watches wants to catch up sooner, so the ceiling
//! is a flag (`--api-retry-max`, 10 s by default). Jitter stays, so that
//! thousands of nodes do not retry in step, and the delay resets only after
//! a quiet period, so a flapping server is not hammered.

use std::time::Duration;

use backon::BackoffBuilder as _;
use kube::runtime::utils::{Backoff, ResetTimerBackoff};

const FIRST: Duration = Duration::from_millis(500);
/// A watch that ran this long without an error starts again from FIRST.
const RESET_AFTER: Duration = Duration::from_secs(60);

/// Exponential with jitter, never longer than `max`. backon adds a jitter
/// of up to the base delay, so the base doubles up to `max / 2`.
pub struct WatchBackoff {
    builder: backon::ExponentialBuilder,
    delays: backon::ExponentialBackoff,
}

impl WatchBackoff {
    /// The policy the watchers use: resets only after a quiet period.
    pub fn for_watchers(max: Duration) -> ResetTimerBackoff<Self> {
        ResetTimerBackoff::new(Self::new(max), RESET_AFTER)
    }

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
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.delays.next()
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.delays = self.builder.build();
    }
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
    fn a_reset_starts_again_from_the_first_delay() {
        let mut b = WatchBackoff::new(Duration::from_secs(10));
        let late: Vec<Duration> = (0..20).filter_map(|_| b.next()).collect();
        assert!(late[19] >= Duration::from_secs(5));
        b.reset();
        let first = b.next().expect("a delay");
        assert!(first <= 2 * FIRST, "{first:?}");
    }
}
