//! Expiry of session-affinity entries.
//!
//! The affinity table is a plain hash, not an LRU: with many services using
//! `sessionAffinity: ClientIP`, an LRU evicted live clients' entries, which
//! moved them to other backends. Instead the agent removes entries whose
//! client has been idle past its service's timeout (as kube-proxy's
//! `recent` match forgets them), and a full table leaves a new client
//! unpinned, counted (`socklb_datapath_events_total{event="affinity_full"}`).

use std::{collections::BTreeMap, path::Path, time::Duration};

use aya::maps::{HashMap, Map, MapData, MapError};
use socklb_common::{AffinityKey, AffinityValue, SetEntry, SetState, map_names, set_flags, sys};

/// How often the table is swept.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Whether an entry has expired: its set is gone or no longer has
/// affinity, or its client has been idle longer than the timeout.
pub fn expired(entry: &AffinityValue, set: Option<&SetEntry>, now_ns: u64) -> bool {
    let Some(set) = set.filter(|s| {
        let st = SetState::unpack(s.state);
        st.is_present() && st.flags & set_flags::AFFINITY != 0
    }) else {
        return true;
    };
    let timeout_ns = u64::from(set.affinity_timeout_secs) * 1_000_000_000;
    now_ns.saturating_sub(entry.last_used_ns) > timeout_ns
}

/// Removes the expired entries of the generation in `dir`; returns how many.
/// `now_ns` is CLOCK_MONOTONIC, the programs' `bpf_ktime_get_ns`.
pub fn sweep(dir: &Path, now_ns: u64) -> Result<usize, MapError> {
    let open = |name: &str| MapData::from_pin(dir.join(name));
    let mut table: HashMap<MapData, AffinityKey, AffinityValue> =
        HashMap::try_from(Map::HashMap(open(map_names::AFFINITY)?))?;
    let sets = open(map_names::SETS)?;
    let mut cache: BTreeMap<u32, Option<SetEntry>> = BTreeMap::new();
    let mut gone = Vec::new();
    for entry in table.iter() {
        let (key, value) = entry?;
        let set = *cache.entry(key.set_id).or_insert_with(|| {
            sys::map_lookup::<u32, SetEntry>(std::os::fd::AsFd::as_fd(sets.fd()), &key.set_id).ok()
        });
        if expired(&value, set.as_ref(), now_ns) {
            gone.push(key);
        }
    }
    let mut removed = 0;
    for key in gone {
        // Refreshed or removed meanwhile: either way not ours to count.
        if table.remove(&key).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// CLOCK_MONOTONIC in nanoseconds.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(timeout: u32, affinity: bool) -> SetEntry {
        let flags = set_flags::PRESENT | if affinity { set_flags::AFFINITY } else { 0 };
        SetEntry {
            state: SetState { base: 0, count: 1, flags }.pack(),
            affinity_timeout_secs: timeout,
            ..Default::default()
        }
    }

    #[test]
    fn entries_expire_after_their_sets_timeout_or_with_their_set() {
        let e = AffinityValue { last_used_ns: 1_000_000_000, backend: Default::default() };
        let s = svc(10, true);
        assert!(!expired(&e, Some(&s), 11_000_000_000));
        assert!(expired(&e, Some(&s), 11_000_000_001));
        assert!(expired(&e, None, 2_000_000_000), "the service is gone");
        assert!(expired(&e, Some(&svc(10, false)), 2_000_000_000), "affinity was turned off");
    }
}
