//! Which server certificates the load generator accepts.
//!
//! A benchmark that skips certificate checks measures a client nobody runs,
//! so the chain and name are verified by default: against a CA file (the
//! demo's, or `--ca`), or the system's trust store for servers with public
//! certificates. `--insecure` is for test servers with throwaway
//! certificates; it still checks the handshake's signature with the
//! certificate's key, so the client's TLS work per handshake stays the same.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Where trust comes from, decided once per run.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Verify chain and name against these roots.
    Roots {
        roots: Arc<RootCertStore>,
        /// For the report: "CA file PATH" or "system trust store".
        source: String,
    },
    /// Accept any certificate; verify only the handshake signature.
    Insecure,
}

impl Trust {
    /// Roots from a PEM file of CA certificates.
    pub fn ca_file(path: &Path) -> Result<Self, String> {
        let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(path).map_err(|e| at(&e))? {
            roots.add(c.map_err(|e| at(&e))?).map_err(|e| at(&e))?;
        }
        if roots.is_empty() {
            return Err(at(&"no certificates in this file"));
        }
        Ok(Trust::Roots {
            roots: Arc::new(roots),
            source: format!("CA file {}", path.display()),
        })
    }

    /// Roots from the operating system's trust store.
    pub fn system() -> Result<Self, String> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, unparsable) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = match (found.errors.first(), unparsable) {
                (Some(e), _) => e.to_string(),
                (None, 0) => "it is empty".to_string(),
                (None, n) => format!("none of its {n} certificates could be parsed"),
            };
            return Err(format!(
                "no CA certificates in the system trust store ({why}): give --ca FILE, \
                 --demo-json, or --insecure for a test server"
            ));
        }
        Ok(Trust::Roots {
            roots: Arc::new(roots),
            source: "system trust store".into(),
        })
    }

    /// What the report says about certificate checks.
    pub fn describe(&self) -> String {
        match self {
            Trust::Roots { source, .. } => format!("verified against the {source}"),
            Trust::Insecure => "NOT verified (--insecure)".into(),
        }
    }
}

/// Accepts any certificate chain and name, and checks handshake
/// signatures as a verifying client would.
#[derive(Debug)]
pub struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl AnyCertificate {
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        AnyCertificate { provider }
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_an_error() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "not a certificate\n").unwrap();
        let e = Trust::ca_file(f.path()).unwrap_err();
        assert!(e.contains("no certificates"), "{e}");
        let e = Trust::ca_file(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn the_report_says_when_nothing_was_verified() {
        assert!(Trust::Insecure.describe().contains("NOT verified"));
    }
}
