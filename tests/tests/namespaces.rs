//! The classifiers attached to the veths of a real bridge with three
//! network namespaces (the shape of a Docker bridge network), checked with
//! exact counts of real traffic.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{collections::HashMap, net::IpAddr, time::Duration};

use aya::programs::{tc::TcAttachType, SchedClassifier};
use integration_tests::{
    frames::{self, Mac, ETH_P_IP, ETH_P_IPV6},
    require_root, tc_hooks,
    traffic::{self, Close, RawSocket},
    Host, TestNet,
};
use monitor::{
    agent,
    datapath::{self, AttachMode, Datapath, DatapathConfig, Event, Side},
    flows::FlowTable,
};
use monitor_common::{counted_slot, ip_proto, veth_id, Direction, FlowKey, FlowStats};

/// crossmon's datapath attached to every host of a test net.
struct Monitor {
    datapath: Datapath,
}

impl Monitor {
    fn attach(net: &TestNet) -> Monitor {
        Self::attach_with(net, DatapathConfig::default())
    }

    fn attach_with(net: &TestNet, config: DatapathConfig) -> Monitor {
        let mut datapath = datapath::load(&config).expect("programs load");
        for host in net.hosts() {
            datapath
                .programs
                .attach(host.veth_name(), host.veth_ifindex(), net.bridge_ifindex())
                .expect("attach");
        }
        Monitor { datapath }
    }

    fn flows(&mut self) -> HashMap<FlowKey, FlowStats> {
        let mut flows = HashMap::new();
        self.datapath
            .flows
            .for_each(|key, stats| {
                flows.insert(*key, *stats);
            })
            .expect("reading flows");
        flows
    }

    fn flow(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        src_port: u16,
        dst_port: u16,
        protocol: u8,
    ) -> FlowStats {
        let key = key(src, dst, src_port, dst_port, protocol);
        self.flows().get(&key).copied().unwrap_or_else(|| {
            panic!("no flow {src}:{src_port} -> {dst}:{dst_port} proto {protocol}")
        })
    }

    fn events(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        assert_eq!(self.datapath.events.drain(&mut events), 0);
        events
    }
}

/// The default configuration, attaching in `mode`.
fn in_mode(mode: AttachMode) -> DatapathConfig {
    DatapathConfig {
        attach_mode: mode,
        ..DatapathConfig::default()
    }
}

fn key(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16, protocol: u8) -> FlowKey {
    let addr = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), 4u8),
        IpAddr::V6(v6) => (v6.octets(), 6u8),
    };
    let ((src_addr, ip_version), (dst_addr, _)) = (addr(src), addr(dst));
    FlowKey {
        src_addr,
        dst_addr,
        src_port,
        dst_port,
        protocol,
        ip_version,
        _pad: [0; 2],
    }
}

fn setup() -> (TestNet, Monitor) {
    require_root();
    let net = TestNet::new(3).expect("test network");
    let monitor = Monitor::attach(&net);
    (net, monitor)
}

#[test]
fn icmp_is_counted_once_per_direction_over_ipv4_and_ipv6() {
    let (net, mut monitor) = setup();
    let (a, b) = (net.host(0), net.host(1));
    traffic::ping(a, b.ip4().into(), 4, 56).expect("ping");
    traffic::ping(a, b.ip6().into(), 4, 56).expect("ping -6");
    // IPv4: 20 + 8 + 56; IPv6: 40 + 8 + 56. Each packet crosses two
    // monitored veths and must be counted once.
    let cases = [
        (
            IpAddr::from(a.ip4()),
            IpAddr::from(b.ip4()),
            ip_proto::ICMP,
            84,
        ),
        (a.ip6().into(), b.ip6().into(), ip_proto::ICMPV6, 104),
    ];
    for (src, dst, protocol, len) in cases {
        let request = monitor.flow(src, dst, 0, 0, protocol);
        let reply = monitor.flow(dst, src, 0, 0, protocol);
        assert_eq!(
            (request.packets, request.bytes),
            (4, 4 * len),
            "{src} -> {dst}"
        );
        assert_eq!((reply.packets, reply.bytes), (4, 4 * len), "{dst} -> {src}");
        assert_eq!(request.ifindex, a.veth_ifindex());
        assert_eq!(reply.ifindex, b.veth_ifindex());
        assert_eq!(request.direction, Direction::FromContainer as u8);
    }
}

