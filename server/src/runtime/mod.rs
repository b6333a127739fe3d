//! Thread-per-core serving: one monoio io_uring runtime per core, each with
//! its own SO_REUSEPORT listener sockets, so the kernel spreads connections
//! and no lock is shared across cores on a connection's path.
//!
//! What the cores share is read-only or rarely touched: the current
//! [`Generation`] (configuration, tenant directory, TLS configs; replaced as
//! a whole on reload, each connection keeping the one it started with), the
//! storage root, the authenticator's failure counters, the connection
//! counters, and the blocking pool.

pub mod buffers;
pub mod congestion;
pub mod conn;
pub mod limits;
pub mod lmtp_conn;
pub mod lmtp_memory;
pub mod local_sync;
pub mod metrics;
pub mod metrics_http;
pub mod pool;
pub mod ring_setup;
pub mod signals;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use monoio::net::{ListenerOpts, TcpListener};
use pop3sd_storage::Store;

use crate::auth::{Authenticator, Directory, VerifyCache};
use crate::config::{Config, Driver, ListenerConfig};
use crate::engine::Limits;
use crate::proxy::TrustedNetworks;
use crate::tls::TlsContext;
use buffers::{BufferPool, BufferSizes};
use conn::Conn;
use limits::Counters;
use lmtp_memory::LmtpMemory;
use local_sync::{Gate, Phase, Stage};
use metrics::CoreMetrics;

/// Connections refused by a limit that one core tells so over TLS at once
/// (see [`Core::refused_handshakes`]).
const REFUSED_HANDSHAKES_PER_CORE: usize = 32;
pub use pool::BlockingPool;

/// Everything derived from one reading of the configuration. Replaced as a
/// whole by a successful reload; a connection keeps the generation it was
/// accepted under until it ends.
pub struct Generation {
    pub number: u64,
    pub config: Config,
    pub directory: Arc<Directory>,
    pub tls: TlsContext,
    pub limits: Limits,
    pub handshake_timeout: Duration,
    pub write_timeout: Duration,
    pub trusted_proxies: TrustedNetworks,
}

/// State shared by every core.
pub struct Shared {
    pub store: Arc<Store>,
    pub pool: BlockingPool,
    pub auth: Authenticator,
    pub current: ArcSwap<Generation>,
    /// Where the configuration was read from (for reloads); None for the demo
    /// built in memory.
    pub config_path: Option<PathBuf>,
    /// Listeners as bound at start-up (a reload cannot change them).
    pub listeners: Vec<ListenerConfig>,
    pub counters: Arc<Counters>,
    /// Cached tenant usage for tenant quotas (survives reloads).
    pub usage: Arc<crate::delivery::TenantUsage>,
    pub draining: AtomicBool,
    /// Milliseconds since `started` at which draining turns into closing.
    drain_deadline_ms: AtomicU64,
    pub started: Instant,
    pub metrics: Mutex<Vec<Arc<CoreMetrics>>>,
}

impl Shared {
    /// Assembles the shared state around a first generation.
    pub fn new(
        store: Arc<Store>,
        pool: BlockingPool,
        auth: Authenticator,
        generation: Generation,
        config_path: Option<PathBuf>,
    ) -> Self {
        Shared {
            store,
            pool,
            auth,
            listeners: generation.config.listeners.clone(),
            current: ArcSwap::from_pointee(generation),
            config_path,
            counters: Arc::new(Counters::default()),
            usage: Arc::new(crate::delivery::TenantUsage::default()),
            draining: AtomicBool::new(false),
            drain_deadline_ms: AtomicU64::new(u64::MAX),
            started: Instant::now(),
            metrics: Mutex::new(Vec::new()),
        }
    }

