//! Select modes: which server an [`XClient`](super::XClient) call goes to.
//!
//! - **RandomSelect**: uniform over the servers.
//! - **RoundRobin**: the servers in discovery order, in turn.
//! - **WeightedRoundRobin**: nginx's smooth weighted round robin over `weight=` (default 1):
//!   each pick adds every server's weight to its current weight, takes the largest (the first
//!   on a tie) and subtracts the total from it. Weights 5,1,1 give a,a,b,a,c,a,a.
//! - **ConsistentHash**: rpcx's key and hash. The key is the 64-bit FNV-1a hash of
//!   `"/" + service + "/" + method + "/" + %v(args)` (rpcx `genKey` / `HashString`), where
//!   `%v(args)` is Go's `fmt.Sprintf("%v", args)` of the Go args value, reproduced for serde
//!   values by [`gofmt`](super::gofmt) (`&ArithArgs{A:10,B:20}` is `&{10 20}`; a raw call's
//!   args are a `[]byte`, `[1 2 3]`). The bucket is the jump consistent hash (Lamping & Veach,
//!   the `dgryski/go-jump` code rpcx's `doublejump` uses, same constants and float arithmetic)
//!   of that key over the number of servers, and buckets index the servers **sorted by
//!   address**. So every percore client picks the same server for the same call. A Go client
//!   picks the same one whenever its bucket table is in the same order; rpcx fills that table
//!   (`doublejump.Hash.Add`) in Go map iteration order, which Go randomises per process, so
//!   with more than one server even two Go clients agree only by that chance. The key and the
//!   hash function are exactly rpcx's ([`consistent_hash_key`], [`jump_hash`]).
//! - **SelectByUser**: a [`Selector`] the program supplies
//!   ([`XClient::set_selector`](super::XClient::set_selector)).

use std::time::{SystemTime, UNIX_EPOCH};

use super::discovery::ServerEntry;

/// How an XClient picks a server for a call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SelectMode {
    /// Uniformly at random (the Go default).
    #[default]
    RandomSelect,
    /// In turn, in discovery order.
    RoundRobin,
    /// nginx smooth weighted round robin over metadata `weight=`.
    WeightedRoundRobin,
    /// rpcx's jump hash of the FNV-1a hash of `/service/method/%v(args)`.
    ConsistentHash,
    /// A [`Selector`] set with [`XClient::set_selector`](super::XClient::set_selector).
    SelectByUser,
}

/// What a [`Selector`] sees of a call.
#[derive(Clone, Copy, Debug)]
pub struct SelectCall<'a> {
    /// The servers to choose from (inactive and other groups already removed).
    pub servers: &'a [ServerEntry],
    /// Service path.
    pub service: &'a str,
    /// Method.
    pub method: &'a str,
    /// The encoded args.
    pub payload: &'a [u8],
}

