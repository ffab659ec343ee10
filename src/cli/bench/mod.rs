//! `privgw bench <shape>`: load shapes measured against a gateway in its own process (and
//! devices in another, `privgw fleet`), bounded in count and time; every shape reports one
//! table through [`crate::cli::results`] under `--out`.

pub mod group;
pub mod process;
pub mod register;

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::cli::CliResult;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub shape: Shape,
    /// Where the result tables go (`<out>/<table>.csv`, `<out>/<table>.json`).
    #[arg(long, global = true, default_value = "bench-results")]
    pub out: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum Shape {
    /// Group verification latency, memory and CPU per device vs fleet size (dialled fleet).
    Group(group::GroupArgs),
    /// Registration rate and memory per registration, then group writes over them.
    Register(register::RegisterArgs),
}

pub async fn run(args: BenchArgs) -> CliResult<()> {
    match args.shape {
        Shape::Group(a) => group::run(a, &args.out).await,
        Shape::Register(a) => register::run(a, &args.out).await,
    }
}
