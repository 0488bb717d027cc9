//! The policy the agent enforces: recompiled and switched atomically when
//! containers come and go or the file changes; a file that became invalid
//! leaves the previous policy in force.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use monitor_common::{DeniedStats, FlowKey, PolicyMode};

use crate::sync::lock;
use tokio::signal::unix::SignalKind;

use super::{
    compile::{compile, Compiled, SlotBook},
    Policy,
};
use crate::{
    datapath::{PolicyMaps, SlotCounts},
    docker::Inventory,
};

/// How often the file's modification time is looked at.
const FILE_CHECK: Duration = Duration::from_secs(2);

/// `--policy FILE [--enforce]`, the file read and checked at start.
#[derive(Clone, Debug)]
pub struct PolicyConfig {
    pub path: PathBuf,
    pub enforce: bool,
    pub policy: Policy,
}

impl PolicyConfig {
    pub fn mode(&self) -> PolicyMode {
        if self.enforce {
            PolicyMode::Enforce
        } else {
            PolicyMode::Observe
        }
    }

    pub fn mode_name(&self) -> &'static str {
        if self.enforce {
            "enforce"
        } else {
            "observe"
        }
    }
}

pub struct PolicyInForce {
    pub config: PolicyConfig,
    slots: SlotBook,
    maps: PolicyMaps,
    inventory: Option<Arc<Inventory>>,
    modified: Option<SystemTime>,
    /// The file on disk is the policy in force (false after a bad edit).
    file_valid: bool,
}

/// What `/metrics` shows of the policy.
pub struct PolicySnapshot {
    pub mode: &'static str,
    pub file: String,
    pub file_valid: bool,
    pub counts: Vec<(String, SlotCounts)>,
}

impl PolicyInForce {
    /// Puts the policy in force with no container yet: until the engine
    /// answers, nothing is attached either.
    pub fn start(config: PolicyConfig, maps: PolicyMaps) -> anyhow::Result<Self> {
        let modified = modified(&config);
        let mut in_force = Self {
            config,
            slots: SlotBook::default(),
            maps,
            inventory: None,
            modified,
            file_valid: true,
        };
        in_force.apply()?;
        Ok(in_force)
    }

    /// Containers changed: before the agent attaches to a new container's
    /// veth, its entries are in force.
    pub fn on_inventory(&mut self, inventory: Option<Arc<Inventory>>) {
        self.inventory = inventory;
        if let Err(err) = self.apply() {
            tracing::error!("the policy could not follow the containers: {err:#}; the previous entries stay in force");
        }
    }

    /// Reads the file again (SIGHUP, or it changed on disk).
    pub fn reload(&mut self, why: &str) {
        self.modified = modified(&self.config);
        match Policy::load(&self.config.path) {
            Ok(policy) => {
                self.file_valid = true;
                if policy == self.config.policy {
                    tracing::info!("policy reloaded ({why}): unchanged");
                    return;
                }
                let previous = std::mem::replace(&mut self.config.policy, policy);
                match self.apply() {
                    Ok(()) => tracing::info!(
                        "policy reloaded ({why}): {} rules, generation {} in force",
                        self.config.policy.rules.len(),
                        self.maps.generation()
                    ),
                    Err(err) => {
                        self.config.policy = previous;
                        tracing::error!("policy reloaded ({why}) but not applied: {err:#}; the previous policy stays in force");
                    }
                }
            }
            Err(err) => {
                self.file_valid = false;
                tracing::error!(
                    "policy not reloaded ({why}): {err:#}; the previous policy stays in force"
                );
            }
        }
    }

    /// Keeps enforce mode in force (see [`crate::datapath::ENFORCE_LEASE`]).
    pub fn renew_lease(&mut self) {
        if self.config.enforce {
            if let Err(err) = self.maps.renew_lease() {
                tracing::error!("{err:#}: enforcement stops when the lease runs out");
            }
        }
    }

    fn reload_if_changed(&mut self) {
        if modified(&self.config) != self.modified {
            self.reload("the file changed");
        }
    }

    fn apply(&mut self) -> anyhow::Result<()> {
        let compiled = match &self.inventory {
            Some(inventory) => compile(&self.config.policy, inventory, &mut self.slots),
            None => Compiled::default(),
        };
        if self.maps.switch(&compiled, self.config.mode())? {
            tracing::debug!(
                generation = self.maps.generation(),
                interfaces = compiled.ifaces.len(),
                entries = compiled.rules.len(),
                "policy generation switched"
            );
        }
        Ok(())
    }

    /// Flows that broke the policy since the last call.
    pub fn drain_denied(&mut self) -> Vec<(FlowKey, DeniedStats)> {
        self.maps.drain_denied().unwrap_or_else(|err| {
            tracing::warn!("reading the policy's denied flows: {err:#}");
            Vec::new()
        })
    }

    /// The counter name of a slot.
    pub fn slot_name(&self, slot: u32) -> String {
        self.slots.name_of(slot).unwrap_or("other").to_owned()
    }

    pub fn snapshot(&self) -> PolicySnapshot {
        let counts = self
            .maps
            .counts(self.slots.names().map(|(slot, _)| slot))
            .unwrap_or_else(|err| {
                tracing::warn!("reading the policy counters: {err:#}");
                Default::default()
            });
        PolicySnapshot {
            mode: self.config.mode_name(),
            file: self.config.path.display().to_string(),
            file_valid: self.file_valid,
            counts: self
                .slots
                .names()
                .filter_map(|(slot, name)| Some((name.to_owned(), *counts.get(&slot)?)))
                .collect(),
        }
    }
}

fn modified(config: &PolicyConfig) -> Option<SystemTime> {
    std::fs::metadata(&config.path)
        .and_then(|m| m.modified())
        .ok()
}

/// Reloads on SIGHUP and when the file's modification time changes;
/// renews the enforce lease on the same tick.
pub async fn follow_file(policy: Arc<Mutex<PolicyInForce>>) -> anyhow::Result<()> {
    let mut hangup = tokio::signal::unix::signal(SignalKind::hangup())?;
    let mut ticker = tokio::time::interval(FILE_CHECK);
    loop {
        tokio::select! {
            _ = hangup.recv() => lock(&policy).reload("SIGHUP"),
            _ = ticker.tick() => {
                let mut policy = lock(&policy);
                policy.renew_lease();
                policy.reload_if_changed();
            }
        }
    }
}
