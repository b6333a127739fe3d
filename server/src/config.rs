//! The TOML configuration file (documented field by field in docs/config.md).
//!
//! Loading is two steps: [`Config::parse`] checks syntax and types (serde),
//! [`Config::check`] checks meaning (paths exist, names are valid, ports do
//! not clash) and reports every problem with where it is, so that
//! `pop3sd check-config` and a refused reload can name them all at once.
//! Relative paths are relative to the config file's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::Expire;

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where maildrops live (created if missing; must not be world-readable).
    pub storage_root: PathBuf,
    /// Name used in the APOP banner and logs.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    /// Drop to this user after binding the listeners (needed to bind ports
    /// below 1024 as root, then serve unprivileged).
    #[serde(default)]
    pub user: Option<String>,
    /// Group to drop to (default: the user's primary group).
    #[serde(default)]
    pub group: Option<String>,
    /// Keep running as root when no `user` is set. Off by default: a server
    /// facing the Internet should not hold root while it parses client bytes.
    #[serde(default)]
    pub allow_root: bool,
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub lmtp: LmtpConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default, rename = "tenant")]
    pub tenants: Vec<TenantConfig>,
    /// Directory the config was read from; relative paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The file it was read from (absolute), if any: checked like every
    /// file the server trusts, since whoever may write it may log in as
    /// anyone.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

fn default_hostname() -> String {
    "localhost".into()
}

/// Which I/O driver the cores run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Driver {
    /// io_uring (the default; start-up fails clearly where it is unavailable).
    #[default]
    IoUring,
    /// epoll, only when chosen here; logged at start-up.
    Legacy,
}

/// Cores, rings, buffers and sockets: the performance knobs (each one's
/// trade-off and measured effect is in docs/tuning.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Event-loop threads, one per core; 0 means one per available CPU (or
    /// one per CPU of `cpus` when that is set).
    pub cores: usize,
    /// Pin each event-loop thread to its own CPU.
    pub pin_cores: bool,
    /// CPUs the event loops run on, e.g. "2-7,10" (implies pinning): leaves
    /// the others to NIC interrupts, the MTA or the load generator.
    pub cpus: Option<String>,
    pub driver: Driver,
    /// io_uring submission queue entries per ring.
    pub ring_entries: u32,
    /// A kernel thread per ring polls the submission queue, saving the
    /// io_uring_enter system call at the price of a busy CPU per core.
    pub sqpoll: bool,
    /// How long an SQPOLL thread spins without work before it sleeps.
    pub sqpoll_idle_ms: u32,
    /// When a ring's completions are processed: by default only when the
    /// core asks for them, so that a busy core is not interrupted by an
    /// inter-processor interrupt for each one.
    pub task_work: TaskWork,
    /// Threads for password hashing and storage work.
    pub blocking_threads: usize,
    /// Listen backlog per listener socket.
    pub backlog: i32,
    /// One listening socket per core (SO_REUSEPORT, the kernel spreads
    /// connections by hash); off: one socket whose accept queue all cores
    /// share, which evens out long-lived connections over cores.
    pub reuse_port: bool,
    /// Accepts each core keeps in flight per listener.
    pub accept_batch: usize,
    /// First size of a connection's read buffer, in bytes (it grows to hold
    /// one whole TLS record when needed).
    pub read_buffer_size: usize,
    /// Size of a connection's write buffer, in full TLS records.
    pub write_buffer_records: usize,
    /// Free read and write buffers each core keeps for reuse.
    pub buffer_pool_size: usize,
    /// Return a connection's buffers to the pool while it waits for its
    /// client, so that idle connections cost no buffer memory.
    pub release_idle_buffers: bool,
    /// Kernel TLS: "auto" detects it at start-up and logs what it found;
    /// "off" skips the check. Records are always encrypted in user space.
    pub ktls: KtlsMode,
    /// TCP congestion control for the POP3 listeners' connections (e.g.
    /// "cubic"); unset, the system's (sysctl
    /// net.ipv4.tcp_congestion_control). BBR without the fq qdisc paces with
    /// a timer per burst, which costs CPU on fast paths (docs/tuning.md).
    pub tcp_congestion: Option<String>,
}

