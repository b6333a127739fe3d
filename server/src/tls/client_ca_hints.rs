//! Which CA names a CertificateRequest offers: those of the tenant the
//! client named (SNI), not every tenant's.
//!
//! A listener that asks for client certificates verifies them against all
//! tenants' client CAs (one `ServerConfig` serves every tenant), and the
//! verifier's hints would name all of them to any client: one tenant's
//! clients would learn which CAs the others use. rustls asks the verifier
//! for its hints without the SNI, but in the same synchronous call that
//! resolved the server's certificate, which records the SNI on this thread
//! ([`super::resolver`]); the hints are picked by it. Without an SNI, or
//! under a name no tenant has, every tenant's names are offered, as before.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use super::resolver::with_captured_sni;

/// A client-certificate verifier whose hints follow the SNI's tenant.
#[derive(Debug)]
pub struct TenantHints {
    inner: Arc<dyn ClientCertVerifier>,
    /// Every tenant's CA names.
    all: Vec<DistinguishedName>,
    /// Each tenant name (domain and aliases, lower case) to its CA names:
    /// empty for a tenant without a client CA.
    by_name: HashMap<String, Vec<DistinguishedName>>,
}

impl TenantHints {
    /// Wraps `inner`; `by_name` gives each tenant name's CA names.
    pub fn new(
        inner: Arc<dyn ClientCertVerifier>,
        by_name: HashMap<String, Vec<DistinguishedName>>,
    ) -> Self {
        let all = inner.root_hint_subjects().to_vec();
        TenantHints {
            inner,
            all,
            by_name,
        }
    }

    /// The hints for a client that named `sni`.
    fn for_name(&self, sni: Option<&str>) -> &[DistinguishedName] {
        sni.map(|n| n.strip_suffix('.').unwrap_or(n).to_ascii_lowercase())
            .and_then(|n| self.by_name.get(&n))
            .map_or(&self.all, |v| v)
    }
}

impl ClientCertVerifier for TenantHints {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        with_captured_sni(|sni| self.for_name(sni))
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Names(Vec<DistinguishedName>);

    impl ClientCertVerifier for Names {
        fn root_hint_subjects(&self) -> &[DistinguishedName] {
            &self.0
        }
        fn verify_client_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: UnixTime,
        ) -> Result<ClientCertVerified, Error> {
            Err(Error::General("not in this test".into()))
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            Err(Error::General("not in this test".into()))
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            Err(Error::General("not in this test".into()))
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            Vec::new()
        }
    }

    #[test]
    fn hints_follow_the_named_tenant() {
        let dn = |s: &[u8]| DistinguishedName::from(s.to_vec());
        let hints = TenantHints::new(
            Arc::new(Names(vec![dn(b"A"), dn(b"B")])),
            HashMap::from([
                ("a.example".to_string(), vec![dn(b"A")]),
                ("alias.example".to_string(), vec![dn(b"A")]),
                ("b.example".to_string(), vec![dn(b"B")]),
                ("c.example".to_string(), vec![]),
            ]),
        );
        let named = |sni: Option<&str>| -> Vec<Vec<u8>> {
            hints
                .for_name(sni)
                .iter()
                .map(|d| d.as_ref().to_vec())
                .collect()
        };
        assert_eq!(named(Some("a.example")), [b"A".to_vec()]);
        assert_eq!(named(Some("Alias.Example.")), [b"A".to_vec()]);
        assert_eq!(named(Some("b.example")), [b"B".to_vec()]);
        assert!(named(Some("c.example")).is_empty());
        assert_eq!(named(Some("elsewhere.example")).len(), 2);
        assert_eq!(hints.for_name(None).len(), 2);
    }
}
