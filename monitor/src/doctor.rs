//! `crossmon doctor`: can crossmon run here, and what would it see? One
//! line per check; exit status 0 only when every check passes.

use std::collections::HashSet;

use crate::{
    datapath::{self, preflight, DatapathConfig},
    docker::{self, inventory::ProbeCache, EngineInfo, Inventory},
    links,
};

/// Outcome of one check.
enum Verdict {
    Ok,
    /// Works, but the operator should know.
    Note,
    Fail,
}

struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, verdict: Verdict, check: &str, detail: impl std::fmt::Display) {
        let mark = match verdict {
            Verdict::Ok => "ok  ",
            Verdict::Note => "note",
            Verdict::Fail => {
                self.failed = true;
                "FAIL"
            }
        };
        println!("{mark} {check:<12} {detail}");
    }
}

/// Runs every check and prints them; returns whether all passed.
pub async fn run(docker_host: Option<&str>) -> bool {
    let mut report = Report { failed: false };
    let machine = preflight::Report::gather();
    let (major, minor, _) = preflight::MIN_KERNEL;
    match (machine.kernel, machine.kernel_blocker()) {
        (_, Some(reason)) => report.line(Verdict::Fail, "kernel", reason),
        (Some(kernel), None) => report.line(
            Verdict::Ok,
            "kernel",
            format!("{kernel} (needs {major}.{minor}+)"),
        ),
        (None, None) => report.line(Verdict::Fail, "kernel", "cannot read the kernel version"),
    }
    if machine.btf {
        report.line(Verdict::Ok, "btf", "/sys/kernel/btf/vmlinux present");
    } else {
        report.line(
            Verdict::Note,
            "btf",
            "no kernel BTF; crossmon's programs do not need it",
        );
    }
    match machine.missing_capability() {
        Some(cap) => report.line(Verdict::Fail, "capabilities", cap.missing()),
        None => report.line(Verdict::Ok, "capabilities", machine.capabilities_used()),
    }
    let enforce_ends = format!(
        "--enforce drops only while the agent renews its lease: within {} s of the agent's death the programs go back to observing",
        datapath::ENFORCE_LEASE.as_secs() + 2
    );
    if machine.tcx {
        report.line(
            Verdict::Ok,
            "attach",
            "TCX links (kernel 6.6+), detached with the process",
        );
    } else {
        report.line(
            Verdict::Ok,
            "attach",
            "legacy clsact filters (no TCX before kernel 6.6): they outlive a killed agent until its next start removes them",
        );
    }
    let started = std::time::Instant::now();
    match datapath::load(&DatapathConfig::default()) {
        Ok(loaded) => {
            report.line(
                Verdict::Ok,
                "programs",
                format!(
                    "loaded and accepted by the verifier in {} ms ({})",
                    started.elapsed().as_millis(),
                    verified(&loaded.programs)
                ),
            );
            report.line(Verdict::Ok, "expiry", loaded.flows.expiry().describe());
            match &loaded.tick_clock {
                Ok(clock) => report.line(
                    Verdict::Ok,
                    "clock",
                    format!(
                        "timer tick measured ({} Hz): a flow's latest packet read from jiffies",
                        1_000_000_000 / clock.tick_ns
                    ),
                ),
                Err(reason) => report.line(
                    Verdict::Note,
                    "clock",
                    format!("{reason}: the programs read the exact clock at every packet"),
                ),
            }
            report.line(Verdict::Ok, "enforce", enforce_ends);
            match &loaded.retransmits_status {
                Ok(()) => report.line(
                    Verdict::Ok,
                    "tracepoints",
                    "tcp:tcp_retransmit_skb attached: retransmissions counted by flow (CAP_BPF and CAP_PERFMON, tracefs)",
                ),
                Err(reason) => report.line(
                    Verdict::Note,
                    "tracepoints",
                    format!("no retransmission counts: {reason}"),
                ),
            }
            match &loaded.drop_reasons {
                Ok(reasons) if reasons.is_empty() => report.line(
                    Verdict::Note,
                    "drops",
                    "skb:kfree_skb attached; this kernel gives no drop reasons (5.17+ does): drops count as unknown, Docker isolation still recognised",
                ),
                Ok(reasons) => report.line(
                    Verdict::Ok,
                    "drops",
                    format!("skb:kfree_skb attached, {} drop reasons named", reasons.len()),
                ),
                Err(reason) => report.line(
                    Verdict::Note,
                    "drops",
                    format!("dropped packets not counted: {reason}"),
                ),
            }
        }
        Err(err) => report.line(Verdict::Fail, "programs", format!("{err:#}")),
    }
    if bpffs_mounted() {
        report.line(Verdict::Ok, "bpffs", "/sys/fs/bpf mounted");
    } else {
        report.line(
            Verdict::Note,
            "bpffs",
            "/sys/fs/bpf not mounted; crossmon pins nothing, so not needed",
        );
    }
    docker_checks(&mut report, docker_host).await;
    !report.failed
}