/// See [`RuntimeConfig::task_work`]. Each mode needs a newer kernel than
/// the next; the server falls back down the list when the kernel refuses one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TaskWork {
    /// Completions wait until the core next waits for events (Linux 6.1+):
    /// no interrupts, and they are handled in batches.
    #[default]
    Defer,
    /// Completions wait until the core next enters the kernel (Linux 5.19+).
    Cooperative,
    /// The kernel's default: an inter-processor interrupt makes a busy core
    /// handle each completion at once.
    Interrupt,
}

impl TaskWork {
    /// The next mode down, tried when the kernel refuses this one.
    pub fn fallback(self) -> Option<TaskWork> {
        match self {
            TaskWork::Defer => Some(TaskWork::Cooperative),
            TaskWork::Cooperative => Some(TaskWork::Interrupt),
            TaskWork::Interrupt => None,
        }
    }

    /// The name used in the configuration file.
    pub fn name(self) -> &'static str {
        match self {
            TaskWork::Defer => "defer",
            TaskWork::Cooperative => "cooperative",
            TaskWork::Interrupt => "interrupt",
        }
    }
}

/// See [`RuntimeConfig::ktls`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KtlsMode {
    #[default]
    Auto,
    Off,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cores: 0,
            pin_cores: false,
            cpus: None,
            driver: Driver::IoUring,
            ring_entries: 1024,
            sqpoll: false,
            sqpoll_idle_ms: 1000,
            task_work: TaskWork::Defer,
            blocking_threads: 2,
            backlog: 1024,
            reuse_port: true,
            accept_batch: 1,
            read_buffer_size: 4096,
            write_buffer_records: 4,
            buffer_pool_size: 256,
            release_idle_buffers: true,
            ktls: KtlsMode::Auto,
            tcp_congestion: None,
        }
    }
}

/// Parses a CPU list such as "0-3,8,10-11" (the kernel's cpuset notation).
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let parse = |x: &str| {
            x.parse::<usize>()
                .map_err(|_| format!("{part:?} is not a CPU number or range"))
        };
        let (a, b) = (parse(a)?, parse(b)?);
        if a > b || b >= 4096 {
            return Err(format!("{part:?} is not a valid CPU range"));
        }
        cpus.extend(a..=b);
    }
    cpus.sort_unstable();
    cpus.dedup();
    if cpus.is_empty() {
        return Err("names no CPU".into());
    }
    Ok(cpus)
}

/// TLS session resumption settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// File with ticket keys shared by several servers (see docs/config.md);
    /// without it, keys are random per process and rotate on their own.
    pub ticket_keys_file: Option<PathBuf>,
    /// How long a ticket stays valid, and how long one ticket key seals new
    /// tickets before the next takes over (at most seven days).
    pub ticket_key_lifetime_secs: u64,
    /// TLS 1.3 tickets sent after each full handshake.
    pub tls13_tickets: usize,
    /// TLS 1.2 session-id cache entries (shared by all cores).
    pub session_cache_size: usize,
    /// Tenant whose certificate clients without SNI get; default: the first.
    pub default_tenant: Option<String>,
    /// Plaintext bytes per TLS record sent (RETR and TOP stream in records
    /// of this size): 16384 needs the fewest records and seals; smaller
    /// records let a slow client start parsing sooner.
    pub record_size: usize,
    /// Who seals and opens records once the handshake is over: pop3sd's
    /// own record layer (one copy per byte, no allocation per record) or
    /// rustls (kept for comparison and as a fallback).
    pub record_layer: RecordLayerMode,
    /// TLS 1.3 on implicit-TLS listeners without client certificates: send
    /// the greeting with the server's first flight (0.5-RTT data), so the
    /// client can send USER a round trip sooner. The greeting is what any
    /// client that connects gets, so nothing is disclosed early.
    pub half_rtt_greeting: bool,
}

