//! What the host must give percore, checked before any executor starts: the preflight of
//! `percore serve`, `bench` and `call`, and the report of `percore check-host`.
//!
//! glommio learns about a host it cannot run on too late and too loudly: with io_uring disabled
//! or denied by seccomp it panics with "kernel should be at least 5.8", and below its memlock
//! floor an executor fails with `MemLockLimit(65536/524288)`. These checks ask the kernel the
//! same questions first, with plain syscalls, and turn each answer into one line that names the
//! cause and the fix. A failed check is [`HostError`]; `main` prints it and exits
//! [`EXIT_HOST`] (EX_OSERR), distinct from a bad configuration's 78 (EX_CONFIG).
//!
//! The checks:
//! - **io_uring**: a raw `io_uring_setup` (no glommio), then `IORING_REGISTER_PROBE` for every
//!   operation glommio's reactor insists on. `EPERM`/`ENOSYS` are told apart by
//!   `kernel.io_uring_disabled` and the process's seccomp mode.
//! - **memlock**: each executor registers its `runtime.io_memory_bytes` buffer with each of its
//!   three rings (main, latency, poll), and the kernel charges every registration, and the ring
//!   memory, to the user's `RLIMIT_MEMLOCK` unless the process has `CAP_IPC_LOCK`. mimalloc
//!   asks for transparent huge pages, and the kernel charges every whole huge page a registered
//!   buffer touches, so where THP is on a 512 KiB buffer costs one huge page (2 MiB) per ring,
//!   or two where it straddles a huge-page boundary, which depends on where it was allocated:
//!   measured here, 1 core ran clean at 6.25 MiB one time and warned at 7 MiB another. The
//!   check asks for the worst case, so that a limit that passes always suffices. The charge is
//!   per user: percore processes of one user share one limit (systemd's DynamicUser= gives each
//!   unit a user of its own). Only glommio's floor is fatal: below the buffers' need glommio
//!   logs that it skips registering them and runs on, and percore's network I/O never uses
//!   them, so that is a one-line warning ([`MemlockShort`]), not a refusal to start.
//!   glommio itself refuses to start below 512 KiB, capability or not.
//! - **open files**: each core holds its rings, an eventfd and one socket per listener: a limit
//!   below that cannot start (71). Each connection is one more: the server keeps 256 back and
//!   refuses connections past the rest, so a limit below what `limits.max_connections_per_core`
//!   asks for is a one-line warning. The soft limit is raised to the hard one first (as Go's
//!   runtime does), so where that is allowed the hard limit is what counts.
//! - **listeners**: a unix socket's directory must exist.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::{Config, EXIT_CONFIG};
use crate::server::ServerError;
use crate::transport::addr::Network;

/// Exit status for a host that cannot run percore (EX_OSERR from sysexits.h).
pub const EXIT_HOST: u8 = 71;

/// The exit status for a server that could not start: 78 when the configuration is at fault
/// (systemd's RestartPreventExitStatus=78 then stops retrying), 71 when the host is (a port
/// in use, a missing directory, an executor the kernel would not give us).
pub fn server_exit_code(e: &ServerError) -> u8 {
    use crate::transport::quic::QuicError;
    match e {
        ServerError::Config(_)
        | ServerError::Tls(_)
        | ServerError::Services(_)
        | ServerError::TooManyCores { .. }
        | ServerError::Quic(QuicError::Limits { .. } | QuicError::Tls(_)) => EXIT_CONFIG as u8,
        _ => EXIT_HOST,
    }
}

/// The CPUs `serve` would run on: the first server.cores of the affinity mask (all if 0), as
/// [`crate::server::start`] chooses them.
pub fn server_cpus(config: &Config) -> Result<Vec<usize>, String> {
    let allowed = crate::server::allowed_cpus()
        .map_err(|e| format!("cannot read the CPUs this process may run on: {e}"))?;
    match config.server.cores {
        0 => Ok(allowed),
        n if n <= allowed.len() => Ok(allowed[..n].to_vec()),
        n => Err(format!(
            "server.cores = {n}, but this process may run on only {} CPUs ({})",
            allowed.len(),
            format_cpu_list(&allowed)
        )),
    }
}

/// glommio's floor: its reactor refuses to start below this memlock limit (`MIN_MEMLOCK_LIMIT`
/// in glommio's `sys/uring.rs`).
const GLOMMIO_MIN_MEMLOCK: u64 = 512 << 10;
/// Rings per glommio executor (main, latency, poll); each registers the io buffer.
const RINGS_PER_EXECUTOR: u64 = 3;
/// glommio's default ring depth, used by the client's and the load generator's executors.
const GLOMMIO_DEFAULT_RING_DEPTH: usize = 128;
/// io memory the client (`percore call`) and the load generator give each executor.
pub const CLIENT_IO_MEMORY: usize = 256 << 10;
/// Descriptors one client executor holds besides its sockets: three rings, an eventfd, and
/// room for glommio's blocking-thread pipes.
const FDS_PER_EXECUTOR: u64 = 8;
/// Descriptors a client holds besides its executors': stdio, the log, its files.
const FDS_BASE: u64 = 32;
/// Descriptors the server keeps back from connections for its listeners, rings, logs and the
/// admin endpoint (`RESERVED_FDS` in `server`): the rest of the limit, shared by the cores, is
/// what they accept connections into when `limits.max_connections_per_core` is 0.
const SERVER_RESERVED_FDS: u64 = 256;

