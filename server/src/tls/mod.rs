//! TLS configuration: rustls with the ring provider, TLS 1.2 and 1.3 only,
//! each tenant's certificate by SNI, shared session resumption, and client
//! certificates only on listeners configured for them.
//!
//! A listener without client-certificate configuration gets a ServerConfig
//! built with `with_no_client_auth()`: rustls then never sends a
//! CertificateRequest (the pop3-over-tls rule). One set of ticket keys and
//! one session cache serve every core, so a valid ticket or session id
//! resumes wherever the connection lands; each client-certificate mode sees
//! them through its own scope, so a session never resumes on a listener
//! kind that would have refused its handshake.

pub mod certs;
pub mod client_ca_hints;
pub mod client_identity;
pub mod record_layer;
pub mod resolver;
pub mod session_scope;
pub mod ticket_keys;

use std::collections::HashMap;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};

use crate::config::{ClientCerts, Config, ConfigProblem, RecordLayerMode};
use client_ca_hints::TenantHints;
pub use client_identity::ClientIdentities;
pub use resolver::SniResolver;
pub use session_scope::ScopedSessions;
pub use ticket_keys::TicketKeys;

/// Everything TLS needs at run time, shared by all cores.
#[derive(Debug, Clone)]
pub struct TlsContext {
    /// For listeners that never ask for a client certificate.
    pub no_client_auth: Arc<ServerConfig>,
    /// For listeners that ask but do not insist.
    pub client_optional: Option<Arc<ServerConfig>>,
    /// For listeners that insist on a client certificate.
    pub client_required: Option<Arc<ServerConfig>>,
    /// Per-tenant re-verification and user mapping of client certificates.
    pub identities: ClientIdentities,
    pub resolver: Arc<SniResolver>,
    /// Kept across reloads so that tickets and sessions stay valid.
    pub ticketer: Arc<TicketKeys>,
    pub sessions: Arc<ServerSessionMemoryCache>,
    /// The size `sessions` was made with (`tls.session_cache_size`).
    sessions_size: usize,
}

impl TlsContext {
    /// The ServerConfig a listener uses.
    pub fn for_listener(&self, mode: ClientCerts) -> Arc<ServerConfig> {
        match mode {
            ClientCerts::None => self.no_client_auth.clone(),
            ClientCerts::Optional => self
                .client_optional
                .clone()
                .unwrap_or_else(|| self.no_client_auth.clone()),
            ClientCerts::Required => self
                .client_required
                .clone()
                .unwrap_or_else(|| self.no_client_auth.clone()),
        }
    }
}

/// The provider pop3sd uses everywhere: ring, with the server's preference
/// order for cipher suites: AES-128-GCM first (fastest to encrypt with
/// AES-NI, and its SHA-256 key schedule costs less per handshake than
/// AES-256-GCM's SHA-384), then ChaCha20-Poly1305, then AES-256-GCM. Every
/// suite ring offers stays available; only the order changes.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::cipher_suite as cs;
    let mut p = rustls::crypto::ring::default_provider();
    let rank = |s: &rustls::SupportedCipherSuite| {
        let order = [
            cs::TLS13_AES_128_GCM_SHA256.suite(),
            cs::TLS13_CHACHA20_POLY1305_SHA256.suite(),
            cs::TLS13_AES_256_GCM_SHA384.suite(),
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256.suite(),
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256.suite(),
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256.suite(),
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256.suite(),
        ];
        order
            .iter()
            .position(|x| *x == s.suite())
            .unwrap_or(order.len())
    };
    p.cipher_suites.sort_by_key(rank);
    Arc::new(p)
}

fn problem(location: String, message: impl ToString) -> ConfigProblem {
    ConfigProblem {
        location,
        message: message.to_string(),
    }
}

/// DNS names in a certificate's subjectAltName (CN when there are none).
pub fn certificate_names(cert: &rustls::pki_types::CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, c)) = X509Certificate::from_der(cert.as_ref()) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            c.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    names
}