/// See [`TlsConfig::record_layer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RecordLayerMode {
    #[default]
    Pop3sd,
    Rustls,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ticket_keys_file: None,
            ticket_key_lifetime_secs: 6 * 3600,
            tls13_tickets: 1,
            session_cache_size: 10_000,
            default_tenant: None,
            record_size: 16384,
            record_layer: RecordLayerMode::Pop3sd,
            half_rtt_greeting: true,
        }
    }
}

/// Where mail comes in (LMTP, RFC 2033), for the MTA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LmtpConfig {
    /// TCP address (loopback, or a private network of MTAs).
    pub address: Option<SocketAddr>,
    /// Unix socket path.
    pub socket: Option<PathBuf>,
    /// Permissions of the socket, octal (default "0660").
    pub socket_mode: Option<String>,
    /// Group to give the socket (e.g. "postfix"), so the MTA can connect.
    pub socket_group: Option<String>,
    /// LMTP connections at once (TCP and socket together). Each can hold
    /// a message of up to the largest tenant's `max_message_size` in
    /// memory; beyond this, a connection is answered `421` and closed, and
    /// the MTA tries again later.
    pub max_connections: usize,
    /// Bytes of memory LMTP connections may hold together (messages as they
    /// arrive and until they are stored). Past it a message is shed: its
    /// recipients get `452 4.3.1` and the MTA tries again later. A
    /// connection alone always goes ahead, whatever its message's size.
    pub max_memory: u64,
    /// Characters that separate a user from an address extension
    /// (`alice+lists@example.com` for `alice`), as Postfix's
    /// `recipient_delimiter`; empty: none. An address that is a user as it
    /// stands is always taken as it stands.
    pub recipient_delimiter: String,
}

impl Default for LmtpConfig {
    fn default() -> Self {
        LmtpConfig {
            address: None,
            socket: None,
            socket_mode: None,
            socket_group: None,
            // Postfix runs at most 100 delivery processes by default
            // (`default_process_limit`).
            max_connections: 200,
            // About sixteen messages of the default `max_message_size` (a
            // buffer grows by doubling), near the twenty Postfix sends at
            // once to one destination (`default_destination_concurrency_limit`).
            max_memory: 1 << 30,
            recipient_delimiter: String::new(),
        }
    }
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address to serve `GET /metrics` on (keep it on loopback or a
    /// monitoring network); none disables the endpoint.
    pub address: Option<SocketAddr>,
}

/// Who may send PROXY protocol headers.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Networks (CIDR) whose connections to a `proxy_protocol` listener must
    /// start with a PROXY header; from anyone else a header is refused.
    pub trusted_networks: Vec<String>,
}

/// Timeouts and thresholds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub handshake_timeout_secs: u64,
    pub auth_timeout_secs: u64,
    /// RFC 1939 requires at least 600.
    pub idle_timeout_secs: u64,
    /// A client that does not read its output for this long is dropped.
    pub write_timeout_secs: u64,
    /// Connections open at once, all listeners and cores together.
    pub max_connections: usize,
    /// Connections open at once from one client address (IPv6: one /64).
    pub max_connections_per_ip: usize,
    /// Sessions of one user at once (logins in progress included); the
    /// maildrop lock already allows one POP3 session, so this mostly bounds
    /// concurrent login attempts.
    pub max_sessions_per_user: usize,
    /// TLS handshakes in progress on one core; more wait their turn.
    pub max_handshakes_per_core: usize,
    /// On SIGTERM, how long sessions may go on before they are closed
    /// (without committing deletions that were not QUIT).
    pub drain_timeout_secs: u64,
    pub max_bad_commands: u32,
    pub max_auth_failures: u32,
    pub failure_delay_ms: u64,
    pub max_failure_delay_ms: u64,
    /// Recent failures (of one user or one network) at which possible
    /// password guessing is logged.
    pub failure_log_threshold: u32,
    /// Verified passwords remembered per core.
    pub auth_cache_size: usize,
    pub auth_cache_ttl_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            handshake_timeout_secs: 30,
            auth_timeout_secs: 60,
            idle_timeout_secs: 600,
            write_timeout_secs: 600,
            max_connections: 50_000,
            max_connections_per_ip: 100,
            max_sessions_per_user: 10,
            max_handshakes_per_core: 512,
            drain_timeout_secs: 30,
            max_bad_commands: 20,
            max_auth_failures: 3,
            failure_delay_ms: 1000,
            max_failure_delay_ms: 15_000,
            failure_log_threshold: 10,
            auth_cache_size: 100_000,
            auth_cache_ttl_secs: 3600,
        }
    }
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// Implicit TLS (port 995): TLS before the greeting.
    #[default]
    Pop3s,
    /// Plain POP3 (port 110) with STLS.
    Pop3,
}