/// A reason this host cannot run percore, with the fix, as one line.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// `kernel.io_uring_disabled = 2`: io_uring is off for every process.
    #[error(
        "io_uring is disabled on this host (sysctl kernel.io_uring_disabled = 2); percore needs it: \
         run `sysctl -w kernel.io_uring_disabled=0` and set it in /etc/sysctl.d/ to keep it"
    )]
    IoUringDisabled,
    /// `kernel.io_uring_disabled = 1` and this process is not in `kernel.io_uring_group`.
    #[error(
        "io_uring is limited to the group in kernel.io_uring_group (sysctl \
         kernel.io_uring_disabled = 1) and this process is not in it: add percore's user to that \
         group, or set kernel.io_uring_disabled=0"
    )]
    IoUringGroup,
    /// A seccomp filter answers `io_uring_setup` with an error (Docker's and containerd's
    /// default profiles do).
    #[error(
        "io_uring_setup is denied by a seccomp filter ({errno}): allow io_uring_setup, \
         io_uring_enter and io_uring_register; Docker: `--security-opt \
         seccomp=deploy/seccomp.json`; Kubernetes: `seccompProfile: {{type: Localhost, \
         localhostProfile: percore.json}}` (deploy/kubernetes/); systemd: keep @system-service \
         in SystemCallFilter="
    )]
    IoUringSeccomp { errno: Errno },
    /// The kernel has no io_uring at all (built without it, or older than 5.1).
    #[error(
        "this kernel has no io_uring (io_uring_setup: {errno}): percore needs Linux 5.8 or later \
         built with CONFIG_IO_URING=y"
    )]
    IoUringMissing { errno: Errno },
    /// io_uring works but lacks operations glommio needs (kernel older than 5.8), or cannot
    /// be probed (older than 5.6).
    #[error(
        "this kernel's io_uring lacks what glommio needs ({missing}): percore needs Linux 5.8 or \
         later"
    )]
    IoUringOld { missing: String },
    /// `io_uring_setup` failed for another reason.
    #[error("io_uring_setup failed: {0}")]
    IoUringSetup(io::Error),
    /// `RLIMIT_MEMLOCK` is below glommio's floor: its executors refuse to start.
    #[error(
        "memlock limit {limit} < {needed} needed (glommio's executors refuse to start below \
         it): raise it with LimitMEMLOCK=infinity (systemd), `--ulimit memlock=-1` (docker) or \
         memlock in /etc/security/limits.conf"
    )]
    MemLock { limit: Bytes, needed: Bytes },
    /// `RLIMIT_NOFILE` is below what the listeners and the connection limits need.
    #[error(
        "open-files limit {limit} < {needed} needed ({why}): raise it with LimitNOFILE= \
         (systemd), `--ulimit nofile=N` (docker) or `ulimit -n`, or lower {lower}"
    )]
    NoFile {
        limit: u64,
        needed: u64,
        why: String,
        lower: &'static str,
    },
    /// A unix listener's directory does not exist.
    #[error(
        "cannot listen on {addr}: the directory {dir} does not exist: create it (under systemd, \
         listen in /run/percore/, which RuntimeDirectory= makes)"
    )]
    UnixDir { addr: String, dir: PathBuf },
    /// A resource limit could not be read or set.
    #[error("cannot {what} {resource}: {source}")]
    Rlimit {
        what: &'static str,
        resource: &'static str,
        source: io::Error,
    },
}

/// `RLIMIT_MEMLOCK` is above glommio's floor but below what registering every executor's io
/// buffer with its rings may be charged: glommio then skips the registration (and says so in
/// its own log line) and serves on; network I/O never uses those buffers.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "memlock limit {limit} < {needed} that registering the io buffers may need ({why}): glommio \
     will skip registering them, which network I/O does not need; to register them raise it with \
     LimitMEMLOCK=infinity (systemd), `--ulimit memlock=-1` (docker) or memlock in \
     /etc/security/limits.conf, or lower {lower}"
)]
pub struct MemlockShort {
    pub limit: Bytes,
    pub needed: Bytes,
    pub why: String,
    pub lower: &'static str,
}

/// The open-files limit lets the server start but is below what its connection limits ask
/// for: past it, connections are accepted and closed at once (the server counts them).
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "open-files limit {limit} < {needed} that the connection limits ask for ({why}): \
     connections past the limit are refused; raise it with LimitNOFILE= (systemd), `--ulimit \
     nofile=N` (docker) or `ulimit -n`, or lower {lower}"
)]
pub struct NofileShort {
    pub limit: u64,
    pub needed: u64,
    pub why: String,
    pub lower: &'static str,
}

/// What the preflight found short but not fatal: `serve` warns about each on one line.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Shortfall {
    #[error("{0}")]
    Memlock(#[from] MemlockShort),
    #[error("{0}")]
    NoFile(#[from] NofileShort),
}

/// An errno shown by its name (`EPERM`), as an operator greps for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            libc::EPERM => "EPERM",
            libc::ENOSYS => "ENOSYS",
            libc::EACCES => "EACCES",
            libc::EINVAL => "EINVAL",
            libc::ENOMEM => "ENOMEM",
            libc::EMFILE => "EMFILE",
            libc::ENFILE => "ENFILE",
            _ => return write!(f, "errno {}", self.0),
        };
        f.write_str(name)
    }
}

