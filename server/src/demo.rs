//! `pop3sd demo`: a complete, self-contained installation on loopback.
//!
//! It creates a root directory with a CA, one certificate per tenant
//! (rcgen, ECDSA P-256), two tenants that share local parts (alice@ exists
//! in both, so isolation can be tried), users with known passwords, mail,
//! a client certificate for SASL EXTERNAL, and a complete TOML config that
//! `pop3sd serve --config` runs again unchanged. The same code serves the
//! load generator (`--users`, `--messages`) and the integration tests
//! (`--json`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use pop3sd_storage::{Address, PreparedMessage, Store, StoreOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use serde::Serialize;

use crate::auth::passwd::{render, PasswdEntry};
use crate::auth::StoredHash;
use crate::config::{
    ClientCerts, Config, ExpireSetting, ExpireWord, LimitsConfig, ListenerConfig, ListenerKind,
    RuntimeConfig, TenantConfig, TlsConfig,
};

/// Tenants the demo creates.
pub const DEMO_TENANTS: [&str; 2] = ["example.com", "example.org"];

/// How passwords are stored in the demo's passwd-files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoScheme {
    /// argon2id for up to 100 users per tenant, PLAIN beyond (hashing
    /// thousands of argon2id passwords would take minutes).
    Auto,
    Argon2id,
    Plain,
}

/// Options of `pop3sd demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Root directory (default: a new directory under the system temp dir).
    pub dir: Option<PathBuf>,
    /// Ports; 0 picks a free one.
    pub port: u16,
    pub pop3_port: u16,
    pub external_port: u16,
    /// Users per tenant and messages per user.
    pub users: usize,
    pub messages: usize,
    pub scheme: DemoScheme,
    /// Event-loop threads (0 = all cores).
    pub cores: usize,
    /// Size of every message (0: a mix of about 0.6, 3, 20 and 60 KB).
    pub message_size: usize,
    /// Also write every message into a Maildir tree here
    /// (`DIR/<domain>/<user>/{cur,new,tmp}`), so that another server
    /// (Dovecot) can be given identical mail.
    pub maildir: Option<PathBuf>,
}

/// A demo user as printed in the JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct DemoUser {
    pub user: String,
    pub password: String,
}

/// A demo tenant as printed in the JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct DemoTenant {
    pub domain: String,
    pub users: Vec<DemoUser>,
}

/// What scripts need to drive the demo (`--json` prints this).
#[derive(Debug, Clone, Serialize)]
pub struct DemoInfo {
    pub pop3s: String,
    pub pop3: Option<String>,
    pub lmtp: Option<String>,
    pub metrics: Option<String>,
    pub external: String,
    pub ca_file: PathBuf,
    pub root: PathBuf,
    pub config: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub client_cert_user: String,
    pub password_scheme: String,
    pub messages_per_user: usize,
    pub tenants: Vec<DemoTenant>,
}

/// Why the demo could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("storage: {0}")]
    Storage(#[from] pop3sd_storage::Error),
    #[error("{0}")]
    Other(String),
}

fn write(path: &Path, contents: impl AsRef<[u8]>, mode: u32) -> Result<(), DemoError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).map_err(|source| DemoError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        DemoError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Free loopback ports, distinct from each other: each probe socket stays
/// bound until all are picked, so none is handed out twice. They are taken
/// below the kernel's ephemeral range, so that no outgoing connection (a
/// client of another demo on the machine, say) can take one between the
/// pick and the server's bind.
#[derive(Default)]
struct FreePorts(Vec<TcpListener>);

/// The first port of the kernel's ephemeral range.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768)
}

impl FreePorts {
    /// `fixed`, or a free port when it is 0.
    fn pick(&mut self, fixed: u16) -> Result<u16, DemoError> {
        if fixed != 0 {
            return Ok(fixed);
        }
        let ephemeral_low = ephemeral_low();
        let low = ephemeral_low.saturating_sub(16384).max(1024);
        let rng = ring::rand::SystemRandom::new();
        for _ in 0..200 {
            let span = ephemeral_low.saturating_sub(low).max(1);
            let r: [u8; 2] = ring::rand::generate(&rng)
                .map(|r| r.expose())
                .unwrap_or([0, 0]);
            let port = low + u16::from_le_bytes(r) % span;
            if let Ok(probe) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                self.0.push(probe);
                return Ok(port);
            }
        }
        // Everything below the range is taken: let the kernel choose.
        let err = |e: std::io::Error| DemoError::Other(format!("cannot find a free port: {e}"));
        let probe = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(err)?;
        let port = probe.local_addr().map_err(err)?.port();
        self.0.push(probe);
        Ok(port)
    }
}

