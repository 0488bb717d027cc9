//! What crossmon cannot see is counted: each running container whose
//! traffic crosses no watched interface, by why (`host`, `none`,
//! `container`; `ipvlan` is a unit test, this kernel has no ipvlan), in
//! the API and in `crossmon_unwatched_containers{reason}`; what each
//! network mode leaves visible, measured (a `container:` container's
//! traffic is counted at the veth of the namespace it shares, named after
//! its owner; macvlan containers are watched inside their own namespace,
//! where their siblings' traffic, which no host interface carries, is
//! counted exactly, named, and scanned for); and the packets a veth
//! carried before the agent attached to it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{collections::BTreeMap, process::Command};

use integration_tests::{
    agent::{get_json, wait_until, Agent},
    docker::{docker_ready, Container, DockerNetwork, MacvlanNetwork},
    exposition::{parse, scrape, sum},
    frames::{ethernet, ipv4, udp, ETH_P_IP},
    net::datagrams_delivered,
    scratch::Scratch,
    traffic::RawSocket,
};
use monitor_common::ip_proto;
use serde_json::Value;

/// Each container's `unwatched` in `/api/v1/containers`, by name.
fn unwatched(agent: &Agent) -> BTreeMap<String, Value> {
    get_json(agent.addr, "/api/v1/containers")
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["name"].as_str()?.to_owned(), c["unwatched"].clone())))
        .collect()
}

