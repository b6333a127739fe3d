//! SASL message decoding for AUTH (RFC 5034 with RFC 4616 PLAIN and RFC 4422
//! appendix A EXTERNAL).

use base64::Engine as _;

/// Most decoded octets a SASL response may carry: authzid, authcid and
/// password of reasonable length. Anything longer is refused, not buffered.
pub const MAX_SASL_DECODED: usize = 1024;

/// Why a SASL response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslError {
    /// Not valid base64.
    Base64,
    /// Over [`MAX_SASL_DECODED`].
    TooLong,
    /// Not `authzid NUL authcid NUL passwd`.
    Malformed,
}

/// Decodes base64 ("=" is the empty response, RFC 5034 section 4).
pub fn decode_b64(data: &[u8]) -> Result<Vec<u8>, SaslError> {
    if data == b"=" {
        return Ok(Vec::new());
    }
    if data.len() > MAX_SASL_DECODED * 4 / 3 + 4 {
        return Err(SaslError::TooLong);
    }
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|_| SaslError::Base64)
}

/// The three fields of a PLAIN response.
#[derive(Debug, PartialEq, Eq)]
pub struct PlainResponse<'a> {
    pub authzid: &'a [u8],
    pub authcid: &'a [u8],
    pub password: &'a [u8],
}

/// Splits a decoded PLAIN message (RFC 4616 section 2).
pub fn parse_plain(msg: &[u8]) -> Result<PlainResponse<'_>, SaslError> {
    let mut parts = msg.splitn(3, |&b| b == 0);
    let authzid = parts.next().ok_or(SaslError::Malformed)?;
    let authcid = parts.next().ok_or(SaslError::Malformed)?;
    let password = parts.next().ok_or(SaslError::Malformed)?;
    if authcid.is_empty() || password.is_empty() || password.contains(&0) {
        return Err(SaslError::Malformed);
    }
    Ok(PlainResponse {
        authzid,
        authcid,
        password,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain() {
        let m = decode_b64(b"AGFsaWNlQGV4YW1wbGUuY29tAHNlY3JldA==").unwrap();
        let p = parse_plain(&m).unwrap();
        assert_eq!(p.authzid, b"");
        assert_eq!(p.authcid, b"alice@example.com");
        assert_eq!(p.password, b"secret");
        assert_eq!(decode_b64(b"!!!"), Err(SaslError::Base64));
        assert_eq!(parse_plain(b"nouser"), Err(SaslError::Malformed));
        assert_eq!(parse_plain(b"\0\0pw"), Err(SaslError::Malformed));
        assert_eq!(decode_b64(b"="), Ok(vec![]));
        assert_eq!(decode_b64(&[b'A'; 4000]), Err(SaslError::TooLong));
    }
}
