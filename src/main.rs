//! The `privgw` binary: parses the command line and reports errors plainly.

/// mimalloc rather than glibc's allocator: a proxied request allocates dozens of small
/// buffers (CoAP options, packets, channel messages) across two worker threads, and glibc's
/// malloc/free/consolidation was ~20 % of the gateway's CPU under proxy load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    privgw::cli::main()
}