async fn docker_checks(report: &mut Report, host: Option<&str>) {
    let docker = match docker::connect(host).await {
        Ok(docker) => docker,
        Err(err) => {
            report.line(
                Verdict::Fail,
                "docker",
                format!(
                    "{err:#} (is dockerd running? --docker-host or DOCKER_HOST to point elsewhere)"
                ),
            );
            return;
        }
    };
    let synced = match EngineInfo::of(&docker).await {
        Ok(engine) => Inventory::sync(&docker, &engine, &mut ProbeCache::default()).await,
        Err(err) => Err(err),
    };
    let inventory = match synced {
        Ok(inventory) => inventory,
        Err(err) => {
            report.line(Verdict::Fail, "docker", format!("{err:#}"));
            return;
        }
    };
    report.line(
        Verdict::Ok,
        "docker",
        format!(
            "engine {} (API {}), read-only access works",
            inventory.engine.version, inventory.engine.api_version
        ),
    );
    let bridge_veths: HashSet<u32> = match links::connect() {
        Ok(handle) => links::bridge_veths(&handle)
            .await
            .map(|ports| ports.into_iter().map(|p| p.ifindex).collect())
            .unwrap_or_default(),
        Err(_) => HashSet::new(),
    };
    // As it would be once attached: a veth on a bridge is watched, and so
    // is an interface the inventory tagged with another namespace (an
    // overlay's sandbox, a macvlan or ipvlan container's own).
    let watchable = |i: u32| bridge_veths.contains(&i) || i >= monitor_common::veth_id(1, 0);
    let (mut attachable, mut other) = (0, Vec::new());
    for container in inventory.containers.values() {
        let watched = container
            .endpoints
            .iter()
            .any(|e| e.host_ifindex.is_some_and(watchable));
        match container.unwatched(&inventory.networks, watchable) {
            None if watched => attachable += 1,
            reason => other.push(format!(
                "{} ({})",
                container.name,
                reason.unwrap_or(&container.network_mode)
            )),
        }
    }
    let detail = format!(
        "{} running, {attachable} can be watched",
        inventory.containers.len()
    );
    if other.is_empty() {
        report.line(Verdict::Ok, "containers", detail);
    } else {
        report.line(
            Verdict::Note,
            "containers",
            format!("{detail}; not watched: {}", other.join(", ")),
        );
    }
}

/// "from_container: 1234 instructions verified, ..." where the kernel says.
fn verified(programs: &datapath::Programs) -> String {
    match programs.run_stats() {
        Ok(stats) => stats
            .iter()
            .map(|program| match program.verified_instructions {
                Some(count) => format!("{}: {count} instructions verified", program.name),
                None => format!(
                    "{}: verified instructions not reported before 5.16",
                    program.name
                ),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Err(err) => format!("program info unreadable: {err:#}"),
    }
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts
            .lines()
            .any(|line| line.split_whitespace().nth(2) == Some("bpf"))
    })
}