    /// The generation in force.
    pub fn generation(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Stops accepting; sessions may go on for `grace`, then are closed.
    /// Calling it again shortens the grace period, never lengthens it.
    pub fn begin_drain(&self, grace: Duration) {
        let deadline = (self.started.elapsed() + grace).as_millis() as u64;
        self.drain_deadline_ms.fetch_min(deadline, Ordering::AcqRel);
        self.draining.store(true, Ordering::Release);
    }

    /// The stage all cores should be at now.
    pub fn stage(&self) -> Stage {
        if !self.draining.load(Ordering::Acquire) {
            return Stage::Serving;
        }
        let now = self.started.elapsed().as_millis() as u64;
        if now >= self.drain_deadline_ms.load(Ordering::Acquire) {
            Stage::Closing
        } else {
            Stage::Draining
        }
    }
}

/// One core's private state (never crosses threads).
pub(crate) struct Core {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub auth_cache: RefCell<VerifyCache>,
    pub buffers: BufferPool,
    /// Plaintext bytes per TLS record sent (`tls.record_size`).
    pub record_size: usize,
    /// Whether idle connections give their buffers back (`runtime.release_idle_buffers`).
    pub release_idle_buffers: bool,
    pub metrics: Arc<CoreMetrics>,
    pub phase: Phase,
    pub handshakes: Rc<Gate>,
    /// Places for connections refused by a limit to be told so over TLS
    /// (kept apart from `handshakes`, so that whoever is over a limit
    /// cannot hold the handshake places of those within one; past these,
    /// the refused are closed without a word).
    pub refused_handshakes: Rc<Gate>,
    /// LMTP connections open (`lmtp.max_connections`; LMTP is served by
    /// core 0 alone).
    pub lmtp_places: Rc<Gate>,
    /// Memory LMTP connections hold (`lmtp.max_memory`; core 0).
    pub lmtp_memory: Rc<LmtpMemory>,
    /// Scrapes of the metrics endpoint being answered (core 0).
    pub metrics_places: Rc<Gate>,
    next_session: Cell<u64>,
    /// When this core last logged a stray PROXY header at warning level.
    stray_proxy_warned: Cell<Option<Instant>>,
    /// When this core last logged an LMTP connection refused by
    /// `lmtp.max_connections` at warning level.
    lmtp_busy_warned: Cell<Option<Instant>>,
    /// When this core last logged an LMTP message shed by
    /// `lmtp.max_memory` at warning level.
    lmtp_shed_warned: Cell<Option<Instant>>,
    /// When this core last logged a connection refused by a connection
    /// limit at info level.
    refused_logged: Cell<Option<Instant>>,
}

/// Whether a warning last given at `last` may be given again now: at most
/// once a minute, so that anyone able to connect cannot flood the log.
fn once_a_minute(last: &Cell<Option<Instant>>, now: Instant) -> bool {
    let due = last
        .get()
        .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(60));
    if due {
        last.set(Some(now));
    }
    due
}

impl Core {
    /// Whether a stray PROXY header should be logged as a warning now: at
    /// most once a minute per core, so that anyone able to connect cannot
    /// flood the log (the rest go out at debug level).
    pub fn warn_stray_proxy(&self, now: Instant) -> bool {
        once_a_minute(&self.stray_proxy_warned, now)
    }

    /// Whether an LMTP connection refused by `lmtp.max_connections` should
    /// be logged as a warning now (once a minute; the rest at debug level).
    pub fn warn_lmtp_busy(&self, now: Instant) -> bool {
        once_a_minute(&self.lmtp_busy_warned, now)
    }

    /// Whether a connection refused by a connection limit should be logged
    /// at info level now (once a minute per core; the rest at debug level,
    /// and all counted in the metrics): whoever floods the server past a
    /// limit must not also flood its log.
    pub fn log_refused_by_limit(&self, now: Instant) -> bool {
        once_a_minute(&self.refused_logged, now)
    }

    /// Whether an LMTP message shed by `lmtp.max_memory` should be logged
    /// as a warning now (once a minute; the rest at debug level).
    pub fn warn_lmtp_shed(&self, now: Instant) -> bool {
        once_a_minute(&self.lmtp_shed_warned, now)
    }

    /// A process-unique session id: core number in the top bits.
    pub fn next_session_id(&self) -> u64 {
        let n = self.next_session.get() + 1;
        self.next_session.set(n);
        ((self.id as u64) << 48) | n
    }
}