/// One free loopback port, picked as the demo picks its own (below the
/// ephemeral range), for a listener that is added to a demo's
/// configuration and bound a moment later.
pub fn free_port() -> Result<u16, DemoError> {
    FreePorts::default().pick(0)
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::OrganizationName, "pop3sd demo");
    d.push(DnType::CommonName, cn);
    d
}

/// The password a demo user gets (printed in the JSON and the banner).
pub fn demo_password(local: &str, domain: &str) -> String {
    let tld = domain.rsplit('.').next().unwrap_or(domain);
    format!("{local}-{tld}-secret")
}

/// Demo user names for one tenant.
pub fn demo_users(n: usize) -> Vec<String> {
    let named = ["alice", "bob", "carol"];
    (0..n)
        .map(|i| match named.get(i) {
            Some(s) => s.to_string(),
            None => format!("user{:05}", i + 1),
        })
        .collect()
}

/// A demo message: headers, a dot line, and a body whose size varies.
pub fn demo_message(domain: &str, user: &str, i: usize) -> Vec<u8> {
    demo_message_sized(domain, user, i, 0)
}

/// A demo message of about `size` bytes (0: the default mix of sizes).
pub fn demo_message_sized(domain: &str, user: &str, i: usize, size: usize) -> Vec<u8> {
    let sizes = [600usize, 3_000, 20_000, 51_200];
    let target = if size > 0 {
        size
    } else {
        sizes[i % sizes.len()]
    };
    let mut m = format!(
        "From: Demo Sender <sender@{domain}>\r\nTo: {user}@{domain}\r\nSubject: Demo message {n} for {user}\r\n\
         Date: Sat, 28 Nov 2026 00:00:00 +0000\r\nMessage-ID: <demo.{n}.{user}@{domain}>\r\n\r\n\
         Hello {user},\r\n\r\nThis is demo message {n}.\r\n.This line starts with a dot.\r\n\r\n",
        n = i + 1
    )
    .into_bytes();
    let mut line = 0;
    while m.len() < target {
        m.extend_from_slice(
            format!(
                "{line:05} The quick brown fox jumps over the lazy dog, message {}.\r\n",
                i + 1
            )
            .as_bytes(),
        );
        line += 1;
    }
    m
}

