//! Per-core pools of I/O buffers.
//!
//! Under io_uring a buffer handed to a read or write belongs to the kernel
//! until the operation completes, so connections cannot share one; but an
//! idle connection needs none at all (it waits with a readiness poll). Each
//! connection takes buffers from its core's pool when it has bytes to move
//! and gives them back when it goes idle, so memory follows the number of
//! busy connections, not the number of open ones. No lock: one pool per core.

use std::cell::RefCell;

/// Bytes of one full TLS record on the wire beyond its plaintext (header,
/// tag, content type, and slack for TLS 1.2's explicit nonce).
pub const RECORD_OVERHEAD: usize = 64;

/// How big a core's buffers are and how many free ones it keeps
/// (`[runtime]` knobs; docs/tuning.md).
#[derive(Debug, Clone, Copy)]
pub struct BufferSizes {
    /// Output buffer: whole TLS records plus slack, so a RETR streams in
    /// writes of several records (about 64 KiB by default).
    pub out: usize,
    /// Initial input buffer (a ClientHello or a few commands).
    pub input: usize,
    /// Free buffers of each kind kept for reuse.
    pub keep: usize,
}

impl BufferSizes {
    /// Sizes for `records` full records of `record_size` plaintext bytes.
    pub fn new(records: usize, record_size: usize, input: usize, keep: usize) -> Self {
        BufferSizes {
            out: records.max(1) * (record_size + RECORD_OVERHEAD) + 1024,
            input,
            keep,
        }
    }
}

impl Default for BufferSizes {
    fn default() -> Self {
        BufferSizes::new(4, 16384, 4096, 256)
    }
}

/// Free buffers of one core.
pub struct BufferPool {
    out: RefCell<Vec<Vec<u8>>>,
    input: RefCell<Vec<Vec<u8>>>,
    sizes: BufferSizes,
}

impl BufferPool {
    /// An empty pool handing out buffers of these sizes.
    pub fn new(sizes: BufferSizes) -> Self {
        BufferPool {
            out: RefCell::new(Vec::new()),
            input: RefCell::new(Vec::new()),
            sizes,
        }
    }

    /// The size every output buffer starts with.
    pub fn out_size(&self) -> usize {
        self.sizes.out
    }

    /// An output buffer, fully initialized (len == capacity), so that TLS
    /// records are encrypted straight into it without zeroing it each time.
    pub fn take_out(&self) -> Vec<u8> {
        self.out
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0u8; self.sizes.out])
    }

    /// Returns an output buffer.
    pub fn put_out(&self, buf: Vec<u8>) {
        let mut free = self.out.borrow_mut();
        if free.len() < self.sizes.keep && buf.len() == self.sizes.out {
            free.push(buf);
        }
    }

    /// An empty input buffer (len 0, some capacity).
    pub fn take_in(&self) -> Vec<u8> {
        self.input
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.sizes.input))
    }

    /// Returns an input buffer; one that grew for a large record is dropped.
    pub fn put_in(&self, mut buf: Vec<u8>) {
        let mut free = self.input.borrow_mut();
        if free.len() < self.sizes.keep && buf.capacity() <= 4 * self.sizes.input {
            buf.clear();
            free.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_have_the_configured_sizes_and_the_pool_is_bounded() {
        let pool = BufferPool::new(BufferSizes::new(2, 4096, 1024, 1));
        let out = pool.take_out();
        assert_eq!(out.len(), 2 * (4096 + RECORD_OVERHEAD) + 1024);
        assert_eq!(out.len(), pool.out_size());
        let input = pool.take_in();
        assert!(input.capacity() >= 1024 && input.is_empty());
        let second = pool.take_out();
        pool.put_out(out);
        pool.put_out(second); // over `keep`: dropped
        assert_eq!(pool.out.borrow().len(), 1);
        pool.put_out(vec![0; 10]); // wrong size: dropped
        assert_eq!(pool.out.borrow().len(), 1);
        let mut grown = pool.take_in();
        grown.reserve(64 * 1024);
        pool.put_in(input);
        pool.put_in(grown);
        assert_eq!(pool.input.borrow().len(), 1);
    }
}
