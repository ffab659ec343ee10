//! The devices and groups the gateway knows (from config), and target resolution: a device
//! is a group of one.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{Config, DeviceConfig};
use crate::mo::TargetType;

/// A device as the verifier and south see it.
pub type DeviceRef = Arc<DeviceConfig>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("unknown device '{0}'")]
    UnknownDevice(String),
    #[error("unknown group '{0}'")]
    UnknownGroup(String),
    #[error("group '{0}' has no members")]
    EmptyGroup(String),
}

#[derive(Debug, Clone, Default)]
pub struct Inventory {
    devices: BTreeMap<String, DeviceRef>,
    groups: BTreeMap<String, Vec<DeviceRef>>,
}

impl Inventory {
    pub fn from_config(config: &Config) -> Inventory {
        let devices: BTreeMap<String, DeviceRef> = config
            .devices
            .iter()
            .map(|d| (d.id.clone(), Arc::new(d.clone())))
            .collect();
        let groups = config
            .groups
            .iter()
            .map(|g| {
                let members = g
                    .members
                    .iter()
                    .filter_map(|m| devices.get(m).cloned())
                    .collect();
                (g.id.clone(), members)
            })
            .collect();
        Inventory { devices, groups }
    }

    pub fn device(&self, id: &str) -> Option<&DeviceRef> {
        self.devices.get(id)
    }

    pub fn devices(&self) -> impl Iterator<Item = &DeviceRef> {
        self.devices.values()
    }

    pub fn group(&self, id: &str) -> Option<&[DeviceRef]> {
        self.groups.get(id).map(Vec::as_slice)
    }

    pub fn groups(&self) -> impl Iterator<Item = (&str, &[DeviceRef])> {
        self.groups.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The devices a target covers, in DeviceID order.
    pub fn resolve(
        &self,
        target_type: TargetType,
        target_id: &str,
    ) -> Result<Vec<DeviceRef>, ResolveError> {
        match target_type {
            TargetType::Device => self
                .devices
                .get(target_id)
                .map(|d| vec![d.clone()])
                .ok_or_else(|| ResolveError::UnknownDevice(target_id.to_owned())),
            TargetType::Group => {
                let members = self
                    .groups
                    .get(target_id)
                    .ok_or_else(|| ResolveError::UnknownGroup(target_id.to_owned()))?;
                if members.is_empty() {
                    return Err(ResolveError::EmptyGroup(target_id.to_owned()));
                }
                let mut members = members.clone();
                members.sort_by(|a, b| a.id.cmp(&b.id));
                Ok(members)
            }
        }
    }

    /// Whether a target covers a device (for the proxy).
    pub fn covers(&self, target_type: TargetType, target_id: &str, device_id: &str) -> bool {
        match target_type {
            TargetType::Device => target_id == device_id,
            TargetType::Group => self
                .groups
                .get(target_id)
                .is_some_and(|m| m.iter().any(|d| d.id == device_id)),
        }
    }
}