/// Creates the demo's files and mail and returns its config and facts.
/// Listener addresses use the chosen ports (free ones for 0).
pub fn prepare(opts: &DemoOptions) -> Result<(Config, DemoInfo), DemoError> {
    let root = match &opts.dir {
        Some(d) => d.clone(),
        None => tempfile::Builder::new()
            .prefix("pop3sd-demo-")
            .tempdir()
            .map_err(|source| DemoError::Io {
                path: std::env::temp_dir(),
                source,
            })?
            .keep(),
    };
    std::fs::create_dir_all(&root).map_err(|source| DemoError::Io {
        path: root.clone(),
        source,
    })?;
    let root = root.canonicalize().map_err(|source| DemoError::Io {
        path: root.clone(),
        source,
    })?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700));
    }
    let tls_dir = root.join("tls");
    let passwd_dir = root.join("passwd");
    for d in [&tls_dir, &passwd_dir] {
        std::fs::create_dir_all(d).map_err(|source| DemoError::Io {
            path: d.clone(),
            source,
        })?;
    }

    // CA.
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = dn("pop3sd demo CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key)?;
    let ca_file = tls_dir.join("ca.pem");
    write(&ca_file, ca.pem(), 0o644)?;
    write(&tls_dir.join("ca.key"), ca_key.serialize_pem(), 0o600)?;

    let scheme = match opts.scheme {
        DemoScheme::Auto if opts.users > 100 => DemoScheme::Plain,
        DemoScheme::Auto => DemoScheme::Argon2id,
        s => s,
    };
    let store = Store::open(root.join("mail"), StoreOptions::default())?;
    let mut tenants_cfg = Vec::new();
    let mut tenants_info = Vec::new();
    for (ti, domain) in DEMO_TENANTS.iter().enumerate() {
        let key = KeyPair::generate()?;
        let mut names = vec![domain.to_string(), format!("pop.{domain}")];
        if ti == 0 {
            names.push("localhost".into());
        }
        let mut params = CertificateParams::new(names)?;
        if ti == 0 {
            params
                .subject_alt_names
                .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        }
        params.distinguished_name = dn(domain);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        let cert_file = tls_dir.join(format!("{domain}.pem"));
        let key_file = tls_dir.join(format!("{domain}.key"));
        write(&cert_file, cert.pem(), 0o644)?;
        write(&key_file, key.serialize_pem(), 0o600)?;

        let users = demo_users(opts.users);
        let mut entries = Vec::new();
        let mut info_users = Vec::new();
        for u in &users {
            let password = demo_password(u, domain);
            let hash = match scheme {
                DemoScheme::Plain => StoredHash::parse(&format!("{{PLAIN}}{password}"))
                    .map_err(|e| DemoError::Other(e.to_string()))?,
                _ => StoredHash::new_argon2id(password.as_bytes())
                    .map_err(|e| DemoError::Other(e.to_string()))?,
            };
            entries.push(PasswdEntry {
                user: pop3sd_storage::LocalPart::parse(u)
                    .map_err(|e| DemoError::Other(e.to_string()))?,
                hash,
                rest: String::new(),
            });
            info_users.push(DemoUser {
                user: format!("{u}@{domain}"),
                password,
            });
        }
        let passwd_file = passwd_dir.join(domain);
        write(&passwd_file, render(&entries), 0o600)?;

        // Mail: one durable batch per user, users in parallel.
        deliver_demo_mail(&store, domain, &users, opts)?;

        tenants_cfg.push(TenantConfig {
            domain: domain.to_string(),
            aliases: vec![],
            certificate: cert_file,
            private_key: key_file,
            passwd_file,
            client_ca: (ti == 0).then(|| ca_file.clone()),
            expire: ExpireSetting::Word(ExpireWord::Never),
            login_delay: 0,
            allow_cleartext: false,
            allow_bare_user: true,
            apop: false,
            max_message_size: 50 << 20,
            quota_messages: 0,
            quota_bytes: 0,
            tenant_quota_messages: 0,
            tenant_quota_bytes: 0,
            quota_exceeded: Default::default(),
        });
        tenants_info.push(DemoTenant {
            domain: domain.to_string(),
            users: info_users,
        });
    }

    // A client certificate for alice@example.com (SASL EXTERNAL).
    let client_user = format!("alice@{}", DEMO_TENANTS[0]);
    let ckey = KeyPair::generate()?;
    let mut cparams = CertificateParams::new(Vec::<String>::new())?;
    cparams.distinguished_name = dn(&client_user);
    cparams.subject_alt_names = vec![SanType::Rfc822Name(
        client_user
            .clone()
            .try_into()
            .map_err(|e: rcgen::Error| DemoError::Cert(e))?,
    )];
    cparams.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let ccert = cparams.signed_by(&ckey, &ca, &ca_key)?;
    let client_cert = tls_dir.join("client-alice.pem");
    let client_key = tls_dir.join("client-alice.key");
    write(&client_cert, ccert.pem(), 0o644)?;
    write(&client_key, ckey.serialize_pem(), 0o600)?;

    let mut ports = FreePorts::default();
    let local = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
    let pop3s = local(ports.pick(opts.port)?);
    let pop3 = local(ports.pick(opts.pop3_port)?);
    let external = local(ports.pick(opts.external_port)?);
    let lmtp = local(ports.pick(0)?);
    let metrics = local(ports.pick(0)?);
    // The server binds them later; the probes must be gone by then.
    drop(ports);
    let config_path = root.join("pop3sd.toml");
    let config = Config {
        storage_root: root.join("mail"),
        hostname: "pop3sd-demo.localhost".into(),
        // The demo serves loopback only and runs as whoever starts it.
        user: None,
        group: None,
        allow_root: true,
        proxy: Default::default(),
        lmtp: crate::config::LmtpConfig {
            address: Some(lmtp),
            ..Default::default()
        },
        metrics: crate::config::MetricsConfig {
            address: Some(metrics),
        },
        runtime: RuntimeConfig {
            cores: opts.cores,
            ..RuntimeConfig::default()
        },
        tls: TlsConfig::default(),
        limits: LimitsConfig {
            // Loopback benchmarks log in thousands of times a second, all
            // from one address.
            failure_delay_ms: 200,
            max_connections: 1_000_000,
            max_connections_per_ip: 1_000_000,
            ..LimitsConfig::default()
        },
        listeners: vec![
            ListenerConfig {
                address: pop3s,
                kind: ListenerKind::Pop3s,
                client_certificates: ClientCerts::None,
                proxy_protocol: false,
                tcp_congestion: None,
            },
            ListenerConfig {
                address: pop3,
                kind: ListenerKind::Pop3,
                client_certificates: ClientCerts::None,
                proxy_protocol: false,
                tcp_congestion: None,
            },
            ListenerConfig {
                address: external,
                kind: ListenerKind::Pop3s,
                client_certificates: ClientCerts::Optional,
                proxy_protocol: false,
                tcp_congestion: None,
            },
        ],
        tenants: tenants_cfg,
        base_dir: root.clone(),
        source: Some(config_path.clone()),
    };
    write(
        &config_path,
        format!(
            "# Written by `pop3sd demo`; run it again with `pop3sd serve --config {}`.\n{}",
            config_path.display(),
            config.to_toml()
        ),
        0o600,
    )?;
    let info = DemoInfo {
        pop3s: pop3s.to_string(),
        pop3: Some(pop3.to_string()),
        lmtp: Some(lmtp.to_string()),
        metrics: Some(metrics.to_string()),
        external: external.to_string(),
        ca_file,
        root: root.clone(),
        config: config_path,
        client_cert,
        client_key,
        client_cert_user: client_user,
        password_scheme: match scheme {
            DemoScheme::Plain => "PLAIN".into(),
            _ => "ARGON2ID".into(),
        },
        messages_per_user: opts.messages,
        tenants: tenants_info,
    };
    Ok((config, info))
}