/// A byte count in the largest binary unit that shows it exactly (`64 KiB`, `8 MiB`,
/// `12372 KiB`), or `unlimited`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
        if self.0 == libc::RLIM_INFINITY {
            return f.write_str("unlimited");
        }
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        // The largest unit that shows it exactly, so a limit and a need never print alike.
        let mut unit = 0;
        let mut value = self.0;
        while value.is_multiple_of(1024) && unit < UNITS.len() {
            value /= 1024;
            unit += 1;
        }
        match unit {
            0 => write!(f, "{} KiB", self.0.div_ceil(1024)),
            _ => write!(f, "{value} {}", UNITS[unit - 1]),
        }
    }
}

/// What a set of glommio executors asks of the host.
#[derive(Clone, Debug)]
pub struct Needs {
    /// Executors that will start.
    pub executors: usize,
    /// Each executor's `io_memory`.
    pub io_memory: usize,
    /// Each ring's depth.
    pub ring_depth: usize,
    /// Descriptors without which it cannot start (listeners, rings, stdio), and how they were
    /// reckoned: below this, exit 71.
    pub start_fds: (u64, String),
    /// Descriptors held back from connections (listeners, rings, logs).
    pub reserved_fds: u64,
    /// Descriptors for connections.
    pub sockets: u64,
    /// How `reserved_fds` and `sockets` were reckoned, for the message.
    pub nofile_why: String,
    /// The config keys that lower the memlock need, for the message.
    pub lower_memlock: &'static str,
    /// The config keys that lower the open-files need, for the message.
    pub lower_nofile: &'static str,
    /// The config keys that lower what it takes to start, for the message.
    pub lower_start_fds: &'static str,
}

impl Needs {
    /// What `percore serve` with this configuration needs; `cores` is the number of executors
    /// it will start (server.cores resolved against the affinity mask).
    pub fn server(config: &Config, cores: usize) -> Needs {
        // With limits.max_connections_per_core = 0 each core takes its share of what is left
        // after the reserve: at least one connection each is the least that serves.
        let per_core = config.limits.max_connections_per_core.max(1) as u64;
        let why = match config.limits.max_connections_per_core {
            0 => format!(
                "{SERVER_RESERVED_FDS} reserved + {cores} cores x at least 1 connection \
                 (limits.max_connections_per_core = 0: each core's share of the rest)"
            ),
            n => format!(
                "{SERVER_RESERVED_FDS} reserved + {cores} cores x {n} \
                 limits.max_connections_per_core"
            ),
        };
        let listeners = config.server.listen.len() as u64;
        let start = FDS_BASE + cores as u64 * (FDS_PER_EXECUTOR + listeners);
        let start_why = format!(
            "{FDS_BASE} + {cores} cores x ({FDS_PER_EXECUTOR} + {listeners} listeners) to start"
        );
        Needs {
            executors: cores,
            io_memory: config.runtime.io_memory_bytes,
            ring_depth: config.runtime.ring_depth,
            start_fds: (start, start_why),
            reserved_fds: SERVER_RESERVED_FDS,
            sockets: cores as u64 * per_core,
            nofile_why: why,
            lower_memlock: "runtime.io_memory_bytes or server.cores",
            lower_nofile: "limits.max_connections_per_core or server.cores",
            lower_start_fds: "server.cores or server.listen",
        }
    }

    /// What the client's or the load generator's executors need for `connections` connections.
    pub fn client(executors: usize, connections: usize) -> Needs {
        Needs {
            executors,
            io_memory: CLIENT_IO_MEMORY,
            ring_depth: GLOMMIO_DEFAULT_RING_DEPTH,
            // A client's connections are what it runs for: all of them are needed to start.
            start_fds: (
                FDS_BASE + executors as u64 * FDS_PER_EXECUTOR + connections as u64,
                format!(
                    "{FDS_BASE} + {executors} executors x {FDS_PER_EXECUTOR} + {connections} \
                     connections"
                ),
            ),
            reserved_fds: FDS_BASE + executors as u64 * FDS_PER_EXECUTOR,
            sockets: connections as u64,
            nofile_why: format!(
                "{FDS_BASE} + {executors} executors x {FDS_PER_EXECUTOR} + {connections} connections"
            ),
            lower_memlock: "--cores",
            lower_nofile: "--connections",
            lower_start_fds: "--connections",
        }
    }

    /// Bytes of locked memory the executors need, and how that was reckoned.
    pub fn memlock(&self, host: &MemHost) -> (u64, String) {
        if host.cap_ipc_lock {
            return (
                GLOMMIO_MIN_MEMLOCK,
                "glommio's floor; CAP_IPC_LOCK exempts the rings and buffers".into(),
            );
        }
        // glommio rounds the buffer up to pages, and to at least 64 KiB.
        let buffer = align_up(self.io_memory.max(64 << 10) as u64, 4096);
        // Worst case under THP: the buffer starts inside one huge page and ends in another.
        let charged = match host.huge_page {
            Some(huge) => (buffer.div_ceil(huge) + 1) * huge,
            None => buffer,
        };
        let ring = ring_bytes(self.ring_depth as u64);
        let per_ring = charged + ring;
        let total = self.executors as u64 * RINGS_PER_EXECUTOR * per_ring;
        let huge = match host.huge_page {
            Some(huge) => format!(
                ", charged as {} of {} huge pages",
                Bytes(charged),
                Bytes(huge)
            ),
            None => String::new(),
        };
        let why = format!(
            "{} executors x {RINGS_PER_EXECUTOR} rings x ({} io buffer{huge} + {} ring)",
            self.executors,
            Bytes(buffer),
            Bytes(ring),
        );
        (total.max(GLOMMIO_MIN_MEMLOCK), why)
    }

