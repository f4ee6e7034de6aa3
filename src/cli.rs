//! The whole `percore` command line, for any registry: `serve`, `call`, `bench`,
//! `--check-config`, `--print-config`, systemd notify, signals, the admin endpoint.
//!
//! A team's own server binary is one call:
//!
//! ```no_run
//! # percore::registry! { pub struct MyServices { arith: "Arith" => percore::builtin::Arith } }
//! #[global_allocator]
//! static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc; // what `percore` itself uses
//!
//! fn main() -> std::process::ExitCode {
//!     percore::cli::main::<MyServices>()
//! }
//! ```
//!
//! `serve` hosts the registry's services; `--check-config` also checks every
//! `[services.NAME]` section against them (exit 78 naming the bad key).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::bench::{BenchConfig, CallKind, OutputOptions};
use crate::client::{CallCommand, CallError, Error as ClientError};
use crate::codec::SerializeType;
use crate::config::{self, Config, ConfigError, EXIT_CONFIG, LogFormat, Origin, Overrides};
use crate::host::{self, EXIT_HOST, HostError, Needs};
use crate::notify;
use crate::server::ServerError;
use crate::service::Registry;
use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "percore",
    version,
    about = "A thread-per-core, rpcx-compatible RPC server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (with the embedded default config unless --config is given).
    Serve(ServeArgs),
    /// Make one call and print the reply and its metadata as JSON.
    Call(CallArgs),
    /// Load an rpcx server (percore or another) and report throughput and latency.
    Bench(BenchArgs),
    /// Check that this host can run `percore serve` with this configuration.
    ///
    /// Checks io_uring, memlock, open files, listen addresses and CPUs, each OK, WARN or FAIL
    /// with the fix, and shows the facts that shape performance (kernel, seccomp, isolated
    /// CPUs, NUMA, somaxconn, socket buffers). Exits 0 when no check fails, 71 when one does,
    /// 78 for a bad config.
    CheckHost(CheckHostArgs),
}

