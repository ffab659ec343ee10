//! How the gateway and the fleet share this machine's cores when `bench group` and
//! `bench register` run both on it: by default each process gets half the cores' worth of
//! tokio workers (at least one), as a load generator is kept apart from the system under
//! test. With one worker per core in each process, both runtimes wake idle workers on the
//! other's cores: on the 2-core machine that cost ~20 % more CPU per device read.

use std::num::NonZeroUsize;

use clap::Args;

#[derive(Args, Debug, Clone, Default)]
pub struct CoreSplit {
    /// Tokio workers of the gateway process (default: half the cores, at least 1).
    #[arg(long, value_name = "N")]
    pub gateway_workers: Option<NonZeroUsize>,
    /// Tokio workers of the fleet process (default: half the cores, at least 1).
    #[arg(long, value_name = "N")]
    pub fleet_workers: Option<NonZeroUsize>,
}

impl CoreSplit {
    /// The gateway's workers.
    pub fn gateway(&self) -> NonZeroUsize {
        self.gateway_workers.unwrap_or_else(half_the_cores)
    }

    /// The fleet's workers.
    pub fn fleet(&self) -> NonZeroUsize {
        self.fleet_workers.unwrap_or_else(half_the_cores)
    }

    /// One line for the progress output.
    pub fn describe(&self) -> String {
        format!(
            "gateway {} and fleet {} tokio workers",
            self.gateway(),
            self.fleet()
        )
    }
}

fn half_the_cores() -> NonZeroUsize {
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    NonZeroUsize::new(cores / 2).unwrap_or(NonZeroUsize::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_process_gets_half_the_cores_unless_told() {
        let split = CoreSplit::default();
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        assert_eq!(split.gateway().get(), (cores / 2).max(1));
        assert_eq!(split.fleet(), split.gateway());
        let told = CoreSplit {
            gateway_workers: NonZeroUsize::new(3),
            fleet_workers: None,
        };
        assert_eq!(told.gateway().get(), 3);
    }
}
