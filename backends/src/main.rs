//! `backend`: one sample service (SPEC §2). See the library docs for its endpoints.

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "backend",
    version,
    about = "Sample sharded backend for the gateway"
)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:9001
    #[arg(long)]
    listen: SocketAddr,
    /// Name reported in x-served-by and the JSON echo
    #[arg(long)]
    name: String,
    /// Delay before answering each non-control request
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Share of non-control requests answered with 500 (0..=1)
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Answer with exactly N bytes of filler instead of the JSON echo
    #[arg(long)]
    body_bytes: Option<u64>,
    /// Serve TLS with this PEM certificate chain (ALPN h2 and http/1.1)
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Require a client certificate from this PEM CA (with --tls-cert)
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.fail_rate) {
        eprintln!("backend: --fail-rate must be within 0..=1");
        return ExitCode::from(2);
    }
    let opts = backends::Options {
        name: args.name,
        delay_ms: args.delay_ms,
        fail_rate: args.fail_rate,
        body_bytes: args.body_bytes,
        tls: args
            .tls_cert
            .zip(args.tls_key)
            .map(|(cert, key)| backends::TlsOptions {
                cert,
                key,
                client_ca: args.client_ca,
            }),
    };
    match backends::run_until_signal(args.listen, &opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backend: {}: {e}", args.listen);
            ExitCode::FAILURE
        }
    }
}
