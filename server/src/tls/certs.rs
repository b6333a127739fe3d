//! Loading certificates and keys from PEM files.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Why a certificate or key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: no certificate found in PEM file")]
    NoCertificate { path: String },
    #[error("{path}: no private key found in PEM file")]
    NoKey { path: String },
    #[error("{path}: unsupported private key: {reason}")]
    BadKey { path: String, reason: String },
    #[error("{cert} and {key} do not match: {reason}")]
    Mismatch {
        cert: String,
        key: String,
        reason: String,
    },
}

impl CertError {
    /// The tenant key a problem of [`load_certified_key`] is reported
    /// under: `private_key` where it concerns the key file alone.
    pub fn field(&self, key: &Path) -> &'static str {
        let key = key.display().to_string();
        match self {
            CertError::Read { path, .. }
            | CertError::NoKey { path }
            | CertError::BadKey { path, .. }
                if *path == key =>
            {
                "private_key"
            }
            _ => "certificate",
        }
    }
}

/// Reads every certificate of a PEM file, leaf first.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let p = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| CertError::Read {
        path: p.clone(),
        source,
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| CertError::Read {
            path: p.clone(),
            source,
        })?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate { path: p });
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let p = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| CertError::Read {
        path: p.clone(),
        source,
    })?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|source| CertError::Read {
            path: p.clone(),
            source,
        })?
        .ok_or(CertError::NoKey { path: p })
}

/// A certificate chain and its key, ready for rustls, checked to match.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, CertError> {
    let chain = load_certs(cert)?;
    let der = load_key(key)?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| CertError::BadKey {
            path: key.display().to_string(),
            reason: e.to_string(),
        })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| CertError::Mismatch {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        reason: e.to_string(),
    })?;
    Ok(Arc::new(ck))
}

#[cfg(test)]
mod field_tests {
    use super::*;

    #[test]
    fn key_file_problems_are_reported_under_private_key() {
        let key = Path::new("/etc/pop3sd/tls/a.key");
        let read = |path: &str| CertError::Read {
            path: path.into(),
            source: std::io::ErrorKind::PermissionDenied.into(),
        };
        assert_eq!(read("/etc/pop3sd/tls/a.key").field(key), "private_key");
        assert_eq!(read("/etc/pop3sd/tls/a.pem").field(key), "certificate");
        let no_key = CertError::NoKey {
            path: "/etc/pop3sd/tls/a.key".into(),
        };
        assert_eq!(no_key.field(key), "private_key");
        let mismatch = CertError::Mismatch {
            cert: "a.pem".into(),
            key: "/etc/pop3sd/tls/a.key".into(),
            reason: "x".into(),
        };
        assert_eq!(mismatch.field(key), "certificate");
    }
}