#[test]
fn udp_is_counted_exactly_with_payload_samples_and_one_new_flow_event() {
    let (net, mut monitor) = setup();
    let (a, c) = (net.host(0), net.host(2));
    let payloads: [&[u8]; 3] = [&[b'x'; 10], &[b'y'; 100], &[b'z'; 1000]];
    for (dst, header) in [(IpAddr::from(c.ip4()), 28u64), (c.ip6().into(), 48)] {
        let src = match dst {
            IpAddr::V4(_) => IpAddr::from(a.ip4()),
            IpAddr::V6(_) => a.ip6().into(),
        };
        let port = traffic::udp_send(a, c, dst, 5353, &payloads).expect("udp");
        let flow = monitor.flow(src, dst, port, 5353, ip_proto::UDP);
        assert_eq!(flow.packets, 3);
        assert_eq!(flow.bytes, 3 * header + 1110);
        assert!(
            !monitor
                .flows()
                .contains_key(&key(dst, src, 5353, port, ip_proto::UDP)),
            "no reply was sent"
        );

        let flow_key = key(src, dst, port, 5353, ip_proto::UDP);
        let events = monitor.events();
        let new_flow = events
            .iter()
            .filter(|e| matches!(e, Event::NewFlow { key, .. } if *key == flow_key))
            .count();
        assert_eq!(new_flow, 1, "one new-flow event for {src} -> {dst}");
        let samples: Vec<&[u8]> = events
            .iter()
            .filter_map(|e| match e {
                Event::Payload { key, data, .. } if *key == flow_key => Some(data.as_slice()),
                _ => None,
            })
            .collect();
        // The first two payload packets, up to 128 bytes each.
        assert_eq!(samples, vec![payloads[0], &payloads[1][..100]]);

        // And the other way, from the receiver's port back to the sender's:
        // its own flow, counted on the other veth.
        let answers: [&[u8]; 2] = [&[b'r'; 7], &[b's'; 700]];
        let back_port = traffic::udp_send(c, a, src, port, &answers).expect("udp back");
        let back = monitor.flow(dst, src, back_port, port, ip_proto::UDP);
        assert_eq!((back.packets, back.bytes), (2, 2 * header + 707));
        assert_eq!(back.ifindex, c.veth_ifindex());
        assert_eq!(
            monitor.flow(src, dst, port, 5353, ip_proto::UDP).packets,
            3,
            "unchanged"
        );
    }
}

#[test]
fn tcp_segments_bytes_and_flags_match_the_senders_own_counters() {
    let (net, mut monitor) = setup();
    let (client, server) = (net.host(1), net.host(2));
    let request = b"GET / HTTP/1.1\r\nHost: crossmon\r\n\r\n";
    let response = vec![b'r'; 3000];
    let cases = [
        (IpAddr::from(client.ip4()), IpAddr::from(server.ip4()), 40),
        (client.ip6().into(), server.ip6().into(), 60),
    ];
    for (client_ip, server_ip, header) in cases {
        let exchange = traffic::tcp_exchange(client, server, server_ip, 8080, request, &response)
            .expect("tcp");
        assert_eq!(
            (exchange.client.retransmitted, exchange.server.retransmitted),
            (0, 0),
            "retransmissions make bytes unpredictable"
        );
        let there = monitor.flow(
            client_ip,
            server_ip,
            exchange.client.port,
            8080,
            ip_proto::TCP,
        );
        let back = monitor.flow(
            server_ip,
            client_ip,
            8080,
            exchange.client.port,
            ip_proto::TCP,
        );
        // Every segment has a bare TCP header; SYN and SYN-ACK add the MSS option.
        assert_eq!(there.packets, exchange.client.segments);
        assert_eq!(
            there.bytes,
            header * exchange.client.segments + 4 + request.len() as u64
        );
        assert_eq!(back.packets, exchange.server.segments);
        assert_eq!(
            back.bytes,
            header * exchange.server.segments + 4 + response.len() as u64
        );
        assert_eq!(
            (there.syn, there.syn_ack, there.rst, there.fin),
            (1, 0, 0, 1)
        );
        assert_eq!((back.syn, back.syn_ack, back.rst, back.fin), (0, 1, 0, 1));

        let flow_key = key(
            client_ip,
            server_ip,
            exchange.client.port,
            8080,
            ip_proto::TCP,
        );
        let first_payload = monitor.events().into_iter().find_map(|e| match e {
            Event::Payload { key, data, .. } if key == flow_key => Some(data),
            _ => None,
        });
        assert_eq!(first_payload.as_deref(), Some(&request[..]));
    }
}

#[test]
fn traffic_with_the_host_is_counted_on_the_container_veth() {
    let (net, mut monitor) = setup();
    let a = net.host(0);
    traffic::ping(a, net.gateway_v4().into(), 3, 100).expect("ping gateway");
    let out = monitor.flow(
        a.ip4().into(),
        net.gateway_v4().into(),
        0,
        0,
        ip_proto::ICMP,
    );
    let back = monitor.flow(
        net.gateway_v4().into(),
        a.ip4().into(),
        0,
        0,
        ip_proto::ICMP,
    );
    assert_eq!((out.packets, out.bytes), (3, 3 * 128));
    assert_eq!((back.packets, back.bytes), (3, 3 * 128));
    assert_eq!(back.direction, Direction::ToContainer as u8);
    assert_eq!(back.ifindex, a.veth_ifindex());
}

/// Frames from host 0 to host 1 that arrive on host 1 (other traffic, such
/// as multicast from the bridge, filtered out).
fn deliver(
    from: &RawSocket,
    to: &RawSocket,
    src: Mac,
    dst: Mac,
    frames: &[Vec<u8>],
) -> Vec<Vec<u8>> {
    for frame in frames {
        from.send(frame).expect("send frame");
    }
    to.received(Duration::from_millis(300))
        .expect("receive")
        .into_iter()
        .filter(|f| f.len() >= 12 && f[..6] == dst && f[6..12] == src)
        .collect()
}

