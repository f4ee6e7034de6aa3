//! The `percore` command: parses the command line and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use percore::config::{
    self, Config, ConfigError, EXIT_CONFIG, ListenAddr, LogFormat, Origin, Overrides,
};
use percore::notify;
use tracing_subscriber::EnvFilter;

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
    /// Print the effective configuration as TOML (auth tokens redacted) and exit.
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
    let loaded = overrides(&args).and_then(|flags| Ok((load(&flags)?, flags)));
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
    let log = init_logging(&config);
    match run(config, flags, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("percore: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The effective configuration: defaults < file < environment < flags.
fn load(flags: &Overrides) -> Result<Config, ConfigError> {
    config::load(flags, |name| std::env::var(name).ok())
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

fn run(config: Config, flags: Overrides, log: LogReload) -> anyhow::Result<()> {
    // Installed first, so a signal during start-up is queued, not the default action.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .context("installing signal handlers")?;
    let server = percore::server::start(config.clone()).context("starting the server")?;
    if let Some(addr) = config.admin.listen {
        percore::admin::start(addr, &server)
            .with_context(|| format!("starting the admin endpoint on {addr} (admin.listen)"))?;
    }
    let stopper = server.stopper();
    std::thread::Builder::new()
        .name("percore-signals".into())
        .spawn(move || {
            let mut seen = 0;
            for signal in signals.forever() {
                if signal == signal_hook::consts::SIGHUP {
                    reload_log_level(&flags, &log);
                    continue;
                }
                seen += 1;
                if seen == 1 {
                    tracing::info!(
                        signal,
                        "shutting down: draining connections (signal again to exit at once)"
                    );
                    notify::notify("STOPPING=1\nSTATUS=draining connections");
                    stopper.shutdown();
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
    for addr in server.local_addrs() {
        tracing::info!(%addr, "listening");
    }
    let served: Vec<String> = config
        .server
        .listen
        .iter()
        .zip(server.local_addrs())
        .map(|(listen, bound)| format!("{}@{bound}", listen.network.name()))
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

fn init_logging(config: &Config) -> LogReload {
    use tracing_subscriber::prelude::*;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(log_filter(config));
    // Under journald (which stamps every line itself) timestamps are left out.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
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
fn reload_log_level(flags: &Overrides, log: &LogReload) {
    match load(flags) {
        Ok(config) => match log.reload(log_filter(&config)) {
            Ok(()) => tracing::info!(level = %config.log.level, "SIGHUP: log level reloaded"),
            Err(e) => tracing::warn!(error = %e, "SIGHUP: cannot reload the log level"),
        },
        Err(e) => tracing::warn!("SIGHUP: configuration not reloaded: {e}"),
    }
}
