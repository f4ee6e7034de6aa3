//! The `percore` command: parses the command line and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use percore::config::{
    self, Config, ConfigError, EXIT_CONFIG, ListenAddr, LogFormat, Origin, Overrides,
};

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
}

/// Precedence: defaults < config file < environment (PERCORE_LISTEN, PERCORE_CORES,
/// PERCORE_DRAIN_TIMEOUT, PERCORE_LOG, PERCORE_LOG_FORMAT, PERCORE_ADMIN_LISTEN,
/// PERCORE_AUTH_TOKEN_FILE) < flags.
#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file; keys it does not set keep their defaults (see configs/server.toml).
    /// Default: $PERCORE_CONFIG, else the embedded defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address `network@host:port` (tcp or reuseport); repeat for several. Replaces
    /// server.listen.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<ListenAddr>,
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
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
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

fn effective_config(args: &ServeArgs) -> Result<Config, ConfigError> {
    config::load(&overrides(args)?, |name| std::env::var(name).ok())
}

/// The flags as config keys, in precedence order (later wins).
fn overrides(args: &ServeArgs) -> Result<Overrides, ConfigError> {
    let mut flags = Overrides {
        config: args.config.clone(),
        sets: Vec::new(),
    };
    let mut set = |key: &str, value: toml::Value, flag: &str| {
        flags.sets.push((key.to_owned(), value, flag.to_owned()))
    };
    let text = |s: &str| toml::Value::String(s.to_owned());
    if !args.listen.is_empty() {
        let list = args.listen.iter().map(|a| text(&a.to_string())).collect();
        set("server.listen", toml::Value::Array(list), "--listen");
    }
    if let Some(cores) = args.cores {
        set(
            "server.cores",
            toml::Value::Integer(cores as i64),
            "--cores",
        );
    }
    if let Some(addr) = &args.admin_listen {
        set("admin.listen", text(addr), "--admin-listen");
    }
    if let Some(level) = &args.log_level {
        set("log.level", text(level), "--log-level");
    }
    for kv in &args.set {
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