/// Why serving could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("io_uring is not available on this system ({0}); pop3sd needs it (kernel 5.11+, io_uring not disabled by sysctl kernel.io_uring_disabled or seccomp). To run on epoll instead, set `driver = \"legacy\"` under [runtime].")]
    NoIoUring(String),
    #[error("core {core}: cannot bind {addr}: {source}")]
    Bind {
        core: usize,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start core thread: {0}")]
    Thread(std::io::Error),
    #[error("core {0} failed to start")]
    CoreFailed(usize),
    #[error("cannot drop privileges: {0}")]
    Privileges(String),
    #[error("LMTP socket {path}: {source}")]
    Socket {
        path: String,
        source: std::io::Error,
    },
    #[error("listener {addr}: {source}")]
    Congestion {
        addr: SocketAddr,
        source: congestion::CongestionError,
    },
}

/// Number of event-loop threads a config asks for.
pub fn core_count(config: &Config) -> usize {
    match (config.runtime.cores, cpu_list(config)) {
        (0, Some(cpus)) => cpus.len(),
        (0, None) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        (n, _) => n,
    }
}

/// The CPUs named by `runtime.cpus` (checked by `Config::check`).
fn cpu_list(config: &Config) -> Option<Vec<usize>> {
    config
        .runtime
        .cpus
        .as_deref()
        .and_then(|s| crate::config::parse_cpu_list(s).ok())
}

/// The CPU a core's thread is pinned to, if any.
fn core_cpu(config: &Config, core_id: usize) -> Option<usize> {
    match cpu_list(config) {
        Some(cpus) => Some(cpus[core_id % cpus.len()]),
        None if config.runtime.pin_cores => Some(core_id),
        None => None,
    }
}

/// Checks that io_uring can really be used, so that start-up fails with a
/// clear message instead of monoio silently choosing epoll. Returns the
/// task-work mode the rings will use (the configured one or a fallback).
pub fn check_io_uring(
    cfg: &crate::config::RuntimeConfig,
) -> Result<crate::config::TaskWork, StartError> {
    if !monoio::utils::detect_uring() {
        return Err(StartError::NoIoUring(
            "the kernel lacks the io_uring operations monoio needs, or MONOIO_FORCE_LEGACY_DRIVER is set".into(),
        ));
    }
    let mode = ring_setup::effective_task_work(cfg);
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(cfg.ring_entries)
        .uring_builder(ring_setup::builder(cfg, mode))
        .build()
        .map(|_| mode)
        .map_err(|e| {
            let what = if cfg.sqpoll {
                format!("{e} (with runtime.sqpoll = true)")
            } else {
                e.to_string()
            };
            StartError::NoIoUring(what)
        })
}

/// Raises the open-file limit as far as allowed: every connection needs a
/// socket and a logged-in one a lock file too. Returns the limit in force.
pub fn raise_nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        // With CAP_SYS_RESOURCE (root before dropping privileges) the hard
        // limit itself can go up to fs.nr_open; otherwise the soft limit
        // goes up to the hard one.
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
            .unwrap_or(r.rlim_max);
        for max in [nr_open.max(r.rlim_max), r.rlim_max] {
            let wanted = libc::rlimit {
                rlim_cur: max,
                rlim_max: max,
            };
            if r.rlim_cur < max && libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                r = wanted;
                break;
            }
        }
    }
    r.rlim_cur
}

/// Handles to running cores.
pub struct Running {
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Bound addresses, in listener order (resolved ports for ":0").
    pub addresses: Vec<SocketAddr>,
}

impl Running {
    /// Waits for every core to finish (after a drain, or never).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Holds the cores between binding and serving until start-up decides:
/// serve (after the privilege drop) or give up (a core could not bind).
#[derive(Default)]
struct StartGate {
    decision: Mutex<Option<bool>>,
    cv: Condvar,
}

impl StartGate {
    fn decide(&self, serve: bool) {
        if let Ok(mut d) = self.decision.lock() {
            *d = Some(serve);
        }
        self.cv.notify_all();
    }