    /// Descriptors the process needs, and how that was reckoned.
    pub fn nofile(&self) -> (u64, String) {
        (self.reserved_fds + self.sockets, self.nofile_why.clone())
    }
}

/// Memory for one ring: the submission entries (64 bytes each) and the shared ring of
/// completions (twice as many, 16 bytes each) with the submission index array.
fn ring_bytes(depth: u64) -> u64 {
    align_up(depth * 64, 4096) + align_up(64 * 4 + depth * 2 * 16 + depth * 4, 4096)
}

fn align_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align) * align
}

/// The parts of the host that decide how locked memory is charged.
#[derive(Clone, Copy, Debug)]
pub struct MemHost {
    /// The process may lock memory without limit (root, or the capability granted).
    pub cap_ipc_lock: bool,
    /// Transparent huge pages are on (not `never`), and their size.
    pub huge_page: Option<u64>,
}

impl MemHost {
    pub fn read() -> MemHost {
        let cap_ipc_lock = effective_caps().is_some_and(|caps| caps & (1 << 14) != 0);
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .map(|s| !s.contains("[never]"))
            .unwrap_or(false);
        let huge_page = thp.then(|| {
            read_trimmed("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
                .and_then(|s| s.parse().ok())
                .unwrap_or(2 << 20)
        });
        MemHost {
            cap_ipc_lock,
            huge_page,
        }
    }
}

/// The effective capability set of this process, from /proc/self/status.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The seccomp mode of this process (0 none, 1 strict, 2 filter), from /proc/self/status.
fn seccomp_mode() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let mode = status.lines().find_map(|l| l.strip_prefix("Seccomp:"))?;
    mode.trim().parse().ok()
}

fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Runs every check that can stop the executors from starting, first failure first, and
/// returns what is short but not fatal (memlock for the io buffers, descriptors for the
/// connection limits). Raises the soft open-files limit to the hard one on the way.
pub fn preflight(needs: &Needs) -> Result<Vec<Shortfall>, HostError> {
    io_uring()?;
    let host = MemHost::read();
    let mut short = Vec::new();
    short.extend(check_memlock(needs, &host)?.map(Shortfall::from));
    // A filter or policy may forbid raising it; then the soft limit is what there is, and
    // check_nofile judges that.
    let _ = raise_nofile();
    short.extend(check_nofile(needs)?.map(Shortfall::from));
    Ok(short)
}

/// [`preflight`] for `percore serve`, plus the listeners the kernel would refuse later.
pub fn preflight_server(config: &Config, cores: usize) -> Result<Vec<Shortfall>, HostError> {
    let short = preflight(&Needs::server(config, cores))?;
    check_unix_dirs(config)?;
    Ok(short)
}

/// The directory of every unix listener exists.
pub fn check_unix_dirs(config: &Config) -> Result<(), HostError> {
    for listen in &config.server.listen {
        let Some(path) = listen.unix_path() else {
            continue;
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(HostError::UnixDir {
                addr: listen.to_string(),
                dir: dir.to_owned(),
            });
        }
    }
    Ok(())
}

/// What the io_uring probe found.
#[derive(Clone, Debug)]
pub struct IoUringInfo {
    /// Operations the kernel supports, of those glommio needs: all of them when it passed.
    pub ops_checked: usize,
}

/// The io_uring operations glommio's reactor checks for at start-up (`GLOMMIO_URING_OPS` in
/// glommio's `sys/uring.rs`): it exits if any is missing. Numbers from `enum io_uring_op`.
const GLOMMIO_OPS: &[(u8, &str)] = &[
    (0, "NOP"),
    (1, "READV"),
    (2, "WRITEV"),
    (3, "FSYNC"),
    (4, "READ_FIXED"),
    (5, "WRITE_FIXED"),
    (6, "POLL_ADD"),
    (7, "POLL_REMOVE"),
    (9, "SENDMSG"),
    (10, "RECVMSG"),
    (11, "TIMEOUT"),
    (12, "TIMEOUT_REMOVE"),
    (13, "ACCEPT"),
    (15, "LINK_TIMEOUT"),
    (16, "CONNECT"),
    (17, "FALLOCATE"),
    (18, "OPENAT"),
    (19, "CLOSE"),
    (21, "STATX"),
    (22, "READ"),
    (23, "WRITE"),
    (26, "SEND"),
    (27, "RECV"),
];

const IORING_REGISTER_PROBE: libc::c_uint = 8;
const IO_URING_OP_SUPPORTED: u16 = 1;
/// Operation slots asked of `IORING_REGISTER_PROBE` (the kernel fills up to its last op).
const PROBE_OPS: usize = 256;

