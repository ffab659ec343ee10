//! Starting and stopping a fleet: dialled devices one after another, each bound to its own
//! loopback UDP port; registering devices each from its own source IP in 127.1.0.0/16 with at
//! most `in_flight` Registers (DTLS handshakes included) at once. Every wait is bounded.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::config::EndpointUri;
use crate::device::{RunningDevice, registering};
use crate::fleet::{FleetSpec, Mode, Plan, device};

/// Device `i`'s source address when it registers: 127.1.(i / 200).(i % 200 + 1), one device
/// per IP up to 51 200 devices (the gateway's per-IP caps then never limit the fleet).
pub fn source_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        1,
        u8::try_from(i / 200).unwrap_or(u8::MAX),
        u8::try_from(i % 200 + 1).unwrap_or(1),
    ))
}

/// A running fleet.
pub struct Fleet {
    devices: Vec<RunningDevice>,
    plan: Plan,
    /// From the first device's start to the last one listening or registered.
    pub took: Duration,
}

impl Fleet {
    /// Starts every device of `spec` (`plan` from [`FleetSpec::check`]) by `until`;
    /// `progress(done)` is called as devices come up.
    pub async fn start(
        spec: &FleetSpec,
        plan: Plan,
        until: Instant,
        progress: &mut (dyn FnMut(usize) + Send),
    ) -> Result<Fleet, String> {
        let t = Instant::now();
        let devices = match spec.mode {
            Mode::Dialed => start_dialed(spec, &plan, until, progress).await?,
            Mode::Register => start_registering(spec, &plan, until, progress).await?,
        };
        Ok(Fleet {
            devices,
            plan,
            took: t.elapsed(),
        })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Where each device listens (dialled) or sends from (registering), in device order.
    pub fn uris(&self) -> Vec<EndpointUri> {
        self.devices.iter().map(RunningDevice::uri).collect()
    }

    /// Requests the devices have served, all together.
    pub fn requests(&self) -> u64 {
        self.devices.iter().map(RunningDevice::requests).sum()
    }

    pub async fn stop(self) {
        for d in self.devices {
            d.stop().await;
        }
    }
}

async fn stop_all(devices: Vec<RunningDevice>) {
    for d in devices {
        d.stop().await;
    }
}

async fn start_dialed(
    spec: &FleetSpec,
    plan: &Plan,
    until: Instant,
    progress: &mut (dyn FnMut(usize) + Send),
) -> Result<Vec<RunningDevice>, String> {
    let mut devices = Vec::with_capacity(spec.count);
    for i in 0..spec.count {
        if Instant::now() > until {
            let started = devices.len();
            stop_all(devices).await;
            return Err(format!(
                "{started} of {} devices listening when the time bound ran out",
                spec.count
            ));
        }
        let cfg = device::config(spec, i, plan.role(i));
        match RunningDevice::start(&cfg).await {
            Ok(d) => devices.push(d),
            Err(e) => {
                stop_all(devices).await;
                return Err(format!("device {}: {e}", cfg.id));
            }
        }
        progress(i + 1);
    }
    Ok(devices)
}

async fn start_registering(
    spec: &FleetSpec,
    plan: &Plan,
    until: Instant,
    progress: &mut (dyn FnMut(usize) + Send),
) -> Result<Vec<RunningDevice>, String> {
    let slots = Arc::new(Semaphore::new(spec.in_flight));
    let mut starting = JoinSet::new();
    let mut devices = Vec::with_capacity(spec.count);
    let mut failures = Vec::new();
    let mut done = 0usize;
    for i in 0..spec.count {
        let remaining = until.saturating_duration_since(Instant::now());
        let Ok(Ok(slot)) = tokio::time::timeout(remaining, slots.clone().acquire_owned()).await
        else {
            failures.push(format!(
                "{} devices never started: time bound",
                spec.count - i
            ));
            break;
        };
        // Collect whoever finished meanwhile (progress, and no unbounded pile of results).
        while let Some(joined) = starting.try_join_next() {
            collect(joined, &mut devices, &mut failures);
            done += 1;
            progress(done);
        }
        let cfg = device::config(spec, i, plan.role(i));
        let patience = spec.register_patience.min(remaining);
        starting.spawn(async move {
            let t = Instant::now();
            let device = registering::with_local_ip(source_ip(i), RunningDevice::start(&cfg)).await;
            let device = match device {
                Ok(d) => d,
                Err(e) => return (None, Err(format!("{}: {e}", cfg.id))),
            };
            let registered = device.wait_registered(patience).await;
            drop(slot);
            let outcome = if registered {
                Ok(())
            } else {
                Err(format!(
                    "{}: not registered after {:?}",
                    cfg.id,
                    t.elapsed()
                ))
            };
            (Some(device), outcome)
        });
    }
    while let Some(joined) = starting.join_next().await {
        collect(joined, &mut devices, &mut failures);
        done += 1;
        progress(done);
    }
    if !failures.is_empty() {
        stop_all(devices).await;
        let shown: Vec<&String> = failures.iter().take(5).collect();
        return Err(format!(
            "{} of {} devices did not register; first: {shown:?}",
            failures.len(),
            spec.count
        ));
    }
    // Device order, whatever order they registered in.
    devices.sort_by_key(|d| d.addr().ip());
    Ok(devices)
}

type Started = (Option<RunningDevice>, Result<(), String>);

fn collect(
    joined: Result<Started, tokio::task::JoinError>,
    devices: &mut Vec<RunningDevice>,
    failures: &mut Vec<String>,
) {
    match joined {
        Ok((device, outcome)) => {
            devices.extend(device);
            if let Err(e) = outcome {
                failures.push(e);
            }
        }
        Err(e) => failures.push(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registering_device_gets_its_own_loopback_source_ip() {
        assert_eq!(source_ip(0).to_string(), "127.1.0.1");
        assert_eq!(source_ip(199).to_string(), "127.1.0.200");
        assert_eq!(source_ip(200).to_string(), "127.1.1.1");
        let ips: std::collections::BTreeSet<IpAddr> = (0..10_000).map(source_ip).collect();
        assert_eq!(ips.len(), 10_000);
        assert!(ips.iter().all(IpAddr::is_loopback));
    }
}