#[test]
fn malformed_frames_cross_unchanged_and_connectivity_is_unharmed() {
    require_root();
    let net = TestNet::new(2).expect("test network");
    let (a, b) = (net.host(0), net.host(1));
    let (src, dst) = (a.mac(), b.mac());
    let (ip_a, ip_b) = (a.ip4().octets(), b.ip4().octets());
    let udp = frames::ipv4(
        ip_a,
        ip_b,
        ip_proto::UDP,
        &[],
        0,
        &frames::udp(1000, 2000, b"payload"),
    );
    let mut bad_ihl = udp.clone();
    bad_ihl[0] = 0x43;
    let with_options = frames::ipv4(
        ip_a,
        ip_b,
        ip_proto::UDP,
        &[0x94, 4, 0, 0],
        0,
        &frames::udp(1000, 2000, b"opt"),
    );
    let fragment = frames::ipv4(ip_a, ip_b, ip_proto::UDP, &[], 0x0010, &[7; 32]);
    let short_tcp = frames::ipv4(
        ip_a,
        ip_b,
        ip_proto::TCP,
        &[],
        0,
        &[0, 80, 0, 81, 0, 0, 0, 1],
    );
    let (ip6_a, ip6_b) = (a.ip6().octets(), b.ip6().octets());
    let chain = frames::ipv6(
        ip6_a,
        ip6_b,
        0,
        &frames::ipv6_ext(
            60,
            &frames::ipv6_ext(
                44,
                &frames::ipv6_fragment(ip_proto::UDP, 0, false, &frames::udp(1, 2, b"v6")),
            ),
        ),
    );
    let sent = vec![
        frames::ethernet(dst, src, ETH_P_IP, &bad_ihl),
        frames::ethernet(dst, src, ETH_P_IP, &with_options),
        frames::ethernet(dst, src, ETH_P_IP, &fragment),
        frames::ethernet(dst, src, ETH_P_IP, &short_tcp),
        frames::ethernet(dst, src, ETH_P_IP, &udp[..12]),
        frames::ethernet(dst, src, ETH_P_IP, &[]),
        frames::ethernet(dst, src, ETH_P_IPV6, &chain),
        frames::ethernet(dst, src, ETH_P_IPV6, &chain[..30]),
        frames::vlan_tagged(dst, src, 7, ETH_P_IP, &udp),
        frames::ethernet(dst, src, 0x88b5, &[0xff; 50]),
    ];
    let from = RawSocket::open(a).expect("raw socket on host 0");
    let to = RawSocket::open(b).expect("raw socket on host 1");
    // What the bridge delivers without crossmon (a bridge under
    // br_netfilter may drop some of these itself) is the reference.
    let bare = deliver(&from, &to, src, dst, &sent);
    assert!(!bare.is_empty(), "the bridge delivered none of the frames");

    let monitor = Monitor::attach(&net);
    let monitored = deliver(&from, &to, src, dst, &sent);
    assert_eq!(monitored, bare, "crossmon changed what crossed the bridge");
    assert!(
        monitor
            .datapath
            .counters
            .read()
            .expect("counters")
            .malformed
            >= 4
    );
    traffic::ping(a, b.ip4().into(), 2, 56).expect("connectivity after malformed frames");
    traffic::ping(a, b.ip6().into(), 2, 56).expect("IPv6 connectivity after malformed frames");
}

#[test]
fn a_second_tcx_program_after_crossmon_sees_every_packet() {
    assert!(
        datapath::preflight::has_tcx(),
        "needs TCX links (kernel 6.6+): clsact filters of two crossmons would remove each other's"
    );
    let (net, mut first) = setup();
    let mut second = Monitor::attach(&net);
    let (a, b) = (net.host(0), net.host(1));
    let (_, chain) =
        SchedClassifier::query_tcx(a.veth_name(), TcAttachType::Ingress).expect("query tcx");
    assert_eq!(chain.len(), 2, "both programs in the TCX chain");
    traffic::ping(a, b.ip4().into(), 5, 56).expect("ping");
    for monitor in [&mut first, &mut second] {
        let request = monitor.flow(a.ip4().into(), b.ip4().into(), 0, 0, ip_proto::ICMP);
        let reply = monitor.flow(b.ip4().into(), a.ip4().into(), 0, 0, ip_proto::ICMP);
        assert_eq!((request.packets, reply.packets), (5, 5));
    }
}

#[test]
fn detaching_leaves_no_program_on_the_interfaces() {
    let (net, mut monitor) = setup();
    assert_eq!(monitor.datapath.programs.detach_all(), 3);
    // TCX links and clsact filters alike, whichever this kernel used.
    for host in net.hosts() {
        let left = tc_hooks::programs_on(host.veth_name());
        assert!(left.is_empty(), "{} still has {left:?}", host.veth_name());
    }
}