/// The config flags of `check-host`: the same sources as `serve`.
#[derive(clap::Args)]
struct CheckHostArgs {
    /// TOML config file (default: $PERCORE_CONFIG, else the embedded defaults).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address `network@address`; repeat for several. Replaces server.listen.
    #[arg(long, value_name = "ADDR", value_parser = config::parse_listen)]
    listen: Vec<crate::transport::addr::Addr>,
    /// Executors to run, one per allowed CPU (0 = all). Sets server.cores.
    #[arg(long, value_name = "N")]
    cores: Option<usize>,
    /// Set any config key, as `serve --set`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// Client TLS flags, shared by `call` and `bench`. TLS is used when any of them is given.
#[derive(clap::Args, Clone, Debug, Default)]
struct TlsArgs {
    /// Dial over TLS, checking the server's certificate against the CA certificates in FILE (PEM).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Dial over TLS without checking the server's certificate (Go's InsecureSkipVerify, as in
    /// rpcx's TLS example): encrypted, not authenticated.
    #[arg(long)]
    tls_insecure: bool,
    /// The name the server's certificate must carry (and SNI); default: the address's host.
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl TlsArgs {
    fn client_tls(self) -> Option<crate::transport::tls::ClientTls> {
        let wanted = self.tls_ca.is_some()
            || self.tls_insecure
            || self.tls_server_name.is_some()
            || self.tls_cert.is_some();
        wanted.then_some(crate::transport::tls::ClientTls {
            ca: self.tls_ca,
            server_name: self.tls_server_name,
            insecure_skip_verify: self.tls_insecure,
            cert: self.tls_cert,
            key: self.tls_key,
        })
    }
}

/// Client KCP settings, shared by `call` and `bench`: any key of the server's `[kcp]` section.
#[derive(clap::Args, Clone, Debug, Default)]
struct KcpArgs {
    /// A `[kcp]` setting for kcp@ servers, KEY=VALUE (e.g. password=secret, key=HEX,
    /// interval=20ms, nodelay=true); repeat for several. Unset keys keep rpcx's example
    /// settings, whose key is public.
    #[arg(long = "kcp", value_name = "KEY=VALUE", value_parser = parse_kcp)]
    kcp: Vec<(String, String)>,
}

impl KcpArgs {
    fn config(&self) -> Result<crate::transport::kcp::KcpConfig, String> {
        crate::transport::kcp::KcpConfig::default().with(&self.kcp)
    }
}

fn parse_kcp(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .ok_or_else(|| format!("--kcp {s:?} is not key=value"))
}

#[derive(clap::Args)]
struct CallArgs {
    /// Server address, `network@address`: tcp@host:port, reuseport@host:port, http@host:port
    /// (rpcx's HTTP CONNECT), unix@/path, quic@host:port or kcp@host:port (with --kcp
    /// settings); add --tls-ca or --tls-insecure for TLS (quic@ always needs one of them). Or
    /// `etcd://HOST:PORT/BASE`: a server of the service registered in etcd under BASE.
    address: String,
    /// `Service.Method`, e.g. Arith.Mul.
    service_method: String,
    /// The args as JSON, e.g. '{"A":10,"B":20}'.
    args: String,
    /// Codec on the wire: msgpack (the Go client's default), json or raw.
    #[arg(long, default_value = "msgpack")]
    codec: SerializeType,
    /// Request metadata `key=value`; repeat for several.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    meta: Vec<(String, String)>,
    /// Call timeout (also sent as __ServerTimeout), e.g. 500ms, 10s.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Gzip args over 1024 bytes.
    #[arg(long)]
    gzip: bool,
    /// Auth token, sent as __AUTH.
    #[arg(long, value_name = "TOKEN")]
    auth: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    kcp: KcpArgs,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Servers, `network@address` (tcp, reuseport, http, unix, quic or kcp), comma-separated;
    /// connections are dealt over them. Add --tls-ca or --tls-insecure for TLS (quic@ always
    /// needs one of them); --kcp for kcp@ settings. Or one
    /// `etcd://HOST:PORT/BASE`: the active servers of the --call's service registered in etcd
    /// under BASE, listed once at the start.
    #[arg(
        short = 's',
        long = "server",
        value_delimiter = ',',
        default_value = "tcp@127.0.0.1:8972"
    )]
    servers: Vec<String>,
    /// Calls in flight in all.
    #[arg(short = 'c', long, default_value_t = 1)]
    concurrency: usize,
    /// Connections in all (default: one per call in flight, like rpcx-benchmark; at most -c).
    #[arg(long)]
    connections: Option<usize>,
    /// Stop after this many calls (counted after the warmup).
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Stop after this long, e.g. 10s (default 10s when -n is not given).
    #[arg(short = 'd', long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Calls per second in all; 0 = closed loop. Latency is then measured from each call's
    /// scheduled send time (coordinated omission corrected).
    #[arg(short = 'r', long, default_value_t = 0.0)]
    rate: f64,
    /// Calls made but not counted before measuring, e.g. 1s.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// CPUs for the generator's own executors, e.g. 1 or 2,3 or 2-3 (default: one unpinned).
    #[arg(long, value_parser = parse_cpus, default_value = "")]
    cores: CpuList,
    /// The call: Arith.Mul, Echo.Echo or Hello.Say.
    #[arg(long, default_value = "Arith.Mul")]
    call: CallKind,
    /// Echo.Echo payload size in bytes.
    #[arg(long, default_value_t = 4096)]
    payload_size: usize,
    /// Codec: msgpack, json, raw or protobuf (default: msgpack for Arith, protobuf for Hello,
    /// raw for Echo).
    #[arg(long)]
    codec: Option<SerializeType>,
    /// Per-call timeout (also sent as __ServerTimeout); 0 = none.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Count any reply that is not an rpcx error reply as OK, without checking its payload
    /// (for servers that do not compute the answer, e.g. the null server, which echoes each
    /// request). The report says the replies were not verified.
    #[arg(long)]
    no_verify: bool,
    /// Print the full percentile spectrum (wrk2 style).
    #[arg(long)]
    latency: bool,
    /// Write the report as JSON to FILE.
    #[arg(short = 'o', long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Write a latency-by-percentile plot (SVG) to FILE.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Do not print the progress line (it is printed only when stderr is a terminal).
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    kcp: KcpArgs,
}