/// Whether a listener asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientCerts {
    /// Never send a CertificateRequest.
    #[default]
    None,
    /// Ask; a client without one may still use passwords.
    Optional,
    /// Ask, and refuse the handshake without a valid certificate.
    Required,
}

/// One listening socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    #[serde(default)]
    pub kind: ListenerKind,
    #[serde(default)]
    pub client_certificates: ClientCerts,
    /// Expect a PROXY protocol (v1 or v2) header from trusted networks.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// TCP congestion control for this listener's connections, overriding
    /// `runtime.tcp_congestion` (e.g. cubic for a loopback listener behind a
    /// TLS proxy while the machine's default stays BBR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_congestion: Option<String>,
}

impl ListenerConfig {
    /// The congestion control this listener asks for, if any: its own, else
    /// the runtime-wide one.
    pub fn congestion<'a>(&'a self, runtime: &'a RuntimeConfig) -> Option<&'a str> {
        self.tcp_congestion
            .as_deref()
            .or(runtime.tcp_congestion.as_deref())
    }
}

/// EXPIRE as written in TOML: "never" or a number of days.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExpireSetting {
    Days(u32),
    Word(ExpireWord),
}

/// The word form of [`ExpireSetting`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpireWord {
    Never,
}

impl Default for ExpireSetting {
    fn default() -> Self {
        ExpireSetting::Word(ExpireWord::Never)
    }
}

impl From<ExpireSetting> for Expire {
    fn from(e: ExpireSetting) -> Self {
        match e {
            ExpireSetting::Days(d) => Expire::Days(d),
            ExpireSetting::Word(ExpireWord::Never) => Expire::Never,
        }
    }
}

fn yes() -> bool {
    true
}

/// One tenant (domain).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub domain: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// PEM certificate chain, leaf first.
    pub certificate: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub private_key: PathBuf,
    /// Dovecot-style passwd-file.
    pub passwd_file: PathBuf,
    /// CA that signs this tenant's client certificates (SASL EXTERNAL).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    #[serde(default)]
    pub expire: ExpireSetting,
    #[serde(default)]
    pub login_delay: u32,
    #[serde(default)]
    pub allow_cleartext: bool,
    #[serde(default = "yes")]
    pub allow_bare_user: bool,
    #[serde(default)]
    pub apop: bool,
    /// Largest message LMTP accepts for this tenant, in bytes.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: u64,
    /// Default quota of each user: messages and bytes (0 = unlimited).
    /// A passwd-file entry can set its own with `userdb_quota_rule=*:storage=1G`.
    #[serde(default)]
    pub quota_messages: u64,
    #[serde(default)]
    pub quota_bytes: u64,
    /// Quota of the whole tenant (0 = unlimited).
    #[serde(default)]
    pub tenant_quota_messages: u64,
    #[serde(default)]
    pub tenant_quota_bytes: u64,
    /// How an over-quota delivery is answered: "temporary" (452 4.2.2, the
    /// MTA retries) or "permanent" (552 5.2.2, bounced).
    #[serde(default)]
    pub quota_exceeded: QuotaExceeded,
}

fn default_max_message_size() -> u64 {
    50 << 20
}