/// True when a certificate name covers `host` (exactly, or `*.` one label).
pub fn name_covers(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.');
    if let Some(suffix) = pattern.strip_prefix("*.") {
        return host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix));
    }
    pattern.eq_ignore_ascii_case(host)
}

/// The resumption scope of a client-certificate mode: tickets and cached
/// sessions resume only on listeners of the mode that issued them.
fn resumption_scope(mode: ClientCerts) -> u8 {
    match mode {
        ClientCerts::None => 0,
        ClientCerts::Optional => 1,
        ClientCerts::Required => 2,
    }
}

/// Builds the TLS context from a configuration, reporting every problem.
/// `previous` (on reload) lends its session cache, and its ticket keys when
/// they are not read from a file, so that existing clients still resume;
/// a reload that changes the cache's size or the keys' lifetime gets new
/// ones (clients then do one full handshake each).
pub fn build(
    cfg: &Config,
    previous: Option<&TlsContext>,
) -> Result<TlsContext, Vec<ConfigProblem>> {
    let mut problems = Vec::new();
    let provider = provider();
    let mut by_name = HashMap::new();
    let mut default = None;
    let mut union_roots = RootCertStore::empty();
    let mut identities = ClientIdentities::default();
    // Each tenant name's client CA names, for the CertificateRequest.
    let mut hint_names: HashMap<String, Vec<rustls::DistinguishedName>> = HashMap::new();
    for (i, t) in cfg.tenants.iter().enumerate() {
        let loc = |f: &str| format!("tenant[{i}] ({}).{f}", t.domain);
        let names: Vec<pop3sd_storage::Domain> = std::iter::once(&t.domain)
            .chain(t.aliases.iter())
            .filter_map(|n| pop3sd_storage::Domain::parse(n).ok())
            .collect();
        match certs::load_certified_key(&cfg.resolve(&t.certificate), &cfg.resolve(&t.private_key))
        {
            Ok(ck) => {
                let cert_names = ck
                    .end_entity_cert()
                    .map(certificate_names)
                    .unwrap_or_default();
                for n in &names {
                    if !cert_names.iter().any(|c| name_covers(c, n.as_str())) {
                        problems.push(problem(
                            loc("certificate"),
                            format!("does not cover {n} (it names {})", cert_names.join(", ")),
                        ));
                    }
                }
                for n in &names {
                    by_name.insert(n.as_str().to_string(), ck.clone());
                }
                let is_default = match &cfg.tls.default_tenant {
                    Some(d) => d == &t.domain,
                    None => default.is_none(),
                };
                if is_default {
                    default = Some(ck);
                }
            }
            Err(e) => problems.push(problem(loc(e.field(&cfg.resolve(&t.private_key))), e)),
        }
        for n in &names {
            hint_names.insert(n.as_str().to_ascii_lowercase(), Vec::new());
        }
        if let Some(ca) = &t.client_ca {
            match certs::load_certs(&cfg.resolve(ca)) {
                Ok(cas) => {
                    let mut roots = RootCertStore::empty();
                    for c in cas {
                        if let Err(e) = roots.add(c.clone()) {
                            problems.push(problem(loc("client_ca"), e));
                        }
                        let _ = union_roots.add(c);
                    }
                    for n in &names {
                        hint_names.insert(n.as_str().to_ascii_lowercase(), roots.subjects());
                    }
                    match WebPkiClientVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider.clone(),
                    )
                    .build()
                    {
                        Ok(v) => identities.add(names.clone(), v),
                        Err(e) => problems.push(problem(loc("client_ca"), e)),
                    }
                }
                Err(e) => problems.push(problem(loc("client_ca"), e)),
            }
        }
    }
    let ticketer: Arc<TicketKeys> = match (&cfg.tls.ticket_keys_file, previous) {
        (Some(p), _) => {
            match TicketKeys::from_file(&cfg.resolve(p), cfg.tls.ticket_key_lifetime_secs) {
                Ok(k) => Arc::new(k),
                Err(e) => {
                    problems.push(problem("tls.ticket_keys_file".into(), e));
                    return Err(problems);
                }
            }
        }
        (None, Some(prev))
            if !prev.ticketer.is_from_file()
                && prev.ticketer.has_lifetime(cfg.tls.ticket_key_lifetime_secs) =>
        {
            prev.ticketer.clone()
        }
        (None, _) => match TicketKeys::random(cfg.tls.ticket_key_lifetime_secs) {
            Ok(k) => Arc::new(k),
            Err(e) => {
                problems.push(problem("tls".into(), e));
                return Err(problems);
            }
        },
    };
    let Some(default) = default else {
        if problems.is_empty() {
            problems.push(problem(
                "tenant".into(),
                "no tenant certificate could be loaded",
            ));
        }
        return Err(problems);
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let resolver = Arc::new(SniResolver::new(by_name, default));
    let sessions_size = cfg.tls.session_cache_size.max(1);
    let cache = match previous {
        Some(p) if p.sessions_size == sessions_size => p.sessions.clone(),
        _ => ServerSessionMemoryCache::new(sessions_size),
    };
    let finish = |mode: ClientCerts,
                  verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>|
     -> Result<Arc<ServerConfig>, String> {
        let b = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?;
        let b = match verifier {
            Some(v) => b.with_client_cert_verifier(v),
            None => b.with_no_client_auth(),
        };
        let mut sc = b.with_cert_resolver(resolver.clone());
        let scope = resumption_scope(mode);
        sc.ticketer = ticketer.scoped(scope);
        sc.session_storage = ScopedSessions::new(cache.clone(), scope);
        sc.send_tls13_tickets = cfg.tls.tls13_tickets;
        // The server's order (see `provider`) decides, as most servers do.
        sc.ignore_client_order = true;
        // Lets the connection hand its traffic keys to pop3sd's record
        // layer once the handshake is over (record_layer.rs).
        sc.enable_secret_extraction = cfg.tls.record_layer == RecordLayerMode::Pop3sd;
        // The greeting in the server's first flight (rustls leaves it off
        // by itself where it asks for a client certificate).
        sc.send_half_rtt_data = cfg.tls.half_rtt_greeting;
        Ok(Arc::new(sc))
    };
    let no_client_auth =
        finish(ClientCerts::None, None).map_err(|e| vec![problem("tls".into(), e)])?;
    let (mut client_optional, mut client_required) = (None, None);
    let wants = |m: ClientCerts| cfg.listeners.iter().any(|l| l.client_certificates == m);
    if !union_roots.is_empty() {
        let roots = Arc::new(union_roots);
        if wants(ClientCerts::Optional) {
            let v = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| vec![problem("tls".into(), e)])?;
            let v = Arc::new(TenantHints::new(v, hint_names.clone()));
            client_optional = Some(
                finish(ClientCerts::Optional, Some(v))
                    .map_err(|e| vec![problem("tls".into(), e)])?,
            );
        }
        if wants(ClientCerts::Required) {
            let v = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| vec![problem("tls".into(), e)])?;
            let v = Arc::new(TenantHints::new(v, hint_names.clone()));
            client_required = Some(
                finish(ClientCerts::Required, Some(v))
                    .map_err(|e| vec![problem("tls".into(), e)])?,
            );
        }
    }
    Ok(TlsContext {
        no_client_auth,
        client_optional,
        client_required,
        identities,
        resolver,
        ticketer,
        sessions: cache,
        sessions_size,
    })
}

#[cfg(test)]
mod tests {
    use super::name_covers;

    #[test]
    fn certificate_name_matching() {
        assert!(name_covers("example.com", "example.com"));
        assert!(name_covers("Example.COM", "example.com"));
        assert!(name_covers("*.example.com", "pop.example.com"));
        assert!(!name_covers("*.example.com", "example.com"));
        assert!(!name_covers("*.example.com", "a.b.example.com"));
        assert!(!name_covers("example.com", "example.org"));
    }
}
