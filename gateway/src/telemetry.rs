//! Logging: JSON lines on stdout through a non-blocking writer, `RUST_LOG` controls what is
//! written. Access logs use the target `access` (`RUST_LOG=info,access=off` silences them).

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber; keep the guard alive until exit so the last lines are
/// flushed. `default` applies when `RUST_LOG` is not set.
pub fn init(default: &str) -> WorkerGuard {
    // 32,768 buffered lines (about half a second of access logs at 50,000 req/s) instead of
    // the default 128,000: the queue's slots are allocated and touched up front, and the
    // default alone is 4 MiB of resident memory. Lines beyond it are dropped, not waited for.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(32_768)
        .lossy(true)
        .finish(std::io::stdout());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(writer)
        .try_init();
    guard
}

/// At start the open-file limit is raised to its hard limit (SPEC §4); the result is logged.
pub fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(
            open_file_limit = n,
            "open-file limit raised to the hard limit"
        ),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}
