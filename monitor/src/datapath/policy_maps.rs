//! The policy's kernel maps, written one generation at a time.
//!
//! Entries carry a generation (0 or 1) and the programs read only the one
//! `POLICY_STATE` names. A new policy is written whole into the other
//! generation, then one array update makes it the one in force: no packet
//! ever sees half of a policy, nor none. The generation left behind stays
//! as it was until the next switch clears it, long after any program that
//! read it has finished.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap};
use monitor_common::{
    lease_units, DeniedStats, FlowKey, PolicyIface, PolicyIfaceKey, PolicyMode, PolicyRuleKey,
    PolicyRuleValue, PolicyState, POLICY_SLOTS,
};

/// How long enforce mode holds without the agent renewing it. Renewed every
/// 2 s (the policy file check), so a live agent never lets it lapse and a
/// dead or wedged one stops dropping within 10 to 12 s.
pub const ENFORCE_LEASE: Duration = Duration::from_secs(10);

/// One generation of the policy maps' entries, as `policy::compile` makes
/// them from a policy and the containers; `generation` left 0 (the writer
/// sets it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    pub ifaces: BTreeMap<u32, PolicyIface>,
    pub rules: BTreeMap<PolicyRuleKey, PolicyRuleValue>,
}

pub struct PolicyMaps {
    state: Array<MapData, u32>,
    ifaces: HashMap<MapData, PolicyIfaceKey, PolicyIface>,
    rules: HashMap<MapData, PolicyRuleKey, PolicyRuleValue>,
    counts: PerCpuArray<MapData, u64>,
    denied: PerCpuHashMap<MapData, FlowKey, DeniedStats>,
    /// What each generation holds in the kernel.
    written: [Compiled; 2],
    active: u8,
}

/// One step of a switch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    RemoveIface(PolicyIfaceKey),
    RemoveRule(PolicyRuleKey),
    InsertIface(PolicyIfaceKey, PolicyIface),
    InsertRule(PolicyRuleKey, PolicyRuleValue),
    /// The generation the programs read from now on.
    Activate(u8),
}

/// The steps that put `next` in force when `written` is what each
/// generation holds and `active` the one in force: only the inactive
/// generation is touched until the last step.
pub fn plan(written: &[Compiled; 2], active: u8, next: &Compiled) -> Vec<Step> {
    let target = 1 - active;
    let old = &written[usize::from(target)];
    let iface_key = |ifindex: u32| PolicyIfaceKey {
        ifindex,
        generation: target,
        _pad: [0; 3],
    };
    let rule_key = |key: &PolicyRuleKey| PolicyRuleKey {
        generation: target,
        ..*key
    };
    let mut steps = Vec::new();
    for ifindex in old.ifaces.keys().filter(|i| !next.ifaces.contains_key(i)) {
        steps.push(Step::RemoveIface(iface_key(*ifindex)));
    }
    for key in old.rules.keys().filter(|k| !next.rules.contains_key(k)) {
        steps.push(Step::RemoveRule(rule_key(key)));
    }
    for (ifindex, iface) in &next.ifaces {
        if old.ifaces.get(ifindex) != Some(iface) {
            steps.push(Step::InsertIface(iface_key(*ifindex), *iface));
        }
    }
    for (key, value) in &next.rules {
        if old.rules.get(key) != Some(value) {
            steps.push(Step::InsertRule(rule_key(key), *value));
        }
    }
    steps.push(Step::Activate(target));
    steps
}

/// Packets that broke the policy under one counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotCounts {
    /// Passed: `alert`, or `deny` in observe mode, or spoofing observed.
    pub passed: u64,
    pub dropped: u64,
}

impl PolicyMaps {
    pub(super) fn new(
        state: Array<MapData, u32>,
        ifaces: HashMap<MapData, PolicyIfaceKey, PolicyIface>,
        rules: HashMap<MapData, PolicyRuleKey, PolicyRuleValue>,
        counts: PerCpuArray<MapData, u64>,
        denied: PerCpuHashMap<MapData, FlowKey, DeniedStats>,
    ) -> Self {
        Self {
            state,
            ifaces,
            rules,
            counts,
            denied,
            written: Default::default(),
            active: 0,
        }
    }

