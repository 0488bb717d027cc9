//! The fault matrix: crossmon killed, its engine gone or restarted,
//! hundreds of containers coming and going, its flow map and ring buffer
//! overrun, its endpoint under a crowd of scrapers. Each test says what the
//! fault costs and proves the agent gets back to exact counting.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr, UdpSocket},
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use integration_tests::{
    agent::{
        free_port, get, get_json, our_programs_on, wait_until, wait_within, Agent, OUR_PROGRAMS,
    },
    docker::{docker_ready, Container, DockerNetwork, IMAGE},
    engine::NamespacedEngine,
    exposition::{parse, samples_when, scrape, select, sum},
    require_root,
    scratch::Scratch,
    tc_hooks::{self, HookedProgram},
    traffic, Host, TestNet,
};
use serde_json::Value;

fn attached(c: &Value) -> bool {
    c["attached"] == true
}

/// The host-side veth of `name`'s only network, once it is attached.
fn veth_of(agent: &Agent, name: &str) -> String {
    agent.container(name, attached)["networks"][0]["interface"]
        .as_str()
        .expect("an interface name")
        .to_owned()
}

/// `from_container` on ingress and `to_container` on egress, each once.
fn is_one_pair(programs: &[HookedProgram]) -> bool {
    let mut seen: Vec<(&str, &str)> = programs
        .iter()
        .map(|p| (p.name.as_str(), p.direction))
        .collect();
    seen.sort_unstable();
    seen == [("from_container", "ingress"), ("to_container", "egress")]
}

/// An agent killed with SIGKILL while two containers ping each other, then
/// a new one: what the dead one left on the interfaces, and the new one's
/// programs on the two veths.
struct KilledAndRestarted {
    left_behind: Vec<(String, Vec<HookedProgram>)>,
    veths: [String; 2],
    restarted: Agent,
    killed_programs: BTreeSet<u32>,
    _containers: [Container; 2],
    _net: DockerNetwork,
}

fn kill_under_traffic_then_restart(extra: &[&str]) -> KilledAndRestarted {
    docker_ready();
    let net = DockerNetwork::create("kill", &[]).expect("network");
    let (a, b) = (net.run("a"), net.run("b"));
    let agent = Agent::start(extra);
    let veths = [veth_of(&agent, &a.name), veth_of(&agent, &b.name)];
    let killed_programs = agent.programs();
    assert_eq!(killed_programs.len(), 2, "the agent holds its two programs");
    let target = b.ip(&net.name).expect("ip");
    std::thread::scope(|scope| {
        let pings = scope.spawn(|| a.exec(&["ping", "-q", "-c", "20", "-i", "0.1", &target]));
        std::thread::sleep(Duration::from_millis(700));
        agent.kill();
        // A dead monitor never stands in the way: every echo is answered.
        pings
            .join()
            .expect("ping thread")
            .expect("every ping answered");
    });
    let left_behind = tc_hooks::where_attached(&killed_programs);

    let restarted = Agent::start(extra);
    restarted.wait_attached(&[&a.name, &b.name]);
    let fresh = restarted.programs();
    for veth in &veths {
        let ours: Vec<HookedProgram> = tc_hooks::programs_on(veth)
            .into_iter()
            .filter(|p| fresh.contains(&p.id))
            .collect();
        assert!(is_one_pair(&ours), "{veth} carries {ours:?}");
    }
    assert_eq!(
        tc_hooks::where_attached(&killed_programs),
        Vec::new(),
        "nothing of the killed agent is left once the new one attached"
    );

    // Counting resumes, exactly, in the new agent.
    a.ping(&target, 5);
    for (src, dst) in [(&a.name, &b.name), (&b.name, &a.name)] {
        assert_eq!(restarted.named_flow(src, dst, "icmp", 5)["bytes"], 5 * 84);
    }
    KilledAndRestarted {
        left_behind,
        veths,
        restarted,
        killed_programs,
        _containers: [a, b],
        _net: net,
    }
}

