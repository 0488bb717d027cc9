//! The flow policy: judged by the programs in the running kernel (on
//! synthetic frames), then learnt, enforced, observed and changed live
//! against real containers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use integration_tests::{
    agent::{wait_until, wait_within, Agent},
    crossmon_bin,
    docker::{docker_ready, Container, DockerNetwork},
    exposition::{parse, scrape, sum},
    frames::*,
    net::datagrams_delivered,
    require_root,
    scratch::Scratch,
    synthetic::{self, container, TEST_RUN_IFINDEX},
    tc_hooks,
    traffic::RawSocket,
    Host, TestNet,
};
use monitor::{
    datapath::{
        self, AttachMode, Datapath, DatapathConfig, Event, EventRing, FlowMap, Programs,
        PROGRAM_FROM_CONTAINER, PROGRAM_TO_CONTAINER,
    },
    docker::Inventory,
    policy::{Policy, PolicyConfig, PolicyInForce},
};
use monitor_common::{ip_proto, tcp_flag};
use serde_json::Value;

const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_SHOT: i32 = 2;
const WEB: Mac = [0x02, 0, 0, 0, 0, 0x0a];
const API: Mac = [0x02, 0, 0, 0, 0, 0x0b];
const IP_WEB: [u8; 4] = [10, 9, 0, 2];
const IP_API: [u8; 4] = [10, 9, 0, 3];
const IP_DB: [u8; 4] = [10, 9, 0, 4];
const IP_GATEWAY: [u8; 4] = [10, 9, 0, 1];
/// web (behind the veth test runs use), api and db on one network.
fn inventory() -> Arc<Inventory> {
    let on_front = |name, address, ifindex| container(name, "front", address, IP_GATEWAY, ifindex);
    synthetic::inventory([
        on_front("web", (IP_WEB, WEB), TEST_RUN_IFINDEX),
        on_front("api", (IP_API, API), 1001),
        on_front("db", (IP_DB, [2, 0, 0, 0, 0, 0x0c]), 1002),
    ])
}

/// The loaded programs, their maps, and the policy in force in them.
struct Loaded {
    programs: Programs,
    flows: FlowMap,
    events: EventRing,
}

fn policy_in_force(scratch: &Scratch, yaml: &str, enforce: bool) -> (Loaded, PolicyInForce) {
    require_root();
    let Datapath {
        programs,
        flows,
        events,
        policy: maps,
        ..
    } = datapath::load(&DatapathConfig::default()).expect("the programs load");
    let path = scratch.write("policy.yaml", yaml);
    let config = PolicyConfig {
        policy: Policy::load(&path).expect("valid"),
        path,
        enforce,
    };
    let mut policy = PolicyInForce::start(config, maps).expect("in force");
    policy.on_inventory(Some(inventory()));
    (
        Loaded {
            programs,
            flows,
            events,
        },
        policy,
    )
}

fn verdict(loaded: &mut Loaded, program: &str, frame: &[u8]) -> i32 {
    loaded
        .programs
        .test_run(program, frame)
        .expect("test run")
        .0
}

fn tcp_frame(src: [u8; 4], dst: [u8; 4], src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
    let segment = tcp(src_port, dst_port, flags, &[]);
    ethernet(
        API,
        WEB,
        ETH_P_IP,
        &ipv4(src, dst, ip_proto::TCP, &[], 0, &segment),
    )
}

/// (passed, dropped) of counter `rule`.
fn counts(policy: &PolicyInForce, rule: &str) -> (u64, u64) {
    policy
        .snapshot()
        .counts
        .iter()
        .find(|(name, _)| name == rule)
        .map_or((0, 0), |(_, c)| (c.passed, c.dropped))
}

const WEB_TO_API_80: &str = "version: 1\ndefaults: {\"*\": deny}\nrules:\n  - {name: web-api, from: {container: web}, to: {container: api}, protocol: tcp, ports: [80]}\n";