/// `struct io_uring_probe` followed by its `ops[]` array: 16 header bytes, then 8 per op.
#[repr(C)]
struct Probe {
    last_op: u8,
    ops_len: u8,
    resv: u16,
    resv2: [u32; 3],
    ops: [ProbeOp; PROBE_OPS],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct ProbeOp {
    op: u8,
    resv: u8,
    flags: u16,
    resv2: u32,
}

/// Sets up a small io_uring with the raw syscall, probes its operations, and closes it.
pub fn io_uring() -> Result<IoUringInfo, HostError> {
    // struct io_uring_params is 120 bytes; zeroed asks for no flags. u64 keeps it aligned.
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup(entries, params) writes at most sizeof(struct io_uring_params)
    // (120 bytes) into params, which is that size; it returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(setup_error(io::Error::last_os_error()));
    }
    let fd = fd as libc::c_int;
    // SAFETY: all-zero is a valid Probe (plain integers).
    let mut probe: Box<Probe> = Box::new(unsafe { std::mem::zeroed() });
    // SAFETY: IORING_REGISTER_PROBE writes a struct io_uring_probe with at most nr_args
    // (PROBE_OPS) ops into the buffer, which has room for exactly that many.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            fd,
            IORING_REGISTER_PROBE,
            &mut *probe as *mut Probe,
            PROBE_OPS as libc::c_uint,
        )
    };
    let probe_error = (rc < 0).then(io::Error::last_os_error);
    // SAFETY: fd is the ring this function opened and nothing else holds it.
    unsafe { libc::close(fd) };
    if let Some(e) = probe_error {
        return Err(HostError::IoUringOld {
            missing: format!("IORING_REGISTER_PROBE: {e}"),
        });
    }
    let supported = |op: u8| {
        let slot = usize::from(op);
        slot < usize::from(probe.ops_len).min(PROBE_OPS)
            && probe.ops[slot].flags & IO_URING_OP_SUPPORTED != 0
    };
    let missing: Vec<&str> = GLOMMIO_OPS
        .iter()
        .filter(|(op, _)| !supported(*op))
        .map(|(_, name)| *name)
        .collect();
    if !missing.is_empty() {
        return Err(HostError::IoUringOld {
            missing: format!("operations {}", missing.join(", ")),
        });
    }
    Ok(IoUringInfo {
        ops_checked: GLOMMIO_OPS.len(),
    })
}

/// Names the reason `io_uring_setup` failed: the sysctl, a seccomp filter, or the kernel.
fn setup_error(e: io::Error) -> HostError {
    let errno = Errno(e.raw_os_error().unwrap_or(0));
    let disabled = read_trimmed("/proc/sys/kernel/io_uring_disabled");
    let filtered = seccomp_mode() == Some(2);
    match (errno.0, disabled.as_deref()) {
        (libc::EPERM, Some("2")) => HostError::IoUringDisabled,
        (libc::EPERM, Some("1")) if !filtered => HostError::IoUringGroup,
        (libc::EPERM | libc::ENOSYS | libc::EACCES, _) if filtered => {
            HostError::IoUringSeccomp { errno }
        }
        (libc::ENOSYS, _) => HostError::IoUringMissing { errno },
        _ => HostError::IoUringSetup(e),
    }
}

/// `RLIMIT_MEMLOCK` is at least glommio's floor (else an error), and covers registering the
/// executors' io buffers (else the shortfall, to warn about).
pub fn check_memlock(needs: &Needs, host: &MemHost) -> Result<Option<MemlockShort>, HostError> {
    let (limit, _) = rlimit(libc::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK")?;
    if limit == libc::RLIM_INFINITY {
        return Ok(None);
    }
    if limit < GLOMMIO_MIN_MEMLOCK {
        return Err(HostError::MemLock {
            limit: Bytes(limit),
            needed: Bytes(GLOMMIO_MIN_MEMLOCK),
        });
    }
    let (needed, why) = needs.memlock(host);
    if limit >= needed {
        return Ok(None);
    }
    Ok(Some(MemlockShort {
        limit: Bytes(limit),
        needed: Bytes(needed),
        why,
        lower: needs.lower_memlock,
    }))
}

/// Raises the soft open-files limit to the hard one: each connection is a descriptor, and
/// percore uses no select(2), which is why the soft limit stays low by default.
pub fn raise_nofile() -> Result<(), HostError> {
    let (soft, hard) = rlimit(libc::RLIMIT_NOFILE, "RLIMIT_NOFILE")?;
    if soft == hard {
        return Ok(());
    }
    let raised = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads one struct rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(HostError::Rlimit {
            what: "raise",
            resource: "RLIMIT_NOFILE",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The open-files limit in force (the soft one, after [`raise_nofile`]) lets the executors
/// and listeners start (else an error), and covers the connection limits (else the
/// shortfall, to warn about: the server refuses connections past the limit).
pub fn check_nofile(needs: &Needs) -> Result<Option<NofileShort>, HostError> {
    let (soft, _) = rlimit(libc::RLIMIT_NOFILE, "RLIMIT_NOFILE")?;
    if soft == libc::RLIM_INFINITY {
        return Ok(None);
    }
    let (start, start_why) = &needs.start_fds;
    if soft < *start {
        return Err(HostError::NoFile {
            limit: soft,
            needed: *start,
            why: start_why.clone(),
            lower: needs.lower_start_fds,
        });
    }
    let (needed, why) = needs.nofile();
    if soft >= needed {
        return Ok(None);
    }
    Ok(Some(NofileShort {
        limit: soft,
        needed,
        why,
        lower: needs.lower_nofile,
    }))
}

/// (soft, hard) of a resource limit.
fn rlimit(
    resource: libc::__rlimit_resource_t,
    name: &'static str,
) -> Result<(u64, u64), HostError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one struct rlimit.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
        return Err(HostError::Rlimit {
            what: "read",
            resource: name,
            source: io::Error::last_os_error(),
        });
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// One line of `percore check-host`.
#[derive(Clone, Debug)]
pub struct Line {
    pub status: Status,
    pub name: &'static str,
    pub text: String,
}

/// How a line of `check-host` came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// A check that passed.
    Ok,
    /// Works, but worth a look (e.g. a backlog the kernel caps).
    Warn,
    /// percore will not start: the text says why and what to do.
    Fail,
    /// A fact about the host, not a check.
    Info,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Info => "INFO",
        })
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<5} {:<15} {}", self.status, self.name, self.text)
    }
}