    /// Blocks until decided; true means serve.
    fn wait(&self) -> bool {
        let Ok(mut d) = self.decision.lock() else {
            return false;
        };
        loop {
            if let Some(v) = *d {
                return v;
            }
            d = match self.cv.wait(d) {
                Ok(d) => d,
                Err(_) => return false,
            };
        }
    }
}

/// Binds one listening socket that all cores share (`runtime.reuse_port =
/// false`): one accept queue, each core taking connections from it.
fn bind_shared(addr: SocketAddr, backlog: i32) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    // SAFETY: listen(2) on a socket we own; calling it again on a listening
    // socket only changes its backlog.
    if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&l), backlog) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(l)
}

/// Binds one listener socket of one core.
fn bind(addr: SocketAddr, backlog: i32) -> std::io::Result<TcpListener> {
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(backlog);
    TcpListener::bind_with_config(addr, &opts)
}

/// Starts the cores. Each binds every listener (ports of 0 are resolved by
/// core 0 first, then shared); once all are bound the process drops its
/// privileges if configured to, and only then do the cores accept.
pub fn start(shared: Arc<Shared>) -> Result<Running, StartError> {
    let generation = shared.generation();
    let cfg = &generation.config;
    if cfg.runtime.driver == Driver::IoUring {
        let mode = check_io_uring(&cfg.runtime)?;
        if !cfg.runtime.sqpoll {
            tracing::info!(task_work = mode.name(), "io_uring rings");
        }
        if cfg.runtime.sqpoll {
            tracing::info!(
                idle_ms = cfg.runtime.sqpoll_idle_ms,
                "runtime.sqpoll: a kernel thread polls each core's submission queue"
            );
        }
    } else {
        tracing::warn!(
            "runtime.driver = \"legacy\": serving with epoll, not io_uring, as configured"
        );
    }
    if cfg.runtime.ktls == crate::config::KtlsMode::Auto {
        let sys = crate::tune::LiveSystem {
            runtime: &cfg.runtime,
        };
        if crate::tune::ktls_offered(&sys) {
            tracing::info!("kTLS: the kernel offers the tls ULP; records are still encrypted in user space (pop3sd has no kTLS data path yet)");
        } else {
            tracing::info!(
                "kTLS: not offered by this kernel (no tls ULP); records are encrypted in user space"
            );
        }
    }
    let nofile = raise_nofile_limit();
    tracing::info!(
        nofile,
        "open file limit (each logged-in connection uses two)"
    );
    let cores = core_count(cfg);
    let mut addresses: Vec<SocketAddr> = shared.listeners.iter().map(|l| l.address).collect();
    let gate = Arc::new(StartGate::default());
    let mut shared_sockets = Vec::new();
    if !cfg.runtime.reuse_port {
        for addr in &mut addresses {
            let l = bind_shared(*addr, cfg.runtime.backlog).map_err(|source| StartError::Bind {
                core: 0,
                addr: *addr,
                source,
            })?;
            *addr = l.local_addr().unwrap_or(*addr);
            shared_sockets.push(l);
        }
        tracing::info!("runtime.reuse_port = false: all cores accept from one socket per listener");
    }
    let mut threads = Vec::new();
    for core_id in 0..cores {
        let (tx, rx) = std::sync::mpsc::channel::<Result<Vec<SocketAddr>, StartError>>();
        let (shared, gate2) = (shared.clone(), gate.clone());
        let addrs = addresses.clone();
        let sockets = shared_sockets
            .iter()
            .map(|l| l.try_clone())
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|source| {
                gate.decide(false);
                StartError::Bind {
                    core: core_id,
                    addr: addresses[0],
                    source,
                }
            })?;
        let t = std::thread::Builder::new()
            .name(format!("pop3sd-core-{core_id}"))
            .spawn(move || core_main(core_id, shared, addrs, sockets, tx, gate2))
            .map_err(|e| {
                gate.decide(false);
                StartError::Thread(e)
            })?;
        match rx.recv() {
            Ok(Ok(bound)) => addresses = bound,
            Ok(Err(e)) => {
                gate.decide(false);
                return Err(e);
            }
            Err(_) => {
                gate.decide(false);
                return Err(StartError::CoreFailed(core_id));
            }
        }
        threads.push(t);
    }
    if let Ok(Some(id)) = crate::privileges::target(cfg) {
        if let Err(e) = crate::privileges::drop_to(id) {
            gate.decide(false);
            return Err(StartError::Privileges(e));
        }
        tracing::info!(
            uid = id.uid,
            gid = id.gid,
            "dropped privileges after binding"
        );
    }
    gate.decide(true);
    tracing::info!(
        cores,
        listeners = ?addresses,
        lmtp = %lmtp_where(cfg),
        metrics = %cfg.metrics.address.map_or_else(|| "off".to_string(), |a| a.to_string()),
        driver = ?cfg.runtime.driver,
        "serving"
    );
    Ok(Running { threads, addresses })
}

