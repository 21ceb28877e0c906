//! The hashes the kernel keeps instead of names and contents.
//!
//! FNV-1a, 64 bits: stable across builds and platforms (a restarted agent,
//! possibly a newer build, must compute the same values), and fast enough
//! to hash a million backends at the first sync.

use socklb_common::BackendValue;

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

#[derive(Clone, Copy, Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(OFFSET)
    }
}

impl Fnv {
    pub fn bytes(mut self, bytes: &[u8]) -> Self {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(PRIME);
        }
        self
    }

    /// A string, with its length, so that ("ab", "c") and ("a", "bc")
    /// differ.
    pub fn str(self, s: &str) -> Self {
        self.bytes(&(s.len() as u32).to_le_bytes()).bytes(s.as_bytes())
    }

    pub fn u32(self, v: u32) -> Self {
        self.bytes(&v.to_le_bytes())
    }

    pub fn finish(self) -> u64 {
        // 0 marks "no hash" in a map entry.
        self.0.max(1)
    }
}

/// The hash of a set's backends in slot order.
pub fn content_hash(backends: &[BackendValue]) -> u64 {
    let mut h = Fnv::default().u32(backends.len() as u32);
    for b in backends {
        for w in b.addr {
            h = h.u32(w);
        }
        h = h.bytes(&b.port.to_ne_bytes()).bytes(&[b.proto, b.flags]);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_do_not_change_between_builds() {
        // A restarted agent must find its sets by these: never change them
        // without a new map layout.
        assert_eq!(Fnv::default().finish(), 0xcbf2_9ce4_8422_2325);
        assert_eq!(Fnv::default().bytes(b"a").finish(), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(Fnv::default().str("ab").str("c").finish(), Fnv::default().str("a").str("bc").finish());
    }

    #[test]
    fn order_and_count_change_the_content_hash() {
        let a = BackendValue::new([0, 0, 0xffff_u32.to_be(), 1], 80u16.to_be(), 6);
        let b = BackendValue::new([0, 0, 0xffff_u32.to_be(), 2], 80u16.to_be(), 6);
        assert_ne!(content_hash(&[a, b]), content_hash(&[b, a]));
        assert_ne!(content_hash(&[a]), content_hash(&[a, a]));
        assert_ne!(content_hash(&[]), 0);
    }
}