/// Everything `percore check-host` reports for this configuration, on `cpus` (the CPUs the
/// server would run on; an error if they cannot be chosen).
pub fn report(config: &Config, cpus: Result<Vec<usize>, String>) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut push = |status, name, text: String| lines.push(Line { status, name, text });
    let cores = match &cpus {
        Ok(cpus) => cpus.len(),
        Err(_) => 1,
    };
    let needs = Needs::server(config, cores);
    let host = MemHost::read();

    match io_uring() {
        Ok(info) => push(
            Status::Ok,
            "io_uring",
            format!(
                "io_uring_setup works and the {} operations glommio needs are supported",
                info.ops_checked
            ),
        ),
        Err(e) => push(Status::Fail, "io_uring", e.to_string()),
    }
    match check_memlock(&needs, &host) {
        Ok(Some(short)) => push(Status::Warn, "memlock", short.to_string()),
        Ok(None) => {
            let (limit, _) = rlimit(libc::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK").unwrap_or((0, 0));
            let (needed, why) = needs.memlock(&host);
            push(
                Status::Ok,
                "memlock",
                format!("{} >= {} needed ({why})", Bytes(limit), Bytes(needed)),
            );
        }
        Err(e) => push(Status::Fail, "memlock", e.to_string()),
    }
    match check_nofile(&needs) {
        Ok(Some(short)) => push(Status::Warn, "open files", short.to_string()),
        Ok(None) => {
            let (soft, hard) = rlimit(libc::RLIMIT_NOFILE, "RLIMIT_NOFILE").unwrap_or((0, 0));
            let (needed, why) = needs.nofile();
            let unbounded = match (config.limits.max_connections_per_core, &cpus) {
                (0, Ok(cpus)) if soft != libc::RLIM_INFINITY => format!(
                    "; up to {} connections per core",
                    soft.saturating_sub(SERVER_RESERVED_FDS) / cpus.len().max(1) as u64
                ),
                _ => String::new(),
            };
            push(
                Status::Ok,
                "open files",
                format!(
                    "{} >= {needed} needed ({why}); hard limit {}{unbounded}",
                    show_limit(soft),
                    show_limit(hard)
                ),
            );
        }
        Err(e) => push(Status::Fail, "open files", e.to_string()),
    }
    for (status, text) in listen_lines(config) {
        push(status, "listen", text);
    }
    match &cpus {
        Ok(cpus) => push(Status::Ok, "cores", cpu_text(cpus)),
        Err(e) => push(Status::Fail, "cores", e.clone()),
    }

    push(Status::Info, "kernel", kernel());
    push(Status::Info, "seccomp", seccomp_text());
    push(Status::Info, "numa", numa());
    let somaxconn = read_trimmed("/proc/sys/net/core/somaxconn").and_then(|s| s.parse().ok());
    match somaxconn {
        Some(max) if u64::from(config.server.backlog) > max => push(
            Status::Warn,
            "somaxconn",
            format!(
                "net.core.somaxconn = {max} caps server.backlog = {}: raise the sysctl or lower \
                 the backlog",
                config.server.backlog
            ),
        ),
        Some(max) => push(
            Status::Info,
            "somaxconn",
            format!(
                "net.core.somaxconn = {max} (server.backlog = {})",
                config.server.backlog
            ),
        ),
        None => push(Status::Info, "somaxconn", "unreadable".into()),
    }
    push(Status::Info, "socket buffers", socket_buffers());
    lines
}

fn show_limit(limit: u64) -> String {
    if limit == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        limit.to_string()
    }
}