/// Where LMTP is served, for the start-up line.
fn lmtp_where(cfg: &Config) -> String {
    let mut at: Vec<String> = Vec::new();
    if let Some(a) = cfg.lmtp.address {
        at.push(a.to_string());
    }
    if let Some(p) = &cfg.lmtp.socket {
        at.push(p.display().to_string());
    }
    if at.is_empty() {
        "off".into()
    } else {
        at.join(" ")
    }
}

fn core_main(
    core_id: usize,
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    sockets: Vec<std::net::TcpListener>,
    ready: std::sync::mpsc::Sender<Result<Vec<SocketAddr>, StartError>>,
    gate: Arc<StartGate>,
) {
    let generation = shared.generation();
    let cfg = &generation.config.runtime;
    if let Some(cpu) = core_cpu(&generation.config, core_id) {
        if let Err(e) = monoio::utils::bind_to_cpu_set([cpu]) {
            tracing::warn!(core = core_id, cpu, error = %e, "cannot pin thread to its CPU");
        }
    }
    let entries = cfg.ring_entries;
    let body = serve_core(core_id, shared.clone(), addrs, sockets, ready.clone(), gate);
    let result = match cfg.driver {
        Driver::IoUring => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(entries)
            .uring_builder(ring_setup::builder(
                cfg,
                ring_setup::effective_task_work(cfg),
            ))
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(body)),
        Driver::Legacy => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| rt.block_on(body)),
    };
    if let Err(e) = result {
        let _ = ready.send(Err(StartError::NoIoUring(e.to_string())));
    }
}