#[test]
fn the_kernel_drops_what_the_compiled_policy_denies_and_nothing_else() {
    let scratch = Scratch::new("policy");
    let (mut dp, mut policy) = policy_in_force(&scratch, WEB_TO_API_80, true);
    let from = PROGRAM_FROM_CONTAINER;
    assert_eq!(
        verdict(
            &mut dp,
            from,
            &tcp_frame(IP_WEB, IP_API, 40_000, 80, tcp_flag::SYN)
        ),
        TC_ACT_UNSPEC
    );
    assert_eq!(
        verdict(
            &mut dp,
            from,
            &tcp_frame(IP_WEB, IP_API, 40_001, 81, tcp_flag::SYN)
        ),
        TC_ACT_SHOT
    );
    assert_eq!(
        verdict(
            &mut dp,
            from,
            &tcp_frame(IP_WEB, IP_DB, 40_002, 5432, tcp_flag::SYN)
        ),
        TC_ACT_SHOT
    );
    // Not a container of the network: not the policy's business.
    assert_eq!(
        verdict(
            &mut dp,
            from,
            &tcp_frame(IP_WEB, IP_GATEWAY, 40_003, 53, tcp_flag::SYN)
        ),
        TC_ACT_UNSPEC
    );
    // db opened a connection to web (seen on its way into web): web's
    // answers pass, an answer to nothing does not.
    assert_eq!(
        verdict(
            &mut dp,
            PROGRAM_TO_CONTAINER,
            &tcp_frame(IP_DB, IP_WEB, 50_000, 8080, tcp_flag::SYN)
        ),
        TC_ACT_UNSPEC
    );
    let syn_ack = tcp_flag::SYN | tcp_flag::ACK;
    assert_eq!(
        verdict(
            &mut dp,
            from,
            &tcp_frame(IP_WEB, IP_DB, 8080, 50_000, syn_ack)
        ),
        TC_ACT_UNSPEC
    );
    assert_eq!(
        verdict(
            &mut dp,
            from,
            &tcp_frame(IP_WEB, IP_DB, 8080, 50_001, syn_ack)
        ),
        TC_ACT_SHOT
    );
    // A source that is not web's, and ARP claiming api's address.
    let spoofed = ethernet(
        API,
        WEB,
        ETH_P_IP,
        &ipv4(IP_DB, IP_API, ip_proto::UDP, &[], 0, &udp(1, 80, b"x")),
    );
    assert_eq!(verdict(&mut dp, from, &spoofed), TC_ACT_SHOT);
    assert_eq!(
        verdict(&mut dp, from, &arp_request(WEB, WEB, IP_API, IP_DB)),
        TC_ACT_SHOT
    );
    assert_eq!(
        verdict(&mut dp, from, &arp_request(WEB, WEB, IP_WEB, IP_DB)),
        TC_ACT_UNSPEC
    );

    assert_eq!(counts(&policy, "default:front"), (0, 3));
    assert_eq!(counts(&policy, "spoofed_source"), (0, 1));
    assert_eq!(counts(&policy, "spoofed_arp"), (0, 1));
    assert_eq!(counts(&policy, "web-api"), (0, 0));
    // Dropped packets are no flows; the spoofed ARP still reaches the
    // detectors; every denied flow is there for the alerts.
    let mut flows = Vec::new();
    dp.flows.for_each(|key, _| flows.push(*key)).expect("flows");
    assert_eq!(
        flows.len(),
        4,
        "web -> api:80, to the gateway, db's SYN and the reply"
    );
    let mut events = Vec::new();
    dp.events.drain(&mut events);
    let arps = events
        .iter()
        .filter(|e| matches!(e, Event::Arp { .. }))
        .count();
    assert_eq!(arps, 2);
    let denied = policy.drain_denied();
    assert_eq!(denied.len(), 4);
    assert!(denied
        .iter()
        .all(|(_, stats)| stats.packets == 1 && stats.dropped == 1));
    assert!(policy.drain_denied().is_empty(), "drained");

    // A new file allows port 81 too: in force at once.
    std::fs::write(
        scratch.path("policy.yaml"),
        format!("{WEB_TO_API_80}  - {{name: web-api-81, from: {{container: web}}, to: {{container: api}}, protocol: tcp, ports: [81]}}\n"),
    )
    .expect("write");
    policy.reload("test");
    assert_eq!(
        verdict(
            &mut dp,
            from,
            &tcp_frame(IP_WEB, IP_API, 40_004, 81, tcp_flag::SYN)
        ),
        TC_ACT_UNSPEC
    );
    // An invalid one changes nothing.
    std::fs::write(
        scratch.path("policy.yaml"),
        "version: 1\nrules: [{name: x}]\n",
    )
    .expect("write");
    policy.reload("test");
    assert!(!policy.snapshot().file_valid);
    assert_eq!(
        verdict(
            &mut dp,
            from,
            &tcp_frame(IP_WEB, IP_API, 40_005, 81, tcp_flag::SYN)
        ),
        TC_ACT_UNSPEC
    );
    assert_eq!(
        verdict(
            &mut dp,
            from,
            &tcp_frame(IP_WEB, IP_API, 40_006, 82, tcp_flag::SYN)
        ),
        TC_ACT_SHOT
    );
}