#[test]
fn legacy_clsact_filters_count_the_same_and_are_removed_on_detach() {
    require_root();
    let net = TestNet::new(2).expect("test network");
    let config = DatapathConfig {
        attach_mode: AttachMode::Clsact,
        ..DatapathConfig::default()
    };
    let mut monitor = Monitor::attach_with(&net, config);
    let (a, b) = (net.host(0), net.host(1));
    let filters = |direction: &str| {
        let out = std::process::Command::new("tc")
            .args(["filter", "show", "dev", a.veth_name(), direction])
            .output()
            .expect("tc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        filters("ingress").contains("from_container"),
        "{}",
        filters("ingress")
    );
    assert!(
        filters("egress").contains("to_container"),
        "{}",
        filters("egress")
    );
    traffic::ping(a, b.ip4().into(), 3, 56).expect("ping");
    let request = monitor.flow(a.ip4().into(), b.ip4().into(), 0, 0, ip_proto::ICMP);
    let reply = monitor.flow(b.ip4().into(), a.ip4().into(), 0, 0, ip_proto::ICMP);
    assert_eq!((request.packets, request.bytes), (3, 3 * 84));
    assert_eq!((reply.packets, reply.bytes), (3, 3 * 84));
    assert_eq!(monitor.datapath.programs.detach_all(), 2);
    assert_eq!(
        (filters("ingress"), filters("egress")),
        (String::new(), String::new())
    );
}

/// Two hosts, watched with room for 8 flows: the tests' 20 flows or more
/// make the kernel evict.
fn small_map() -> (TestNet, Monitor) {
    require_root();
    let net = TestNet::new(2).expect("test network");
    let config = DatapathConfig {
        flow_capacity: 8,
        ..DatapathConfig::default()
    };
    let monitor = Monitor::attach_with(&net, config);
    (net, monitor)
}

#[test]
fn idle_flows_are_taken_out_and_evicted_flows_keep_their_counts() {
    // 20 UDP flows.
    let (net, mut monitor) = small_map();
    let (a, b) = (net.host(0), net.host(1));
    let table = std::sync::RwLock::new(FlowTable::new());
    let mut ports = Vec::new();
    for i in 0..20u16 {
        // Read after every flow, as the agent does on its interval: what
        // was read before an eviction stays counted.
        let port =
            traffic::udp_send(a, b, b.ip4().into(), 6000 + i, &[b"one", b"two"]).expect("udp");
        ports.push((port, 6000 + i));
        agent::poll_once(
            &mut monitor.datapath.flows,
            &table,
            monitor::clock::monotonic_ns(),
            agent::Cutoffs::idle(0),
        )
        .expect("poll");
    }
    for (src_port, dst_port) in &ports {
        let record = table
            .read()
            .expect("table")
            .get(&key(
                a.ip4().into(),
                b.ip4().into(),
                *src_port,
                *dst_port,
                ip_proto::UDP,
            ))
            .expect("every flow is still known");
        assert_eq!((record.stats.packets, record.stats.bytes), (2, 2 * 31));
    }
    assert!(
        monitor.flows().len() <= 8,
        "the LRU holds at most its capacity"
    );

    // Everything is idle against a cutoff of "now": taken out of the kernel
    // map (atomically with its last counts) and out of the table.
    let now = monitor::clock::monotonic_ns();
    agent::poll_once(
        &mut monitor.datapath.flows,
        &table,
        now,
        agent::Cutoffs::idle(now),
    )
    .expect("poll");
    assert!(monitor.flows().is_empty());
    assert!(table.read().expect("table").is_empty());
}

#[test]
fn closed_connections_end_after_their_linger_even_once_evicted() {
    // 20 connections, two flows each: the kernel evicts closed ones before
    // their linger ends.
    let (net, mut monitor) = small_map();
    let (client, server) = (net.host(0), net.host(1));
    let table = std::sync::RwLock::new(FlowTable::new());
    // Nothing idles, nothing has lingered long enough.
    let lingering = agent::Cutoffs {
        idle_ns: 0,
        closed_ns: 0,
    };
    let mut exchanges = HashMap::new();
    let mut evicted = 0;
    for port in 7000..7020u16 {
        // One in four aborted: an RST, no FIN.
        let close = if port % 4 == 0 {
            Close::Reset
        } else {
            Close::Fin
        };
        let server_at = (IpAddr::from(server.ip4()), port);
        let exchange =
            traffic::tcp_connection(client, server, server_at, (b"?", b"!"), close, None)
                .expect("tcp");
        assert_eq!(
            (exchange.client.retransmitted, exchange.server.retransmitted),
            (0, 0),
            "a retransmission makes the counts unpredictable"
        );
        exchanges.insert(port, (exchange, close));
        // Read after every connection, as the agent does on its interval:
        // what was read before an eviction stays counted.
        let now = monitor::clock::monotonic_ns();
        let outcome =
            agent::poll_once(&mut monitor.datapath.flows, &table, now, lingering).expect("poll");
        assert!(outcome.expired.is_empty(), "nothing ends within the linger");
        evicted += outcome.evicted;
    }
    assert!(evicted >= 32, "only {evicted} flows evicted");

    // The linger is over for every connection, in the map or evicted.
    let over = agent::Cutoffs {
        idle_ns: 0,
        closed_ns: monitor::clock::monotonic_ns(),
    };
    let outcome =
        agent::poll_once(&mut monitor.datapath.flows, &table, over.closed_ns, over).expect("poll");
    assert!(table.read().expect("table").is_empty());
    assert!(monitor.flows().is_empty());
    let mut ended: HashMap<(u16, u16), FlowStats> = outcome
        .expired
        .iter()
        .map(|flow| {
            let key = flow.record.key;
            ((key.src_port, key.dst_port), flow.record.stats)
        })
        .collect();
    assert_eq!(ended.len(), 40);
    for (port, (exchange, close)) in &exchanges {
        let there = ended
            .remove(&(exchange.client.port, *port))
            .expect("request flow ended");
        let back = ended
            .remove(&(*port, exchange.client.port))
            .expect("response flow ended");
        // The client's FIN, or its RST; the server's FIN only on a close.
        let (client_fin, client_rst, server_fin) = match close {
            Close::Fin => (1, 0, 1),
            Close::Reset => (0, 1, 0),
        };
        assert_eq!(
            (there.packets, there.bytes, there.fin, there.rst),
            (
                exchange.client.segments,
                exchange.client.ip_bytes(20),
                client_fin,
                client_rst
            ),
            "port {port}"
        );
        assert_eq!(
            (back.packets, back.bytes, back.fin, back.rst),
            (
                exchange.server.segments,
                exchange.server.ip_bytes(20),
                server_fin,
                0
            ),
            "port {port}"
        );
    }
}

#[test]
fn traffic_routed_between_two_bridges_is_counted_once() {
    require_root();
    let one = TestNet::new(1).expect("first network");
    let two = TestNet::new(1).expect("second network");
    let _routing = integration_tests::net::Routed::between(&one, &two).expect("routing");
    let mut monitor = Monitor::attach(&one);
    let (a, b) = (one.host(0), two.host(0));
    monitor
        .datapath
        .programs
        .attach(b.veth_name(), b.veth_ifindex(), two.bridge_ifindex())
        .expect("attach");
    // a -> bridge one -> routed by the host -> bridge two -> b: the packet
    // crosses two watched veths and the host's IP layer, and is counted at
    // a's veth only (and the replies at b's).
    traffic::ping(a, b.ip4().into(), 3, 56).expect("routed ping");
    let there = monitor.flow(a.ip4().into(), b.ip4().into(), 0, 0, ip_proto::ICMP);
    let back = monitor.flow(b.ip4().into(), a.ip4().into(), 0, 0, ip_proto::ICMP);
    // The host decrements TTL but keeps the length: 84 bytes each way.
    assert_eq!((there.packets, there.bytes), (3, 3 * 84));
    assert_eq!((back.packets, back.bytes), (3, 3 * 84));
    assert_eq!(
        (there.ifindex, back.ifindex),
        (a.veth_ifindex(), b.veth_ifindex())
    );
}

/// A network namespace of its own with a bridge and two "containers" on
/// veths enslaved to it: the shape of an overlay network's sandbox, whose
/// ifindexes are its own. Deleted on drop.
struct Sandbox {
    names: [String; 3],
}

impl Sandbox {
    /// The sandbox's veths get the ifindexes `indexes` (to collide with
    /// the root namespace's on purpose); the containers `10.99.0.1` and
    /// `10.99.0.2`.
    fn new(indexes: [u32; 2]) -> Sandbox {
        let pid = std::process::id();
        let names = ["sb", "sx", "sy"].map(|n| format!("xm{n}{pid}"));
        let sandbox = Sandbox { names };
        let [sb, sx, sy] = &sandbox.names;
        for ns in [sb, sx, sy] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&["-n", sb, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", sb, "link", "set", "br0", "up"]);
        for (i, (container, index)) in [sx, sy].into_iter().zip(indexes).enumerate() {
            let veth = format!("veth{i}");
            ip(&[
                "-n",
                sb,
                "link",
                "add",
                &veth,
                "index",
                &index.to_string(),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                container,
            ]);
            ip(&["-n", sb, "link", "set", &veth, "master", "br0", "up"]);
            let address = format!("10.99.0.{}/24", i + 1);
            ip(&["-n", container, "addr", "add", &address, "dev", "eth0"]);
            ip(&["-n", container, "link", "set", "eth0", "up"]);
        }
        sandbox
    }

    fn path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/var/run/netns/{}", self.names[0]))
    }

    /// `ping -c COUNT` from the first container to the second.
    fn ping(&self, count: u32) {
        ping_in(&self.names[1], count, [10, 99, 0, 2].into());
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        delete_namespaces(&self.names);
    }
}

/// `ping -c COUNT TO` in the network namespace `ns`.
fn ping_in(ns: &str, count: u32, to: IpAddr) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-q", "-c"])
        .arg(count.to_string())
        .args(["-i", "0.2", "-W", "2"])
        .arg(to.to_string())
        .output()
        .expect("ping");
    assert!(out.status.success(), "{out:?}");
}

