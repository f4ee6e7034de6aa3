//! kcp-go's forward error correction, sans-IO: Reed-Solomon over GF(2^8) with klauspost's
//! matrix (Vandermonde times the inverse of its top square), 10 data + 3 parity shards in rpcx.
//!
//! ```text
//! offset (after the crypt header)
//! 0 seqid u32 LE | 4 type u16 LE (0xf1 data, 0xf2 parity) | 6 data: size u16 LE, KCP bytes
//!                                                         | 6 parity: parity bytes
//! ```
//!
//! The sender numbers every datagram it sends (ACK-only ones too); seqids 13k..13k+9 are data
//! shards and right after the 10th, 13k+10..13k+12 are the group's parity. A shard's coded region
//! is its bytes from offset 6 (the size field on), zero-padded to the group's longest; the size
//! field lets a recovered shard find its end. Unfinished groups send no parity. The counter wraps
//! only after a parity shard, at the largest multiple of the group size that fits a u32.
//!
//! The receiver passes each data shard's KCP bytes on at once; it keeps a few groups' shards so
//! that, once any 10 of a group's 13 have arrived, the missing data shards are rebuilt.

use std::collections::VecDeque;
use std::sync::Arc;

use reed_solomon_erasure::galois_8::ReedSolomon;

/// Bytes of FEC header: seqid 4, type 2.
pub const HEADER: usize = 6;
/// Bytes of the data shard's size field, right after the header.
pub const SIZE: usize = 2;
pub const TYPE_DATA: u16 = 0xf1;
pub const TYPE_PARITY: u16 = 0xf2;

/// How many groups a receiver keeps shards for; an older group is forgotten (as kcp-go's
/// `rxlimit` of 3 groups' worth of shards does) so memory per session stays bounded.
const GROUPS_KEPT: usize = 3;

/// Why the FEC layer refused a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FecError {
    #[error("shorter than the FEC header")]
    TooShort,
    #[error("unknown FEC shard type {0:#06x}")]
    UnknownType(u16),
}

/// The code of one endpoint, shared by its sessions (encoding and decoding take `&self`).
pub fn codec(data: usize, parity: usize) -> Option<Arc<ReedSolomon>> {
    ReedSolomon::new(data, parity).ok().map(Arc::new)
}

/// Where a seqid counter wraps: the largest multiple of the group size that fits a u32
/// (4294967287 for 13, so the last seqid is 4294967286, a parity shard).
pub fn paws(group: usize) -> u32 {
    (u32::MAX / group as u32) * group as u32
}

/// One direction's encoder: numbers datagrams and makes the parity of each full group.
pub struct FecEncoder {
    rs: Arc<ReedSolomon>,
    next: u32,
    paws: u32,
    /// The coded regions (size field on) of this group's data shards so far.
    cache: Vec<Vec<u8>>,
    count: usize,
    /// Longest coded region in the group.
    max: usize,
    parity: Vec<Vec<u8>>,
    parity_first: u32,
}

impl FecEncoder {
    pub fn new(rs: Arc<ReedSolomon>) -> FecEncoder {
        let data = rs.data_shard_count();
        let parity = rs.parity_shard_count();
        FecEncoder {
            next: 0,
            paws: paws(data + parity),
            cache: vec![Vec::new(); data],
            count: 0,
            max: 0,
            parity: vec![Vec::new(); parity],
            parity_first: 0,
            rs,
        }
    }

    #[cfg(test)]
    pub fn set_next(&mut self, next: u32) {
        self.next = next;
    }