const WEB_TO_API_UDP_7000: &str = "version: 1\ndefaults: {\"*\": deny}\nrules:\n  - {name: web-api, from: {container: web}, to: {container: api}, protocol: udp, ports: [7000]}\n";

/// Enforcement on a real bridge, in both attach modes (TCX links and
/// clsact filters drop through different kernel paths): the allowed port
/// gets every datagram, the denied one none, each drop counted.
#[test]
fn enforce_drops_denied_datagrams_on_real_veths_in_both_attach_modes() {
    require_root();
    for attach_mode in [AttachMode::Auto, AttachMode::Clsact] {
        let net = TestNet::new(2).expect("test network");
        let Datapath {
            mut programs,
            policy: maps,
            ..
        } = datapath::load(&DatapathConfig {
            attach_mode,
            ..DatapathConfig::default()
        })
        .expect("the programs load");
        let scratch = Scratch::new("policy");
        let path = scratch.write("policy.yaml", WEB_TO_API_UDP_7000);
        let config = PolicyConfig {
            policy: Policy::load(&path).expect("valid"),
            path,
            enforce: true,
        };
        let mut policy = PolicyInForce::start(config, maps).expect("in force");
        let (web, api) = (net.host(0), net.host(1));
        let gateway = net.gateway_v4().octets();
        let identity = |name, host: &Host| {
            container(
                name,
                "front",
                (host.ip4().octets(), host.mac()),
                gateway,
                host.veth_ifindex(),
            )
        };
        policy.on_inventory(Some(synthetic::inventory([
            identity("web", web),
            identity("api", api),
        ])));
        for host in net.hosts() {
            programs
                .attach(host.veth_name(), host.veth_ifindex(), net.bridge_ifindex())
                .expect("attach");
        }
        let netns = |host: &Host| format!("/var/run/netns/{}", host.netns_name());
        let to = |port: u16| format!("{}:{port}", api.ip4());
        let mode = format!("{attach_mode:?}");
        assert_eq!(
            datagrams_delivered(&netns(web), &netns(api), &to(7000), 5),
            5,
            "{mode}: allowed"
        );
        assert_eq!(
            datagrams_delivered(&netns(web), &netns(api), &to(7001), 5),
            0,
            "{mode}: denied"
        );
        assert_eq!(counts(&policy, "default:front"), (0, 5), "{mode}");
        assert_eq!(programs.detach_all(), 2, "{mode}");
    }
}

/// A killed agent's clsact filters stay attached; its lease does not: left
/// unrenewed, enforce mode lapses into observing, and a renewal brings it
/// back.
#[test]
fn an_enforce_lease_left_unrenewed_lapses_into_observing() {
    let scratch = Scratch::new("policy");
    let (mut dp, mut policy) = policy_in_force(&scratch, WEB_TO_API_80, true);
    let denied = tcp_frame(IP_WEB, IP_API, 40_001, 81, tcp_flag::SYN);
    let from = PROGRAM_FROM_CONTAINER;
    assert_eq!(verdict(&mut dp, from, &denied), TC_ACT_SHOT);
    // The lease is kept in units of 2^30 ns: it ends within 1.1 s after.
    std::thread::sleep(datapath::ENFORCE_LEASE + Duration::from_millis(1_200));
    assert_eq!(verdict(&mut dp, from, &denied), TC_ACT_UNSPEC);
    assert_eq!(counts(&policy, "default:front"), (1, 1));
    policy.renew_lease();
    assert_eq!(verdict(&mut dp, from, &denied), TC_ACT_SHOT);
    assert_eq!(counts(&policy, "default:front"), (1, 2));
}