    /// Puts `next` in force under `mode`; `Ok(false)` when it already was.
    /// On an error the policy in force stays in force.
    pub fn switch(&mut self, next: &Compiled, mode: PolicyMode) -> anyhow::Result<bool> {
        let in_force = self
            .state
            .get(&(PolicyState::Mode as u32), 0)
            .context("reading the policy mode")?;
        if in_force == mode as u32 && self.written[usize::from(self.active)] == *next {
            return Ok(false);
        }
        for step in plan(&self.written, self.active, next) {
            self.apply(&step)
                .with_context(|| format!("writing the policy maps ({step:?})"))?;
            if let Step::Activate(generation) = step {
                if mode == PolicyMode::Enforce {
                    self.renew_lease()?;
                }
                self.state
                    .set(PolicyState::Mode as u32, mode as u32, 0)
                    .context("setting the policy mode")?;
                self.active = generation;
            }
        }
        Ok(true)
    }

    /// Extends enforce mode by [`ENFORCE_LEASE`] from now.
    pub fn renew_lease(&mut self) -> anyhow::Result<()> {
        let until = crate::clock::monotonic_ns().saturating_add(ENFORCE_LEASE.as_nanos() as u64);
        self.state
            .set(PolicyState::EnforceUntil as u32, lease_units(until), 0)
            .context("renewing the enforce lease")
    }

    /// One step, and the record of what the kernel holds kept exact, so a
    /// failed switch is undone by the next.
    fn apply(&mut self, step: &Step) -> anyhow::Result<()> {
        match step {
            Step::RemoveIface(key) => {
                self.ifaces.remove(key)?;
                self.written[usize::from(key.generation)]
                    .ifaces
                    .remove(&key.ifindex);
            }
            Step::RemoveRule(key) => {
                self.rules.remove(key)?;
                let stored = PolicyRuleKey {
                    generation: 0,
                    ..*key
                };
                self.written[usize::from(key.generation)]
                    .rules
                    .remove(&stored);
            }
            Step::InsertIface(key, iface) => {
                self.ifaces.insert(key, iface, 0)?;
                self.written[usize::from(key.generation)]
                    .ifaces
                    .insert(key.ifindex, *iface);
            }
            Step::InsertRule(key, value) => {
                self.rules.insert(key, value, 0)?;
                let stored = PolicyRuleKey {
                    generation: 0,
                    ..*key
                };
                self.written[usize::from(key.generation)]
                    .rules
                    .insert(stored, *value);
            }
            Step::Activate(generation) => {
                self.state
                    .set(PolicyState::Generation as u32, u32::from(*generation), 0)?;
            }
        }
        Ok(())
    }

    /// The generation in force (0 or 1).
    pub fn generation(&self) -> u8 {
        self.active
    }

    /// Totals of each slot asked for, summed over CPUs.
    pub fn counts(
        &self,
        slots: impl Iterator<Item = u32>,
    ) -> anyhow::Result<BTreeMap<u32, SlotCounts>> {
        let sum =
            |index: u32| -> anyhow::Result<u64> { Ok(self.counts.get(&index, 0)?.iter().sum()) };
        slots
            .filter(|slot| *slot < POLICY_SLOTS)
            .map(|slot| {
                Ok((
                    slot,
                    SlotCounts {
                        passed: sum(slot)?,
                        dropped: sum(POLICY_SLOTS + slot)?,
                    },
                ))
            })
            .collect()
    }

    /// The flows that broke the policy since the last call, summed over
    /// CPUs, and removed from the map.
    pub fn drain_denied(&mut self) -> anyhow::Result<Vec<(FlowKey, DeniedStats)>> {
        let mut drained = Vec::new();
        for entry in self.denied.iter() {
            let (key, per_cpu) = entry.context("reading the denied flows")?;
            drained.push((key, merge(per_cpu.iter())));
        }
        for (key, _) in &drained {
            // Gone already (evicted) is fine.
            let _ = self.denied.remove(key);
        }
        drained.retain(|(_, stats)| stats.packets > 0);
        Ok(drained)
    }
}

