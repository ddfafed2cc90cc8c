use std::process::ExitCode;

use clap::Parser;

/// With the `mimalloc` feature: less memory per idle connection, and a keep-alive cost or gain
/// that depends on the machine (figures in Cargo.toml and `docs/performance.md`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<ExitCode> {
    let cli = certgate::cli::Cli::parse();
    let workers = cli
        .threads
        .map(usize::from)
        .or_else(|| {
            std::env::var("TOKIO_WORKER_THREADS")
                .ok()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    // With one worker, a current-thread runtime does the same work without the work-stealing
    // scheduler's cross-thread bookkeeping: every task runs on the thread that polls the
    // listener.
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    let runtime = builder.enable_all().build()?;
    runtime.block_on(certgate::cli::run(cli))
}
