//! Receiving the DATA of an LMTP transaction straight into POP3 wire form.
//!
//! SMTP/LMTP data is already dot-stuffed (RFC 5321 section 4.5.2), which is
//! what POP3 wants, so complete lines go from the input buffer into the
//! storage crate's encoder (line endings canonicalized, stuffing kept) in
//! one pass. Only the tail of a line split across reads is held back, so
//! that the `.` line that ends the data is recognised; a line longer than
//! that carry can never be the end marker and is passed on in pieces.
//! Only `CRLF . CRLF` ends the data: a `.` line with a bare LF on either
//! side is data (its dot dropped as transparency), or a relay that passes
//! bare LFs through would let a message's body end it and smuggle the rest
//! in as commands: another transaction, to any tenant.
//! Past the size limit nothing more is kept, but the data is still read to
//! its end so that the transaction can be answered; the same holds for a
//! message the driver sheds because LMTP connections together hold too much
//! memory.

use pop3sd_storage::wire::{InputForm, WireEncoder, WireSummary};

/// Bytes of an unfinished line kept between reads.
const CARRY: usize = 1024;

/// One message being received.
#[derive(Debug)]
pub struct DataReceiver {
    encoder: Option<WireEncoder>,
    wire: Vec<u8>,
    carry: Vec<u8>,
    /// The current line is longer than `CARRY` (cannot be the end marker).
    long_line: bool,
    /// The previous line ended with CRLF (so the next may end the data);
    /// true at the start, after the DATA command's own CRLF.
    after_crlf: bool,
    /// The part of a long line passed on so far ends with CR (its LF may
    /// come alone in the next read).
    long_line_cr: bool,
    /// Octets of data received so far (as sent, stuffing included).
    received: u64,
    limit: u64,
    too_big: bool,
    /// Shed by the driver ([`DataReceiver::shed`]): nothing more is kept.
    shed: bool,
}

/// What a completed DATA produced.
#[derive(Debug)]
pub enum Received {
    /// The message in wire form with its figures, and its octets as the
    /// client sent them (what SIZE and the limit measure).
    Message {
        wire: Vec<u8>,
        summary: WireSummary,
        received: u64,
    },
    /// More octets than the limit: nothing was kept.
    TooBig { received: u64 },
    /// Shed to keep memory within bounds: nothing was kept, and the
    /// transaction fails temporarily (the MTA tries again).
    Shed { received: u64 },
}

impl DataReceiver {
    /// Starts receiving, with a prefix (e.g. a Return-Path line) and a limit.
    pub fn new(prefix: &[u8], limit: u64) -> Self {
        let mut encoder = WireEncoder::new(InputForm::Stuffed);
        let mut wire = Vec::with_capacity(8 * 1024);
        encoder.push(prefix, &mut wire);
        DataReceiver {
            encoder: Some(encoder),
            wire,
            carry: Vec::new(),
            long_line: false,
            after_crlf: true,
            long_line_cr: false,
            received: 0,
            limit,
            too_big: false,
            shed: false,
        }
    }

    /// Drops what was kept and keeps nothing more; the data is still read
    /// to its end, which then yields [`Received::Shed`] (or `TooBig`, which
    /// is permanent, if the message turns out over the limit too).
    pub fn shed(&mut self) {
        self.shed = true;
        self.encoder = None;
        self.wire = Vec::new();
    }

    /// Bytes of memory this receiver holds (what the driver counts against
    /// `lmtp.max_memory`).
    pub fn memory(&self) -> usize {
        self.wire.capacity() + self.carry.capacity()
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.received += bytes.len() as u64;
        if self.too_big {
            return;
        }
        // Checked after a shed too: over the limit is permanent, and wins.
        if self.received > self.limit {
            self.too_big = true;
            self.wire = Vec::new();
            return;
        }
        if let Some(e) = self.encoder.as_mut() {
            e.push(bytes, &mut self.wire);
        }
    }

    /// Whether `line` (complete, LF included) ends the data.
    fn is_end_marker(&self, line: &[u8]) -> bool {
        !self.long_line && self.after_crlf && line == b".\r\n"
    }

    /// Notes how a complete line (LF included) ended, for the next one.
    fn line_done(&mut self, line: &[u8]) {
        self.after_crlf = match line.len() {
            n if n >= 2 => line[n - 2] == b'\r',
            _ => self.long_line && self.long_line_cr,
        };
        self.long_line = false;
        self.long_line_cr = false;
    }