async fn serve_core(
    core_id: usize,
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    sockets: Vec<std::net::TcpListener>,
    ready: std::sync::mpsc::Sender<Result<Vec<SocketAddr>, StartError>>,
    gate: Arc<StartGate>,
) {
    let generation = shared.generation();
    let cfg = &generation.config;
    let mut listeners = Vec::new();
    let mut bound = Vec::new();
    // Shared sockets (one per listener, in order) when reuse_port is off.
    let mut sockets = sockets.into_iter();
    for (i, addr) in addrs.iter().enumerate() {
        let made = match sockets.next() {
            Some(l) => TcpListener::from_std(l),
            None => bind(*addr, cfg.runtime.backlog),
        };
        match made {
            Ok(l) => {
                let local = l.local_addr().unwrap_or(*addr);
                // Set on every core's socket, a shared one included (the
                // kernel takes the same algorithm again without complaint).
                let fd = std::os::fd::AsRawFd::as_raw_fd(&l);
                let configured = shared.listeners[i].congestion(&cfg.runtime);
                if let Some(name) = configured {
                    if let Err(source) = congestion::set(fd, name) {
                        let _ = ready.send(Err(StartError::Congestion {
                            addr: local,
                            source,
                        }));
                        return;
                    }
                }
                if core_id == 0 {
                    // What the listener's connections get: the configured
                    // algorithm, or the system's default.
                    match congestion::get(fd) {
                        Ok(cc) => tracing::info!(
                            listener = %local,
                            tcp_congestion = %cc,
                            source = if configured.is_some() { "configured" } else { "system default" },
                            "TCP congestion control"
                        ),
                        Err(e) => {
                            tracing::warn!(listener = %local, error = %e, "cannot read the TCP congestion control")
                        }
                    }
                }
                bound.push(local);
                listeners.push((Rc::new(l), Rc::new(shared.listeners[i].clone())));
            }
            Err(source) => {
                let _ = ready.send(Err(StartError::Bind {
                    core: core_id,
                    addr: *addr,
                    source,
                }));
                return;
            }
        }
    }
    // Core 0 also serves LMTP and the metrics endpoint (bound here, before
    // any privilege drop, like the POP3 listeners).
    let mut extra = Extra::default();
    if core_id == 0 {
        match bind_extra(&generation.config) {
            Ok(e) => extra = e,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        }
    }
    let metrics = Arc::new(CoreMetrics::default());
    if let Ok(mut m) = shared.metrics.lock() {
        m.push(metrics.clone());
    }
    let core = Rc::new(Core {
        id: core_id,
        auth_cache: RefCell::new(VerifyCache::new(
            cfg.limits.auth_cache_size,
            Duration::from_secs(cfg.limits.auth_cache_ttl_secs),
        )),
        buffers: BufferPool::new(BufferSizes::new(
            cfg.runtime.write_buffer_records,
            cfg.tls.record_size,
            cfg.runtime.read_buffer_size,
            cfg.runtime.buffer_pool_size,
        )),
        record_size: cfg.tls.record_size,
        release_idle_buffers: cfg.runtime.release_idle_buffers,
        metrics,
        phase: Phase::default(),
        handshakes: Gate::new(cfg.limits.max_handshakes_per_core),
        refused_handshakes: Gate::new(REFUSED_HANDSHAKES_PER_CORE),
        lmtp_places: Gate::new(cfg.lmtp.max_connections),
        lmtp_memory: LmtpMemory::new(cfg.lmtp.max_memory),
        metrics_places: Gate::new(metrics_http::MAX_SCRAPES),
        next_session: Cell::new(0),
        stray_proxy_warned: Cell::new(None),
        lmtp_busy_warned: Cell::new(None),
        lmtp_shed_warned: Cell::new(None),
        refused_logged: Cell::new(None),
        shared: shared.clone(),
    });
    if ready.send(Ok(bound)).is_err() {
        return;
    }
    // Wait for every core to bind and for the privilege drop.
    if !gate.wait() {
        return;
    }
    let watcher = monoio::spawn(watch_stage(core.clone()));
    let mut tasks = Vec::new();
    for (listener, info) in listeners {
        for _ in 0..cfg.runtime.accept_batch.max(1) {
            tasks.push(monoio::spawn(accept_loop(
                core.clone(),
                listener.clone(),
                info.clone(),
            )));
        }
    }
    if let Some(l) = extra.lmtp_tcp {
        tasks.push(monoio::spawn(lmtp_tcp_loop(core.clone(), l)));
    }
    if let Some(l) = extra.lmtp_unix {
        tasks.push(monoio::spawn(lmtp_unix_loop(core.clone(), l)));
    }
    if let Some(l) = extra.metrics {
        monoio::spawn(metrics_http::serve(core.clone(), l));
    }
    for t in tasks {
        t.await;
    }
    // Listeners are closed; let sessions end (or be closed at the deadline).
    while core.metrics.connections_open.load(Ordering::Acquire) > 0 {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    watcher.await;
    tracing::info!(core = core_id, "core stopped");
}

/// Listeners only core 0 has.
#[derive(Default)]
struct Extra {
    lmtp_tcp: Option<TcpListener>,
    lmtp_unix: Option<monoio::net::UnixListener>,
    metrics: Option<TcpListener>,
}

fn bind_extra(cfg: &Config) -> Result<Extra, StartError> {
    let mut e = Extra::default();
    let bind_err = |addr: SocketAddr, source| StartError::Bind {
        core: 0,
        addr,
        source,
    };
    if let Some(addr) = cfg.lmtp.address {
        // SO_REUSEPORT as for the POP3 listeners: a restart must bind even
        // while connections of the previous process linger in FIN_WAIT.
        let opts = ListenerOpts::new()
            .reuse_port(true)
            .reuse_addr(true)
            .backlog(cfg.runtime.backlog);
        e.lmtp_tcp =
            Some(TcpListener::bind_with_config(addr, &opts).map_err(|s| bind_err(addr, s))?);
    }
    if let Some(path) = &cfg.lmtp.socket {
        let path = cfg.resolve(path);
        let fail = |source: std::io::Error| StartError::Socket {
            path: path.display().to_string(),
            source,
        };
        // A socket left by an earlier run is replaced; any other file is not.
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                std::fs::remove_file(&path).map_err(fail)?;
            }
        }
        let l = monoio::net::UnixListener::bind(&path).map_err(fail)?;
        let mode = cfg
            .lmtp
            .socket_mode
            .as_deref()
            .and_then(|m| u32::from_str_radix(m.trim_start_matches("0o"), 8).ok())
            .unwrap_or(0o660);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
        if let Some(group) = &cfg.lmtp.socket_group {
            let gid = crate::privileges::lookup_group(group)
                .map_err(|m| fail(std::io::Error::other(m)))?;
            std::os::unix::fs::chown(&path, None, Some(gid)).map_err(fail)?;
        }
        e.lmtp_unix = Some(l);
    }
    if let Some(addr) = cfg.metrics.address {
        let opts = ListenerOpts::new().reuse_port(true).reuse_addr(true);
        e.metrics =
            Some(TcpListener::bind_with_config(addr, &opts).map_err(|s| bind_err(addr, s))?);
    }
    Ok(e)
}