#[test]
fn in_observe_mode_violations_are_counted_and_passed() {
    let scratch = Scratch::new("policy");
    let (mut dp, mut policy) = policy_in_force(&scratch, WEB_TO_API_80, false);
    let from = PROGRAM_FROM_CONTAINER;
    for port in [81, 82] {
        assert_eq!(
            verdict(
                &mut dp,
                from,
                &tcp_frame(IP_WEB, IP_API, 40_000, port, tcp_flag::SYN)
            ),
            TC_ACT_UNSPEC
        );
    }
    let spoofed = ethernet(
        API,
        WEB,
        ETH_P_IP,
        &ipv4(IP_DB, IP_API, ip_proto::UDP, &[], 0, &udp(1, 80, b"x")),
    );
    assert_eq!(verdict(&mut dp, from, &spoofed), TC_ACT_UNSPEC);
    assert_eq!(
        verdict(&mut dp, from, &arp_request(WEB, API, IP_WEB, IP_DB)),
        TC_ACT_UNSPEC
    );
    assert_eq!(counts(&policy, "default:front"), (2, 0));
    assert_eq!(counts(&policy, "spoofed_source"), (1, 0));
    assert_eq!(counts(&policy, "spoofed_arp"), (1, 0));
    let denied = policy.drain_denied();
    assert_eq!(denied.len(), 3);
    assert!(denied.iter().all(|(_, stats)| stats.dropped == 0));
}

/// Runs `docker run` with compose labels: `project/service`, so policies
/// name it by service.
fn service(net: &DockerNetwork, project: &str, service: &str) -> Container {
    let project_label = format!("com.docker.compose.project={project}");
    let service_label = format!("com.docker.compose.service={service}");
    Container::run(
        service,
        &[
            "--network",
            &net.name,
            "-l",
            &project_label,
            "-l",
            &service_label,
        ],
    )
    .expect("container")
}

/// `crossmon policy learn` while `during` runs, once it watches every one
/// of `containers`; the policy it wrote.
fn learn(scratch: &Scratch, containers: &[&Container], during: impl FnOnce()) -> String {
    let output = scratch.path("learnt.yaml");
    let mut child = Command::new(crossmon_bin())
        .args(["policy", "learn", "--duration", "8s", "--output"])
        .arg(&output)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("crossmon policy learn");
    let log = Arc::new(Mutex::new(String::new()));
    let reader = child.stderr.take().map(|mut stderr| {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            *log.lock().expect("log") = text;
        })
    });
    let veths: Vec<String> = containers
        .iter()
        .map(|c| c.host_veth().expect("veth"))
        .collect();
    wait_until("learn attached to every container", || {
        let ours = tc_hooks::held_by(child.id());
        veths.iter().all(|veth| {
            tc_hooks::programs_on(veth)
                .iter()
                .any(|p| ours.contains(&p.id))
        })
    });
    during();
    let status = child.wait().expect("wait");
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    assert!(
        status.success(),
        "learn failed: {}",
        log.lock().expect("log")
    );
    std::fs::read_to_string(&output).expect("the learnt policy")
}

/// `crossmon_policy_drops_total{rule}` or `_violations_total{rule}`.
fn policy_count(agent: &Agent, family: &str, rule: &str) -> f64 {
    sum(&parse(&scrape(agent.addr)), family, &[("rule", rule)])
}

/// `count` UDP datagrams from `from` to `to`'s `ip:port`; how many `to`
/// received.
fn udp_delivered(from: &Container, to: &Container, ip: &str, port: u16, count: usize) -> usize {
    let (from, to) = (from.netns().expect("netns"), to.netns().expect("netns"));
    datagrams_delivered(&from, &to, &format!("{ip}:{port}"), count)
}