/// A CPU list (`1`, `2,3`, `2-3`); empty means "not pinned".
#[derive(Clone, Debug, Default)]
struct CpuList(Vec<usize>);

fn parse_cpus(s: &str) -> Result<CpuList, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("{part:?} in --cores {s:?} is not a CPU number or range like 2-3");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(CpuList(cpus))
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("--meta {s:?} is not key=value"))
}

/// Precedence: defaults < config file < environment < flags.
#[derive(clap::Args)]
#[command(
    after_help = "Precedence: defaults < config file < environment < flags.\n\
Environment: PERCORE_CONFIG (the file), PERCORE_LISTEN (comma-separated), PERCORE_CORES,\n\
PERCORE_DRAIN_TIMEOUT, PERCORE_LOG, PERCORE_LOG_FORMAT, PERCORE_ADMIN_LISTEN,\n\
PERCORE_AUTH_TOKEN_FILE.\n\
Signals: SIGTERM/SIGINT drain and exit 0 (a second one exits at once); SIGHUP reloads the log level.\n\
Exit: 71 when the host cannot run it (io_uring, memlock, open files, a port in use: see\n\
`percore check-host`), 78 for a bad configuration, 1 for a failure after start."
)]
struct ServeArgs {
    /// TOML config file; keys it does not set keep their defaults (see configs/server.toml).
    /// Default: $PERCORE_CONFIG, else the embedded defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address `network@address` (tcp, reuseport, http, unix or quic, e.g.
    /// `unix@/run/percore.sock`; quic needs [tls]); repeat for several. Replaces server.listen.
    #[arg(long, value_name = "ADDR", value_parser = config::parse_listen)]
    listen: Vec<crate::transport::addr::Addr>,
    /// Executors to run, one per allowed CPU (0 = all). Sets server.cores.
    #[arg(long, value_name = "N")]
    cores: Option<usize>,
    /// Admin endpoint address (/metrics, /healthz, /readyz), "" for off. Sets admin.listen.
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Log filter such as "info" or "percore=debug". Sets log.level (RUST_LOG still wins).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Set any config key, e.g. `--set limits.idle_timeout=5m` or `--set server.backlog=4096`;
    /// repeatable, applied last. The value is TOML, or plain text for a string.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Validate the configuration and exit: 0 if it is good, 78 with the bad key if not.
    #[arg(long)]
    check_config: bool,
    /// Print the effective configuration as TOML (auth tokens redacted) and exit.
    #[arg(long)]
    print_config: bool,
}

/// The `percore` binary's main: [`main`] with the built-in services. It is instantiated in this
/// crate, so the server's generic code is compiled together with the rest of the library and
/// inlined as it was before the registry was generic (a binary of your own instantiates it in
/// its crate: build it with `lto = "thin"` for the same inlining; benches/instructions.sh
/// measured 910 instructions per pipelined call here, 951 across crates without LTO).
pub fn builtin() -> ExitCode {
    main::<crate::builtin::Builtin>()
}

/// Parses the command line and runs it, serving the services of `R`.
pub fn main<R: Registry>() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::<R>(args),
        Command::Call(args) => call(args),
        Command::Bench(args) => bench(args),
        Command::CheckHost(args) => check_host::<R>(args),
    }
}

/// Prints a host problem found before any executor started, and the exit status for it.
fn host_failure(e: &HostError) -> ExitCode {
    eprintln!("percore: {e}");
    ExitCode::from(EXIT_HOST)
}

