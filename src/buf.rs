//! The input buffer every byte-stream loop reads into: the rpcx frame loop, the HTTP gateway and
//! the client connection.

/// A buffer that grows past this while holding one large message is given back once empty, so
/// one large frame or request does not pin its memory for the life of the connection. Below it,
/// buffers are kept: a pipelined batch of 32 Echo calls of 4 KiB is 130 KiB each way, and
/// giving that back after every batch would cost an allocation per batch (tests/alloc.rs).
pub(crate) const SHRINK_ABOVE: usize = 256 << 10;

/// Scratch buffers (reply payload, metadata, inflated payload) are kept up to this between
/// requests: calls of up to 64 KiB reuse them, a bigger one's memory goes back.
pub(crate) const SCRATCH_KEEP: usize = 64 << 10;

/// Gives `buf`'s memory back if it is over `keep` bytes. After a very large buffer (a big
/// inflated payload) the allocator is asked to return freed memory to the OS now, rather than
/// when this core next allocates.
#[inline]
pub(crate) fn release(buf: &mut Vec<u8>, keep: usize) {
    if buf.capacity() > keep {
        let big = buf.capacity() >= RETURN_TO_OS;
        *buf = Vec::new();
        if big {
            return_to_os();
        }
    }
}

/// Freeing this much at once asks the allocator to give memory back to the OS.
const RETURN_TO_OS: usize = 1 << 20;

#[cold]
pub(crate) fn return_to_os() {
    // SAFETY: mi_collect only walks this thread's mimalloc heap; with another global allocator
    // mimalloc's heap is empty and this does nothing.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// `buf[start..end]` is unread data. `buf` is always fully initialised, so reads go straight
/// into it; it grows to hold the largest message in flight and shrinks back when that is done.
pub(crate) struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    initial: usize,
}

impl ReadBuf {
    /// A buffer of `initial` bytes (also the size it shrinks back to).
    pub(crate) fn new(initial: usize) -> ReadBuf {
        ReadBuf {
            buf: vec![0; initial],
            start: 0,
            end: 0,
            initial,
        }
    }

    #[inline]
    pub(crate) fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Room to read into; never empty.
    #[inline]
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.compact();
            } else {
                let len = self.buf.len() * 2;
                self.buf.resize(len, 0);
            }
        }
        &mut self.buf[self.end..]
    }

    #[inline]
    pub(crate) fn filled(&mut self, n: usize) {
        self.end += n;
    }

    #[inline]
    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > SHRINK_ABOVE {
                self.shrink();
            }
        }
    }

    #[cold]
    fn shrink(&mut self) {
        let big = self.buf.len() >= RETURN_TO_OS;
        self.buf = vec![0; self.initial];
        if big {
            return_to_os();
        }
    }

    /// The buffer's size.
    #[inline]
    pub(crate) fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Back to its first size, if it holds nothing (a quiet connection).
    pub(crate) fn trim(&mut self) {
        if self.start == self.end && self.buf.len() > self.initial {
            self.start = 0;
            self.end = 0;
            self.buf = vec![0; self.initial];
        }
    }

    /// Makes room for a whole message of `total` bytes starting at the unread data (the caller
    /// has checked `total` against its limit).
    #[inline]
    pub(crate) fn reserve_frame(&mut self, total: usize) {
        if self.buf.len() - self.start >= total {
            return;
        }
        self.compact();
        if self.buf.len() < total {
            self.buf.resize(total, 0);
        }
    }

    fn compact(&mut self) {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_for_a_frame_and_shrinks_back() {
        let mut b = ReadBuf::new(8);
        b.spare()[..4].copy_from_slice(b"abcd");
        b.filled(4);
        b.consume(2);
        b.reserve_frame(1 << 20);
        assert_eq!(b.data(), b"cd");
        assert!(b.spare().len() >= (1 << 20) - 2);
        b.consume(2);
        assert_eq!(b.spare().len(), 8);
    }
}