    /// Consumes input; returns how many bytes were used and, once the end
    /// marker was seen, the message (bytes after the marker are not used).
    pub fn push(&mut self, input: &[u8]) -> (usize, Option<Received>) {
        let mut pos = 0;
        while pos < input.len() {
            let rest = &input[pos..];
            match rest.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let line = &rest[..=i];
                    pos += i + 1;
                    if !self.carry.is_empty() {
                        let mut whole = std::mem::take(&mut self.carry);
                        whole.extend_from_slice(line);
                        if self.is_end_marker(&whole) {
                            return (pos, Some(self.finish()));
                        }
                        self.feed(&whole);
                        self.line_done(&whole);
                        whole.clear();
                        self.carry = whole;
                    } else if self.is_end_marker(line) {
                        return (pos, Some(self.finish()));
                    } else {
                        self.feed(line);
                        self.line_done(line);
                    }
                }
                None => {
                    pos = input.len();
                    if self.carry.len() + rest.len() > CARRY {
                        // Too long to be the end marker: pass it on.
                        let held = std::mem::take(&mut self.carry);
                        self.feed(&held);
                        self.feed(rest);
                        self.long_line = true;
                        self.long_line_cr = rest.last() == Some(&b'\r');
                    } else {
                        self.carry.extend_from_slice(rest);
                    }
                }
            }
        }
        (pos, None)
    }

    fn finish(&mut self) -> Received {
        if self.too_big {
            return Received::TooBig {
                received: self.received,
            };
        }
        if self.shed {
            return Received::Shed {
                received: self.received,
            };
        }
        let summary = match self.encoder.take() {
            Some(e) => e.finish(&mut self.wire),
            None => WireSummary::default(),
        };
        Received::Message {
            wire: std::mem::take(&mut self.wire),
            summary,
            received: self.received,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pop3sd_storage::wire;

    fn run(chunks: &[&[u8]], limit: u64) -> (Received, usize) {
        let mut r = DataReceiver::new(b"Return-Path: <a@b>\r\n", limit);
        let mut used_total = 0;
        for c in chunks {
            let (used, done) = r.push(c);
            used_total += used;
            if let Some(m) = done {
                return (m, used_total);
            }
        }
        panic!("no end marker")
    }

    #[test]
    fn stuffed_data_becomes_wire_form_in_any_split() {
        let data = b"Subject: x\r\n\r\n..dot\r\nbody\r\n.\r\nNOOP\r\n";
        for split in 0..data.len() {
            let (m, used) = run(&[&data[..split], &data[split..]], 1 << 20);
            let Received::Message {
                wire: w,
                summary,
                received,
            } = m
            else {
                panic!("too big")
            };
            assert_eq!(
                w, b"Return-Path: <a@b>\r\nSubject: x\r\n\r\n..dot\r\nbody\r\n.\r\n",
                "split {split}"
            );
            assert_eq!(summary.wire_len, w.len() as u64);
            assert_eq!(
                wire::decode(&w).unwrap(),
                b"Return-Path: <a@b>\r\nSubject: x\r\n\r\n.dot\r\nbody\r\n"
            );
            assert_eq!(used, data.len() - 6, "NOOP stays for the command parser");
            assert_eq!(
                received,
                used as u64 - 3,
                "as sent, without the final dot line"
            );
        }
    }

    #[test]
    fn long_lines_pass_and_cannot_end_the_data() {
        let mut data = vec![b'x'; 5000];
        data.extend_from_slice(b"\r\n.\r\n");
        let (m, _) = run(&[&data[..100], &data[100..3000], &data[3000..]], 1 << 20);
        let Received::Message { wire: w, .. } = m else {
            panic!()
        };
        assert!(w.windows(5000).any(|x| x.iter().all(|&b| b == b'x')));
    }

    #[test]
    fn only_crlf_dot_crlf_ends_the_data() {
        // Each body holds a `.` line with a bare LF on one side or both, as
        // an SMTP smuggling attempt would, and then a whole transaction.
        let smuggled = b"MAIL FROM:<>\r\nRCPT TO:<ceo@other.example>\r\nDATA\r\nforged\r\n";
        for dot_line in [&b"x\n.\r\n"[..], b"x\n.\n", b"x\r\n.\n", b"x\r.\r\n"] {
            let mut data = b"Subject: s\r\n\r\n".to_vec();
            data.extend_from_slice(dot_line);
            data.extend_from_slice(smuggled);
            data.extend_from_slice(b".\r\nQUIT\r\n");
            for split in 0..data.len() {
                let (m, used) = run(&[&data[..split], &data[split..]], 1 << 20);
                let Received::Message { wire: w, .. } = m else {
                    panic!("too big")
                };
                assert_eq!(
                    used,
                    data.len() - 6,
                    "{dot_line:?} split {split}: ended early"
                );
                let body = wire::decode(&w).unwrap();
                assert!(
                    body.windows(10).any(|x| x == b"MAIL FROM:"),
                    "{dot_line:?} split {split}: the rest is message data"
                );
                // Never a bare "." line in the wire form: RETR would end there.
                assert!(!w[..w.len() - 3].windows(5).any(|x| x == b"\r\n.\r\n"));
            }
        }
    }

    #[test]
    fn a_long_lines_crlf_split_across_reads_still_lets_the_data_end() {
        let mut data = vec![b'x'; 3000];
        data.extend_from_slice(b"\r\n.\r\n");
        // The CR ends one read and the LF starts the next.
        let (m, used) = run(&[&data[..3001], &data[3001..]], 1 << 20);
        assert!(matches!(m, Received::Message { .. }));
        assert_eq!(used, data.len());
        // A long line that ends with a bare LF does not.
        let mut data = vec![b'x'; 3000];
        data.extend_from_slice(b"\n.\r\nmore\r\n.\r\n");
        let (_, used) = run(&[&data[..3000], &data[3000..]], 1 << 20);
        assert_eq!(used, data.len());
    }

    #[test]
    fn over_the_limit_keeps_nothing() {
        let mut data = b"Subject: big\r\n\r\n".to_vec();
        for _ in 0..100 {
            data.extend_from_slice(&[b'y'; 100]);
            data.extend_from_slice(b"\r\n");
        }
        data.extend_from_slice(b".\r\n");
        let (m, used) = run(&[&data], 1000);
        assert!(matches!(m, Received::TooBig { .. }));
        assert_eq!(used, data.len());
    }
}