/// What is wrong with a configured file that cannot be read as one, if
/// anything: one text wherever it is found, so that it is named once.
pub fn file_problem(field: &str, full: &Path) -> Option<String> {
    match std::fs::metadata(full) {
        Ok(m) if m.is_file() => None,
        Ok(_) => Some(format!("{} is not a file", full.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let hint = match field {
                "passwd_file" => "; `pop3sd user add` creates it with the tenant's first user",
                _ => "",
            };
            Some(format!("{} does not exist{hint}", full.display()))
        }
        Err(e) => Some(format!("{}: {e}", full.display())),
    }
}

/// See [`TenantConfig::quota_exceeded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QuotaExceeded {
    #[default]
    Temporary,
    Permanent,
}

/// A problem found in a configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
pub struct ConfigProblem {
    pub location: String,
    pub message: String,
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("{} has {} problem(s):\n{}", path.display(), problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<ConfigProblem>,
    },
}

impl Config {
    /// Reads and parses a file (types only; see [`Config::check`]).
    pub fn parse_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        // Absolute, so that the checks on where files live (directories
        // anyone may write to) see the whole path of a relative one too.
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        cfg.base_dir = absolute
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        cfg.source = Some(absolute);
        Ok(cfg)
    }

    /// Parses and checks a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let cfg = Self::parse_file(path)?;
        let problems = cfg.check();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            })
        }
    }

    /// A path from the file, resolved against the file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// Checks the performance knobs' ranges (docs/tuning.md).
    fn check_runtime(&self, add: &mut impl FnMut(String, String)) {
        let r = &self.runtime;
        let mut range = |key: &str, v: usize, lo: usize, hi: usize| {
            if v < lo || v > hi {
                add(key.to_string(), format!("{v} is outside {lo}..={hi}"));
            }
        };
        range("runtime.ring_entries", r.ring_entries as usize, 1, 32768);
        range(
            "runtime.sqpoll_idle_ms",
            r.sqpoll_idle_ms as usize,
            1,
            60_000,
        );
        range("runtime.blocking_threads", r.blocking_threads, 1, 1024);
        range("runtime.backlog", r.backlog.max(0) as usize, 1, 65535);
        range("runtime.accept_batch", r.accept_batch, 1, 64);
        range("runtime.read_buffer_size", r.read_buffer_size, 512, 65536);
        range(
            "runtime.write_buffer_records",
            r.write_buffer_records,
            1,
            16,
        );
        range("runtime.buffer_pool_size", r.buffer_pool_size, 0, 1_000_000);
        range("tls.record_size", self.tls.record_size, 512, 16384);
        // RFC 8446 §4.6.1: a ticket lifetime of at most seven days.
        let life = self.tls.ticket_key_lifetime_secs;
        if !(60..=crate::tls::ticket_keys::MAX_LIFETIME_SECS).contains(&life) {
            add(
                "tls.ticket_key_lifetime_secs".into(),
                format!(
                    "{life} is outside 60..={} (RFC 8446 allows tickets seven days at most)",
                    crate::tls::ticket_keys::MAX_LIFETIME_SECS
                ),
            );
        }
        if let Some(name) = &r.tcp_congestion {
            if let Err(e) = crate::runtime::congestion::valid_name(name) {
                add("runtime.tcp_congestion".into(), e);
            }
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if let Some(name) = &l.tcp_congestion {
                if let Err(e) = crate::runtime::congestion::valid_name(name) {
                    add(format!("listener[{i}].tcp_congestion"), e);
                }
            }
        }
        if let Some(list) = &r.cpus {
            match parse_cpu_list(list) {
                Ok(cpus) if r.cores > cpus.len() => add(
                    "runtime.cpus".into(),
                    format!(
                        "names {} CPU(s) but runtime.cores is {}",
                        cpus.len(),
                        r.cores
                    ),
                ),
                Ok(_) => {}
                Err(e) => add("runtime.cpus".into(), e),
            }
        }
    }

    /// Checks meaning; every problem is returned, none is fatal on its own.
    /// (Certificates and passwd-files are parsed by their loaders, which add
    /// their own problems: see `crate::server::build`.)
    pub fn check(&self) -> Vec<ConfigProblem> {
        let mut p = Vec::new();
        let mut add =
            |location: String, message: String| p.push(ConfigProblem { location, message });
        if self.listeners.is_empty() {
            add("listener".into(), "no [[listener]] is configured".into());
        }
        if self.tenants.is_empty() {
            add("tenant".into(), "no [[tenant]] is configured".into());
        }
        for (key, v) in [
            ("limits.max_connections", self.limits.max_connections),
            (
                "limits.max_connections_per_ip",
                self.limits.max_connections_per_ip,
            ),
            (
                "limits.max_sessions_per_user",
                self.limits.max_sessions_per_user,
            ),
            (
                "limits.max_handshakes_per_core",
                self.limits.max_handshakes_per_core,
            ),
            ("lmtp.max_connections", self.lmtp.max_connections),
            (
                "lmtp.max_memory",
                usize::try_from(self.lmtp.max_memory).unwrap_or(usize::MAX),
            ),
        ] {
            if v == 0 {
                add(key.into(), "must be at least 1".into());
            }
        }
        if let Some(c) = self
            .lmtp
            .recipient_delimiter
            .chars()
            .find(|c| !c.is_ascii_punctuation() || *c == '@')
        {
            add(
                "lmtp.recipient_delimiter".into(),
                format!(
                    "{c:?} cannot separate an address extension (punctuation other than '@' only)"
                ),
            );
        }
        self.check_runtime(&mut add);
        if let Err(e) = crate::proxy::TrustedNetworks::parse(&self.proxy.trusted_networks) {
            add("proxy.trusted_networks".into(), e);
        }
        if self.listeners.iter().any(|l| l.proxy_protocol) && self.proxy.trusted_networks.is_empty()
        {
            add(
                "proxy.trusted_networks".into(),
                "a listener expects PROXY headers but no network is trusted to send them".into(),
            );
        }
        if self.tls.tls13_tickets > 16 {
            add(
                "tls.tls13_tickets".into(),
                "at most 16 tickets per handshake".into(),
            );
        }
        let mut seen_addrs = Vec::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if seen_addrs.contains(&l.address) {
                add(
                    format!("listener[{i}].address"),
                    format!("{} is used twice", l.address),
                );
            }
            seen_addrs.push(l.address);
            if l.kind == ListenerKind::Pop3 && l.client_certificates != ClientCerts::None {
                // STLS listeners could ask too, but nothing here needs it yet.
                add(
                    format!("listener[{i}].client_certificates"),
                    "client certificates are supported on pop3s listeners only".into(),
                );
            }
            if l.client_certificates != ClientCerts::None
                && !self.tenants.iter().any(|t| t.client_ca.is_some())
            {
                add(
                    format!("listener[{i}].client_certificates"),
                    "asks for client certificates but no tenant has a client_ca".into(),
                );
            }
        }
        let mut names: Vec<(String, usize)> = Vec::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let loc = |f: &str| format!("tenant[{i}] ({}).{f}", t.domain);
            for name in std::iter::once(&t.domain).chain(t.aliases.iter()) {
                match pop3sd_storage::Domain::parse(name) {
                    Ok(d) => {
                        if let Some((_, j)) = names.iter().find(|(n, _)| n == d.as_str()) {
                            add(loc("domain"), format!("{d} is also claimed by tenant[{j}]"));
                        }
                        names.push((d.as_str().to_string(), i));
                    }
                    Err(e) => add(loc("domain"), format!("{name:?}: {e}")),
                }
            }
            for (field, path) in [
                ("certificate", Some(&t.certificate)),
                ("private_key", Some(&t.private_key)),
                ("passwd_file", Some(&t.passwd_file)),
                ("client_ca", t.client_ca.as_ref()),
            ] {
                if let Some(path) = path {
                    let full = self.resolve(path);
                    if let Some(why) = file_problem(field, &full) {
                        add(loc(field), why);
                    }
                }
            }
        }
        if let Some(d) = &self.tls.default_tenant {
            if !self.tenants.iter().any(|t| &t.domain == d) {
                add(
                    "tls.default_tenant".into(),
                    format!("{d} is not a configured tenant"),
                );
            }
        }
        p
    }

    /// Things that work but that an operator should know about.
    pub fn warnings(&self) -> Vec<ConfigProblem> {
        let mut w = Vec::new();
        if self.limits.idle_timeout_secs < 600 {
            w.push(ConfigProblem {
                location: "limits.idle_timeout_secs".into(),
                message: format!(
                    "{} s is below the 10 minutes RFC 1939 requires for the autologout timer",
                    self.limits.idle_timeout_secs
                ),
            });
        }
        if self.user.is_none() && self.allow_root {
            w.push(ConfigProblem {
                location: "allow_root".into(),
                message: "the server keeps root privileges if started as root".into(),
            });
        }
        let largest = self
            .tenants
            .iter()
            .map(|t| t.max_message_size)
            .max()
            .unwrap_or(0);
        let serves_lmtp = self.lmtp.address.is_some() || self.lmtp.socket.is_some();
        if serves_lmtp && self.lmtp.max_memory < largest.saturating_mul(2) {
            w.push(ConfigProblem {
                location: "lmtp.max_memory".into(),
                message: format!(
                    "{} bytes is less than twice the largest max_message_size ({largest}): \
                     a message that large (held as it is stored, in a buffer that grows by \
                     doubling) is refused for now, 452, whenever another arrives at the same time",
                    self.lmtp.max_memory
                ),
            });
        }
        w
    }

    /// Timeouts as durations.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.handshake_timeout_secs)
    }

    /// Serializes back to TOML (the demo writes its config this way).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The configuration with `section.key=value` settings applied (the
    /// value in TOML syntax; a bare word is taken as a string), so that
    /// benchmarks and the demo can turn one knob without a config file.
    pub fn with_overrides(&self, settings: &[String]) -> Result<Config, String> {
        let mut doc = toml::Value::try_from(self).map_err(|e| e.to_string())?;
        for setting in settings {
            let (path, raw) = setting
                .split_once('=')
                .ok_or_else(|| format!("{setting:?}: expected section.key=value"))?;
            let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.to_string()));
            let mut keys: Vec<&str> = path.trim().split('.').collect();
            let last = keys
                .pop()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| format!("{setting:?}: no key"))?;
            let mut table = doc
                .as_table_mut()
                .ok_or_else(|| "configuration is not a table".to_string())?;
            for k in keys {
                table = table
                    .entry(k)
                    .or_insert_with(|| toml::Value::Table(Default::default()))
                    .as_table_mut()
                    .ok_or_else(|| format!("{setting:?}: {k} is not a section"))?;
            }
            table.insert(last.to_string(), value);
        }
        let mut cfg: Config = doc
            .try_into()
            .map_err(|e: toml::de::Error| e.message().to_string())?;
        cfg.base_dir = self.base_dir.clone();
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_set_knobs_and_reject_unknown_keys() {
        let cfg: Config = toml::from_str(EXAMPLE).unwrap();
        let c = cfg
            .with_overrides(&[
                "runtime.sqpoll=true".into(),
                "tls.record_size=4096".into(),
                "runtime.cpus=0-1".into(),
                "runtime.ktls=off".into(),
                "tls.record_layer=rustls".into(),
            ])
            .unwrap();
        assert!(c.runtime.sqpoll);
        assert_eq!(c.tls.record_size, 4096);
        assert_eq!(c.runtime.cpus.as_deref(), Some("0-1"));
        assert_eq!(c.runtime.ktls, KtlsMode::Off);
        assert_eq!(c.tls.record_layer, RecordLayerMode::Rustls);
        assert_eq!(cfg.tls.record_layer, RecordLayerMode::Pop3sd, "the default");
        let e = cfg
            .with_overrides(&["tls.record_layer=kernel".into()])
            .unwrap_err();
        assert!(e.contains("kernel") || e.contains("variant"), "{e}");
        let e = cfg
            .with_overrides(&["runtime.no_such_knob=1".into()])
            .unwrap_err();
        assert!(e.contains("no_such_knob"), "{e}");
        let e = cfg
            .with_overrides(&["runtime.sqpoll=maybe".into()])
            .unwrap_err();
        assert!(e.contains("sqpoll") || e.contains("bool"), "{e}");
        assert!(cfg.with_overrides(&["nokey".into()]).is_err());
    }

    #[test]
    fn an_lmtp_budget_below_two_of_the_largest_messages_is_warned_about() {
        let warned = |c: &Config| c.warnings().iter().any(|w| w.location == "lmtp.max_memory");
        let mut cfg: Config = toml::from_str(EXAMPLE).unwrap();
        cfg.lmtp.socket = Some("/run/pop3sd/lmtp.sock".into());
        assert!(!warned(&cfg), "the defaults");
        cfg.lmtp.max_memory = 64 << 20;
        assert!(warned(&cfg));
        cfg.lmtp.socket = None;
        assert!(!warned(&cfg), "no LMTP served");
    }

    #[test]
    fn cpu_lists_parse_like_the_kernel_writes_them() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11").unwrap(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpu_list(" 2 , 2-3").unwrap(), vec![2, 3]);
        for bad in ["", "a", "3-1", "1-", "-1", "5000"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad}");
        }
    }

    const EXAMPLE: &str = r#"