fn delete_namespaces(names: &[String]) {
    for ns in names {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", ns])
            .status();
    }
}

fn ip(args: &[&str]) {
    integration_tests::net::ip(args).unwrap_or_else(|err| panic!("ip {args:?}: {err:#}"));
}

#[test]
fn veths_in_another_namespace_are_counted_apart_from_the_hosts_with_the_same_ifindexes() {
    require_root();
    for mode in [AttachMode::Auto, AttachMode::Clsact] {
        let net = TestNet::new(2).expect("test network");
        let config = in_mode(mode);
        let mut monitor = Monitor::attach_with(&net, config);
        let (a, b) = (net.host(0), net.host(1));
        let indexes = [a.veth_ifindex(), b.veth_ifindex()];
        let sandbox = Sandbox::new(indexes);
        for index in indexes {
            monitor
                .datapath
                .programs
                .attach_in(&sandbox.path(), 1, index, Side::Host)
                .expect("attach in the sandbox");
        }
        assert_eq!(monitor.datapath.programs.sandbox_count(), 1);
        traffic::ping(a, b.ip4().into(), 3, 56).expect("ping");
        sandbox.ping(2);
        let (x, y): (IpAddr, IpAddr) = ("10.99.0.1".parse().unwrap(), "10.99.0.2".parse().unwrap());
        let cases = [
            (a.ip4().into(), b.ip4().into(), 3, a.veth_ifindex()),
            (b.ip4().into(), a.ip4().into(), 3, b.veth_ifindex()),
            (x, y, 2, veth_id(1, indexes[0])),
            (y, x, 2, veth_id(1, indexes[1])),
        ];
        for (src, dst, packets, ifindex) in cases {
            let flow = monitor.flow(src, dst, 0, 0, ip_proto::ICMP);
            assert_eq!(
                (flow.packets, flow.ifindex),
                (packets, ifindex),
                "{src} -> {dst} ({mode:?})"
            );
        }
        assert_eq!(monitor.datapath.programs.detach_all(), 4);
        assert_eq!(monitor.datapath.programs.sandbox_count(), 0);
    }
}