/// Each listen address: a unix socket's directory exists; a TCP (or, for QUIC and KCP, UDP)
/// port is free (a plain bind, released at once).
fn listen_lines(config: &Config) -> Vec<(Status, String)> {
    let mut lines = Vec::new();
    for listen in &config.server.listen {
        if let Some(path) = listen.unix_path() {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if dir.is_dir() {
                lines.push((
                    Status::Ok,
                    format!("{listen}: directory {} exists", dir.display()),
                ));
            } else {
                let e = HostError::UnixDir {
                    addr: listen.to_string(),
                    dir: dir.to_owned(),
                };
                lines.push((Status::Fail, e.to_string()));
            }
            continue;
        }
        // QUIC and KCP listen on UDP, the rest on TCP.
        let udp = matches!(listen.network, Network::Quic | Network::Kcp);
        match listen.socket_addr() {
            Ok(addr) => {
                let bound = if udp {
                    std::net::UdpSocket::bind(addr).map(drop)
                } else {
                    std::net::TcpListener::bind(addr).map(drop)
                };
                match bound {
                    Ok(()) => lines.push((Status::Ok, format!("{listen}: free"))),
                    Err(e) => lines.push((Status::Fail, format!("{listen}: cannot bind: {e}"))),
                }
            }
            Err(e) => lines.push((Status::Fail, e.to_string())),
        }
    }
    if let Some(addr) = config.admin.listen {
        match std::net::TcpListener::bind(addr) {
            Ok(_) => lines.push((Status::Ok, format!("admin {addr}: free"))),
            Err(e) => lines.push((Status::Fail, format!("admin {addr}: cannot bind: {e}"))),
        }
    }
    lines
}

/// The CPUs percore would run on, which of them are isolated, and the cgroup's CPU share.
fn cpu_text(cpus: &[usize]) -> String {
    let online = read_trimmed("/sys/devices/system/cpu/online").unwrap_or_else(|| "?".into());
    let isolated = read_trimmed("/sys/devices/system/cpu/isolated")
        .map(|s| parse_cpu_list(&s))
        .unwrap_or_default();
    let nohz = read_trimmed("/sys/devices/system/cpu/nohz_full")
        .map(|s| parse_cpu_list(&s))
        .unwrap_or_default();
    let ours_isolated: Vec<usize> = cpus
        .iter()
        .copied()
        .filter(|c| isolated.contains(c))
        .collect();
    let ours_nohz: Vec<usize> = cpus.iter().copied().filter(|c| nohz.contains(c)).collect();
    let mut text = format!(
        "{} executors on CPUs {} (online {online}); isolated (isolcpus): {}; nohz_full: {}",
        cpus.len(),
        format_cpu_list(cpus),
        none_or(&ours_isolated),
        none_or(&ours_nohz),
    );
    text += &cgroup_cpu();
    text
}

/// What this process's cgroup says about its CPUs: whether its cpuset is exclusive, and any
/// CFS quota, which throttles the executors when together they use more than it.
fn cgroup_cpu() -> String {
    let Ok(cgroups) = std::fs::read_to_string("/proc/self/cgroup") else {
        return String::new();
    };
    // Lines are `ID:CONTROLLERS:PATH`; cgroup v2's is `0::PATH`.
    let path_of = |controller: &str| {
        cgroups.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == controller)
                .then(|| path.trim_start_matches('/').to_owned())
        })
    };
    let base = Path::new("/sys/fs/cgroup");
    let mut facts = Vec::new();
    if base.join("cgroup.controllers").exists() {
        let dir = base.join(path_of("").unwrap_or_default());
        if let Some(partition) = read_trimmed(dir.join("cpuset.cpus.partition")) {
            facts.push(format!(
                "cpuset partition {partition} (root/isolated: exclusive)"
            ));
        }
        if let Some(max) = read_trimmed(dir.join("cpu.max")) {
            facts.push(format!("cpu.max {max}"));
        }
    } else {
        // The root cpuset is trivially exclusive: only a child's flag says anything.
        if let Some(path) = path_of("cpuset").filter(|p| !p.is_empty())
            && let Some(excl) =
                read_trimmed(base.join("cpuset").join(&path).join("cpuset.cpu_exclusive"))
        {
            let word = if excl == "1" { "exclusive" } else { "shared" };
            facts.push(format!("cpuset {word} (cgroup v1)"));
        }
        if let Some(path) = path_of("cpu") {
            let dir = base.join("cpu").join(&path);
            if let Some(quota) = read_trimmed(dir.join("cpu.cfs_quota_us")) {
                let period = read_trimmed(dir.join("cpu.cfs_period_us")).unwrap_or_default();
                facts.push(format!("CFS quota {quota}/{period} us (-1: none)"));
            }
        }
    }
    if facts.is_empty() {
        String::new()
    } else {
        format!("; cgroup: {}", facts.join(", "))
    }
}

fn none_or(cpus: &[usize]) -> String {
    if cpus.is_empty() {
        "none".into()
    } else {
        format_cpu_list(cpus)
    }
}

/// Parses the kernel's CPU list format (`0-3,8,10-11`).
pub fn parse_cpu_list(s: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    cpus.extend(a..=b);
                }
            }
            None => cpus.extend(part.parse::<usize>().ok()),
        }
    }
    cpus
}