/// web -> api:80 and api -> db:5432 work; web -> db and db -> web are
/// dropped, counted under the network's default and alerted.
fn three_tiers_hold(agent: &Agent, net: &str, web: &Container, api: &Container, db: &Container) {
    let ip = |c: &Container| c.ip(net).expect("ip");
    agent.wait_attached(&[&web.name, &api.name, &db.name]);
    web.tcp_sessions(api, &ip(api), 80, 3, b"GET / HTTP/1.0\r\n\r\n");
    api.tcp_sessions(db, &ip(db), 5432, 3, b"SELECT 1");
    web.tcp_blocked(db, &ip(db), 5432);
    db.tcp_blocked(web, &ip(web), 80);
    let rule = format!("default:{net}");
    let before = policy_count(agent, "crossmon_policy_drops_total", &rule);
    assert_eq!(udp_delivered(web, db, &ip(db), 5432, 7), 0);
    wait_until("7 more drops", || {
        policy_count(agent, "crossmon_policy_drops_total", &rule) == before + 7.0
    });
    for (src, dst) in [(web, db), (db, web)] {
        let alert = agent.wait_for_alert("policy_violation", |a| {
            a["source"]["name"] == src.name.as_str()
                && a["destination"]["name"] == dst.name.as_str()
        });
        assert_eq!(alert["evidence"]["rule"], rule.as_str());
        assert_eq!(alert["evidence"]["verdict"], "dropped");
    }
    let allowed: Vec<Value> = agent
        .alerts()
        .into_iter()
        .filter(|a| {
            a["kind"] == "policy_violation" && a["destination"]["name"] == api.name.as_str()
        })
        .collect();
    assert_eq!(
        allowed,
        Vec::<Value>::new(),
        "nothing to api was against the policy"
    );
}

#[test]
fn a_learnt_three_tier_policy_is_enforced_and_survives_recreation() {
    docker_ready();
    let net = DockerNetwork::create("tiers", &[]).expect("network");
    let project = integration_tests::docker::unique("shop");
    let (web, api, db) = (
        service(&net, &project, "web"),
        service(&net, &project, "api"),
        service(&net, &project, "db"),
    );
    let scratch = Scratch::new("policy");
    let ip = |c: &Container| c.ip(&net.name).expect("ip");
    let learnt = learn(&scratch, &[&web, &api, &db], || {
        web.tcp_sessions(&api, &ip(&api), 80, 2, b"GET / HTTP/1.0\r\n\r\n");
        api.tcp_sessions(&db, &ip(&db), 5432, 2, b"SELECT 1");
    });
    // Exactly the two edges among this project's services (other
    // containers on the host may have talked too), and a deny default on
    // the network.
    let yaml: serde_yaml::Value = serde_yaml::from_str(&learnt).expect("YAML");
    let ours: Vec<(String, String, String, Value)> = yaml["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .filter(|r| {
            r["from"]["service"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("{project}/")))
        })
        .map(|r| {
            let text =
                |key: &str| serde_yaml::from_value::<String>(r[key].clone()).unwrap_or_default();
            (
                text("name"),
                format!(
                    "{}>{}",
                    r["from"]["service"].as_str().unwrap_or(""),
                    r["to"]["service"].as_str().unwrap_or("")
                ),
                text("protocol"),
                serde_json::to_value(&r["ports"]).expect("ports"),
            )
        })
        .collect();
    assert_eq!(
        ours,
        [
            (
                "api-to-db-tcp-5432".to_owned(),
                format!("{project}/api>{project}/db"),
                "tcp".to_owned(),
                serde_json::json!([5432])
            ),
            (
                "web-to-api-tcp-80".to_owned(),
                format!("{project}/web>{project}/api"),
                "tcp".to_owned(),
                serde_json::json!([80])
            ),
        ],
        "{learnt}"
    );
    assert_eq!(
        yaml["defaults"][net.name.as_str()].as_str(),
        Some("deny"),
        "{learnt}"
    );
    assert_eq!(yaml["defaults"]["*"].as_str(), Some("alert"), "{learnt}");

    let file = scratch.write("policy.yaml", &learnt);
    // `policy check` says the same of the containers running now.
    let check = Command::new(crossmon_bin())
        .args(["policy", "check"])
        .arg(&file)
        .output()
        .expect("crossmon policy check");
    let table = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{table}");
    let line = |src: &Container, dst: &Container| {
        table
            .lines()
            .find(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words.get(..3) == Some(&[src.name.as_str(), "->", dst.name.as_str()][..])
            })
            .map(|l| l.split_whitespace().skip(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| panic!("no line for {} -> {}: {table}", src.name, dst.name))
    };
    let deny = format!("deny (default:{})", net.name);
    assert_eq!(
        line(&web, &api),
        format!("allow tcp/80 (web-to-api-tcp-80); the rest: {deny}")
    );
    assert_eq!(
        line(&api, &db),
        format!("allow tcp/5432 (api-to-db-tcp-5432); the rest: {deny}")
    );
    assert_eq!(line(&web, &db), format!("all: {deny}"));
    assert_eq!(line(&db, &web), format!("all: {deny}"));
    let agent = Agent::start(&["--policy", file.to_str().expect("UTF-8"), "--enforce"]);
    three_tiers_hold(&agent, &net.name, &web, &api, &db);

    // Re-created in the reverse order, so with other addresses.
    let old_ips = [ip(&web), ip(&api), ip(&db)];
    drop((web, api, db));
    let db = service(&net, &project, "db");
    let api = service(&net, &project, "api");
    let web = service(&net, &project, "web");
    assert_ne!([ip(&web), ip(&api), ip(&db)], old_ips);
    three_tiers_hold(&agent, &net.name, &web, &api, &db);
}