/// A container's own interface (a macvlan or ipvlan one, with no end
/// outside) is watched inside its namespace with the hooks swapped: what
/// the container sends is counted at its egress, from the container, once,
/// though the receiver's ingress sees it too; what reaches it from the host
/// is counted at its ingress, to the container. The hosts' `eth0` stand
/// for such interfaces: veths, which every kernel of the VM tier has.
#[test]
fn interfaces_inside_containers_count_with_the_hooks_swapped() {
    require_root();
    for mode in [AttachMode::Auto, AttachMode::Clsact] {
        let net = TestNet::new(2).expect("test network");
        let config = in_mode(mode);
        let mut monitor = Monitor {
            datapath: datapath::load(&config).expect("programs load"),
        };
        let (a, b) = (net.host(0), net.host(1));
        let mut ids = Vec::new();
        for (tag, host) in [(1u8, a), (2u8, b)] {
            // SAFETY: a NUL-terminated name.
            let index = host
                .run(|| Ok(unsafe { libc::if_nametoindex(c"eth0".as_ptr()) }))
                .expect("eth0's index");
            assert_ne!(index, 0, "eth0 in {}", host.netns_name());
            let netns = std::path::PathBuf::from(format!("/var/run/netns/{}", host.netns_name()));
            monitor
                .datapath
                .programs
                .attach_in(&netns, tag, index, Side::Container)
                .expect("attach inside the namespace");
            ids.push(veth_id(tag, index));
        }
        traffic::ping(a, b.ip4().into(), 3, 56).expect("ping between the hosts");
        let gateway: IpAddr = net.gateway_v4().into();
        let out = std::process::Command::new("ping")
            .args(["-q", "-c", "2", "-i", "0.2", "-W", "1"])
            .arg(a.ip4().to_string())
            .output()
            .expect("ping");
        assert!(out.status.success(), "{out:?}");
        let cases = [
            (
                a.ip4().into(),
                b.ip4().into(),
                3,
                ids[0],
                Direction::FromContainer,
            ),
            (
                b.ip4().into(),
                a.ip4().into(),
                3,
                ids[1],
                Direction::FromContainer,
            ),
            (gateway, a.ip4().into(), 2, ids[0], Direction::ToContainer),
            (a.ip4().into(), gateway, 2, ids[0], Direction::FromContainer),
        ];
        for (src, dst, packets, id, direction) in cases {
            let flow = monitor.flow(src, dst, 0, 0, ip_proto::ICMP);
            assert_eq!(
                (flow.packets, flow.ifindex, flow.direction),
                (packets, id, direction as u8),
                "{src} -> {dst} ({mode:?})"
            );
        }
        assert_eq!(monitor.datapath.programs.detach_all(), 2);
        assert_eq!(monitor.datapath.programs.sandbox_count(), 0);
    }
}

