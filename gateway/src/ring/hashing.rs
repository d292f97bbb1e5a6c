//! Rendezvous (highest random weight) hashing: a key belongs to the member
//! whose `score(member, key)` is highest. When a member joins it takes only
//! the keys it now scores highest on; when one leaves only its own keys move,
//! each to its runner-up. No virtual nodes are needed for balance, and the
//! cost, one mix per member per key, is nothing next to a gRPC hop for the
//! ring sizes a gateway runs (a few to a few dozen replicas).
//!
//! The hash is fixed (not `RandomState`): every member must compute the same
//! owner for the same key.

/// 64-bit FNV-1a over the bytes, then the splitmix64 finaliser: FNV alone
/// mixes the last bytes poorly, the finaliser spreads every input bit over
/// the whole word.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64's finaliser: a bijection with full avalanche.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The weight of `member` (its [`hash64`]) for a key (its [`hash64`]).
pub fn score(member: u64, key: u64) -> u64 {
    mix(key ^ mix(member))
}

/// The index of the member of `members` (their hashes) that owns `key`,
/// `None` when there are none. Ties (astronomically rare) go to the lower
/// member hash, so every member still agrees.
pub fn owner(members: &[u64], key: u64) -> Option<usize> {
    members
        .iter()
        .enumerate()
        .max_by_key(|(_, m)| (score(**m, key), std::cmp::Reverse(**m)))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A seeded generator, so a failure reproduces.
    struct SplitMix(u64);
    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            mix(self.0)
        }
        fn trace_id(&mut self) -> [u8; 16] {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&self.next().to_le_bytes());
            id[8..].copy_from_slice(&self.next().to_le_bytes());
            id
        }
    }

    fn members(n: usize, rng: &mut SplitMix) -> Vec<String> {
        (0..n)
            .map(|i| {
                format!(
                    "10.{}.{}.{}:4319",
                    rng.next() % 256,
                    rng.next() % 256,
                    i % 256
                )
            })
            .collect()
    }

    fn owners(members: &[String], keys: &[u64]) -> Vec<String> {
        let hashes: Vec<u64> = members.iter().map(|m| hash64(m.as_bytes())).collect();
        keys.iter()
            .map(|k| members[owner(&hashes, *k).unwrap()].clone())
            .collect()
    }

    /// For ring sizes 1..=12 and random member names: adding a member moves
    /// keys only to it, removing one moves only its keys, and every member
    /// owns its fair share within 15% (10k keys: the binomial spread is ~3%).
    #[test]
    fn ownership_moves_minimally_and_load_is_balanced() {
        let mut rng = SplitMix(0x5eed);
        const KEYS: usize = 10_000;
        for round in 0..40 {
            let n = 1 + round % 12;
            let mut ring = members(n, &mut rng);
            let keys: Vec<u64> = (0..KEYS).map(|_| hash64(&rng.trace_id())).collect();
            let before = owners(&ring, &keys);

            let mut load: HashMap<&str, usize> = HashMap::new();
            for o in &before {
                *load.entry(o.as_str()).or_default() += 1;
            }
            let fair = KEYS as f64 / n as f64;
            for m in &ring {
                let got = load.get(m.as_str()).copied().unwrap_or(0) as f64;
                assert!(
                    (got - fair).abs() <= 0.15 * fair,
                    "{n} members: {m} owns {got} keys, fair share {fair}"
                );
            }

            // Join: a key either stays or moves to the newcomer.
            let joiner = format!("192.168.{}.{}:4319", rng.next() % 256, rng.next() % 256);
            ring.push(joiner.clone());
            let after_join = owners(&ring, &keys);
            let mut moved = 0;
            for (b, a) in before.iter().zip(&after_join) {
                if a != b {
                    assert_eq!(a, &joiner, "a key moved between two old members");
                    moved += 1;
                }
            }
            let expected = KEYS as f64 / (n + 1) as f64;
            assert!(
                (moved as f64 - expected).abs() <= 0.15 * expected,
                "join moved {moved} keys, expected about {expected}"
            );

            // Leave: only the keys of the member that left move.
            let leaver = ring.remove(rng.next() as usize % ring.len());
            let after_leave = owners(&ring, &keys);
            for (b, a) in after_join.iter().zip(&after_leave) {
                if b != &leaver {
                    assert_eq!(a, b, "a key of a member that stayed moved");
                } else {
                    assert_ne!(a, &leaver);
                }
            }
            // Member order does not matter: every member computes the same owners.
            ring.reverse();
            assert_eq!(owners(&ring, &keys), after_leave);
        }
    }

    #[test]
    fn no_members_no_owner() {
        assert_eq!(owner(&[], 42), None);
        assert_eq!(owner(&[7], 42), Some(0));
    }
}
