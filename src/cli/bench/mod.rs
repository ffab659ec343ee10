//! `privgw bench <shape>`: load shapes, bounded in count and time. Group verification and
//! registration run against a gateway in its own process and devices in another
//! (`privgw fleet`); the front end, DTLS handshakes and the proxy run closed-loop against
//! privgw and, in the same run, against libcoap 4.3.1 (`coap-server-openssl`), with the
//! ratio; `soak` holds the gateway at peak load for a minute and samples its RSS. Every shape
//! reports one table through [`crate::cli::results`] under `--out`
//! (printed, and `<out>/<name>.csv|json`); `plot` draws them.

pub mod closed_loop;
mod common;
pub mod core_split;
pub mod front;
pub mod gateway;
pub mod group;
pub mod handshakes;
pub mod plot;
pub mod process;
pub mod proxy;
pub mod psk_handshake;
pub mod register;
pub mod soak;

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
    /// The front end: CON GETs of `/.well-known/core` and of a data resource over UDP
    /// (N endpoints × W in flight) and over one DTLS-PSK session, privgw vs libcoap.
    Front(front::FrontArgs),
    /// DTLS-PSK full handshakes + one GET each, C concurrent handshakers, privgw vs libcoap.
    Handshakes(handshakes::HandshakeArgs),
    /// Proxied GETs to one DTLS-PSK device through privgw vs libcoap's forward proxy.
    Proxy(proxy::ProxyArgs),
    /// Sustained peak load (data GETs and handshake churn) for a minute: whether the
    /// gateway's RSS stays flat.
    Soak(soak::SoakArgs),
    /// Draws the plots (SVG) from the JSON tables in the results folder.
    Plot(plot::PlotArgs),
}

pub async fn run(args: BenchArgs) -> CliResult<()> {
    match args.shape {
        Shape::Group(a) => group::run(a, &args.out).await,
        Shape::Register(a) => register::run(a, &args.out).await,
        Shape::Front(a) => front::run(a, &args.out).await,
        Shape::Handshakes(a) => handshakes::run(a, &args.out).await,
        Shape::Proxy(a) => proxy::run(a, &args.out).await,
        Shape::Soak(a) => soak::run(a, &args.out).await,
        Shape::Plot(a) => plot::run(a, &args.out),
    }
}