/// The drivers of container interfaces with no end outside: the
/// interfaces of Docker's `ipvlan` and `macvlan` networks.
#[derive(Clone, Copy, Debug)]
enum Driver {
    /// L2 mode (Docker's default): siblings share the parent's MAC
    /// address, and the driver delivers between them by IP address.
    Ipvlan,
    /// Bridge mode (Docker's default): the driver switches between
    /// siblings by MAC address.
    Macvlan,
}

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Ipvlan => "ipvlan",
            Driver::Macvlan => "macvlan",
        }
    }

    /// `ip link add … type` and its mode.
    fn link_type(self) -> [&'static str; 3] {
        match self {
            Driver::Ipvlan => ["ipvlan", "mode", "l2"],
            Driver::Macvlan => ["macvlan", "mode", "bridge"],
        }
    }
}

/// Two "containers", each with an interface of `driver` as its `eth0`
/// (`10.98.0.1/24` and `10.98.0.2/24`), on one parent: one end of a veth
/// pair in a namespace of its own, as a host's NIC is in the root one.
/// Namespaces deleted on drop, with everything in them.
struct Siblings {
    driver: Driver,
    /// The parent's namespace, then the containers'.
    names: [String; 3],
}

impl Siblings {
    fn new(driver: Driver) -> Siblings {
        let pid = std::process::id();
        let names = ["p", "0", "1"].map(|n| format!("xm{}{n}{pid}", driver.name()));
        let siblings = Siblings { driver, names };
        let [parent, c0, c1] = &siblings.names;
        for ns in [parent, c0, c1] {
            siblings.ip(&["netns", "add", ns]);
            siblings.ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        siblings.ip(&[
            "-n", parent, "link", "add", "wire0", "type", "veth", "peer", "name", "wire1",
        ]);
        for wire in ["wire0", "wire1"] {
            siblings.ip(&["-n", parent, "link", "set", wire, "up"]);
        }
        for (i, container) in [c0, c1].into_iter().enumerate() {
            let child = format!("child{i}");
            let mut add = vec!["-n", parent, "link", "add", &child, "link", "wire0", "type"];
            add.extend(driver.link_type());
            siblings.ip(&add);
            siblings.ip(&["-n", parent, "link", "set", &child, "netns", container]);
            siblings.ip(&["-n", container, "link", "set", &child, "name", "eth0"]);
            let address = format!("{}/24", Self::address(i));
            siblings.ip(&["-n", container, "addr", "add", &address, "dev", "eth0"]);
            siblings.ip(&["-n", container, "link", "set", "eth0", "up"]);
        }
        siblings
    }

    /// `ip ARGS`, failing the test with one line that names the driver: a
    /// kernel without it answers "Unknown device type".
    fn ip(&self, args: &[&str]) {
        integration_tests::net::ip(args)
            .unwrap_or_else(|err| panic!("{} siblings: {err:#}", self.driver.name()));
    }

    fn address(i: usize) -> IpAddr {
        IpAddr::from([10, 98, 0, i as u8 + 1])
    }

    /// Container `i`'s namespace.
    fn path(&self, i: usize) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/var/run/netns/{}", self.names[i + 1]))
    }

    /// The ifindex of container `i`'s `eth0`.
    fn index(&self, i: usize) -> u32 {
        let path = self.path(i).display().to_string();
        let index = integration_tests::net::in_netns(&path, || {
            // SAFETY: a NUL-terminated name.
            Ok(unsafe { libc::if_nametoindex(c"eth0".as_ptr()) })
        })
        .expect("eth0's index");
        assert_ne!(index, 0, "eth0 in {path}");
        index
    }

    /// `ping -c COUNT` from container `from` to the other one.
    fn ping(&self, from: usize, count: u32) {
        ping_in(&self.names[from + 1], count, Self::address(1 - from));
    }
}

impl Drop for Siblings {
    fn drop(&mut self) {
        delete_namespaces(&self.names);
    }
}

/// Real siblings of `driver` watched inside their namespaces with the
/// hooks swapped, as the agent watches such containers: what one sends the
/// other, switched inside the driver on the sender's CPU, is counted once,
/// at the sender's egress under its own id, though the receiver's ingress
/// sees it too.
fn siblings_are_counted_once_at_the_senders_egress(driver: Driver) {
    require_root();
    for mode in [AttachMode::Auto, AttachMode::Clsact] {
        let siblings = Siblings::new(driver);
        let config = in_mode(mode);
        let mut monitor = Monitor {
            datapath: datapath::load(&config).expect("programs load"),
        };
        let mut ids = Vec::new();
        for (tag, i) in [(1u8, 0), (2u8, 1)] {
            let index = siblings.index(i);
            monitor
                .datapath
                .programs
                .attach_in(&siblings.path(i), tag, index, Side::Container)
                .expect("attach inside the namespace");
            ids.push(veth_id(tag, index));
        }
        // 3 requests one way and 2 the other: each direction carries 5
        // echo packets of 84 bytes (a 56-byte payload).
        siblings.ping(0, 3);
        siblings.ping(1, 2);
        let (a, b) = (Siblings::address(0), Siblings::address(1));
        for (src, dst, id) in [(a, b, ids[0]), (b, a, ids[1])] {
            let flow = monitor.flow(src, dst, 0, 0, ip_proto::ICMP);
            assert_eq!(
                (flow.packets, flow.bytes, flow.ifindex, flow.direction),
                (5, 5 * 84, id, Direction::FromContainer as u8),
                "{} {src} -> {dst} ({mode:?})",
                driver.name()
            );
        }
        assert_eq!(monitor.datapath.programs.detach_all(), 2);
        assert_eq!(monitor.datapath.programs.sandbox_count(), 0);
    }
}