#[test]
fn containers_crossmon_cannot_watch_are_counted_by_reason() {
    docker_ready();
    // A container that talked before the agent came: its veth's counters
    // hold what the agent could not see.
    let net = DockerNetwork::create("unwatched", &[]).expect("network");
    let owner = net.run("owner");
    let peer = net.run("peer");
    let peer_ip = peer.ip(&net.name).expect("peer address");
    owner.ping(&peer_ip, 3);
    let veth = owner.host_veth().expect("owner's veth");
    let counter = |what: &str| -> u64 {
        std::fs::read_to_string(format!("/sys/class/net/{veth}/statistics/{what}_packets"))
            .expect("veth counters")
            .trim()
            .parse()
            .expect("a count")
    };
    let before_agent = counter("rx") + counter("tx");
    assert!(
        before_agent >= 6,
        "3 echo requests and replies crossed {veth}"
    );

    let agent = Agent::start(&[]);
    agent.wait_attached(&[&owner.name, &peer.name]);
    let unattached = sum(
        &parse(&scrape(agent.addr)),
        "crossmon_unattached_packets_total",
        &[],
    );
    assert!(
        unattached >= before_agent as f64,
        "{unattached} unattached packets counted, {veth} alone carried {before_agent}"
    );

    let macvlan = MacvlanNetwork::create("macvlan", "10.237.0.0/24").expect("macvlan network");
    let host = Container::run("host", &["--network", "host"]).expect("host container");
    let none = Container::run("none", &["--network", "none"]).expect("none container");
    let sharer = Container::run(
        "sharer",
        &["--network", &format!("container:{}", owner.name)],
    )
    .expect("container: container");
    let (mac_a, mac_b) = (macvlan.network.run("maca"), macvlan.network.run("macb"));
    let expected: BTreeMap<String, Value> = [
        (&owner, Value::Null),
        (&peer, Value::Null),
        (&host, "host".into()),
        (&none, "none".into()),
        (&sharer, "container".into()),
        (&mac_a, Value::Null),
        (&mac_b, Value::Null),
    ]
    .into_iter()
    .map(|(c, reason)| (c.name.clone(), reason))
    .collect();
    // Every container of the engine (other tests' too) is in the metric:
    // it must agree with the API's reasons, read at the same moment.
    let mut seen = BTreeMap::new();
    wait_until("each container's reason, in the API and the metric", || {
        let all = unwatched(&agent);
        let samples = parse(&scrape(agent.addr));
        let metric_agrees = ["host", "macvlan", "ipvlan", "container", "none"]
            .iter()
            .all(|reason| {
                let in_api = all.values().filter(|r| *r == reason).count();
                sum(
                    &samples,
                    "crossmon_unwatched_containers",
                    &[("reason", reason)],
                ) == in_api as f64
            });
        seen = expected
            .keys()
            .filter_map(|name| Some((name.clone(), all.get(name)?.clone())))
            .collect();
        metric_agrees && seen == expected
    });

    // `container:`: its traffic crosses the owner's veth, named after it.
    sharer.ping(&peer_ip, 4);
    let flows = || get_json(agent.addr, "/api/v1/flows");
    wait_until("the sharer's pings at the owner's veth", || {
        flows().as_array().into_iter().flatten().any(|f| {
            f["protocol"] == "icmp"
                && f["dst_ip"] == peer_ip.as_str()
                && f["src"]["name"] == owner.name.as_str()
                && f["src"]["shared_with"] == serde_json::json!([sharer.name])
                && f["direction"] == "from_container"
                && f["packets"] == 4
        })
    });

    // macvlan: siblings talk through the parent's macvlan switch, past
    // every host interface; each is watched on its own interface, inside
    // its namespace, where it sends and receives.
    agent.wait_attached(&[&mac_a.name, &mac_b.name]);
    let b_ip = mac_b.ip(&macvlan.network.name).expect("macvlan address");
    mac_a.ping(&b_ip, 3);
    let interface_of = |name: &str| {
        let interface =
            agent.container(name, |c| c["attached"] == true)["networks"][0]["interface"].clone();
        assert!(interface.is_string(), "{name}'s interface: {interface}");
        interface
    };
    let request = agent.named_flow(&mac_a.name, &mac_b.name, "icmp", 3);
    assert_eq!(request["direction"], "from_container", "{request}");
    assert_eq!(request["interface"], interface_of(&mac_a.name), "{request}");
    let reply = agent.named_flow(&mac_b.name, &mac_a.name, "icmp", 3);
    assert_eq!(reply["direction"], "from_container", "{reply}");
    assert_eq!(reply["interface"], interface_of(&mac_b.name), "{reply}");
    // A burst, each datagram counted once: where it left, not again where
    // the driver delivered it.
    let delivered = datagrams_delivered(
        &mac_a.netns().expect("netns"),
        &mac_b.netns().expect("netns"),
        &format!("{b_ip}:5353"),
        200,
    );
    // Under the receiving socket's default buffer (500 overflow it).
    assert_eq!(delivered, 200, "datagrams between macvlan siblings");
    let burst = agent.named_flow(&mac_a.name, &mac_b.name, "udp", 200);
    assert_eq!(burst["interface"], interface_of(&mac_a.name), "{burst}");
    // What reaches a macvlan container through its parent (here from the
    // parent's veth peer, given an address on the network) is counted
    // where it is delivered, and its answers where they leave.
    integration_tests::net::ip(&["addr", "add", "10.237.0.250/24", "dev", &macvlan.wire()])
        .expect("an address on the wire");
    let outside = Command::new("ping")
        .args(["-q", "-c", "4", "-W", "2", &b_ip])
        .output()
        .expect("ping");
    assert!(outside.status.success(), "ping {b_ip} through the parent");
    let delivered = agent.flow_where(
        "10.237.0.250 -> macb",
        |f| f["src_ip"] == "10.237.0.250" && f["dst"]["name"] == mac_b.name.as_str(),
        4,
    );
    assert_eq!(delivered["direction"], "to_container", "{delivered}");
    let answered = agent.flow_where(
        "macb -> 10.237.0.250",
        |f| f["dst_ip"] == "10.237.0.250" && f["src"]["name"] == mac_b.name.as_str(),
        4,
    );
    assert_eq!(answered["direction"], "from_container", "{answered}");
    // A port scan between siblings is alerted, naming both.
    mac_a.connect_refused(&b_ip, 30_000..30_030);
    let scan = agent.wait_for_alert("port_scan", |a| a["source"]["name"] == mac_a.name.as_str());
    assert_eq!(scan["destination"]["name"], mac_b.name.as_str(), "{scan}");
    // Under an enforced policy that allows everything only the spoofing
    // checks bite, where a macvlan container sends: its own frames pass
    // them (they carry the MAC and address its interface has), a datagram
    // with another source address is dropped.
    drop(agent);
    let scratch = Scratch::new("unwatched");
    let policy = scratch.write("policy.yaml", "version: 1\ndefaults: {\"*\": allow}\n");
    let agent = Agent::start(&["--policy", policy.to_str().expect("UTF-8"), "--enforce"]);
    agent.wait_attached(&[&mac_a.name, &mac_b.name]);
    mac_a.ping(&b_ip, 3);
    agent.named_flow(&mac_a.name, &mac_b.name, "icmp", 3);
    agent.named_flow(&mac_b.name, &mac_a.name, "icmp", 3);
    let a_mac = mac_a.mac(&macvlan.network.name).expect("mac");
    let b_mac = mac_b.mac(&macvlan.network.name).expect("mac");
    let b_octets: std::net::Ipv4Addr = b_ip.parse().expect("IPv4");
    let spoofed = ethernet(
        b_mac,
        a_mac,
        ETH_P_IP,
        &ipv4(
            [10, 237, 0, 99],
            b_octets.octets(),
            ip_proto::UDP,
            &[],
            0,
            &udp(4444, 5555, b"not me"),
        ),
    );
    let sender = RawSocket::open_in(&mac_a.netns().expect("netns")).expect("raw socket");
    // Dropped at the sender's own egress, before any wire: the send
    // itself is told (a packet socket's ENOBUFS; a UDP socket without IP_RECVERR is not told).
    for _ in 0..3 {
        let err = sender.send(&spoofed).expect_err("dropped as it is sent");
        let errno = err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error);
        assert_eq!(errno, Some(libc::ENOBUFS), "{err:#}");
    }
    let drops = |rule: &str| {
        sum(
            &parse(&scrape(agent.addr)),
            "crossmon_policy_drops_total",
            &[("rule", rule)],
        )
    };
    wait_until("3 spoofed datagrams dropped", || {
        drops("spoofed_source") == 3.0
    });
    assert_eq!(drops("spoofed_arp"), 0.0, "the siblings' own ARP");
    // A stopped macvlan container's programs go with it.
    let id = agent.container(&mac_b.name, |_| true)["networks"][0]["ifindex"].clone();
    drop(mac_b);
    let detached = format!("ifindex={id}");
    wait_until("macb's interface detached", || {
        agent
            .log()
            .lines()
            .any(|line| line.contains("detached") && line.contains(&detached))
    });
    drop((mac_a, macvlan));
}
