//! The `privgw` binary: parses the command line and reports errors plainly.

fn main() -> std::process::ExitCode {
    privgw::cli::main()
}