#[test]
fn a_killed_agent_leaves_no_tcx_link_and_a_new_one_counts_exactly() {
    let run = kill_under_traffic_then_restart(&[]);
    assert_eq!(
        run.left_behind,
        Vec::new(),
        "TCX links of programs {:?} die with the process",
        run.killed_programs
    );
    let (status, log) = run.restarted.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn clsact_filters_of_a_killed_agent_are_removed_by_the_next_one_and_counting_is_exact() {
    let run = kill_under_traffic_then_restart(&["--attach-mode", "clsact"]);
    // What a crash costs in clsact mode: the filters stay, running into
    // maps no one reads, until the next agent removes them.
    for veth in &run.veths {
        let left = run
            .left_behind
            .iter()
            .find(|(interface, _)| interface == veth)
            .map(|(_, programs)| programs.clone())
            .unwrap_or_default();
        assert!(
            is_one_pair(&left) && left.iter().all(|p| p.clsact),
            "{veth}: {left:?}"
        );
        // No duplicate: exactly one clsact pair of ours, the new agent's.
        let filters: Vec<HookedProgram> = tc_hooks::programs_on(veth)
            .into_iter()
            .filter(|p| p.clsact && OUR_PROGRAMS.contains(&p.name.as_str()))
            .collect();
        assert!(is_one_pair(&filters), "{veth}: {filters:?}");
    }
    let (status, log) = run.restarted.stop();
    assert!(status.success(), "{log}");
    for veth in &run.veths {
        for program in ["from_container", "to_container"] {
            assert!(
                log.lines()
                    .any(|line| line.contains("a previous crossmon left")
                        && line.contains(veth.as_str())
                        && line.contains(program)),
                "no line about {program} on {veth}:\n{log}"
            );
        }
        // The log says why a detach failed (seen once, not reproduced).
        assert_eq!(
            our_programs_on(veth),
            Vec::<String>::new(),
            "{veth} after the agent stopped:\n{log}"
        );
    }
}

fn docker_up_metric(agent: &Agent) -> f64 {
    sum(&parse(&scrape(agent.addr)), "crossmon_docker_up", &[])
}

#[test]
fn a_docker_socket_absent_at_start_is_logged_and_identities_arrive_when_it_appears() {
    docker_ready();
    let net = DockerNetwork::create("late", &[]).expect("network");
    let (a, b) = (net.run("a"), net.run("b"));
    let scratch = Scratch::new("socket");
    let socket = scratch.path("docker.sock");
    let host = format!("unix://{}", socket.display());
    let agent = Agent::start(&["--docker-host", &host]);
    let unreachable = format!("Docker engine unreachable at {host}: ");
    wait_until("the unreachable engine logged", || {
        agent.log().contains(&unreachable)
    });
    let health = get_json(agent.addr, "/healthz");
    assert_eq!(health["docker_up"], false);
    assert_eq!(
        health["attached_interfaces"], 0,
        "nothing is attached before the engine names it"
    );
    assert_eq!(docker_up_metric(&agent), 0.0);

    // The engine's socket appears where the agent looks.
    std::thread::sleep(Duration::from_secs(2));
    std::os::unix::fs::symlink("/var/run/docker.sock", &socket).expect("symlink");
    let appeared = Instant::now();
    // The retry backoff doubles from 1 s: the next attempt is at most a
    // few seconds away after this short absence.
    wait_within("both containers attached", Duration::from_secs(30), || {
        let list = get_json(agent.addr, "/api/v1/containers");
        [&a.name, &b.name].iter().all(|name| {
            list.as_array().is_some_and(|all| {
                all.iter()
                    .any(|c| c["name"] == name.as_str() && attached(c))
            })
        })
    });
    eprintln!(
        "identities arrived {:?} after the socket appeared",
        appeared.elapsed()
    );
    a.ping(&b.ip(&net.name).expect("ip"), 3);
    assert_eq!(
        agent.named_flow(&a.name, &b.name, "icmp", 3)["bytes"],
        3 * 84
    );
    assert_eq!(docker_up_metric(&agent), 1.0);
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
    assert_eq!(log.matches("Docker engine unreachable").count(), 1, "{log}");
    assert!(
        log.lines().any(
            |line| line.contains(&format!("Docker engine back at {host}: resynced "))
                && line.contains(" containers")
        ),
        "{log}"
    );
}

/// `ping` from the host's binary inside `netns`: needs no engine.
fn ping_in(netns: &str, to: &str, count: u32) {
    let output = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args([
            "ping",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            to,
        ])
        .output()
        .expect("nsenter (util-linux)");
    assert!(
        output.status.success(),
        "ping {to}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A container of `engine` running `sleep`: its name, address and network
/// namespace.
fn engine_container(engine: &NamespacedEngine, name: &str) -> (String, String) {
    engine
        .docker(&["run", "-d", "--name", name, IMAGE, "sleep", "600"])
        .expect("docker run");
    let ip = engine
        .text(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", name])
        .expect("inspect");
    let pid = engine
        .text(&["inspect", "-f", "{{.State.Pid}}", name])
        .expect("inspect");
    (ip, format!("/proc/{pid}/ns/net"))
}

/// An engine of the test's own (in a test host's namespace, with
/// `--live-restore`) is stopped and started again, wherever the machine's
/// engine runs, which it never touches; the agent runs in that namespace.
#[test]
fn a_dockerd_restart_is_logged_counting_goes_on_and_identities_come_back() {
    require_root();
    let net = TestNet::new(1).expect("test network");
    let name = format!("xmre{}", std::process::id() % 100_000);
    let mut engine = NamespacedEngine::start_live_restore(&name, net.host(0), 140)
        .expect("an engine of the test's own");
    let host = engine.docker_host();
    let (a, b) = (format!("{name}-a"), format!("{name}-b"));
    let (a_ip, a_netns) = engine_container(&engine, &a);
    let (b_ip, _) = engine_container(&engine, &b);
    let netns = format!("--net=/var/run/netns/{}", net.host(0).netns_name());
    let listen = SocketAddr::new(net.host(0).ip4().into(), free_port());
    let agent = Agent::start_at(
        &["nsenter", &netns],
        Some(listen),
        &["--docker-host", &host],
    );
    agent.wait_attached(&[&a, &b]);
    ping_in(&a_netns, &b_ip, 3);
    agent.named_flow(&a, &b, "icmp", 3);

    let restart_began = Instant::now();
    engine.stop().expect("stopping the engine");
    wait_until("the agent to notice the engine is gone", || {
        get_json(agent.addr, "/healthz")["docker_up"] == false
    });
    assert_eq!(docker_up_metric(&agent), 0.0);
    assert!(
        agent
            .log()
            .contains(&format!("Docker engine unreachable at {host}: ")),
        "{}",
        agent.log()
    );
    // Counting goes on, under the names known before the outage
    // (live-restore keeps the containers running).
    ping_in(&a_netns, &b_ip, 5);
    agent.named_flow(&a, &b, "icmp", 8);
    engine.restart().expect("starting the engine again");
    wait_within("the agent to reconnect", Duration::from_secs(40), || {
        get_json(agent.addr, "/healthz")["docker_up"] == true
    });
    eprintln!(
        "the agent was back in touch {:?} after the engine began to stop",
        restart_began.elapsed()
    );
    assert_eq!(docker_up_metric(&agent), 1.0);
    // A container started after the engine came back is named and counted,
    // and the old ones still are.
    let c = format!("{name}-c");
    let (_, c_netns) = engine_container(&engine, &c);
    agent.container(&c, attached);
    ping_in(&c_netns, &a_ip, 3);
    assert_eq!(agent.named_flow(&c, &a, "icmp", 3)["bytes"], 3 * 84);
    ping_in(&a_netns, &b_ip, 2);
    assert_eq!(agent.named_flow(&a, &b, "icmp", 10)["bytes"], 10 * 84);
    assert_eq!(agent.named_flow(&b, &a, "icmp", 10)["bytes"], 10 * 84);
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
    for line in log.lines().filter(|line| line.contains("Docker engine")) {
        eprintln!("{line}");
    }
    assert_eq!(
        log.matches("Docker engine unreachable").count(),
        1,
        "one line per outage:\n{log}"
    );
    assert!(
        log.contains(&format!("Docker engine back at {host}: resynced ")),
        "{log}"
    );
}

/// The agent's resident memory (KiB), open descriptors and attached
/// interfaces.
fn resources(agent: &Agent) -> (Rss, usize, usize) {
    let attached = get_json(agent.addr, "/healthz")["attached_interfaces"]
        .as_u64()
        .expect("attached_interfaces");
    (
        Rss::of(agent.pid()),
        open_fds(agent.pid()),
        usize::try_from(attached).expect("a count"),
    )
}

/// A process's resident memory by kind, KiB (`/proc/PID/status`).
struct Rss {
    /// Private memory, the heap among it: what a leak grows.
    anon: u64,
    /// Pages of the binary and of mapped files, resident once touched:
    /// printed beside, so a growth of all of VmRSS is told apart.
    file: u64,
}

impl Rss {
    fn of(pid: u32) -> Self {
        let status =
            std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
        };
        Self {
            anon: field("RssAnon:"),
            file: field("RssFile:"),
        }
    }
}

impl std::fmt::Display for Rss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} KiB anonymous, {} file-backed", self.anon, self.file)
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

/// `count` containers started on `net` and removed again, `workers` at a
/// time.
fn cycle_containers(net: &DockerNetwork, count: usize, workers: usize) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    drop(net.run("cycle"));
                }
            });
        }
    });
}