fn octets(container: &Container, network: &str) -> [u8; 4] {
    container
        .ip(network)
        .expect("ip")
        .parse::<std::net::Ipv4Addr>()
        .expect("IPv4")
        .octets()
}

/// A policy that allows everything: only the spoofing checks bite.
const ALLOW_ALL: &str = "version: 1\ndefaults: {\"*\": allow}\n";

#[test]
fn spoofed_sources_and_arp_are_dropped_in_enforce_and_only_alerted_in_observe() {
    docker_ready();
    let net = DockerNetwork::create("spoof", &[]).expect("network");
    let (attacker, victim, framed) = (net.run("attacker"), net.run("victim"), net.run("framed"));
    let scratch = Scratch::new("policy");
    let file = scratch.write("policy.yaml", ALLOW_ALL);
    let file = file.to_str().expect("UTF-8");
    let (victim_mac, attacker_mac) = (
        victim.mac(&net.name).expect("mac"),
        attacker.mac(&net.name).expect("mac"),
    );
    // UDP claiming to come from `framed`, and an ARP reply telling the
    // victim that framed's address is at the attacker's MAC.
    let datagram = udp(4444, 5555, b"not me");
    let packet = ipv4(
        octets(&framed, &net.name),
        octets(&victim, &net.name),
        ip_proto::UDP,
        &[],
        0,
        &datagram,
    );
    let spoofed = ethernet(victim_mac, attacker_mac, ETH_P_IP, &packet);
    let poison = arp_reply(
        attacker_mac,
        attacker_mac,
        octets(&framed, &net.name),
        victim_mac,
        octets(&victim, &net.name),
    );
    let sender = RawSocket::open_in(&attacker.netns().expect("netns")).expect("raw socket");
    // How many of each frame the victim receives while the attacker
    // sends three of each.
    let delivered = || {
        let receiver = RawSocket::open_in(&victim.netns().expect("netns")).expect("raw socket");
        for frame in [&spoofed, &poison] {
            for _ in 0..3 {
                sender.send(frame).expect("send");
            }
        }
        let received = receiver
            .received(Duration::from_millis(500))
            .expect("receive");
        let count = |frame: &Vec<u8>| received.iter().filter(|r| r.starts_with(frame)).count();
        (count(&spoofed), count(&poison))
    };
    for (mode, extra, expected, family) in [
        (
            "observe",
            &[][..],
            (3, 3),
            "crossmon_policy_violations_total",
        ),
        (
            "enforce",
            &["--enforce"][..],
            (0, 0),
            "crossmon_policy_drops_total",
        ),
    ] {
        let agent = Agent::start(&[&["--policy", file][..], extra].concat());
        agent.wait_attached(&[&attacker.name, &victim.name, &framed.name]);
        assert_eq!(
            delivered(),
            expected,
            "{mode}: (spoofed UDP, ARP) delivered"
        );
        for rule in ["spoofed_source", "spoofed_arp"] {
            wait_until(&format!("{mode}: 3 counted under {rule}"), || {
                policy_count(&agent, family, rule) == 3.0
            });
        }
        let alert = agent.wait_for_alert("ip_spoof", |_| true);
        assert_eq!(alert["source"]["name"], attacker.name.as_str(), "{mode}");
        assert_eq!(alert["destination"]["name"], victim.name.as_str(), "{mode}");
        let alert = agent.wait_for_alert("arp_spoof", |_| true);
        assert_eq!(alert["source"]["name"], attacker.name.as_str(), "{mode}");
        assert_eq!(alert["destination"]["name"], framed.name.as_str(), "{mode}");
    }
}

