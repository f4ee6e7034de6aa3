//! A stream that first replays bytes already read from it.
//!
//! Sniffing inside TLS, or reading an HTTP CONNECT head, has to read bytes that belong to what
//! comes next (the first rpcx frame, an HTTP request); [`Prefixed`] hands them back to the next
//! reader before reading on. Plaintext sockets are sniffed with `peek` instead and need no
//! wrapper, so the plaintext rpcx hot path does not go through this.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::io::AsyncRead;

/// `inner`, with `prefix[pos..]` read before it.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Reads return `prefix` first, then whatever `inner` gives.
    pub fn new(prefix: Vec<u8>, inner: S) -> Prefixed<S> {
        Prefixed {
            prefix,
            pos: 0,
            inner,
        }
    }

    /// The wrapped stream.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream, mutably (reading it directly skips bytes not yet replayed).
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped stream; bytes not yet replayed are dropped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let rest = &this.prefix[this.pos..];
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                // Done replaying: give the memory back.
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

crate::stream::forward_write!(Prefixed, inner);

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::io::AsyncReadExt;

    #[test]
    fn replays_then_reads_on() {
        futures_lite::future::block_on(async {
            let inner = futures_lite::io::Cursor::new(b"world".to_vec());
            let mut s = Prefixed::new(b"hello ".to_vec(), inner);
            let mut small = [0u8; 4];
            assert_eq!(s.read(&mut small).await.unwrap(), 4);
            assert_eq!(&small, b"hell");
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, b"o world");
        });
    }
}