fn check_host<R: Registry>(args: CheckHostArgs) -> ExitCode {
    let flags = config_overrides(
        args.config.clone(),
        &args.listen,
        args.cores,
        None,
        None,
        &args.set,
    );
    let config = match flags.and_then(|flags| load::<R>(&flags)) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("percore: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    // As `serve` does first; where raising is not allowed the open-files line judges the
    // soft limit.
    let _ = host::raise_nofile();
    let cpus = host::server_cpus(&config);
    let lines = host::report(&config, cpus);
    let failed = lines.iter().any(|l| l.status == host::Status::Fail);
    // writeln!, not println!: a closed pipe (`| head`) ends the output instead of panicking.
    let mut out = std::io::stdout().lock();
    for line in &lines {
        if writeln!(out, "{line}").is_err() {
            break;
        }
    }
    if failed {
        ExitCode::from(EXIT_HOST)
    } else {
        ExitCode::SUCCESS
    }
}

fn call(args: CallArgs) -> ExitCode {
    let kcp = match args.kcp.config() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("percore: --kcp: {e}");
            return ExitCode::from(2);
        }
    };
    // What is short but not fatal (the client's io buffers unregistered) is left unsaid.
    if let Err(e) = host::preflight(&Needs::client(1, 1)) {
        return host_failure(&e);
    }
    let cmd = CallCommand {
        address: args.address,
        service_method: args.service_method,
        args: args.args,
        codec: args.codec,
        metadata: args.meta,
        timeout: args.timeout,
        gzip: args.gzip,
        auth: args.auth,
        tls: args.tls.client_tls(),
        kcp,
    };
    match crate::client::run_call(cmd) {
        Ok(output) => {
            println!("{output:#}");
            ExitCode::SUCCESS
        }
        Err(CallError::Call(ClientError::Service(text))) => {
            eprintln!("percore: server error: {text}");
            ExitCode::FAILURE
        }
        Err(CallError::Usage(e)) => {
            eprintln!("percore: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("percore: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: BenchArgs) -> ExitCode {
    use std::io::IsTerminal;
    let kcp = match args.kcp.config() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("percore: --kcp: {e}");
            return ExitCode::from(2);
        }
    };
    let connections = args.connections.unwrap_or(args.concurrency);
    let mut servers = args.servers;
    if let [address] = servers.as_slice() {
        match crate::client::etcd_servers(address, args.call.names().0) {
            Ok(None) => {}
            Ok(Some(listed)) if listed.is_empty() => {
                eprintln!(
                    "percore: no active server of {} is registered at {address}",
                    args.call.names().0
                );
                return ExitCode::FAILURE;
            }
            Ok(Some(listed)) => servers = listed,
            Err(e) => {
                eprintln!("percore: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let config = BenchConfig {
        servers,
        concurrency: args.concurrency,
        connections,
        requests: args.requests,
        duration: args.duration.or(if args.requests.is_none() {
            Some(Duration::from_secs(10))
        } else {
            None
        }),
        rate: args.rate,
        warmup: args.warmup,
        cores: args.cores.0,
        call: args.call,
        payload_size: args.payload_size,
        codec: args.codec.unwrap_or(args.call.default_codec()),
        timeout: Some(args.timeout).filter(|t| !t.is_zero()),
        verify: !args.no_verify,
        progress: !args.quiet && std::io::stderr().is_terminal(),
        tls: args.tls.client_tls(),
        kcp,
    };
    let output = OutputOptions {
        latency: args.latency,
        json: args.output,
        plot: args.plot,
    };
    let executors = config.cores.len().max(1).min(config.connections.max(1));
    if let Err(e) = host::preflight(&Needs::client(executors, config.connections)) {
        return host_failure(&e);
    }
    match crate::bench::run(&config) {
        Ok(report) => {
            if let Err(e) = report.emit(&output) {
                eprintln!("percore: {e}");
                return ExitCode::FAILURE;
            }
            if report.succeeded() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("percore: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve<R: Registry>(args: ServeArgs) -> ExitCode {
    let loaded = overrides(&args).and_then(|flags| Ok((load::<R>(&flags)?, flags)));
    let (config, flags) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("percore: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    if args.check_config {
        println!("config OK");
        return ExitCode::SUCCESS;
    }
    if args.print_config {
        // Tokens are secrets: shown as `<redacted>`, so the output can be pasted safely.
        print!("{}", config.redacted().to_toml());
        return ExitCode::SUCCESS;
    }
    // Before any executor: a host that cannot run glommio fails here with one line, not with
    // a panic in a core thread. (Too many cores for the CPUs is left to start(), which names
    // the key.)
    let mut short = Vec::new();
    if let Ok(cpus) = host::server_cpus(&config) {
        match host::preflight_server(&config, cpus.len()) {
            Ok(found) => short = found,
            Err(e) => return host_failure(&e),
        }
    }
    let memlock_short = short
        .iter()
        .any(|s| matches!(s, host::Shortfall::Memlock(_)));
    let log = init_logging(&config, memlock_short);
    for short in short {
        tracing::warn!("{short}");
    }
    match run::<R>(config, flags, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<ServerError>() {
            // The server's own error already carries its cause: printed once, on one line.
            Some(start) => {
                eprintln!("percore: {start}");
                ExitCode::from(host::server_exit_code(start))
            }
            None => match e.downcast_ref::<AdminListenError>() {
                Some(admin) => {
                    eprintln!("percore: {admin}");
                    ExitCode::from(EXIT_HOST)
                }
                None => {
                    // One line on stderr (not a log line too: the journal would show it twice).
                    eprintln!("percore: {e:#}");
                    ExitCode::FAILURE
                }
            },
        },
    }
}

/// The admin endpoint could not listen (its port taken, say): a host problem, exit 71.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (admin.listen): {source}")]
struct AdminListenError {
    addr: std::net::SocketAddr,
    source: std::io::Error,
}

/// The effective configuration: defaults < file < environment < flags.
fn load<R: Registry>(flags: &Overrides) -> Result<Config, ConfigError> {
    let config = config::load(flags, |name| std::env::var(name).ok())?;
    // Every [services.NAME] section names a hosted service and fits its config type.
    R::check(&config.services)?;
    if let Some(etcd) = &config.registry.etcd {
        let services: Vec<&str> = R::SERVICES.iter().map(|(name, _)| *name).collect();
        etcd.check_services(&services)?;
    }
    // The certificates are read here too, so --check-config catches a bad TLS file.
    crate::transport::tls::server_config(&config.tls)?;
    Ok(config)
}

/// The flags as config keys, in precedence order (later wins).
fn overrides(args: &ServeArgs) -> Result<Overrides, ConfigError> {
    config_overrides(
        args.config.clone(),
        &args.listen,
        args.cores,
        args.admin_listen.as_deref(),
        args.log_level.as_deref(),
        &args.set,
    )
}

/// The config flags shared by `serve` and `check-host`, as config keys.
fn config_overrides(
    config: Option<PathBuf>,
    listen: &[crate::transport::addr::Addr],
    cores: Option<usize>,
    admin_listen: Option<&str>,
    log_level: Option<&str>,
    sets: &[String],
) -> Result<Overrides, ConfigError> {
    let mut flags = Overrides {
        config,
        sets: Vec::new(),
    };
    let mut set = |key: &str, value: toml::Value, flag: &str| {
        flags.sets.push((key.to_owned(), value, flag.to_owned()))
    };
    let text = |s: &str| toml::Value::String(s.to_owned());
    if !listen.is_empty() {
        let list = listen.iter().map(|a| text(&a.to_string())).collect();
        set("server.listen", toml::Value::Array(list), "--listen");
    }
    if let Some(cores) = cores {
        set(
            "server.cores",
            toml::Value::Integer(cores as i64),
            "--cores",
        );
    }
    if let Some(addr) = admin_listen {
        set("admin.listen", text(addr), "--admin-listen");
    }
    if let Some(level) = log_level {
        set("log.level", text(level), "--log-level");
    }
    for kv in sets {
        let Some((key, value)) = kv.split_once('=') else {
            return Err(ConfigError::Override {
                key: kv.clone(),
                origin: Origin::Flag("--set".into()),
                message: "expected KEY=VALUE".into(),
            });
        };
        let key = key.trim();
        set(
            key,
            config::text_value(value.trim()),
            &format!("--set {key}"),
        );
    }
    Ok(flags)
}

fn run<R: Registry>(config: Config, flags: Overrides, log: LogReload) -> anyhow::Result<()> {
    // Installed first, so a signal during start-up is queued, not the default action.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .context("installing signal handlers")?;
    let server = crate::server::start::<R>(config.clone()).context("starting the server")?;
    if let Some(addr) = config.admin.listen {
        crate::admin::start(addr, &server).map_err(|source| AdminListenError { addr, source })?;
    }
    let stopper = server.stopper();
    std::thread::Builder::new()
        .name("percore-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                if signal == signal_hook::consts::SIGHUP {
                    reload_log_level::<R>(&flags, &log);
                    continue;
                }
                seen += 1;
                if seen == 1 {
                    tracing::info!(
                        signal,
                        "shutting down: draining connections (signal again to exit at once)"
                    );
                    notify::notify("STOPPING=1\nSTATUS=draining connections");
                    // On a thread of its own: with [registry.etcd] the shutdown first waits
                    // (bounded) for the keys' delete, and a second signal must still be heard.
                    let background = stopper.clone();
                    let spawned = std::thread::Builder::new()
                        .name("percore-stop".into())
                        .spawn(move || background.shutdown());
                    if spawned.is_err() {
                        stopper.shutdown();
                    }
                } else {
                    tracing::warn!(signal, "second signal: exiting at once");
                    std::process::exit(1);
                }
            }
        })
        .context("starting the signal thread")?;
    if !server.wait_ready() {
        // A core could not start (or a signal stopped the start): join says which and why.
        server.shutdown();
        server.join()?;
        return Ok(());
    }
    for addr in server.listen_addrs() {
        tracing::info!(%addr, "listening");
    }
    let served: Vec<String> = server
        .listen_addrs()
        .iter()
        .map(|a| a.to_string())
        .collect();
    notify::notify(&format!(
        "READY=1\nSTATUS=serving {} on {} cores",
        served.join(", "),
        server.cpus().len()
    ));
    server.join()?;
    tracing::info!("stopped");
    Ok(())
}

/// Changes the log filter at run time (SIGHUP).
type LogReload = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

/// The filter: `RUST_LOG` if set, else `log.level`.
fn log_filter(config: &Config) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level))
}