/// Appends `parts` to `out` in order with one reservation (their total, so it is right by
/// construction), short parts copied inline rather than through a call to `memcpy`, which is
/// most of the cost of copying a 3-byte method name or a 4-byte length.
#[inline(always)]
pub(crate) fn append<const N: usize>(out: &mut Vec<u8>, parts: [&[u8]; N]) {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    out.reserve(total);
    let mut len = out.len();
    for part in parts {
        // SAFETY: `out` has room for `total` bytes past its length, and `len` stays within it;
        // a part is a separate borrow, so it does not overlap `out`'s spare room.
        unsafe { copy_short(part.as_ptr(), out.as_mut_ptr().add(len), part.len()) };
        len += part.len();
    }
    // SAFETY: every byte up to `len` is written above, within the reservation.
    unsafe { out.set_len(len) };
}

/// Appends the first `n` bytes of `bytes` (n <= 16): one 16-byte store into room reserved
/// for it, for the few bytes of a small encoded value.
#[inline(always)]
pub(crate) fn append_small(out: &mut Vec<u8>, bytes: [u8; 16], n: usize) {
    let n = n.min(16);
    out.reserve(16);
    let len = out.len();
    // SAFETY: 16 bytes fit past `len` (reserved above); the first `n` of them are written and
    // become the vector's, the rest stay spare capacity.
    unsafe {
        std::ptr::write_unaligned(out.as_mut_ptr().add(len) as *mut [u8; 16], bytes);
        out.set_len(len + n);
    }
}

/// Copies `n` bytes: up to 64 as two or four overlapping loads and stores, more with `memcpy`.
///
/// # Safety
/// `src` is valid for `n` reads, `dst` for `n` writes, and they do not overlap.
#[inline(always)]
unsafe fn copy_short(src: *const u8, dst: *mut u8, n: usize) {
    use std::ptr::{read_unaligned as rd, write_unaligned as wr};
    // SAFETY (all arms): each access is within the first `n` bytes of `src` and `dst`.
    unsafe {
        match n {
            0 => {}
            1..=3 => {
                *dst = *src;
                *dst.add(n / 2) = *src.add(n / 2);
                *dst.add(n - 1) = *src.add(n - 1);
            }
            4..=7 => {
                let (a, b) = (rd(src as *const u32), rd(src.add(n - 4) as *const u32));
                wr(dst as *mut u32, a);
                wr(dst.add(n - 4) as *mut u32, b);
            }
            8..=16 => {
                let (a, b) = (rd(src as *const u64), rd(src.add(n - 8) as *const u64));
                wr(dst as *mut u64, a);
                wr(dst.add(n - 8) as *mut u64, b);
            }
            17..=32 => {
                let (a, b) = (rd(src as *const u128), rd(src.add(n - 16) as *const u128));
                wr(dst as *mut u128, a);
                wr(dst.add(n - 16) as *mut u128, b);
            }
            33..=64 => {
                let (a, b) = (rd(src as *const u128), rd(src.add(16) as *const u128));
                let (c, d) = (
                    rd(src.add(n - 32) as *const u128),
                    rd(src.add(n - 16) as *const u128),
                );
                wr(dst as *mut u128, a);
                wr(dst.add(16) as *mut u128, b);
                wr(dst.add(n - 32) as *mut u128, c);
                wr(dst.add(n - 16) as *mut u128, d);
            }
            _ => std::ptr::copy_nonoverlapping(src, dst, n),
        }
    }
}

#[cfg(test)]
mod append_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the lengths, `append` writes what `extend_from_slice` would.
        #[test]
        fn append_is_extend(
            start in proptest::collection::vec(any::<u8>(), 0..20),
            parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..90), 4),
        ) {
            let mut expected = start.clone();
            for p in &parts {
                expected.extend_from_slice(p);
            }
            let mut got = start.clone();
            append(&mut got, [&parts[0], &parts[1], &parts[2], &parts[3]]);
            prop_assert_eq!(got, expected);
        }

        /// `append_small` appends exactly its first `n` bytes.
        #[test]
        fn append_small_is_extend(
            start in proptest::collection::vec(any::<u8>(), 0..40),
            bytes in any::<[u8; 16]>(),
            n in 0usize..=16,
        ) {
            let mut expected = start.clone();
            expected.extend_from_slice(&bytes[..n]);
            let mut got = start;
            append_small(&mut got, bytes, n);
            prop_assert_eq!(got, expected);
        }
    }
}
