//! Latency samples and their summaries.

use serde::{Deserialize, Serialize};

/// What one client run reports.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Run {
    /// Per connection (or round trip), nanoseconds.
    pub lat_ns: Vec<u64>,
    pub failures: u64,
    pub first_error: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub samples: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    /// For a serial client: 1 / mean latency.
    pub per_sec: f64,
    pub failures: u64,
}

pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub fn summarize(runs: &[Run]) -> Summary {
    let mut all: Vec<u64> = runs.iter().flat_map(|r| r.lat_ns.iter().copied()).collect();
    all.sort_unstable();
    let failures = runs.iter().map(|r| r.failures).sum();
    if all.is_empty() {
        return Summary { failures, ..Default::default() };
    }
    let mean = all.iter().sum::<u64>() as f64 / all.len() as f64;
    Summary {
        samples: all.len(),
        p50_us: percentile(&all, 50.0) as f64 / 1000.0,
        p99_us: percentile(&all, 99.0) as f64 / 1000.0,
        per_sec: 1e9 / mean,
        failures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_rates() {
        let run = Run { lat_ns: (1..=100).map(|i| i * 1000).collect(), ..Default::default() };
        let s = summarize(&[run]);
        assert_eq!(s.samples, 100);
        assert_eq!(s.p50_us, 51.0);
        assert_eq!(s.p99_us, 99.0);
        assert!((s.per_sec - 1e9 / 50_500.0).abs() < 1.0);
    }
}