/// The agent's programs sit on exactly the interfaces its API lists as
/// attached, one pair each, and `crossmon_attached_interfaces` agrees.
fn attachments_match(agent: &Agent, programs: &BTreeSet<u32>) -> bool {
    let api: BTreeSet<String> = get_json(agent.addr, "/api/v1/containers")
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["networks"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["attached"] == true)
        .filter_map(|e| e["interface"].as_str().map(str::to_owned))
        .collect();
    let hooked = tc_hooks::where_attached(programs);
    let metric = sum(
        &parse(&scrape(agent.addr)),
        "crossmon_attached_interfaces",
        &[],
    );
    hooked.iter().all(|(_, programs)| is_one_pair(programs))
        && hooked
            .iter()
            .map(|(name, _)| name.clone())
            .collect::<BTreeSet<_>>()
            == api
        && metric == api.len() as f64
}

#[test]
fn two_hundred_container_lifecycles_leak_no_attachment_and_no_memory() {
    docker_ready();
    const WARM_UP: usize = 20;
    const CYCLES: usize = 200;
    /// Once every container is gone the agent keeps nothing of them (their
    /// series and inventory entries go after the 1 s grace, their flows
    /// after the 2 s idle time: both checked below), so what its anonymous
    /// resident memory may still have grown by after warm-up is (the
    /// binary's pages, resident as code first runs, are no leak and are
    /// not counted):
    /// - the event log filling up: its last 1,024 events, each at most
    ///   640 bytes (the record and its data, up to a 512-byte DNS message,
    ///   with the allocator's header: any kind may fill it);
    /// - the free memory glibc keeps at the top of each arena up to the
    ///   trim threshold before returning it: 128 KiB in each of the 2
    ///   arenas the agent is held to here;
    /// - what the containers alive at once (4 cycling, the keeper) held,
    ///   freed amid the heap where it cannot be returned: 25 KiB each at
    ///   most (the agent's RSS grew 1.6 and 2.5 MiB with 100 more
    ///   containers alive).
    ///
    /// 1,021 KiB in all, 5.7 KiB per cycled container: a leak of a third
    /// of what the agent holds per container fails it (the 8 MiB allowed
    /// before was 45 KiB per container, more than all of it). Measured on
    /// 2 cores, all of VmRSS: 376 KiB alone, 904 KiB while other sessions'
    /// containers came and went, 1,036 KiB in one CI run; anonymous memory
    /// alone, 232 KiB (file-backed 128 more).
    const RSS_GROWTH_KIB: u64 = 1024 * 640 / 1024 + 2 * 128 + 5 * 25;
    /// Descriptors in flight (a scrape's socket, an engine connection);
    /// a leak per container would show 180.
    const FD_SLACK: usize = 8;
    let net = DockerNetwork::create("cycles", &[]).expect("network");
    // Short grace and idle time, so every table can be back to where it
    // started once the containers are gone.
    // glibc's thresholds fixed at their defaults (left alone, freeing a
    // large block, such as a big /metrics answer, raises them and the free
    // memory an arena keeps with them) and 2 arenas: the allocator's slack
    // is bounded (RSS_GROWTH_KIB).
    let agent = Agent::start_under(
        &[
            "env",
            "MALLOC_TRIM_THRESHOLD_=131072",
            "MALLOC_MMAP_THRESHOLD_=131072",
            "MALLOC_ARENA_MAX=2",
        ],
        &["--series-grace", "1s", "--idle-timeout", "2s"],
    );
    wait_until("the engine connected", || {
        get_json(agent.addr, "/healthz")["docker_up"] == true
    });
    let programs = agent.programs();
    let ours = |samples: &[integration_tests::exposition::Sample]| {
        select(
            samples,
            "crossmon_container_info",
            &[("network", net.name.as_str())],
        )
        .count()
    };
    let started = Instant::now();
    cycle_containers(&net, WARM_UP, 4);
    wait_until("attachments after warm-up", || {
        attachments_match(&agent, &programs)
    });
    samples_when(agent.addr, "no series of the warm-up containers", |s| {
        ours(s) == 0
    });
    let (rss_warm, fds_warm, attached_warm) = resources(&agent);

    // One container stays through the rest: its info series shows series
    // are kept for the living.
    let keeper = net.run("keeper");
    agent.container(&keeper.name, attached);
    cycle_containers(&net, CYCLES - WARM_UP, 4);
    let cycled = started.elapsed();
    wait_until("attachments after all cycles", || {
        attachments_match(&agent, &programs)
    });
    samples_when(agent.addr, "only the keeper's series", |s| ours(s) == 1);
    let containers = get_json(agent.addr, "/api/v1/containers");
    let on_net: Vec<&Value> = containers
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["networks"][0]["network"] == net.name.as_str())
        .collect();
    assert_eq!(on_net.len(), 1, "{on_net:?}");
    drop(keeper);
    wait_until("attachments once the keeper is gone", || {
        attachments_match(&agent, &programs)
    });
    samples_when(agent.addr, "no series of the network", |s| ours(s) == 0);
    let (rss_end, fds_end, attached_end) = resources(&agent);
    eprintln!(
        "{CYCLES} container lifecycles in {cycled:?}; RSS {rss_warm} after {WARM_UP}, \
         {rss_end} after {CYCLES}; open fds {fds_warm} -> {fds_end}"
    );
    assert!(
        rss_end.anon <= rss_warm.anon + RSS_GROWTH_KIB,
        "anonymous RSS grew from {} to {} KiB, more than the {RSS_GROWTH_KIB} KiB the event \
         log, the allocator's arenas and the containers in flight can account for",
        rss_warm.anon,
        rss_end.anon
    );
    // Two link descriptors per attached interface (other tests' containers
    // may come and go meanwhile); nothing else may grow.
    assert!(
        fds_end - 2 * attached_end <= fds_warm - 2 * attached_warm + FD_SLACK,
        "{fds_warm} descriptors with {attached_warm} interfaces, then {fds_end} with {attached_end}"
    );
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
}