fn merge<'a>(per_cpu: impl Iterator<Item = &'a DeniedStats>) -> DeniedStats {
    per_cpu.fold(DeniedStats::default(), |mut total, cpu| {
        if cpu.packets == 0 {
            return total;
        }
        total.packets += cpu.packets;
        total.dropped += cpu.dropped;
        if total.first_seen_ns == 0 || cpu.first_seen_ns < total.first_seen_ns {
            total.first_seen_ns = cpu.first_seen_ns;
        }
        if cpu.last_seen_ns >= total.last_seen_ns {
            total.last_seen_ns = cpu.last_seen_ns;
            total.slot = cpu.slot;
        }
        total.ifindex = cpu.ifindex;
        total
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn compiled(ifindexes: &[u32], ports: &[u16]) -> Compiled {
        let mut c = Compiled::default();
        for ifindex in ifindexes {
            c.ifaces.insert(
                *ifindex,
                PolicyIface {
                    ipv4: [0; 16],
                    ipv6: [0; 16],
                    mac: [2, 0, 0, 0, 0, *ifindex as u8],
                    _pad: [0; 2],
                },
            );
            for port in ports {
                c.rules.insert(
                    PolicyRuleKey {
                        ifindex: *ifindex,
                        generation: 0,
                        protocol: 6,
                        dst_port: *port,
                        dst_addr: [1; 16],
                    },
                    PolicyRuleValue {
                        slot: u32::from(*port),
                        action: 0,
                        _pad: [0; 3],
                    },
                );
            }
        }
        c
    }

    /// A model of the kernel maps: (generation, entry) sets.
    #[derive(Default)]
    struct Kernel {
        ifaces: BTreeSet<(u8, u32, [u8; 6])>,
        rules: BTreeSet<(u8, PolicyRuleKey, u32)>,
        active: u8,
    }

    impl Kernel {
        fn step(&mut self, step: &Step) {
            match step {
                Step::RemoveIface(k) => self
                    .ifaces
                    .retain(|(g, i, _)| (*g, *i) != (k.generation, k.ifindex)),
                Step::RemoveRule(k) => self.rules.retain(|(g, r, _)| {
                    (*g, *r)
                        != (
                            k.generation,
                            PolicyRuleKey {
                                generation: 0,
                                ..*k
                            },
                        )
                }),
                Step::InsertIface(k, v) => {
                    self.ifaces
                        .retain(|(g, i, _)| (*g, *i) != (k.generation, k.ifindex));
                    self.ifaces.insert((k.generation, k.ifindex, v.mac));
                }
                Step::InsertRule(k, v) => {
                    let stored = PolicyRuleKey {
                        generation: 0,
                        ..*k
                    };
                    self.rules
                        .retain(|(g, r, _)| (*g, *r) != (k.generation, stored));
                    self.rules.insert((k.generation, stored, v.slot));
                }
                Step::Activate(g) => self.active = *g,
            }
        }

        /// What the programs see now.
        fn in_force(&self) -> Compiled {
            let mut c = Compiled::default();
            for (g, ifindex, mac) in &self.ifaces {
                if *g == self.active {
                    c.ifaces.insert(
                        *ifindex,
                        PolicyIface {
                            ipv4: [0; 16],
                            ipv6: [0; 16],
                            mac: *mac,
                            _pad: [0; 2],
                        },
                    );
                }
            }
            for (g, key, slot) in &self.rules {
                if *g == self.active {
                    c.rules.insert(
                        *key,
                        PolicyRuleValue {
                            slot: *slot,
                            action: 0,
                            _pad: [0; 3],
                        },
                    );
                }
            }
            c
        }
    }

    #[test]
    fn every_moment_of_a_switch_shows_one_whole_policy() {
        // Containers come and go, rules change, and back again.
        let policies = [
            compiled(&[], &[]),
            compiled(&[3, 4], &[80]),
            compiled(&[3, 5], &[80, 443]),
            compiled(&[5], &[443]),
            compiled(&[3, 4], &[80]),
            compiled(&[], &[]),
        ];
        let mut kernel = Kernel::default();
        let mut written: [Compiled; 2] = Default::default();
        for pair in policies.windows(2) {
            let (before, after) = (&pair[0], &pair[1]);
            assert_eq!(kernel.in_force(), *before);
            let steps = plan(&written, kernel.active, after);
            assert!(matches!(steps.last(), Some(Step::Activate(_))));
            for step in &steps {
                kernel.step(step);
                let seen = kernel.in_force();
                assert!(
                    seen == *before || seen == *after,
                    "a mixed policy after {step:?}"
                );
            }
            assert_eq!(kernel.in_force(), *after);
            written[usize::from(kernel.active)] = after.clone();
        }
    }
}