    /// Marks `fec` (a datagram from its FEC header on, the 8 header bytes left free) as the next
    /// data shard: seqid, type and size. Returns how many parity shards are now ready (0, or the
    /// parity count when this shard completed a group); read them with [`Self::parity`].
    pub fn encode(&mut self, fec: &mut [u8]) -> usize {
        debug_assert!(fec.len() >= HEADER + SIZE);
        let size = (fec.len() - HEADER) as u16;
        fec[..4].copy_from_slice(&self.next.to_le_bytes());
        fec[4..6].copy_from_slice(&TYPE_DATA.to_le_bytes());
        fec[6..8].copy_from_slice(&size.to_le_bytes());
        self.next = (self.next + 1) % self.paws;

        let region = &fec[HEADER..];
        let shard = &mut self.cache[self.count];
        shard.clear();
        shard.extend_from_slice(region);
        self.max = self.max.max(region.len());
        self.count += 1;
        if self.count < self.cache.len() {
            return 0;
        }

        for shard in &mut self.cache {
            shard.resize(self.max, 0);
        }
        for p in &mut self.parity {
            p.clear();
            p.resize(self.max, 0);
        }
        self.count = 0;
        self.max = 0;
        // Equal lengths and the right counts are guaranteed above, the only errors encode_sep has.
        if self.rs.encode_sep(&self.cache, &mut self.parity).is_err() {
            return 0;
        }
        self.parity_first = self.next;
        let n = self.parity.len() as u32;
        self.next = ((u64::from(self.next) + u64::from(n)) % u64::from(self.paws)) as u32;
        self.parity.len()
    }

    /// Parity shard `i` of the group just completed: appends its FEC header and parity bytes to
    /// `out`.
    pub fn parity(&self, i: usize, out: &mut Vec<u8>) {
        let seqid = ((u64::from(self.parity_first) + i as u64) % u64::from(self.paws)) as u32;
        out.extend_from_slice(&seqid.to_le_bytes());
        out.extend_from_slice(&TYPE_PARITY.to_le_bytes());
        out.extend_from_slice(&self.parity[i]);
    }
}

struct Group {
    base: u32,
    /// Coded regions by index; data and parity.
    shards: Vec<Option<Vec<u8>>>,
    present: usize,
    data_present: usize,
    /// Every data shard is known (arrived or rebuilt): nothing more to do for this group.
    done: bool,
}

/// What one datagram gave the receiver.
pub struct Decoded<'a> {
    /// A data shard's KCP bytes (everything after the size field); empty for parity.
    pub kcp: &'a [u8],
    /// Data shards rebuilt because of this datagram, appended to the caller's list.
    pub recovered: usize,
}

/// One direction's decoder.
pub struct FecDecoder {
    rs: Arc<ReedSolomon>,
    group: u32,
    groups: VecDeque<Group>,
    /// Shard buffers of finished groups, reused so that keeping shards allocates nothing in the
    /// steady state.
    spare: Vec<Vec<u8>>,
}

impl FecDecoder {
    pub fn new(rs: Arc<ReedSolomon>) -> FecDecoder {
        FecDecoder {
            group: (rs.total_shard_count()) as u32,
            groups: VecDeque::with_capacity(GROUPS_KEPT),
            spare: Vec::new(),
            rs,
        }
    }

    fn recycle(spare: &mut Vec<Vec<u8>>, shards: Vec<Option<Vec<u8>>>, keep: usize) {
        for s in shards.into_iter().flatten() {
            if spare.len() < keep {
                spare.push(s);
            }
        }
    }

