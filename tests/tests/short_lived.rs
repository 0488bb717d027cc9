//! Nothing unseen of short-lived containers: 200 `docker run --rm`
//! containers, each pinging a neighbour exactly N times as its first
//! action and exiting, are each counted at their own veth (the programs are
//! attached when the kernel enslaves the veth, before the container's
//! process starts) and named after themselves in the API and the metrics
//! after they are gone (identities are kept for `--series-grace`), however
//! late the engine answers. The attach latency of their veths is printed
//! (p50, p99, from the log and from `crossmon_attach_latency_seconds`).
//! The agent holds only the documented capabilities.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use integration_tests::{
    agent::{get, get_json, wait_until, Agent},
    caps,
    docker::{docker, docker_ready, unique, DockerNetwork, IMAGE},
    exposition::{parse, scrape, select, sum, Sample},
};
use monitor::datapath::preflight::CAPABILITIES;

const CONTAINERS: usize = 200;
/// Echo requests each container sends, one every `INTERVAL` seconds: a
/// container lives about a second. Its veth is named by the namespace its
/// peer moved into (the container's process's cgroup names the
/// container, the engine's events its name), not by an inspection the
/// engine may answer after the container is gone. That needs a process
/// of the container alive when the agent reads the veth's notification:
/// with the inspection at start switched off, all 200 were named on a host
/// loaded past 13 on 2 cores; with `INTERVAL` at 0.02 as well (containers
/// living a tenth of a second, less than the agent's lag there), 106 of
/// 200 were not.
const PINGS: u64 = 5;
const INTERVAL: &str = "0.2";
/// Containers started at once.
const WORKERS: usize = 8;

/// The network's `10.X.0.0/16`, X by process: an engine that leaked an
/// endpoint of an earlier run keeps that run's network (and subnet).
fn subnet() -> u32 {
    100 + std::process::id() % 100
}

/// One address per container: flows are keyed by addresses, so senders
/// that reused one address within the idle timeout would share one flow.
fn sender_ip(i: usize) -> String {
    format!("10.{}.{}.{}", subnet(), 1 + i / 250, 1 + i % 250)
}

