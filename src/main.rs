//! The `percore` command: parses the command line and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
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
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML config file; keys it does not set keep their defaults (see configs/server.toml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address `network@address` (tcp, reuseport, http or unix, e.g.
    /// `unix@/run/percore.sock`); repeat for several. Replaces server.listen.
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
    // The certificates are read here too, so --check-config catches a bad TLS file.
    percore::transport::tls::server_config(&config.tls)?;
    Ok(config)
}

fn run(config: Config) -> anyhow::Result<()> {
    let server = percore::server::start(config).context("starting the server")?;
    for addr in server.listen_addrs() {
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