    /// Takes one datagram from its FEC header on. Rebuilt data shards' KCP bytes (trimmed with
    /// their size field) are appended to `recovered`.
    pub fn decode<'a>(
        &mut self,
        fec: &'a [u8],
        recovered: &mut Vec<Vec<u8>>,
    ) -> Result<Decoded<'a>, FecError> {
        if fec.len() < HEADER {
            return Err(FecError::TooShort);
        }
        let seqid = u32::from_le_bytes([fec[0], fec[1], fec[2], fec[3]]);
        let kind = u16::from_le_bytes([fec[4], fec[5]]);
        let kcp = match kind {
            TYPE_DATA if fec.len() >= HEADER + SIZE => &fec[HEADER + SIZE..],
            TYPE_DATA => return Err(FecError::TooShort),
            TYPE_PARITY => &fec[..0],
            other => return Err(FecError::UnknownType(other)),
        };
        let n = self.store(seqid, &fec[HEADER..], recovered);
        Ok(Decoded { kcp, recovered: n })
    }

    fn store(&mut self, seqid: u32, region: &[u8], recovered: &mut Vec<Vec<u8>>) -> usize {
        let data = self.rs.data_shard_count();
        let keep = self.group as usize * 2;
        let base = seqid - seqid % self.group;
        let index = (seqid % self.group) as usize;
        let at = match self.groups.iter().position(|g| g.base == base) {
            Some(at) => at,
            None => {
                if self.groups.len() == GROUPS_KEPT
                    && let Some(old) = self.groups.pop_front()
                {
                    Self::recycle(&mut self.spare, old.shards, keep);
                }
                self.groups.push_back(Group {
                    base,
                    shards: vec![None; self.group as usize],
                    present: 0,
                    data_present: 0,
                    done: false,
                });
                self.groups.len() - 1
            }
        };
        let g = &mut self.groups[at];
        if g.done || g.shards[index].is_some() {
            return 0;
        }
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(region);
        g.shards[index] = Some(buf);
        g.present += 1;
        if index < data {
            g.data_present += 1;
        }
        if g.data_present == data {
            g.done = true;
            Self::recycle(&mut self.spare, std::mem::take(&mut g.shards), keep);
            return 0;
        }
        if g.present < data {
            return 0;
        }

        // Enough shards: zero-extend to the longest received, rebuild the missing data shards.
        let longest = g.shards.iter().flatten().map(Vec::len).max().unwrap_or(0);
        let missing: Vec<usize> = (0..data).filter(|&i| g.shards[i].is_none()).collect();
        for s in g.shards.iter_mut().flatten() {
            s.resize(longest, 0);
        }
        let mut shards = std::mem::take(&mut g.shards);
        g.done = true;
        if self.rs.reconstruct_data(&mut shards).is_err() {
            return 0;
        }
        let mut n = 0;
        for i in missing {
            let Some(s) = shards[i].as_ref() else {
                continue;
            };
            if s.len() < SIZE {
                continue;
            }
            let size = usize::from(u16::from_le_bytes([s[0], s[1]]));
            if size < SIZE || size > s.len() {
                continue;
            }
            recovered.push(s[SIZE..size].to_vec());
            n += 1;
        }
        Self::recycle(&mut self.spare, shards, keep);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::kcp::crypt;
    use crate::transport::kcp::vectors::Capture;

    const OFF: usize = crypt::HEADER; // the FEC header starts after the crypt header

    #[test]
    fn the_code_is_klauspost_default_matrix() {
        let rs = codec(10, 3).unwrap();
        let cap = Capture::load();
        // Encoding unit vectors reads the parity rows out of the codec.
        for c in 0..10 {
            let data: Vec<Vec<u8>> = (0..10).map(|i| vec![u8::from(i == c)]).collect();
            let mut parity = vec![vec![0u8]; 3];
            rs.encode_sep(&data, &mut parity).unwrap();
            for (p, row) in cap.parity_rows.iter().enumerate() {
                assert_eq!(parity[p][0], row[c], "row {p} column {c}");
            }
        }
    }

    #[test]
    fn recorded_parity_is_recomputed_exactly_with_the_recorded_headers() {
        let cap = Capture::load();
        let rs = codec(10, 3).unwrap();
        for c2s in [true, false] {
            let mut enc = FecEncoder::new(rs.clone());
            let mut parity_seen = 0;
            let mut dgrams: Vec<_> = cap.datagrams.iter().filter(|d| d.c2s == c2s).collect();
            dgrams.sort_by_key(|d| d.seqid);
            let mut expected_parity = dgrams.iter().filter(|d| d.parity);
            for d in dgrams.iter().filter(|d| !d.parity) {
                let mut fec = d.plaintext[OFF..].to_vec();
                fec[..8].fill(0);
                let ready = enc.encode(&mut fec);
                assert_eq!(fec, &d.plaintext[OFF..], "data shard {} header", d.index);
                for i in 0..ready {
                    let want = expected_parity.next().unwrap();
                    let mut out = Vec::new();
                    enc.parity(i, &mut out);
                    assert_eq!(
                        out,
                        &want.plaintext[OFF..],
                        "parity datagram {}",
                        want.index
                    );
                    parity_seen += 1;
                }
            }
            assert_eq!(parity_seen, 6, "two full groups of three per direction");
            assert!(expected_parity.next().is_none());
        }
    }

    #[test]
    fn the_counter_wraps_after_the_last_parity_shard() {
        assert_eq!(paws(13), 4294967287);
        let mut enc = FecEncoder::new(codec(10, 3).unwrap());
        enc.set_next(paws(13) - 13);
        let mut seqids = Vec::new();
        for _ in 0..11 {
            let mut fec = vec![0u8; 8 + 24];
            let ready = enc.encode(&mut fec);
            seqids.push(u32::from_le_bytes(fec[..4].try_into().unwrap()));
            for i in 0..ready {
                let mut out = Vec::new();
                enc.parity(i, &mut out);
                seqids.push(u32::from_le_bytes(out[..4].try_into().unwrap()));
                assert_eq!(&out[4..6], &[0xf2, 0]);
            }
        }
        let first = paws(13) - 13;
        let want: Vec<u32> = (first..=4294967286).chain([0]).collect();
        assert_eq!(seqids, want);
    }

    #[test]
    fn a_partial_group_sends_no_parity() {
        let mut enc = FecEncoder::new(codec(10, 3).unwrap());
        for _ in 0..9 {
            assert_eq!(enc.encode(&mut [0u8; 40]), 0);
        }
        assert_eq!(enc.encode(&mut [0u8; 40]), 3);
    }

    /// The captured groups' shards (from the FEC header on), by index 0..13.
    fn captured_groups(cap: &Capture) -> Vec<Vec<Vec<u8>>> {
        cap.groups
            .iter()
            .filter(|g| g.parity.len() == 3)
            .map(|g| {
                let mut idx: Vec<usize> = g.data.iter().chain(&g.parity).copied().collect();
                idx.sort_by_key(|&i| cap.datagrams[i].seqid);
                assert_eq!(cap.datagrams[idx[0]].seqid, g.seqid_first);
                assert!(idx.iter().all(|&i| cap.datagrams[i].c2s == g.c2s));
                idx.iter()
                    .map(|&i| cap.datagrams[i].plaintext[OFF..].to_vec())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn any_three_lost_shards_of_thirteen_are_recovered() {
        let cap = Capture::load();
        let rs = codec(10, 3).unwrap();
        let groups = captured_groups(&cap);
        assert_eq!(groups.len(), 4, "two full groups per direction");
        for shards in &groups {
            for a in 0..13 {
                for b in a + 1..13 {
                    for c in b + 1..13 {
                        let mut dec = FecDecoder::new(rs.clone());
                        let mut recovered = Vec::new();
                        let mut passed: Vec<Vec<u8>> = vec![Vec::new(); 10];
                        let mut total = 0;
                        for (i, s) in shards.iter().enumerate() {
                            if i == a || i == b || i == c {
                                continue;
                            }
                            let d = dec.decode(s, &mut recovered).unwrap();
                            total += d.recovered;
                            if i < 10 {
                                passed[i] = d.kcp.to_vec();
                            }
                        }
                        let lost_data: Vec<usize> =
                            [a, b, c].into_iter().filter(|&i| i < 10).collect();
                        assert_eq!(total, lost_data.len());
                        assert_eq!(recovered.len(), lost_data.len());
                        for (r, &i) in recovered.iter().zip(&lost_data) {
                            // A rebuilt shard, trimmed by its size field, is the KCP bytes.
                            assert_eq!(r, &shards[i][8..], "lost {a} {b} {c}");
                        }
                        for i in 0..10 {
                            if !lost_data.contains(&i) {
                                assert_eq!(passed[i], &shards[i][8..]);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn four_lost_shards_rebuild_nothing_and_duplicates_count_once() {
        let cap = Capture::load();
        let rs = codec(10, 3).unwrap();
        let shards = &captured_groups(&cap)[0];
        let mut dec = FecDecoder::new(rs);
        let mut recovered = Vec::new();
        for (i, s) in shards.iter().enumerate() {
            if i < 4 {
                continue;
            }
            dec.decode(s, &mut recovered).unwrap();
            dec.decode(s, &mut recovered).unwrap();
        }
        assert!(recovered.is_empty());
    }

    #[test]
    fn short_and_unknown_shards_are_errors() {
        let mut dec = FecDecoder::new(codec(10, 3).unwrap());
        let mut r = Vec::new();
        assert_eq!(
            dec.decode(&[1, 2, 3], &mut r).err(),
            Some(FecError::TooShort)
        );
        assert_eq!(
            dec.decode(&[0, 0, 0, 0, 0xf1, 0, 9], &mut r).err(),
            Some(FecError::TooShort)
        );
        assert_eq!(
            dec.decode(&[0, 0, 0, 0, 0xf3, 0, 0, 0], &mut r).err(),
            Some(FecError::UnknownType(0xf3))
        );
    }
}
