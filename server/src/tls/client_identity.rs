//! Mapping a TLS client certificate to a user, for SASL EXTERNAL.
//!
//! The handshake verifies a client certificate against the union of all
//! tenants' client CAs (rustls has one verifier per listener). That alone
//! would let tenant B's CA vouch for a user of tenant A, so the identity is
//! taken from the certificate (an rfc822Name in subjectAltName, or a CN of
//! the form user@domain) and the chain is verified again against the CA of
//! the tenant that owns that domain, and only that one.

use std::collections::HashMap;
use std::sync::Arc;

use pop3sd_storage::{Address, Domain};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;

/// Per-tenant client-certificate verifiers.
#[derive(Debug, Default, Clone)]
pub struct ClientIdentities {
    verifiers: HashMap<Domain, Arc<dyn ClientCertVerifier>>,
}

/// The identities a certificate claims, in preference order.
pub fn claimed_addresses(leaf: &CertificateDer<'_>) -> Vec<Address> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(leaf.as_ref()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::RFC822Name(email) = name {
                if let Ok(a) = Address::parse(email.as_bytes()) {
                    out.push(a);
                }
            }
        }
    }
    for cn in cert.subject().iter_common_name() {
        if let Ok(s) = cn.as_str() {
            if let Ok(a) = Address::parse(s.as_bytes()) {
                out.push(a);
            }
        }
    }
    out
}

impl ClientIdentities {
    /// Adds a tenant's verifier (built from its client_ca), under each of its names.
    pub fn add(
        &mut self,
        names: impl IntoIterator<Item = Domain>,
        verifier: Arc<dyn ClientCertVerifier>,
    ) {
        for n in names {
            self.verifiers.insert(n, verifier.clone());
        }
    }

    /// True when no tenant accepts client certificates.
    pub fn is_empty(&self) -> bool {
        self.verifiers.is_empty()
    }

    /// The address a verified peer chain logs in as, if any tenant vouches for it.
    pub fn identify(&self, chain: &[CertificateDer<'static>]) -> Option<Address> {
        let (leaf, intermediates) = chain.split_first()?;
        claimed_addresses(leaf).into_iter().find(|a| {
            self.verifiers.get(&a.domain).is_some_and(|v| {
                v.verify_client_cert(leaf, intermediates, UnixTime::now())
                    .is_ok()
            })
        })
    }
}