storage_root = "mail"
hostname = "pop.example.com"

[[listener]]
address = "127.0.0.1:995"

[[listener]]
address = "127.0.0.1:110"
kind = "pop3"

[[tenant]]
domain = "example.com"
aliases = ["example.net"]
certificate = "c.pem"
private_key = "k.pem"
passwd_file = "passwd"
expire = 30

[[tenant]]
domain = "example.org"
certificate = "c.pem"
private_key = "k.pem"
passwd_file = "passwd"
expire = "never"
"#;

    #[test]
    fn parses_and_checks() {
        let d = tempfile::tempdir().unwrap();
        for f in ["c.pem", "k.pem", "passwd"] {
            std::fs::write(d.path().join(f), "x").unwrap();
        }
        let path = d.path().join("pop3sd.toml");
        std::fs::write(&path, EXAMPLE).unwrap();
        let cfg = Config::load(&path).unwrap();
        assert_eq!(cfg.listeners[1].kind, ListenerKind::Pop3);
        assert_eq!(Expire::from(cfg.tenants[0].expire), Expire::Days(30));
        assert_eq!(Expire::from(cfg.tenants[1].expire), Expire::Never);
        assert_eq!(cfg.resolve(Path::new("passwd")), d.path().join("passwd"));
        // Round trip through the serializer the demo uses.
        let again: Config = toml::from_str(&cfg.to_toml()).unwrap();
        assert_eq!(again.tenants.len(), 2);
    }

    #[test]
    fn every_problem_is_named() {
        let d = tempfile::tempdir().unwrap();
        let bad = EXAMPLE
            .replace("example.org", "example.com")
            .replace("\"127.0.0.1:110\"", "\"127.0.0.1:995\"")
            + "\n[limits]\nidle_timeout_secs = 60\n"
            + "\n[tls]\nticket_key_lifetime_secs = 864000\n";
        let path = d.path().join("pop3sd.toml");
        std::fs::write(&path, bad).unwrap();
        let err = Config::load(&path).unwrap_err();
        let ConfigError::Invalid { problems, .. } = &err else {
            panic!("{err}")
        };
        let text = err.to_string();
        assert!(text.contains("listener[1].address"), "{text}");
        assert!(text.contains("also claimed"), "{text}");
        assert!(text.contains("c.pem does not exist"), "{text}");
        assert!(text.contains("tls.ticket_key_lifetime_secs"), "{text}");
        assert!(problems.len() >= 5, "{text}");
        // A short idle timeout is allowed (tests use one) but warned about.
        let cfg = Config::parse_file(&path).unwrap();
        assert!(cfg
            .warnings()
            .iter()
            .any(|w| w.location == "limits.idle_timeout_secs"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("pop3sd.toml");
        std::fs::write(&path, "storage_root = \"x\"\nstorage_rot = \"y\"\n").unwrap();
        assert!(matches!(
            Config::load(&path),
            Err(ConfigError::Syntax { .. })
        ));
    }
}