async fn lmtp_tcp_loop(core: Rc<Core>, listener: TcpListener) {
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => Some(r),
            _ = core.phase.reached(Stage::Draining) => None,
        };
        match accepted {
            None => return,
            Some(Ok((stream, peer))) => {
                let core = core.clone();
                monoio::spawn(async move {
                    let Some(_place) = core.lmtp_places.try_enter() else {
                        return lmtp_conn::refuse_busy(&core, stream, peer.to_string()).await;
                    };
                    core.metrics.connection_opened(false);
                    lmtp_conn::serve(core.clone(), stream, peer.to_string()).await;
                    core.metrics.connection_closed();
                });
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "LMTP accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn lmtp_unix_loop(core: Rc<Core>, listener: monoio::net::UnixListener) {
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => Some(r),
            _ = core.phase.reached(Stage::Draining) => None,
        };
        match accepted {
            None => return,
            Some(Ok((stream, _))) => {
                let core = core.clone();
                monoio::spawn(async move {
                    let Some(_place) = core.lmtp_places.try_enter() else {
                        return lmtp_conn::refuse_busy(&core, stream, "unix".into()).await;
                    };
                    core.metrics.connection_opened(false);
                    lmtp_conn::serve(core.clone(), stream, "unix".into()).await;
                    core.metrics.connection_closed();
                });
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "LMTP accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Follows the process-wide stage (set by signals) on this core.
async fn watch_stage(core: Rc<Core>) {
    loop {
        let stage = core.shared.stage();
        core.phase.advance(stage);
        if stage != Stage::Serving && core.metrics.connections_open.load(Ordering::Acquire) == 0 {
            return;
        }
        // Segment maps that ended sessions are done with are unmapped a
        // batch at a time; at low load, this bounds how long one waits
        // (and keeps a deleted segment's disk space).
        pop3sd_storage::map_arena::unmap_released(pop3sd_storage::map_arena::MAX_AGE);
        monoio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn accept_loop(core: Rc<Core>, listener: Rc<TcpListener>, info: Rc<ListenerConfig>) {
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => Some(r),
            _ = core.phase.reached(Stage::Draining) => None,
        };
        let Some(accepted) = accepted else {
            tracing::info!(core = core.id, listener = %info.address, "stopped accepting");
            return;
        };
        match accepted {
            Ok((stream, peer)) => {
                let core = core.clone();
                let info = info.clone();
                monoio::spawn(async move {
                    core.metrics
                        .connection_opened(info.kind == crate::config::ListenerKind::Pop3s);
                    let mut conn = Conn::new(core.clone(), stream, peer, info);
                    let id = conn.id();
                    let result = {
                        use futures_util::FutureExt;
                        std::panic::AssertUnwindSafe(conn.run())
                            .catch_unwind()
                            .await
                    };
                    match result {
                        Ok(r) => conn.log_end(&r),
                        Err(_) => {
                            tracing::error!(session = id, client = %peer, "connection task panicked; closed")
                        }
                    }
                    drop(conn);
                    core.metrics.connection_closed();
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(core = core.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