fn write_maildir(
    root: &Path,
    domain: &str,
    user: &str,
    messages: &[Vec<u8>],
) -> Result<(), DemoError> {
    let dir = root.join(domain).join(user);
    for sub in ["cur", "new", "tmp"] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).map_err(|source| DemoError::Io { path: d, source })?;
    }
    for (i, m) in messages.iter().enumerate() {
        let p = dir
            .join("cur")
            .join(format!("{}.M{i}P0.pop3sd-demo:2,", 1_764_000_000 + i));
        std::fs::write(&p, m).map_err(|source| DemoError::Io { path: p, source })?;
    }
    Ok(())
}

fn deliver_demo_mail(
    store: &Store,
    domain: &str,
    users: &[String],
    opts: &DemoOptions,
) -> Result<(), DemoError> {
    let threads = 8.min(users.len().max(1));
    let chunk = users.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = users
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || -> Result<(), DemoError> {
                    for u in part {
                        let addr = Address::parse(format!("{u}@{domain}"))
                            .map_err(|e| DemoError::Other(e.to_string()))?;
                        let md = store.ensure_maildrop(&addr)?;
                        let raw: Vec<Vec<u8>> = (0..opts.messages)
                            .map(|i| demo_message_sized(domain, u, i, opts.message_size))
                            .collect();
                        if let Some(dir) = &opts.maildir {
                            write_maildir(dir, domain, u, &raw)?;
                        }
                        if md.stats()?.messages > 0 {
                            continue; // an existing demo root keeps its mail
                        }
                        let batch: Vec<PreparedMessage> =
                            raw.iter().map(|m| PreparedMessage::from_raw(m)).collect();
                        for r in md.append_batch(batch) {
                            r?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| DemoError::Other("mail delivery thread panicked".into()))??;
        }
        Ok(())
    })
}

/// The human-readable banner printed when the demo is ready.
pub fn banner(info: &DemoInfo) -> String {
    let t = &info.tenants[0];
    let u = &t.users[0];
    let port = info.pop3s.rsplit(':').next().unwrap_or("995");
    format!(
        "pop3sd demo is serving POP3S on {pop3s} (STLS on {pop3}, client certificates on {ext}).\n\
         Root: {root}\n\
         Config: {config}  (serve it again with: pop3sd serve --config {config})\n\
         Tenants: {tenants}; users per tenant: {n}; messages per user: {m}\n\n\
         Try:\n  curl --cacert {ca} --connect-to {dom}:{port}:127.0.0.1:{port} -u '{user}:{pw}' pop3s://{dom}:{port}/1\n  \
         openssl s_client -connect {pop3s} -servername {dom} -CAfile {ca} -quiet -crlf\n    \
         then type: USER {user}  /  PASS {pw}  /  LIST  /  QUIT\n  \
         SASL EXTERNAL: openssl s_client -connect {ext} -servername {dom} -CAfile {ca} -cert {cc} -key {ck} -quiet -crlf\n    \
         then type: AUTH EXTERNAL =\n\nStop with Ctrl-C.",
        pop3s = info.pop3s,
        pop3 = info.pop3.as_deref().unwrap_or("-"),
        ext = info.external,
        root = info.root.display(),
        config = info.config.display(),
        tenants = info.tenants.iter().map(|t| t.domain.as_str()).collect::<Vec<_>>().join(", "),
        n = t.users.len(),
        m = info.messages_per_user,
        ca = info.ca_file.display(),
        dom = t.domain,
        user = u.user,
        pw = u.password,
        cc = info.client_cert.display(),
        ck = info.client_key.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::FreePorts;

    #[test]
    fn free_ports_are_distinct_and_fixed_ones_kept() {
        let mut ports = FreePorts::default();
        let mut seen: Vec<u16> = (0..50).map(|_| ports.pick(0).unwrap()).collect();
        let below = super::ephemeral_low();
        assert!(seen.iter().all(|&p| (1024..below).contains(&p)), "{seen:?}");
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 50, "no port handed out twice");
        assert_eq!(ports.pick(9995).unwrap(), 9995);
    }
}