/// UDP sockets bound in `host`'s namespace: to `ports`, or to an ephemeral
/// port each (`None`).
fn udp_sockets(host: &Host, ports: impl Iterator<Item = Option<u16>>) -> Vec<UdpSocket> {
    let ports: Vec<Option<u16>> = ports.collect();
    host.run(|| {
        ports
            .iter()
            .map(|port| Ok(UdpSocket::bind(("0.0.0.0", port.unwrap_or(0)))?))
            .collect()
    })
    .expect("UDP sockets")
}

/// Packets the agent counted for `src -> dst` UDP flows, by destination
/// port.
fn udp_counts(agent: &Agent, src: IpAddr, dst: IpAddr) -> BTreeMap<u16, u64> {
    get_json(agent.addr, "/api/v1/flows")
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| {
            f["protocol"] == "udp"
                && f["src_ip"] == src.to_string().as_str()
                && f["dst_ip"] == dst.to_string().as_str()
        })
        .filter_map(|f| {
            let port = u16::try_from(f["dst_port"].as_u64()?).ok()?;
            Some((port, f["packets"].as_u64()?))
        })
        .collect()
}

#[test]
fn a_flow_map_overrun_by_active_flows_counts_evictions_and_never_overcounts() {
    require_root();
    const CAPACITY: usize = 8;
    const HOT: u16 = 3;
    const COLD: u16 = 24;
    const ROUNDS: u64 = 3;
    let net = TestNet::new(2).expect("test network");
    let agent = Agent::start(&["--no-docker", "--flow-capacity", &CAPACITY.to_string()]);
    let (a, b) = (net.host(0), net.host(1));
    for host in [a, b] {
        wait_until("attachment", || {
            our_programs_on(host.veth_name()).len() == 2
        });
    }
    // Every port has a receiver: no ICMP error adds a flow of its own.
    let (hot_ports, cold_ports) = (7100..7100 + HOT, 7200..7200 + COLD);
    let _sinks = udp_sockets(b, hot_ports.clone().chain(cold_ports.clone()).map(Some));
    let hot = udp_sockets(a, hot_ports.clone().map(|_| None));
    let cold = udp_sockets(a, std::iter::once(None));
    let to = |port| SocketAddr::new(b.ip4().into(), port);
    // 27 flows at once in a map of 8, all active: before each cold flow's
    // datagram, one on every hot flow, so the hot ones stay the most
    // recently used and the map evicts cold ones. Paced over several polls,
    // so the agent reads cold entries before they go.
    for _ in 0..ROUNDS {
        for port in cold_ports.clone() {
            for (socket, hot_port) in hot.iter().zip(hot_ports.clone()) {
                socket.send_to(b"hot", to(hot_port)).expect("send");
            }
            cold[0].send_to(b"cold", to(port)).expect("send");
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    let hot_sent = ROUNDS * u64::from(COLD);
    let (src, dst) = (IpAddr::from(a.ip4()), IpAddr::from(b.ip4()));
    wait_until("every hot datagram counted", || {
        let counts = udp_counts(&agent, src, dst);
        hot_ports
            .clone()
            .all(|port| counts.get(&port) == Some(&hot_sent))
    });
    let counts = udp_counts(&agent, src, dst);
    let samples = parse(&scrape(agent.addr));
    let evicted = sum(&samples, "crossmon_flows_evicted_total", &[]);
    let cold_counts: Vec<u64> = cold_ports
        .clone()
        .filter_map(|port| counts.get(&port).copied())
        .collect();
    eprintln!("{evicted} evictions counted; cold flows known with {cold_counts:?} packets");
    assert!(evicted > 0.0, "the map of {CAPACITY} overflowed");
    assert!(sum(&samples, "crossmon_flow_map_entries", &[]) <= CAPACITY as f64);
    // Cold flows were evicted and re-created up to ROUNDS times: whatever
    // an entry counted after its last read is gone with it, but nothing is
    // ever counted twice. Some cold flows must have been read for that to
    // say anything.
    assert!(!cold_counts.is_empty(), "no cold flow was ever read");
    assert!(
        cold_counts.iter().all(|packets| *packets <= ROUNDS),
        "{cold_counts:?}"
    );
}

/// New-flow records the kernel could not put in the ring.
fn new_flow_losses(agent: &Agent) -> f64 {
    sum(
        &parse(&scrape(agent.addr)),
        "crossmon_events_lost_total",
        &[("kind", "new_flow")],
    )
}

/// Sends `signal` to the agent's process (every thread of it).
fn signal(agent: &Agent, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(agent.pid()).expect("a pid");
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    let sent = unsafe { libc::kill(pid, signal) };
    assert_eq!(sent, 0, "kill({pid}, {signal})");
}

#[test]
fn a_ring_overflow_is_counted_and_the_agent_keeps_up_afterwards() {
    require_root();
    // Several times what a page holds (64 new_flow records at most), and
    // few, so that the agent is stopped only briefly.
    const BURST: u16 = 300;
    const CALM: u16 = 20;
    let net = TestNet::new(2).expect("test network");
    // One page, the least allowed.
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let agent = Agent::start(&["--no-docker", "--ring-bytes", &page.to_string()]);
    let (a, b) = (net.host(0), net.host(1));
    for host in [a, b] {
        wait_until("attachment", || {
            our_programs_on(host.veth_name()).len() == 2
        });
    }
    let sink = udp_sockets(b, std::iter::once(Some(9000)));
    let target = SocketAddr::new(b.ip4().into(), 9000);
    let lost_before = new_flow_losses(&agent);
    // A new flow from each of BURST source ports while the agent is
    // stopped (SIGSTOP stops its ring reader with every other thread):
    // each a new_flow record and a payload record into a ring nobody
    // reads, so whatever the machine's speed the ring fills and the kernel
    // counts every record it could not reserve as lost.
    let burst_ports = 20_000..20_000 + BURST;
    signal(&agent, libc::SIGSTOP);
    let sent = a.run(|| {
        for port in burst_ports.clone() {
            UdpSocket::bind(("0.0.0.0", port))?.send_to(b"burst", target)?;
        }
        Ok(())
    });
    signal(&agent, libc::SIGCONT);
    sent.expect("burst");
    // The agent attaches to every bridge's veths: other traffic on the
    // host may add new flows of its own, so ours are told by their source
    // (the log keeps the last 1,024 events, more than the ring delivers).
    let src = a.ip4().to_string();
    let ours = |ports: &std::ops::Range<u16>| -> Vec<u64> {
        get_json(agent.addr, "/api/v1/events")
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["kind"] == "new_flow" && e["flow"]["src_ip"] == src.as_str())
            .filter_map(|e| e["flow"]["src_port"].as_u64())
            .filter(|port| u16::try_from(*port).is_ok_and(|port| ports.contains(&port)))
            .collect()
    };
    let (mut delivered, mut lost) = (0, 0.0);
    wait_until("every new flow delivered or counted lost", || {
        delivered = ours(&burst_ports).len();
        lost = new_flow_losses(&agent) - lost_before;
        delivered as f64 + lost >= f64::from(BURST)
    });
    eprintln!(
        "ring of {page} bytes, reader stopped: {delivered} delivered, {lost} lost of {BURST} new-flow events"
    );
    assert_eq!(
        delivered as f64 + lost,
        f64::from(BURST),
        "every event delivered or counted lost, once"
    );
    // A record takes its size and an 8-byte header in the ring: the page
    // holds at most this many new_flow records, and fewer beside the
    // payload records.
    let record = std::mem::size_of::<monitor_common::NewFlowEvent>() + 8;
    let fits = usize::try_from(page).expect("a size") / record;
    assert!(
        delivered <= fits,
        "{delivered} delivered through a stopped reader's ring of {fits} records"
    );
    let lost_after_burst = new_flow_losses(&agent);

    // At a calm pace, every new connection arrives as an event again.
    let calm_ports = 30_000..30_000 + CALM;
    a.run(|| {
        for port in calm_ports.clone() {
            UdpSocket::bind(("0.0.0.0", port))?.send_to(b"calm", target)?;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    })
    .expect("calm flows");
    let mut calm = Vec::new();
    wait_until("an event for every calm flow", || {
        calm = ours(&calm_ports);
        calm.len() >= usize::from(CALM)
    });
    calm.sort_unstable();
    let expected: Vec<u64> = calm_ports.map(u64::from).collect();
    assert_eq!(calm, expected, "one event per calm flow");
    assert_eq!(
        new_flow_losses(&agent),
        lost_after_burst,
        "nothing lost at a calm pace"
    );
    drop(sink);
}

#[test]
fn fifty_scrapers_for_a_minute_are_all_answered_while_counting_stays_exact() {
    require_root();
    const SCRAPERS: usize = 50;
    const DURATION: Duration = Duration::from_secs(60);
    const PINGS: u32 = 20;
    let net = TestNet::new(2).expect("test network");
    let agent = Agent::start(&["--no-docker"]);
    let (a, b) = (net.host(0), net.host(1));
    for host in [a, b] {
        wait_until("attachment", || {
            our_programs_on(host.veth_name()).len() == 2
        });
    }
    let icmp_from_a = [("protocol", "icmp")];
    traffic::ping(a, b.ip4().into(), 1, 56).expect("ping");
    let reference = samples_when(agent.addr, "the first echo counted", |s| {
        sum(s, "crossmon_flow_packets_total", &icmp_from_a) == 2.0
    });
    let families: BTreeSet<String> = reference.iter().map(|s| s.name.clone()).collect();
    let families = &families;
    let addr = agent.addr;
    let deadline = Instant::now() + DURATION;
    let started = Instant::now();
    let (answers, packets) = std::thread::scope(|scope| {
        let scrapers: Vec<_> = (0..SCRAPERS)
            .map(|_| {
                scope.spawn(move || {
                    let (mut answered, mut slowest) = (0usize, Duration::ZERO);
                    while Instant::now() < deadline {
                        let asked = Instant::now();
                        let (status, body) =
                            get(addr, "/metrics").expect("an answer to every scrape");
                        slowest = slowest.max(asked.elapsed());
                        assert_eq!(status, 200, "{body}");
                        assert!(body.ends_with('\n'), "a cut exposition");
                        let names: BTreeSet<String> =
                            parse(&body).into_iter().map(|s| s.name).collect();
                        assert!(names.is_superset(families), "a family is missing");
                        answered += 1;
                    }
                    (answered, slowest)
                })
            })
            .collect();
        // Meanwhile, exact counting: PINGS more echoes each way.
        traffic::ping(a, b.ip4().into(), PINGS, 56).expect("ping");
        let packets = sum(
            &samples_when(addr, "the echoes counted under load", |s| {
                sum(s, "crossmon_flow_packets_total", &icmp_from_a) >= f64::from(2 * (PINGS + 1))
            }),
            "crossmon_flow_packets_total",
            &icmp_from_a,
        );
        let answers: Vec<(usize, Duration)> = scrapers
            .into_iter()
            .map(|s| s.join().expect("a scraper failed"))
            .collect();
        (answers, packets)
    });
    let elapsed = started.elapsed();
    let answered: usize = answers.iter().map(|(n, _)| n).sum();
    let slowest = answers.iter().map(|(_, t)| *t).max().unwrap_or_default();
    eprintln!(
        "{answered} scrapes by {SCRAPERS} scrapers in {elapsed:?}: {:.0} per second, \
         the slowest answered in {slowest:?}",
        answered as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(
        packets,
        f64::from(2 * (PINGS + 1)),
        "each echo and reply once"
    );
    assert!(
        answers.iter().all(|(n, _)| *n > 0),
        "every scraper was answered"
    );
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
}
