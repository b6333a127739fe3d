//! POP3 wire form: the bytes a RETR sends after its status line.
//!
//! Messages are stored exactly as RETR transmits them, so that serving one is
//! a single contiguous slice of a mapped file: every line ends in CRLF, every
//! line that begins with `.` gets one more `.` (RFC 1939 section 3), and the
//! message ends with the `.\r\n` terminator.
//!
//! Line endings are canonicalized on the way in: CRLF stays, a bare LF becomes
//! CRLF, and a bare CR becomes CRLF too (a lone CR inside a POP3 stream is
//! read as a line break by some clients and not by others, so it is never
//! sent). A message that does not end with a line break gets one. The RFC 1939
//! size that LIST and STAT report is the length of that canonical CRLF form
//! without stuffing and without the terminator.
//!
//! The encoder is streaming (chunks of any size, state carried across chunk
//! boundaries), so delivery writes wire form in one pass over the input.

/// The end-of-message line every stored message ends with.
pub const TERMINATOR: &[u8] = b".\r\n";

/// How the input to a [`WireEncoder`] is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputForm {
    /// Plain message bytes (a file, stdin): lines beginning with `.` are stuffed here.
    Raw,
    /// Already dot-stuffed by an SMTP/LMTP client (RFC 5321 section 4.5.2), with
    /// the final `.` line removed by the caller: the leading dot of a line is
    /// transparency, kept in wire form and not counted in the size.
    Stuffed,
}

/// Figures about an encoded message that go into its index record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WireSummary {
    /// Length of the wire form, terminator included.
    pub wire_len: u64,
    /// RFC 1939 size: canonical CRLF form, unstuffed, without terminator.
    pub size: u64,
    /// Offset in the wire form where the body starts (just past the empty line
    /// that ends the header section); equals the offset of the terminator when
    /// the message has no empty line.
    pub body_offset: u64,
}

/// Streaming converter from message bytes to POP3 wire form.
#[derive(Debug, Clone)]
pub struct WireEncoder {
    form: InputForm,
    pending_cr: bool,
    dot_pending: bool,
    at_line_start: bool,
    line_empty: bool,
    in_header: bool,
    summary: WireSummary,
}

impl WireEncoder {
    /// A fresh encoder for one message.
    pub fn new(form: InputForm) -> Self {
        WireEncoder {
            form,
            pending_cr: false,
            dot_pending: false,
            at_line_start: true,
            line_empty: true,
            in_header: true,
            summary: WireSummary::default(),
        }
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n");
        self.summary.wire_len += 2;
        self.summary.size += 2;
        if self.in_header && self.line_empty {
            self.in_header = false;
            self.summary.body_offset = self.summary.wire_len;
        }
        self.at_line_start = true;
        self.line_empty = true;
    }

    /// Encodes `input`, appending wire bytes to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 32 + 4);
        let mut rest = input;
        while !rest.is_empty() {
            if self.pending_cr {
                self.pending_cr = false;
                self.end_line(out);
                if rest[0] == b'\n' {
                    rest = &rest[1..];
                    continue;
                }
            }
            if self.dot_pending {
                self.dot_pending = false;
                if rest[0] == b'.' {
                    // ".." on the wire means a line that starts with one dot.
                    out.extend_from_slice(b"..");
                    self.summary.wire_len += 2;
                    self.summary.size += 1;
                    self.line_empty = false;
                    rest = &rest[1..];
                    continue;
                }
                // A lone transparency dot is dropped, as an SMTP receiver does;
                // keeping it could put a bare "." line inside the message.
            }
            if self.at_line_start && rest[0] == b'.' {
                self.at_line_start = false;
                match self.form {
                    InputForm::Raw => {
                        self.line_empty = false;
                        out.extend_from_slice(b"..");
                        self.summary.wire_len += 2;
                        self.summary.size += 1;
                    }
                    InputForm::Stuffed => {
                        // Transparency dot: whatever follows decides (maybe in the next chunk).
                        self.dot_pending = true;
                    }
                }
                rest = &rest[1..];
                continue;
            }
            // Copy the run of ordinary bytes up to the next CR or LF in one go.
            let run = rest
                .iter()
                .position(|&b| b == b'\r' || b == b'\n')
                .unwrap_or(rest.len());
            if run > 0 {
                out.extend_from_slice(&rest[..run]);
                self.summary.wire_len += run as u64;
                self.summary.size += run as u64;
                self.at_line_start = false;
                self.line_empty = false;
                rest = &rest[run..];
                continue;
            }
            match rest[0] {
                b'\r' => self.pending_cr = true,
                _ => self.end_line(out),
            }
            rest = &rest[1..];
        }
    }

    /// Closes the message: a final line break if missing, then the terminator.
    pub fn finish(mut self, out: &mut Vec<u8>) -> WireSummary {
        if self.dot_pending {
            // Only a transparency dot since the last line break: nothing to end.
            self.dot_pending = false;
            self.at_line_start = true;
        }
        if self.pending_cr || !self.at_line_start {
            self.pending_cr = false;
            self.end_line(out);
        }
        if self.in_header {
            self.summary.body_offset = self.summary.wire_len;
        }
        out.extend_from_slice(TERMINATOR);
        self.summary.wire_len += TERMINATOR.len() as u64;
        self.summary
    }
}

/// Encodes a whole message at once.
pub fn encode(input: &[u8], form: InputForm) -> (Vec<u8>, WireSummary) {
    let mut out = Vec::with_capacity(input.len() + input.len() / 32 + 8);
    let mut enc = WireEncoder::new(form);
    enc.push(input, &mut out);
    let summary = enc.finish(&mut out);
    (out, summary)
}

/// Why wire bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("wire form does not end with the \".\\r\\n\" terminator")]
    NoTerminator,
    #[error("line ending at offset {0} is not CRLF")]
    BadLineEnding(usize),
}