#[test]
fn a_changed_policy_is_in_force_without_a_restart_or_a_lost_allowed_packet() {
    docker_ready();
    let net = DockerNetwork::create("live", &[]).expect("network");
    let (web, api, db) = (net.run("web"), net.run("api"), net.run("db"));
    let rule = |name: &str, to: &Container| {
        format!(
            "  - {{name: {name}, from: {{container: {}}}, to: {{container: {}}}, protocol: icmp}}\n",
            web.name, to.name
        )
    };
    let policy = |rules: &[String]| {
        format!(
            "version: 1\ndefaults: {{\"*\": allow, {}: deny}}\nrules:\n{}",
            net.name,
            rules.concat()
        )
    };
    let scratch = Scratch::new("policy");
    let file = scratch.write("policy.yaml", &policy(&[rule("web-api", &api)]));
    let agent = Agent::start(&["--policy", file.to_str().expect("UTF-8"), "--enforce"]);
    agent.wait_attached(&[&web.name, &api.name, &db.name]);
    let db_ip = db.ip(&net.name).expect("ip");
    assert!(
        web.exec(&["ping", "-q", "-c", "1", "-W", "1", &db_ip])
            .is_err(),
        "web -> db is denied"
    );

    // 100 pings, one each 50 ms, while the file changes six times (each
    // policy allows them), each change followed by SIGHUP.
    let api_ip = api.ip(&net.name).expect("ip");
    let pings = std::thread::scope(|scope| {
        let pinging = scope.spawn(|| web.exec(&["ping", "-q", "-c", "100", "-i", "0.05", &api_ip]));
        for round in 0..6 {
            std::thread::sleep(Duration::from_millis(600));
            let mut rules = vec![rule("web-api", &api)];
            if round % 2 == 0 {
                rules.push(rule(&format!("web-db-{round}"), &db));
            }
            std::fs::write(&file, policy(&rules)).expect("rewrite the policy");
            // SAFETY: signalling our own child.
            unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
        }
        pinging.join().expect("ping thread")
    });
    let output = String::from_utf8_lossy(&pings.expect("ping").stdout).into_owned();
    assert!(
        output.contains("100 packets transmitted, 100 packets received"),
        "{output}"
    );
    // The last policy (round 5) denies web -> db again, once in force;
    // one more allows it.
    wait_in_force(&agent, 1);
    assert!(web
        .exec(&["ping", "-q", "-c", "1", "-W", "1", &db_ip])
        .is_err());
    std::fs::write(&file, policy(&[rule("web-api", &api), rule("web-db", &db)])).expect("write");
    // SAFETY: as above.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    wait_in_force(&agent, 2);
    wait_within("web -> db allowed", Duration::from_secs(10), || {
        web.exec(&["ping", "-q", "-c", "1", "-W", "1", &db_ip])
            .is_ok()
    });
    // The two single pings to db while denied, no more.
    let default = format!("default:{}", net.name);
    assert_eq!(
        policy_count(&agent, "crossmon_policy_drops_total", &default),
        2.0
    );
    assert!(
        agent.log().contains("policy reloaded (SIGHUP)"),
        "{}",
        agent.log()
    );
    let (status, _) = agent.stop();
    assert!(status.success());
}

/// Waits until the policy last put in force (by SIGHUP or the file's
/// change) has `rules` rules: the agent logs it once its maps hold it.
fn wait_in_force(agent: &Agent, rules: usize) {
    let expected = format!(": {rules} rules, generation");
    wait_within(
        &format!("a policy of {rules} rules in force"),
        Duration::from_secs(10),
        || {
            agent
                .log()
                .lines()
                .rev()
                .find(|line| line.contains("policy reloaded") && line.contains("in force"))
                .is_some_and(|line| line.contains(&expected))
        },
    );
}
