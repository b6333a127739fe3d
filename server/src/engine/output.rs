//! The engine's output queue: response text plus borrowed message slices.
//!
//! Status lines and small responses are written into one text buffer, so a
//! pipelined batch of commands becomes one contiguous chunk (one TLS record,
//! one write). Message bodies are never copied: a RETR queues a reference
//! (message index and byte range) that the driver resolves to a slice of the
//! memory-mapped segment when it encrypts.

use std::collections::VecDeque;

/// One queued piece of output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// `text[start..end]` of the text buffer.
    Text { start: usize, end: usize },
    /// `wire(msg)[start..end]` of the mailbox.
    Mail {
        msg: usize,
        start: usize,
        end: usize,
    },
}

/// Pending output, consumed front to back.
#[derive(Debug, Default)]
pub struct Output {
    text: Vec<u8>,
    pieces: VecDeque<Piece>,
    /// Bytes of message data queued (for backpressure decisions).
    mail_bytes: usize,
}

impl Output {
    /// Appends response text, merging with a preceding text piece.
    pub fn text(&mut self, bytes: &[u8]) {
        let start = self.text.len();
        self.text.extend_from_slice(bytes);
        let end = self.text.len();
        match self.pieces.back_mut() {
            Some(Piece::Text { end: e, .. }) if *e == start => *e = end,
            _ => self.pieces.push_back(Piece::Text { start, end }),
        }
    }

    /// Gives a writer into the text buffer (for formatted responses).
    pub fn writer(&mut self) -> TextWriter<'_> {
        let start = self.text.len();
        TextWriter { out: self, start }
    }

    /// Queues a borrowed range of message `msg`.
    pub fn mail(&mut self, msg: usize, start: usize, end: usize) {
        if end > start {
            self.mail_bytes += end - start;
            self.pieces.push_back(Piece::Mail { msg, start, end });
        }
    }

    /// The next piece to send, if any.
    pub fn front(&self) -> Option<Piece> {
        self.pieces.front().copied()
    }

    /// Text of a text piece.
    pub fn text_of(&self, start: usize, end: usize) -> &[u8] {
        &self.text[start..end]
    }

    /// Marks `n` bytes of the front piece as sent.
    pub fn advance(&mut self, n: usize) {
        let Some(front) = self.pieces.front_mut() else {
            return;
        };
        let done = match front {
            Piece::Text { start, end } => {
                *start = (*start + n).min(*end);
                start == end
            }
            Piece::Mail { start, end, .. } => {
                let n = n.min(*end - *start);
                *start += n;
                self.mail_bytes -= n;
                start == end
            }
        };
        if done {
            self.pieces.pop_front();
            if self.pieces.is_empty() {
                self.text.clear();
                if self.text.capacity() > 4096 {
                    self.text = Vec::new();
                }
            }
        }
        self.compact();
    }

    /// Drops sent text from the front of the buffer once it is most of it.
    /// Without this a client that pipelines many commands, each answered
    /// while earlier answers are still queued, grows the buffer by every
    /// answer of the batch: the queue never empties, so it is never cleared.
    fn compact(&mut self) {
        const MIN_DEAD: usize = 64 * 1024;
        if self.text.len() < MIN_DEAD {
            return;
        }
        // Text pieces are queued in buffer order: the first one holds the
        // oldest live byte. With none left, no byte is live.
        let live = self
            .pieces
            .iter()
            .find_map(|p| match p {
                Piece::Text { start, .. } => Some(*start),
                Piece::Mail { .. } => None,
            })
            .unwrap_or(self.text.len());
        if live < MIN_DEAD || live * 2 < self.text.len() {
            return;
        }
        self.text.drain(..live);
        for p in &mut self.pieces {
            if let Piece::Text { start, end } = p {
                *start -= live;
                *end -= live;
            }
        }
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Bytes of response text queued (counting text not yet sent).
    pub fn text_backlog(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Text { start, end } => end - start,
                Piece::Mail { .. } => 0,
            })
            .sum()
    }

    /// True while a message slice is queued (the mailbox must stay put).
    pub fn has_mail(&self) -> bool {
        self.mail_bytes > 0
    }

    /// Total bytes queued.
    pub fn backlog(&self) -> usize {
        self.text_backlog() + self.mail_bytes
    }
}

/// `fmt::Write`/`io::Write` into the text buffer; the piece is recorded on drop.
pub struct TextWriter<'a> {
    out: &'a mut Output,
    start: usize,
}

impl std::io::Write for TextWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out.text.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for TextWriter<'_> {
    fn drop(&mut self) {
        let end = self.out.text.len();
        if end == self.start {
            return;
        }
        match self.out.pieces.back_mut() {
            Some(Piece::Text { end: e, .. }) if *e == self.start => *e = end,
            _ => self.out.pieces.push_back(Piece::Text {
                start: self.start,
                end,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sent_text_is_dropped_while_more_keeps_coming() {
        let mut o = Output::default();
        o.text(b"first ");
        let answer = vec![b'x'; 100_000];
        for i in 0..1_000 {
            // A new answer joins the queue before the previous one is sent,
            // as pipelined commands do; a mail piece in between sometimes.
            o.text(&answer);
            if i % 3 == 0 {
                o.mail(i, 0, 10);
            }
            while o.backlog() > 50_000 {
                match o.front() {
                    Some(Piece::Text { start, end }) => {
                        let n = (end - start).min(30_000);
                        o.advance(n);
                    }
                    Some(Piece::Mail { start, end, .. }) => o.advance(end - start),
                    None => break,
                }
            }
            assert!(o.text.len() <= 400_000, "buffer at {} bytes", o.text.len());
        }
        // What is still queued is intact.
        let mut rest = Vec::new();
        while let Some(p) = o.front() {
            match p {
                Piece::Text { start, end } => {
                    rest.extend_from_slice(o.text_of(start, end));
                    o.advance(end - start);
                }
                Piece::Mail { start, end, .. } => o.advance(end - start),
            }
        }
        assert!(rest.iter().all(|&b| b == b'x'));
        assert!(o.is_empty());
    }

    #[test]
    fn texts_merge_and_mail_stays_separate() {
        let mut o = Output::default();
        o.text(b"+OK a\r\n");
        write!(o.writer(), "+OK {}\r\n", 2).unwrap();
        o.mail(0, 0, 10);
        o.text(b".\r\n");
        assert_eq!(o.front(), Some(Piece::Text { start: 0, end: 14 }));
        o.advance(14);
        assert_eq!(
            o.front(),
            Some(Piece::Mail {
                msg: 0,
                start: 0,
                end: 10
            })
        );
        assert!(o.has_mail());
        o.advance(4);
        assert_eq!(
            o.front(),
            Some(Piece::Mail {
                msg: 0,
                start: 4,
                end: 10
            })
        );
        o.advance(6);
        assert!(!o.has_mail());
        o.advance(3);
        assert!(o.is_empty());
    }
}