#[test]
#[ignore = "needs the ipvlan driver, which this host's kernel lacks: run in the VM kernel tier by cargo xtask test"]
fn ipvlan_siblings_are_counted_once_at_the_senders_egress() {
    siblings_are_counted_once_at_the_senders_egress(Driver::Ipvlan);
}

#[test]
fn macvlan_siblings_are_counted_once_at_the_senders_egress() {
    siblings_are_counted_once_at_the_senders_egress(Driver::Macvlan);
}

/// `n` ifindexes free in this namespace, far above those the host hands
/// out, that share one slot of the counted veths' direct-mapped copy.
fn free_ifindexes_sharing_a_slot(n: usize) -> Vec<u32> {
    let in_use: Vec<u32> = std::fs::read_dir("/sys/class/net")
        .expect("listing interfaces")
        .filter_map(|entry| {
            let path = entry.ok()?.path().join("ifindex");
            std::fs::read_to_string(path).ok()?.trim().parse().ok()
        })
        .collect();
    let first = 2_000_000 + std::process::id() % 1_000_000;
    (first..)
        .filter(|i| !in_use.contains(i) && counted_slot(*i) == counted_slot(first))
        .take(n)
        .collect()
}

/// Every packet `to_container` does not know counted on the way in is
/// sampled here (a sample rate of 1), before the flow's own check for a
/// duplicate: a sample at the receiver's veth is a packet taken for one
/// that no watched veth counted.
#[test]
fn veths_sharing_a_counted_slot_are_told_apart() {
    require_root();
    let shared = free_ifindexes_sharing_a_slot(3);
    let chosen: Vec<Option<u32>> = shared.iter().copied().map(Some).chain([None]).collect();
    let net = TestNet::with_veth_ifindexes(&chosen).expect("test network");
    let (a, b, c, d) = (net.host(0), net.host(1), net.host(2), net.host(3));
    let mut monitor = Monitor {
        datapath: datapath::load(&DatapathConfig {
            sample_rate: 1,
            ..DatapathConfig::default()
        })
        .expect("programs load"),
    };
    // `c` stays unwatched: what it sends is counted where it arrives.
    for host in [a, b, d] {
        monitor
            .datapath
            .programs
            .attach(host.veth_name(), host.veth_ifindex(), net.bridge_ifindex())
            .expect("attach");
    }
    let payloads: [&[u8]; 5] = [b"crossmon"; 5];
    // Where the datagrams' flow was counted, and how many of them the
    // receiver's veth took for uncounted.
    let send = |monitor: &mut Monitor, from: &Host, to: &Host| {
        monitor.events();
        let port = traffic::udp_send(from, to, to.ip4().into(), 7000, &payloads).expect("udp");
        let flow = monitor.flow(
            from.ip4().into(),
            to.ip4().into(),
            port,
            7000,
            ip_proto::UDP,
        );
        assert_eq!(flow.packets, 5, "{} -> {}", from.ip4(), to.ip4());
        let uncounted = monitor
            .events()
            .iter()
            .filter(|event| {
                matches!(event, Event::PacketSample { seen, .. }
                    if seen.ifindex == to.veth_ifindex() && seen.direction == Direction::ToContainer)
            })
            .count();
        (flow.ifindex, uncounted)
    };
    // Sender, receiver, where the flow is counted, datagrams the
    // receiver's veth took for uncounted.
    let check = |monitor: &mut Monitor, cases: &[(&Host, &Host, &Host, usize, &str)]| {
        for &(from, to, counted_at, uncounted, label) in cases {
            let expected = (counted_at.veth_ifindex(), uncounted);
            assert_eq!(send(monitor, from, to), expected, "{label}");
        }
    };
    // `a` and `b` share the slot: known counted through the hash map.
    check(
        &mut monitor,
        &[(a, b, a, 0, "a, watched"), (c, b, b, 5, "c, unwatched")],
    );
    monitor
        .datapath
        .programs
        .detach(a.veth_ifindex())
        .expect("detach");
    // The slot is left to `b`, named there alone.
    check(
        &mut monitor,
        &[
            (a, b, b, 5, "a, no longer watched"),
            (b, d, b, 0, "b, alone in the slot"),
            (c, b, b, 5, "c, unwatched"),
        ],
    );
}
