//! `gateway`: the command line (SPEC §2). The only place that exits non-zero.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gateway::config::{self, Mode};

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "A layered API gateway and reverse proxy",
    args_conflicts_with_subcommands = false
)]
struct Cli {
    /// Config file (TOML). `diff` takes it twice: old, then new.
    #[arg(short = 'c', long = "config", global = true)]
    config: Vec<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGTERM/SIGINT (graceful drain)
    Run,
    /// Validate a config without serving
    Check,
    /// Start the sample sharded backends and the gateway with config/demo.toml
    Demo,
    /// Mint a JWT for testing (signed with a PEM private key, or an HMAC secret for HS*)
    Token(TokenArgs),
    /// What changes between two configs (-c OLD -c NEW): routes, upstreams, policies, and the
    /// exact share of keys each keyed upstream would move
    Diff {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct TokenArgs {
    /// PEM private key (RSA, EC, Ed25519), or a file holding the secret for HS*
    #[arg(long)]
    key: PathBuf,
    /// Algorithm: HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA
    #[arg(long, default_value = "RS256")]
    alg: String,
    #[arg(long)]
    kid: Option<String>,
    #[arg(long)]
    sub: Option<String>,
    /// Audience (repeat for several)
    #[arg(long)]
    aud: Vec<String>,
    #[arg(long)]
    iss: Option<String>,
    /// Lifetime, e.g. 15m, 1h, 1d
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// Extra claim name=value (the value is JSON if it parses, else a string); repeatable
    #[arg(long = "claim")]
    claims: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None | Some(Command::Run) => match one_config(&cli.config) {
            Ok(path) => run(path),
            Err(code) => code,
        },
        Some(Command::Check) => match one_config(&cli.config) {
            Ok(path) => check(path),
            Err(code) => code,
        },
        Some(Command::Demo) => demo(cli.config.first().cloned()),
        Some(Command::Token(t)) => token(t),
        Some(Command::Diff { json }) => diff(&cli.config, json),
    }
}

fn diff(paths: &[PathBuf], json: bool) -> ExitCode {
    install_crypto_provider();
    let [old, new] = paths else {
        eprintln!("gateway diff: give two configs: -c OLD -c NEW");
        return ExitCode::from(2);
    };
    let mut loaded = Vec::with_capacity(2);
    for p in [old, new] {
        match config::load(p, Mode::Check) {
            Ok(l) => loaded.push(l.config),
            Err(errors) => {
                for e in &errors {
                    eprintln!("{e}");
                }
                return ExitCode::FAILURE;
            }
        }
    }
    let d = gateway::server::diff::diff(&loaded[0], &loaded[1]);
    if json {
        println!("{}", d.to_json());
    } else {
        print!("{}", d.render());
    }
    ExitCode::SUCCESS
}

fn one_config(paths: &[PathBuf]) -> Result<PathBuf, ExitCode> {
    match paths {
        [p] => Ok(p.clone()),
        [] => {
            eprintln!(
                "gateway: no config file: pass -c FILE (try `gateway check -c config/demo.toml`)"
            );
            Err(ExitCode::from(2))
        }
        _ => {
            eprintln!("gateway: this command takes one -c FILE");
            Err(ExitCode::from(2))
        }
    }
}

fn check(path: PathBuf) -> ExitCode {
    install_crypto_provider();
    match config::load(&path, Mode::Check) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            for w in dns_warnings(&loaded.config) {
                eprintln!("{w}");
            }
            println!("{}: ok: {}", path.display(), loaded.config.summary());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!(
                "{}: {} error{}",
                path.display(),
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            );
            ExitCode::FAILURE
        }
    }
}

/// `host:port` targets that do not resolve now: warnings for `check` (it may run where the
/// gateway's DNS is not reachable).
fn dns_warnings(config: &config::Config) -> Vec<String> {
    if config.hostnames.is_empty() {
        return Vec::new();
    }
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(gateway::discovery::check_hostnames(config)),
        Err(e) => vec![format!("warning: cannot look up target names: {e}")],
    }
}

fn run(path: PathBuf) -> ExitCode {
    let _log = gateway::telemetry::init("info");
    install_crypto_provider();
    let loaded = match config::load(&path, Mode::Run) {
        Ok(l) => l,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            return ExitCode::FAILURE;
        }
    };
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let config = loaded.config;
    tracing::info!(config = %path.display(), version = env!("CARGO_PKG_VERSION"), "starting");
    gateway::telemetry::raise_open_file_limit();
    let rt = match runtime(config.server.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let bound = gateway::server::bind(&config)?;
        gateway::server::serve(config, bound, shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "gateway stopped");
            eprintln!("gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo(path: Option<PathBuf>) -> ExitCode {
    let _log = gateway::telemetry::init("warn");
    install_crypto_provider();
    match gateway::demo::run(path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn token(t: TokenArgs) -> ExitCode {
    install_crypto_provider();
    let ttl = match config::units::parse_duration(&t.ttl) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("gateway token: --ttl: {e}");
            return ExitCode::from(2);
        }
    };
    let spec = gateway::token::TokenSpec {
        alg: t.alg,
        kid: t.kid,
        sub: t.sub,
        aud: t.aud,
        iss: t.iss,
        ttl,
        claims: t.claims,
    };
    match gateway::token::mint_with_file(&spec, &t.key) {
        Ok(tok) => {
            println!("{tok}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gateway token: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One worker thread: a single-threaded scheduler (no work stealing, no cross-thread wake-ups:
/// the cheapest per request, like one nginx worker). More: tokio's work-stealing scheduler.
fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = if worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    b.enable_all();
    if worker_threads > 1 {
        b.worker_threads(worker_threads);
    }
    b.build()
}

/// One crypto provider (aws-lc-rs) for the whole process, rustls and JWT alike, installed once.
fn install_crypto_provider() {
    gateway::edge::tls::install_default_providers();
}

/// Resolves on SIGTERM or SIGINT. (SIGHUP reloads the config: `server::reload`.)
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => t.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "shutting down"),
            _ = term => tracing::info!(signal = "SIGTERM", "shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
