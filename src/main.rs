//! The `percore` command: parses the command line and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use percore::bench::{BenchConfig, CallKind, OutputOptions};
use percore::client::{CallCommand, CallError, Error as ClientError};
use percore::codec::SerializeType;
use percore::config::{Config, EXIT_CONFIG, ListenAddr, LogFormat};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
}

#[derive(clap::Args)]
struct CallArgs {
    /// Server address, `network@host:port` (tcp or reuseport).
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
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Servers, `network@host:port`, comma-separated; connections are dealt over them.
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

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file; keys it does not set keep their defaults (see configs/server.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address `network@host:port` (tcp or reuseport); repeat for several. Replaces
    /// server.listen.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<ListenAddr>,
    /// Executors to run, one per allowed CPU (0 = all). Replaces server.cores.
    #[arg(long, value_name = "N")]
    cores: Option<usize>,
    /// Validate the configuration and exit: 0 if it is good, 78 with the bad key if not.
    #[arg(long)]
    check_config: bool,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Call(args) => call(args),
        Command::Bench(args) => bench(args),
    }
}

fn call(args: CallArgs) -> ExitCode {
    let cmd = CallCommand {
        address: args.address,
        service_method: args.service_method,
        args: args.args,
        codec: args.codec,
        metadata: args.meta,
        timeout: args.timeout,
        gzip: args.gzip,
        auth: args.auth,
    };
    match percore::client::run_call(cmd) {
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
    let connections = args.connections.unwrap_or(args.concurrency);
    let config = BenchConfig {
        servers: args.servers,
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
        progress: !args.quiet && std::io::stderr().is_terminal(),
    };
    let output = OutputOptions {
        latency: args.latency,
        json: args.output,
        plot: args.plot,
    };
    match percore::bench::run(&config) {
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

fn serve(args: ServeArgs) -> ExitCode {
    let config = match effective_config(&args) {
        Ok(config) => config,
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
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    init_logging(&config);
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("percore: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn effective_config(args: &ServeArgs) -> Result<Config, percore::config::ConfigError> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if !args.listen.is_empty() {
        config.server.listen = args.listen.clone();
    }
    if let Some(cores) = args.cores {
        config.server.cores = cores;
    }
    config.validate()?;
    Ok(config)
}

fn run(config: Config) -> anyhow::Result<()> {
    let server = percore::server::start(config).context("starting the server")?;
    for addr in server.local_addrs() {
        tracing::info!(%addr, "listening");
    }
    let stopper = server.stopper();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("percore-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                seen += 1;
                if seen == 1 {
                    tracing::info!(
                        signal,
                        "shutting down: draining connections (signal again to exit at once)"
                    );
                    stopper.shutdown();
                } else {
                    tracing::warn!(signal, "second signal: exiting at once");
                    std::process::exit(1);
                }
            }
        })
        .context("starting the signal thread")?;
    server.join()?;
    tracing::info!("stopped");
    Ok(())
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    // Under journald (which stamps every line itself) timestamps are left out.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match (config.log.format, journald) {
        (LogFormat::Json, _) => builder.json().init(),
        (LogFormat::Text, true) => builder.without_time().init(),
        (LogFormat::Text, false) => builder.init(),
    }
}
