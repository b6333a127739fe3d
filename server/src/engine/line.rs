//! Splitting client input into command lines without over-reading.
//!
//! A POP3 command line is at most 255 octets including CRLF (RFC 2449
//! section 4). A longer line is not buffered: once the limit is passed, the
//! bytes seen so far are dropped and the rest of the line is skipped as it
//! arrives, and the caller gets one [`Line::TooLong`] for it. A 1 MiB line
//! therefore costs at most `limit` bytes of memory. Bare LF is accepted as a
//! line end (some clients send it); the CR, if present, is not part of the line.

/// One item from the input.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A complete line, without its line ending.
    Complete(&'a [u8]),
    /// A line that was longer than the limit; its bytes are gone.
    TooLong,
}

/// Accumulates input and yields lines.
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
    /// Start of unread data in `buf`.
    start: usize,
    /// True while skipping the rest of an over-long line.
    discarding: bool,
}

impl LineBuffer {
    /// Appends bytes received from the client.
    pub fn extend(&mut self, data: &[u8]) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet returned as lines.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Drops everything buffered (after STLS, pipelined plaintext must not
    /// survive into the TLS session: RFC 2595 section 3.1's injection concern).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.discarding = false;
    }

    /// Gives the memory back while the connection is idle.
    pub fn shrink_if_idle(&mut self) {
        if self.pending() == 0 && self.buf.capacity() > 512 {
            self.buf = Vec::new();
            self.start = 0;
        }
    }

    /// The next line, if a complete one (or the end of an over-long one) is
    /// buffered. `limit` counts the line ending, as RFC 2449 does.
    pub fn next_line(&mut self, limit: usize) -> Option<Line<'_>> {
        let data = &self.buf[self.start..];
        match data.iter().position(|&b| b == b'\n') {
            Some(lf) => {
                let line_start = self.start;
                self.start += lf + 1;
                if self.discarding {
                    self.discarding = false;
                    return Some(Line::TooLong);
                }
                if lf + 1 > limit {
                    return Some(Line::TooLong);
                }
                let mut end = line_start + lf;
                if end > line_start && self.buf[end - 1] == b'\r' {
                    end -= 1;
                }
                Some(Line::Complete(&self.buf[line_start..end]))
            }
            None => {
                if data.len() >= limit {
                    // Over the limit with no line end in sight: drop it.
                    self.discarding = true;
                    self.buf.clear();
                    self.start = 0;
                }
                if self.start > 0 && self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_crlf_and_bare_lf() {
        let mut b = LineBuffer::default();
        b.extend(b"STAT\r\nLIST\nNOOP");
        assert_eq!(b.next_line(255), Some(Line::Complete(b"STAT")));
        assert_eq!(b.next_line(255), Some(Line::Complete(b"LIST")));
        assert_eq!(b.next_line(255), None);
        b.extend(b"\r\n");
        assert_eq!(b.next_line(255), Some(Line::Complete(b"NOOP")));
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn long_lines_are_skipped_without_buffering() {
        let mut b = LineBuffer::default();
        for _ in 0..1024 {
            b.extend(&[b'A'; 1024]);
            assert_eq!(b.next_line(255), None);
            assert!(b.pending() < 1024 + 255, "buffer grew to {}", b.pending());
        }
        b.extend(b"\r\nNOOP\r\n");
        assert_eq!(b.next_line(255), Some(Line::TooLong));
        assert_eq!(b.next_line(255), Some(Line::Complete(b"NOOP")));
    }

    #[test]
    fn limit_counts_the_line_ending() {
        let mut b = LineBuffer::default();
        let mut line = vec![b'x'; 253];
        line.extend_from_slice(b"\r\n");
        b.extend(&line);
        assert!(matches!(b.next_line(255), Some(Line::Complete(_))));
        let mut line = vec![b'x'; 254];
        line.extend_from_slice(b"\r\n");
        b.extend(&line);
        assert_eq!(b.next_line(255), Some(Line::TooLong));
    }
}
