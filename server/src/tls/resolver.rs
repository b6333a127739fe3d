//! Picking each tenant's certificate by SNI.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Maps SNI names (each tenant's domain and aliases) to certificates; a
/// client without SNI, or with a name no tenant has, gets the default one.
#[derive(Debug)]
pub struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// A resolver with these names and a fallback.
    pub fn new(by_name: HashMap<String, Arc<CertifiedKey>>, default: Arc<CertifiedKey>) -> Self {
        SniResolver { by_name, default }
    }

    /// The certificate a name gets (lowercase ASCII names, as rustls passes them).
    pub fn lookup(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        name.and_then(|n| {
            let n = n.strip_suffix('.').unwrap_or(n);
            self.by_name
                .get(n)
                .or_else(|| self.by_name.get(&n.to_ascii_lowercase()))
        })
        .cloned()
        .unwrap_or_else(|| self.default.clone())
    }
}

thread_local! {
    /// The SNI of the ClientHello most recently resolved on this thread.
    static CAPTURED_SNI: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Takes the SNI captured by the last `resolve` on this thread.
///
/// rustls 0.23's unbuffered server connection does not expose the SNI, but
/// `resolve` runs synchronously inside `process_tls_records` on the calling
/// thread (also for resumed handshakes), so the driver clears this slot
/// before feeding handshake bytes and takes it afterwards.
pub fn take_captured_sni() -> Option<String> {
    CAPTURED_SNI.with(|c| c.borrow_mut().take())
}

/// Calls `f` with the SNI captured by the last `resolve` on this thread,
/// leaving it for the driver: for what rustls asks later in the same call
/// (the client-certificate hints, [`super::client_ca_hints`]).
pub fn with_captured_sni<R>(f: impl FnOnce(Option<&str>) -> R) -> R {
    CAPTURED_SNI.with(|c| f(c.borrow().as_deref()))
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = client_hello.server_name();
        CAPTURED_SNI.with(|c| *c.borrow_mut() = name.map(str::to_owned));
        Some(self.lookup(name))
    }
}