/// `memlock_short`: the preflight has said in one line that the io buffers will not be
/// registered; glommio's own multi-line report of each skipped registration is then left out.
fn init_logging(config: &Config, memlock_short: bool) -> LogReload {
    use tracing_subscriber::prelude::*;
    let mut filter = log_filter(config);
    if memlock_short && let Ok(quiet) = "glommio::sys::uring=error".parse() {
        filter = filter.add_directive(quiet);
    }
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    // Under journald (which stamps every line itself) timestamps are left out.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    // Colour only on a terminal (and not with NO_COLOR): escape codes in a file or the journal
    // are noise.
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let fmt = match (config.log.format, journald) {
        (LogFormat::Json, _) => fmt.json().boxed(),
        (LogFormat::Text, true) => fmt.without_time().boxed(),
        (LogFormat::Text, false) => fmt.boxed(),
    };
    tracing_subscriber::registry().with(filter).with(fmt).init();
    handle
}

/// SIGHUP: reads the configuration again (file, environment, flags) and applies its log level;
/// the rest of it needs a restart. A configuration that no longer loads keeps the old level.
fn reload_log_level<R: Registry>(flags: &Overrides, log: &LogReload) {
    match load::<R>(flags) {
        Ok(config) => match log.reload(log_filter(&config)) {
            Ok(()) => tracing::info!(level = %config.log.level, "SIGHUP: log level reloaded"),
            Err(e) => tracing::warn!(error = %e, "SIGHUP: cannot reload the log level"),
        },
        Err(e) => tracing::warn!("SIGHUP: configuration not reloaded: {e}"),
    }
}
