//! `privgw bench <shape>`: closed-loop load against privgw and, in the same run, against
//! libcoap 4.3.1 (`coap-server-openssl`), with the ratio; every result is a table of
//! [`crate::cli::results`] (printed, and `<out>/<name>.csv|json`).

pub mod closed_loop;
mod common;
pub mod front;
pub mod handshakes;
pub mod plot;
pub mod proxy;

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::cli::CliResult;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    shape: Shape,
    /// The results folder (`<name>.csv`, `<name>.json` per table).
    #[arg(long, global = true, default_value = "bench-results")]
    out: PathBuf,
}

#[derive(Subcommand, Debug)]
enum Shape {
    /// The front end: CON GETs of `/.well-known/core` and of a data resource over UDP
    /// (N endpoints × W in flight) and over one DTLS-PSK session, privgw vs libcoap.
    Front(front::FrontArgs),
    /// DTLS-PSK full handshakes + one GET each, C concurrent handshakers, privgw vs libcoap.
    Handshakes(handshakes::HandshakeArgs),
    /// Proxied GETs to one DTLS-PSK device through privgw vs libcoap's forward proxy.
    Proxy(proxy::ProxyArgs),
    /// Draws the plots (SVG) from the JSON tables in the results folder.
    Plot(plot::PlotArgs),
}

pub async fn run(args: BenchArgs) -> CliResult<()> {
    match args.shape {
        Shape::Front(a) => front::run(a, &args.out).await,
        Shape::Handshakes(a) => handshakes::run(a, &args.out).await,
        Shape::Proxy(a) => proxy::run(a, &args.out).await,
        Shape::Plot(a) => plot::run(a, &args.out),
    }
}