/// A user-supplied selection policy (SelectByUser): returns an index into `call.servers`, or
/// `None` for "no server" (the call fails with [`Error::NoServer`](super::Error::NoServer)).
pub trait Selector {
    /// Picks the server for one call.
    fn select(&mut self, call: &SelectCall<'_>) -> Option<usize>;
}

impl<F: FnMut(&SelectCall<'_>) -> Option<usize>> Selector for F {
    fn select(&mut self, call: &SelectCall<'_>) -> Option<usize> {
        self(call)
    }
}

/// rpcx's ConsistentHash key: FNV-1a 64 of `/service/method/args_v` (`args_v` = Go's `%v`).
pub fn consistent_hash_key(service: &str, method: &str, args_v: &str) -> u64 {
    let mut h = Fnv1a64::new();
    for part in [service, method, args_v] {
        h.write(b"/");
        h.write(part.as_bytes());
    }
    h.0
}

/// Jump consistent hash: the bucket in `0..buckets` of `key` (`buckets` 0 is treated as 1).
/// Same arithmetic as go-jump, so the same bucket as rpcx for the same key and count.
pub fn jump_hash(mut key: u64, buckets: usize) -> usize {
    let buckets = buckets.max(1) as i64;
    let (mut b, mut j) = (-1i64, 0i64);
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2862933555777941757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1i64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

struct Fnv1a64(u64);

impl Fnv1a64 {
    fn new() -> Fnv1a64 {
        Fnv1a64(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// A select mode's state over a fixed server list.
pub(crate) enum SelectState {
    Random(u64),
    RoundRobin(usize),
    Weighted {
        weights: Vec<i64>,
        current: Vec<i64>,
    },
    /// Server indexes sorted by address: bucket `i` is server `order[i]`.
    Hash {
        order: Vec<usize>,
    },
    User(Option<Box<dyn Selector>>),
}

impl SelectState {
    pub(crate) fn new(mode: SelectMode, servers: &[ServerEntry]) -> SelectState {
        match mode {
            SelectMode::RandomSelect => {
                let seed = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0);
                SelectState::Random(seed | 1)
            }
            SelectMode::RoundRobin => SelectState::RoundRobin(0),
            SelectMode::WeightedRoundRobin => SelectState::Weighted {
                weights: servers.iter().map(|s| s.weight().max(0)).collect(),
                current: vec![0; servers.len()],
            },
            SelectMode::ConsistentHash => {
                let mut order: Vec<usize> = (0..servers.len()).collect();
                order.sort_by(|&a, &b| servers[a].address.cmp(&servers[b].address));
                SelectState::Hash { order }
            }
            SelectMode::SelectByUser => SelectState::User(None),
        }
    }

    /// The state for a new server list: round robin and random go on from where they are, a
    /// user's selector is kept, weights and hash buckets are rebuilt.
    pub(crate) fn update(&mut self, mode: SelectMode, servers: &[ServerEntry]) {
        match self {
            SelectState::Random(_) | SelectState::RoundRobin(_) | SelectState::User(_) => {}
            SelectState::Weighted { .. } | SelectState::Hash { .. } => {
                *self = SelectState::new(mode, servers);
            }
        }
    }

    /// Picks a server index; `args_v` gives Go's `%v` of the args (only ConsistentHash asks).
    pub(crate) fn select(
        &mut self,
        call: &SelectCall<'_>,
        args_v: impl FnOnce() -> String,
    ) -> Option<usize> {
        let n = call.servers.len();
        if n == 0 {
            return None;
        }
        match self {
            SelectState::Random(x) => {
                // xorshift64*: plenty for spreading calls.
                *x ^= *x >> 12;
                *x ^= *x << 25;
                *x ^= *x >> 27;
                Some((x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n)
            }
            SelectState::RoundRobin(i) => {
                let pick = *i % n;
                *i = pick + 1;
                Some(pick)
            }
            SelectState::Weighted { weights, current } => {
                let total: i64 = weights.iter().sum();
                let mut best = 0;
                for i in 0..n {
                    current[i] += weights[i];
                    if current[i] > current[best] {
                        best = i;
                    }
                }
                current[best] -= total;
                Some(best)
            }
            SelectState::Hash { order } => {
                let key = consistent_hash_key(call.service, call.method, &args_v());
                Some(order[jump_hash(key, n)])
            }
            SelectState::User(selector) => selector.as_mut()?.select(call).filter(|&i| i < n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(weights: &[i64]) -> Vec<ServerEntry> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| ServerEntry::new(format!("tcp@h:{i}"), format!("weight={w}")))
            .collect()
    }

    fn call(servers: &[ServerEntry]) -> SelectCall<'_> {
        SelectCall {
            servers,
            service: "Arith",
            method: "Mul",
            payload: &[],
        }
    }

    #[test]
    fn smooth_weighted_round_robin_5_1_1() {
        let s = servers(&[5, 1, 1]);
        let mut state = SelectState::new(SelectMode::WeightedRoundRobin, &s);
        let picks: Vec<usize> = (0..14)
            .map(|_| state.select(&call(&s), String::new).unwrap())
            .collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn fnv_and_jump_match_known_values() {
        // FNV-1a 64 test vectors (the empty string is the offset basis; "a" is from the spec).
        let mut h = Fnv1a64::new();
        assert_eq!(h.0, 0xcbf29ce484222325);
        h.write(b"a");
        assert_eq!(h.0, 0xaf63dc4c8601ec8c);
        // Jump hash: the reference C++ code's buckets for 1..=19 buckets.
        let rows: [(u64, [usize; 19]); 2] = [
            (
                1,
                [0, 0, 0, 0, 0, 0, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 17, 17],
            ),
            (
                0xdeadbeef,
                [0, 1, 2, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 16, 16, 16],
            ),
        ];
        for (key, buckets) in rows {
            for (i, want) in buckets.into_iter().enumerate() {
                assert_eq!(
                    jump_hash(key, i + 1),
                    want,
                    "key {key:#x}, {} buckets",
                    i + 1
                );
            }
        }
        assert_eq!(consistent_hash_key("Arith", "Mul", "&{10 20}"), {
            let mut h = Fnv1a64::new();
            h.write(b"/Arith/Mul/&{10 20}");
            h.0
        });
    }

    #[test]
    fn round_robin_and_hash_are_stable() {
        let s = servers(&[1, 1, 1]);
        let mut rr = SelectState::new(SelectMode::RoundRobin, &s);
        let picks: Vec<usize> = (0..4)
            .map(|_| rr.select(&call(&s), String::new).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0]);
        let mut h = SelectState::new(SelectMode::ConsistentHash, &s);
        let first = h.select(&call(&s), || "&{1 2}".into());
        for _ in 0..10 {
            assert_eq!(h.select(&call(&s), || "&{1 2}".into()), first);
        }
    }
}
