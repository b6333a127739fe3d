//! Per-core pools of I/O buffers.
//!
//! Under io_uring a buffer handed to a read or write belongs to the kernel
//! until the operation completes, so connections cannot share one; but an
//! idle connection needs none at all (it waits with a readiness poll). Each
//! connection takes buffers from its core's pool when it has bytes to move
//! and gives them back when it goes idle, so memory follows the number of
//! busy connections, not the number of open ones. No lock: one pool per core.

use std::cell::RefCell;

/// Size of an output buffer: four full TLS records plus slack, so a RETR
/// streams in writes of about 64 KiB.
pub const OUT_BUF_SIZE: usize = 4 * (16384 + 64) + 1024;
/// Initial size of an input buffer (a ClientHello or a few commands).
pub const IN_BUF_SIZE: usize = 4096;

/// Free buffers of one core.
pub struct BufferPool {
    out: RefCell<Vec<Vec<u8>>>,
    input: RefCell<Vec<Vec<u8>>>,
    keep: usize,
}

impl BufferPool {
    /// A pool that keeps at most `keep` free buffers of each kind.
    pub fn new(keep: usize) -> Self {
        BufferPool {
            out: RefCell::new(Vec::new()),
            input: RefCell::new(Vec::new()),
            keep,
        }
    }

    /// An output buffer, fully initialized (len == capacity), so that TLS
    /// records are encrypted straight into it without zeroing it each time.
    pub fn take_out(&self) -> Vec<u8> {
        self.out
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0u8; OUT_BUF_SIZE])
    }

    /// Returns an output buffer.
    pub fn put_out(&self, buf: Vec<u8>) {
        let mut free = self.out.borrow_mut();
        if free.len() < self.keep && buf.len() == OUT_BUF_SIZE {
            free.push(buf);
        }
    }

    /// An empty input buffer (len 0, some capacity).
    pub fn take_in(&self) -> Vec<u8> {
        self.input
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(IN_BUF_SIZE))
    }

    /// Returns an input buffer; one that grew for a large record is dropped.
    pub fn put_in(&self, mut buf: Vec<u8>) {
        let mut free = self.input.borrow_mut();
        if free.len() < self.keep && buf.capacity() <= 4 * IN_BUF_SIZE {
            buf.clear();
            free.push(buf);
        }
    }
}