/// Formats CPUs as the kernel does (`0-3,8`).
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let start = cpus[i];
        let mut end = start;
        while i + 1 < cpus.len() && cpus[i + 1] == end + 1 {
            i += 1;
            end = cpus[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

fn kernel() -> String {
    // SAFETY: uname fills a utsname of plain char arrays; zeroed is valid input.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname writes one struct utsname.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".into();
    }
    let field = |chars: &[libc::c_char]| {
        let bytes: Vec<u8> = chars
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!(
        "{} {} {}",
        field(&uts.sysname),
        field(&uts.release),
        field(&uts.machine)
    )
}

fn seccomp_text() -> String {
    let disabled = read_trimmed("/proc/sys/kernel/io_uring_disabled")
        .map(|v| format!("kernel.io_uring_disabled = {v}"))
        .unwrap_or_else(|| "kernel.io_uring_disabled absent (kernel before 6.6)".into());
    let mode = match seccomp_mode() {
        Some(0) => "no seccomp filter",
        Some(1) => "seccomp strict mode",
        Some(2) => "a seccomp filter is applied",
        _ => "seccomp mode unknown",
    };
    format!("{mode}; {disabled}")
}

fn numa() -> String {
    let Ok(entries) = std::fs::read_dir("/sys/devices/system/node") else {
        return "no NUMA information (/sys/devices/system/node)".into();
    };
    let mut nodes: Vec<(usize, String)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_prefix("node")?.parse().ok()?;
            let cpus = read_trimmed(e.path().join("cpulist")).unwrap_or_default();
            Some((id, cpus))
        })
        .collect();
    nodes.sort();
    let shown: Vec<String> = nodes
        .iter()
        .map(|(id, cpus)| format!("node{id}: CPUs {cpus}"))
        .collect();
    format!("{} NUMA node(s): {}", nodes.len(), shown.join("; "))
}

fn socket_buffers() -> String {
    let get = |name: &str| {
        read_trimmed(format!("/proc/sys/net/{name}"))
            .map(|v| format!("{} = {}", name.replace('/', "."), v.replace('\t', " ")))
    };
    [
        "core/rmem_max",
        "core/wmem_max",
        "ipv4/tcp_rmem",
        "ipv4/tcp_wmem",
    ]
    .iter()
    .filter_map(|n| get(n))
    .collect::<Vec<_>>()
    .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_thp() -> MemHost {
        MemHost {
            cap_ipc_lock: false,
            huge_page: None,
        }
    }

    #[test]
    fn memlock_counts_three_rings_per_core() {
        let config = Config::default();
        let needs = Needs::server(&config, 4);
        let (bytes, why) = needs.memlock(&no_thp());
        // 512 KiB buffer + 28 KiB of ring (depth 256), three rings, four cores.
        assert_eq!(bytes, 4 * 3 * ((512 << 10) + (28 << 10)));
        assert!(why.contains("4 executors x 3 rings"), "{why}");
    }

    #[test]
    fn memlock_with_huge_pages_charges_whole_pages() {
        let needs = Needs::server(&Config::default(), 1);
        let host = MemHost {
            cap_ipc_lock: false,
            huge_page: Some(2 << 20),
        };
        let (bytes, why) = needs.memlock(&host);
        // The 512 KiB buffer may straddle two 2 MiB huge pages: 4 MiB per ring.
        assert_eq!(bytes, 3 * ((4 << 20) + (28 << 10)));
        assert!(
            why.contains("charged as 4 MiB of 2 MiB huge pages"),
            "{why}"
        );
    }

    #[test]
    fn memlock_with_cap_ipc_lock_is_glommios_floor() {
        let needs = Needs::server(&Config::default(), 64);
        let host = MemHost {
            cap_ipc_lock: true,
            huge_page: Some(2 << 20),
        };
        assert_eq!(needs.memlock(&host).0, GLOMMIO_MIN_MEMLOCK);
    }

    #[test]
    fn nofile_counts_the_reserve_and_connections() {
        let mut config = Config::default();
        let (n, _) = Needs::server(&config, 2).nofile();
        assert_eq!(n, SERVER_RESERVED_FDS + 2);
        config.limits.max_connections_per_core = 1000;
        let (n, why) = Needs::server(&config, 2).nofile();
        assert_eq!(n, SERVER_RESERVED_FDS + 2000);
        assert!(
            why.contains("2 cores x 1000 limits.max_connections_per_core"),
            "{why}"
        );
        let (n, _) = Needs::client(2, 100).nofile();
        assert_eq!(n, FDS_BASE + 2 * FDS_PER_EXECUTOR + 100);
    }

    #[test]
    fn bytes_are_shown_in_binary_units() {
        assert_eq!(Bytes(64 << 10).to_string(), "64 KiB");
        assert_eq!(Bytes(8 << 20).to_string(), "8 MiB");
        assert_eq!(
            Bytes(3 * (2 << 20) + 3 * (28 << 10)).to_string(),
            "6228 KiB"
        );
        assert_eq!(Bytes(6373376).to_string(), "6224 KiB");
        assert_eq!(Bytes(libc::RLIM_INFINITY).to_string(), "unlimited");
    }

    #[test]
    fn cpu_lists_round_trip() {
        assert_eq!(parse_cpu_list("0-3,8,10-11"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(format_cpu_list(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(parse_cpu_list(""), Vec::<usize>::new());
    }

    #[test]
    fn io_uring_works_here() {
        // This machine runs the suite with io_uring on; the probe must agree with glommio.
        io_uring().expect("io_uring usable on the test host");
    }

    #[test]
    fn seccomp_errno_names_the_filter() {
        let e = HostError::IoUringSeccomp {
            errno: Errno(libc::EPERM),
        };
        let text = e.to_string();
        assert!(text.contains("seccomp") && text.contains("EPERM"), "{text}");
        assert!(!text.contains('\n'));
    }
}