/// Undoes [`encode`]: strips the terminator and the stuffing dots, as a POP3
/// client does. Used by tests, the fuzzer and `pop3sd export`.
pub fn decode(wire: &[u8]) -> Result<Vec<u8>, WireError> {
    let body = wire
        .strip_suffix(TERMINATOR)
        .ok_or(WireError::NoTerminator)?;
    let mut out = Vec::with_capacity(body.len());
    let mut at_line_start = true;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if at_line_start && b == b'.' {
            // A stuffed line: the first dot is transparency.
            i += 1;
            at_line_start = false;
            continue;
        }
        at_line_start = false;
        if b == b'\n' {
            if i == 0 || body[i - 1] != b'\r' {
                return Err(WireError::BadLineEnding(i));
            }
            at_line_start = true;
        } else if b == b'\r' && body.get(i + 1) != Some(&b'\n') {
            return Err(WireError::BadLineEnding(i));
        }
        out.push(b);
        i += 1;
    }
    Ok(out)
}

/// The message in canonical CRLF form (what [`decode`] must give back).
pub fn canonical_crlf(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() + 2);
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if input.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Length of the first `lines` body lines of a wire-form message, counted from
/// `body_offset`, for TOP: the returned offset ends just after the last CRLF
/// included, so `&wire[..offset]` is the header plus those lines, stuffing
/// intact, without the terminator.
pub fn top_len(wire: &[u8], body_offset: usize, lines: u64) -> usize {
    let end = wire.len().saturating_sub(TERMINATOR.len());
    let body_offset = body_offset.min(end);
    if lines == 0 {
        return body_offset;
    }
    let mut remaining = lines;
    let mut pos = body_offset;
    let body = &wire[body_offset..end];
    let mut idx = 0;
    while remaining > 0 {
        match body[idx..].iter().position(|&b| b == b'\n') {
            Some(p) => {
                idx += p + 1;
                pos = body_offset + idx;
                remaining -= 1;
            }
            None => return end,
        }
    }
    pos
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &[u8]) -> (Vec<u8>, WireSummary) {
        encode(s, InputForm::Raw)
    }

    #[test]
    fn stuffing_and_terminator() {
        let (w, s) = enc(b"Subject: x\n\n.\n..a\nb\n");
        assert_eq!(w, b"Subject: x\r\n\r\n..\r\n...a\r\nb\r\n.\r\n");
        assert_eq!(s.size, b"Subject: x\r\n\r\n.\r\n..a\r\nb\r\n".len() as u64);
        assert_eq!(s.wire_len, w.len() as u64);
        assert_eq!(s.body_offset, 14);
    }

    #[test]
    fn dot_after_bare_lf_and_bare_cr_is_stuffed() {
        let (w, _) = enc(b"a\n.b\r.c\r\n.d");
        assert_eq!(w, b"a\r\n..b\r\n..c\r\n..d\r\n.\r\n");
    }

    #[test]
    fn empty_and_unterminated() {
        assert_eq!(enc(b"").0, b".\r\n");
        assert_eq!(enc(b"").1.size, 0);
        assert_eq!(enc(b"x").0, b"x\r\n.\r\n");
        assert_eq!(enc(b"x\r").0, b"x\r\n.\r\n");
    }

    #[test]
    fn chunk_boundaries_do_not_matter() {
        let input = b"H: v\r\n\r\n.line\r\nmore\r\n\r\n.\r\nend";
        let (whole, ws) = enc(input);
        for split in 0..input.len() {
            let mut out = Vec::new();
            let mut e = WireEncoder::new(InputForm::Raw);
            e.push(&input[..split], &mut out);
            e.push(&input[split..], &mut out);
            let s = e.finish(&mut out);
            assert_eq!(out, whole, "split at {split}");
            assert_eq!(s, ws);
        }
    }

    #[test]
    fn stuffed_input_is_kept() {
        let (w, s) = encode(b"a\r\n..b\r\n", InputForm::Stuffed);
        assert_eq!(w, b"a\r\n..b\r\n.\r\n");
        assert_eq!(s.size, b"a\r\n.b\r\n".len() as u64);
        assert_eq!(decode(&w).unwrap(), b"a\r\n.b\r\n");
        // A lone transparency dot is dropped, never leaving a bare "." line.
        let (w, s) = encode(b".\r\nx\r\n.y\r\n", InputForm::Stuffed);
        assert_eq!(w, b"\r\nx\r\ny\r\n.\r\n");
        assert_eq!(s.size, 8);
        for split in 0..6 {
            let input = b"a\r\n..b";
            let mut out = Vec::new();
            let mut e = WireEncoder::new(InputForm::Stuffed);
            e.push(&input[..split], &mut out);
            e.push(&input[split..], &mut out);
            e.finish(&mut out);
            assert_eq!(out, b"a\r\n..b\r\n.\r\n");
        }
    }

    #[test]
    fn top_counts_body_lines() {
        let (w, s) = enc(b"A: 1\nB: 2\n\nl1\nl2\nl3\n");
        let bo = s.body_offset as usize;
        assert_eq!(&w[..top_len(&w, bo, 0)], b"A: 1\r\nB: 2\r\n\r\n");
        assert_eq!(
            &w[..top_len(&w, bo, 2)],
            b"A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n"
        );
        assert_eq!(&w[..top_len(&w, bo, 99)], &w[..w.len() - 3]);
    }

    #[test]
    fn no_header_break_means_all_header() {
        let (w, s) = enc(b"A: 1\nB: 2\n");
        assert_eq!(s.body_offset as usize, w.len() - 3);
        assert_eq!(top_len(&w, s.body_offset as usize, 0), w.len() - 3);
    }
}