#[test]
fn two_hundred_short_lived_containers_are_counted_at_their_own_veth_and_named() {
    docker_ready();
    let net = DockerNetwork::create(
        "short",
        &[
            "--subnet",
            &format!("10.{}.0.0/16", subnet()),
            "--ip-range",
            &format!("10.{}.0.0/24", subnet()),
        ],
    )
    .expect("network");
    // With the documented capabilities only: finding a veth's container
    // by its namespace needs no more.
    let documented: Vec<&str> = CAPABILITIES.iter().map(|cap| cap.name).collect();
    let setpriv = caps::setpriv_only(&documented);
    let wrapper: Vec<&str> = setpriv.iter().map(String::as_str).collect();
    let agent = Agent::start_under(&wrapper, &[]);
    wait_until("the engine connected", || {
        get_json(agent.addr, "/healthz")["docker_up"] == true
    });
    let receiver = net.run("receiver");
    let receiver_ip = receiver.ip(&net.name).expect("receiver's address");
    agent.wait_attached(&[&receiver.name]);

    let names: Vec<String> = (0..CONTAINERS).map(|_| unique("brief")).collect();
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(name) = names.get(i) else {
                    return;
                };
                let count = PINGS.to_string();
                docker(&[
                    "run",
                    "--rm",
                    "--name",
                    name,
                    "--network",
                    &net.name,
                    "--ip",
                    &sender_ip(i),
                    IMAGE,
                    "ping",
                    "-q",
                    "-c",
                    &count,
                    "-i",
                    INTERVAL,
                    "-W",
                    "2",
                    &receiver_ip,
                ])
                .unwrap_or_else(|err| panic!("{name}: {err:#}"));
            });
        }
    });
    eprintln!("{CONTAINERS} containers ran in {:?}", started.elapsed());

    // Every sender's echo requests: one flow, counted where they entered
    // the host (the sender's veth: `from_container`), named after it.
    let expected: BTreeMap<String, (String, String, u64)> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            (
                sender_ip(i),
                (name.clone(), "from_container".to_owned(), PINGS),
            )
        })
        .collect();
    let mut seen = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen != expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        // On a loaded host a read of every flow can outlast the harness's
        // 5 s: that read is retried, not failed.
        let Some((200, body)) = get(agent.addr, "/api/v1/flows") else {
            continue;
        };
        seen = serde_json::from_str::<serde_json::Value>(&body)
            .expect("JSON flows")
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["protocol"] == "icmp" && f["dst_ip"] == receiver_ip.as_str())
            .filter_map(|f| {
                Some((
                    f["src_ip"].as_str()?.to_owned(),
                    (
                        f["src"]["name"].as_str().unwrap_or("?").to_owned(),
                        f["direction"].as_str()?.to_owned(),
                        f["packets"].as_u64()?,
                    ),
                ))
            })
            .collect();
    }
    let wrong: Vec<_> = expected
        .iter()
        .filter(|(ip, want)| seen.get(*ip) != Some(want))
        .map(|(ip, want)| (ip, want, seen.get(ip)))
        .collect();
    if !wrong.is_empty() {
        // What the agent logged of them (all of it with RUST_LOG=debug).
        let log = agent.log();
        for line in log.lines().filter(|line| {
            line.contains("inspect") || line.contains("probe") || line.contains("Docker")
        }) {
            eprintln!("{line}");
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {CONTAINERS} senders not counted at their veth and named: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(8)]
    );
    let samples = parse(&scrape(agent.addr));
    let wrong: Vec<(&String, f64)> = names
        .iter()
        .map(|name| {
            let counted = sum(
                &samples,
                "crossmon_flow_packets_total",
                &[
                    ("source", name),
                    ("destination", &receiver.name),
                    ("protocol", "icmp"),
                ],
            );
            (name, counted)
        })
        .filter(|(_, counted)| *counted != PINGS as f64)
        .collect();
    assert!(wrong.is_empty(), "series not at {PINGS}: {wrong:?}");
    // The test's veths were attached before anything crossed them. The
    // metric sums every bridge's: on a shared engine also others' veths,
    // some found by the agent's first listing, used since.
    let output = docker(&["network", "inspect", "-f", "{{.Id}}", &net.name]).expect("network id");
    let id = String::from_utf8_lossy(&output.stdout);
    let bridge = format!("bridge=br-{}", id.trim().get(..12).expect("a network id"));
    let log = agent.log();
    let late: Vec<&str> = log
        .lines()
        .filter(|line| {
            line.contains(&bridge)
                && line.contains("latency_us=")
                && field(line, "unattached_packets=").is_none_or(|packets| packets != 0)
        })
        .collect();
    assert!(
        late.is_empty(),
        "packets crossed a veth before it was attached: {late:?}"
    );
    eprintln!(
        "crossmon_unattached_packets_total {} (veths found at start included)",
        sum(&samples, "crossmon_unattached_packets_total", &[])
    );

    let mut latencies = attach_latencies_us(&log, &bridge);
    // A veth a listing attached first (its notification came while the
    // follower was busy) has no latency: most have one.
    assert!(!latencies.is_empty(), "no attach logged a latency");
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "attach latency over {} veths: p50 {} us, p99 {} us, max {} us",
        latencies.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
    eprintln!(
        "crossmon_attach_latency_seconds (every veth the agent attached at its notification): \
         p50 <= {} s, p99 <= {} s of {}",
        bucket_quantile(&samples, 0.5),
        bucket_quantile(&samples, 0.99),
        sum(&samples, "crossmon_attach_latency_seconds_count", &[])
    );
}

/// The upper bound of the histogram bucket holding quantile `q`.
fn bucket_quantile(samples: &[Sample], q: f64) -> String {
    let total = sum(samples, "crossmon_attach_latency_seconds_count", &[]);
    let mut buckets: Vec<(f64, &str, f64)> =
        select(samples, "crossmon_attach_latency_seconds_bucket", &[])
            .filter_map(|s| {
                let le = s.labels.get("le")?;
                Some((le.parse().ok()?, le.as_str(), s.value))
            })
            .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
        .iter()
        .find(|(_, _, count)| *count >= q * total)
        .map_or("?".to_owned(), |(_, le, _)| (*le).to_owned())
}

/// `latency_us=N` of every `attached` line of the agent's log on `bridge`.
fn attach_latencies_us(log: &str, bridge: &str) -> Vec<u64> {
    log.lines()
        .filter(|line| line.contains("attached") && line.contains(bridge))
        .filter_map(|line| field(line, "latency_us="))
        .collect()
}

/// The number after `name` (`latency_us=`) in a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    let value = line.split(name).nth(1)?;
    value.split_whitespace().next()?.parse().ok()
}
