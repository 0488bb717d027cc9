//! The classifiers loaded in the running kernel and run on synthetic frames
//! through BPF_PROG_TEST_RUN: exact parsing, counting and events, and the
//! guarantee that every frame passes unchanged with TC_ACT_UNSPEC.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{
    collections::HashMap,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use integration_tests::{frames::*, require_root};
use monitor::datapath::{
    self, Datapath, DatapathConfig, Event, PROGRAM_FROM_CONTAINER, PROGRAM_TO_CONTAINER,
};
use monitor_common::{ip_proto, tcp_flag, FlowKey, FlowStats};

const TC_ACT_UNSPEC: i32 = -1;
const A: Mac = [0x02, 0, 0, 0, 0, 0x0a];
const B: Mac = [0x02, 0, 0, 0, 0, 0x0b];
const IP_A: [u8; 4] = [10, 9, 0, 2];
const IP_B: [u8; 4] = [10, 9, 0, 3];
const IP6_A: [u8; 16] = [0xfd, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const IP6_B: [u8; 16] = [0xfd, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3];

fn load(config: DatapathConfig) -> Datapath {
    require_root();
    datapath::load(&config).expect("the programs load and verify")
}

/// Runs `program` on `frame`; every verdict must be TC_ACT_UNSPEC and the
/// frame must come back byte for byte.
fn pass(datapath: &mut Datapath, program: &str, frame: &[u8]) {
    let (verdict, out) = datapath
        .programs
        .test_run(program, frame)
        .expect("test run");
    assert_eq!(verdict, TC_ACT_UNSPEC, "{program} verdict on {frame:02x?}");
    assert_eq!(out, frame, "{program} changed the frame");
}

/// An untagged IPv4 frame from A to B carrying `transport`.
fn a_to_b(protocol: u8, transport: &[u8]) -> Vec<u8> {
    ethernet(
        B,
        A,
        ETH_P_IP,
        &ipv4(IP_A, IP_B, protocol, &[], 0, transport),
    )
}

fn flows(datapath: &mut Datapath) -> HashMap<FlowKey, FlowStats> {
    let mut flows = HashMap::new();
    datapath
        .flows
        .for_each(|key, stats| {
            flows.insert(*key, *stats);
        })
        .expect("reading the flow map");
    flows
}

fn events(datapath: &mut Datapath) -> Vec<Event> {
    let mut events = Vec::new();
    assert_eq!(datapath.events.drain(&mut events), 0, "undecodable records");
    events
}

/// The times the new-flow events in `events` carry.
fn opened_at(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::NewFlow { seen, .. } => Some(seen.timestamp_ns),
            _ => None,
        })
        .collect()
}

fn key(
    src: [u8; 16],
    dst: [u8; 16],
    src_port: u16,
    dst_port: u16,
    protocol: u8,
    ip_version: u8,
) -> FlowKey {
    FlowKey {
        src_addr: src,
        dst_addr: dst,
        src_port,
        dst_port,
        protocol,
        ip_version,
        _pad: [0; 2],
    }
}

/// The key of a TCP flow from A to B.
fn tcp_a_to_b(src_port: u16, dst_port: u16) -> FlowKey {
    key(
        v4_mapped(IP_A),
        v4_mapped(IP_B),
        src_port,
        dst_port,
        ip_proto::TCP,
        4,
    )
}

#[test]
fn ipv4_options_udp_counted_with_payload_samples() {
    let mut dp = load(DatapathConfig::default());
    let payload = b"0123456789abcdefghijklmnopqrstuv"; // 32 bytes
    let options = [0x94, 0x04, 0, 0]; // Router Alert, IHL 6
    let frame = ethernet(
        B,
        A,
        ETH_P_IP,
        &ipv4(
            IP_A,
            IP_B,
            ip_proto::UDP,
            &options,
            0,
            &udp(4000, 5000, payload),
        ),
    );
    for _ in 0..3 {
        pass(&mut dp, PROGRAM_FROM_CONTAINER, &frame);
    }
    let flows = flows(&mut dp);
    assert_eq!(flows.len(), 1);
    let stats = flows[&key(
        v4_mapped(IP_A),
        v4_mapped(IP_B),
        4000,
        5000,
        ip_proto::UDP,
        4,
    )];
    assert_eq!(stats.packets, 3);
    assert_eq!(stats.bytes, 3 * (24 + 8 + 32));
    assert!(stats.first_seen_ns > 0 && stats.last_seen_ns >= stats.first_seen_ns);

    let events = events(&mut dp);
    assert_eq!(
        opened_at(&events),
        [stats.first_seen_ns],
        "one new-flow event per flow, stamped when its first packet was"
    );
    let payloads: Vec<&Vec<u8>> = events
        .iter()
        .filter_map(|e| match e {
            Event::Payload {
                data, payload_len, ..
            } => {
                assert_eq!(*payload_len, 32);
                Some(data)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        payloads.len(),
        2,
        "the first two payload packets are sampled"
    );
    assert!(payloads.iter().all(|data| data.as_slice() == payload));
}

/// A counted packet is stamped with the timer tick it came in: the tick
/// clock the load measured lands on CLOCK_MONOTONIC, not only on some
/// clock that counts in ticks.
#[test]
fn a_flows_latest_packet_is_stamped_with_the_tick_it_came_in() {
    let mut dp = load(DatapathConfig::default());
    let clock = dp.tick_clock.clone().expect("the load measured the tick");
    let frame = a_to_b(ip_proto::UDP, &udp(4100, 5100, b"x"));
    let key = key(
        v4_mapped(IP_A),
        v4_mapped(IP_B),
        4100,
        5100,
        ip_proto::UDP,
        4,
    );
    pass(&mut dp, PROGRAM_FROM_CONTAINER, &frame);
    let first_seen = flows(&mut dp)[&key].first_seen_ns;
    for sent in 2..=6 {
        std::thread::sleep(std::time::Duration::from_millis(25));
        let before = monitor::clock::monotonic_ns();
        pass(&mut dp, PROGRAM_FROM_CONTAINER, &frame);
        let after = monitor::clock::monotonic_ns();
        let stats = flows(&mut dp)[&key];
        assert_eq!(stats.packets, sent);
        assert_eq!(
            stats.first_seen_ns, first_seen,
            "the first packet's time stays"
        );
        let last = stats.last_seen_ns;
        assert_eq!(
            last.wrapping_sub(clock.offset_ns) % clock.tick_ns,
            0,
            "{last} is a tick of {clock:?}"
        );
        // The tick before the packet, measured microseconds late (a
        // quarter tick of room, as the measure allows); a second tick of
        // room below for a tick interrupt that came late.
        assert!(
            last <= after + clock.tick_ns / 4 && last + 2 * clock.tick_ns > before,
            "packet sent between {before} and {after}, stamped {last}"
        );
    }
}

#[test]
fn vlan_tagged_tcp_flags_are_counted() {
    let mut dp = load(DatapathConfig::default());
    let segments = [
        tcp_flag::SYN,
        tcp_flag::SYN | tcp_flag::ACK,
        tcp_flag::ACK | tcp_flag::PSH,
        tcp_flag::FIN | tcp_flag::ACK,
        tcp_flag::RST,
    ];
    for flags in segments {
        let frame = vlan_tagged(
            B,
            A,
            42,
            ETH_P_IP,
            &ipv4(
                IP_A,
                IP_B,
                ip_proto::TCP,
                &[],
                0,
                &tcp(40000, 80, flags, b""),
            ),
        );
        pass(&mut dp, PROGRAM_TO_CONTAINER, &frame);
    }
    let stats = flows(&mut dp)[&tcp_a_to_b(40000, 80)];
    assert_eq!(stats.packets, 5);
    assert_eq!(stats.bytes, 5 * 40);
    assert_eq!(
        (stats.syn, stats.syn_ack, stats.fin, stats.rst),
        (1, 1, 1, 1)
    );
    assert_eq!(
        stats.tcp_flags,
        tcp_flag::SYN | tcp_flag::ACK | tcp_flag::PSH | tcp_flag::FIN | tcp_flag::RST
    );
    assert_eq!(
        stats.direction,
        monitor_common::Direction::ToContainer as u8
    );
    // A SYN carries no payload: its new-flow event is a record of its own.
    assert_eq!(opened_at(&events(&mut dp)), [stats.first_seen_ns]);
}

/// A client back on the ports of a connection whose flow is still kept:
/// its SYN opens the flow's next connection, a retransmitted SYN does
/// not, and the flow's flags start over with each.
#[test]
fn a_syn_past_the_handshake_opens_the_flows_next_connection() {
    let mut dp = load(DatapathConfig::default());
    let (syn, ack) = (tcp_flag::SYN, tcp_flag::ACK);
    let segments = [
        // The first: its SYN retransmitted, the handshake's ACK, a FIN.
        syn,
        syn,
        ack,
        tcp_flag::FIN | ack,
        // The second, aborted after its SYN (a SYN scanner's RST).
        syn,
        tcp_flag::RST,
        // The third, back after the RST, completed.
        syn,
        ack,
        tcp_flag::PSH | ack,
    ];
    for flags in segments {
        let frame = a_to_b(ip_proto::TCP, &tcp(40000, 80, flags, b""));
        pass(&mut dp, PROGRAM_FROM_CONTAINER, &frame);
    }
    let stats = flows(&mut dp)[&tcp_a_to_b(40000, 80)];
    assert_eq!(stats.packets, 9);
    assert_eq!((stats.syn, stats.fin, stats.rst), (4, 1, 1));
    assert_eq!((stats.connections, stats.handshakes), (3, 2));
    assert_eq!(stats.tcp_flags, syn | ack | tcp_flag::PSH, "the third's");
    // One flow, one new-flow event.
    assert_eq!(opened_at(&events(&mut dp)), [stats.first_seen_ns]);
}

/// Two CPUs counting one flow at the same moment: the flow's one entry is
/// added to atomically, so neither loses the other's packets, bytes or
/// flag counts (plain adds lost 2,868 of these 400,000 packets).
#[test]
fn two_cpus_counting_one_flow_at_once_lose_nothing() {
    const RUNS: u32 = 200_000;
    let mut dp = load(DatapathConfig::default());
    let segment = tcp(40000, 443, tcp_flag::FIN | tcp_flag::ACK, b"bye");
    let frame = a_to_b(ip_proto::TCP, &segment);
    dp.programs
        .time_runs_on_cpus(PROGRAM_FROM_CONTAINER, &frame, RUNS, 2)
        .expect("runs on two CPUs at once");
    let stats = flows(&mut dp)[&key(
        v4_mapped(IP_A),
        v4_mapped(IP_B),
        40000,
        443,
        ip_proto::TCP,
        4,
    )];
    let packets = u64::from(2 * RUNS);
    assert_eq!(stats.packets, packets);
    assert_eq!(stats.bytes, packets * (20 + 20 + 3));
    assert_eq!(stats.fin, 2 * RUNS);
    assert_eq!(stats.tcp_flags, tcp_flag::FIN | tcp_flag::ACK);
}

#[test]
fn fragments_after_the_first_have_no_ports() {
    let mut dp = load(DatapathConfig::default());
    // The first fragment of a 1000-byte datagram: its UDP length covers
    // fragments still to come, which is no malformation.
    let mut datagram = udp(5000, 6000, &[1; 16]);
    datagram[4..6].copy_from_slice(&1008u16.to_be_bytes());
    let first = ipv4(IP_A, IP_B, ip_proto::UDP, &[], 0x2000, &datagram);
    let later = ipv4(IP_A, IP_B, ip_proto::UDP, &[], 0x0003, &[2; 40]);
    pass(
        &mut dp,
        PROGRAM_FROM_CONTAINER,
        &ethernet(B, A, ETH_P_IP, &first),
    );
    pass(
        &mut dp,
        PROGRAM_FROM_CONTAINER,
        &ethernet(B, A, ETH_P_IP, &later),
    );
    let flows = flows(&mut dp);
    assert_eq!(
        flows[&key(
            v4_mapped(IP_A),
            v4_mapped(IP_B),
            5000,
            6000,
            ip_proto::UDP,
            4
        )]
            .bytes,
        20 + 8 + 16
    );
    assert_eq!(
        flows[&key(v4_mapped(IP_A), v4_mapped(IP_B), 0, 0, ip_proto::UDP, 4)].bytes,
        20 + 40
    );
    assert_eq!(dp.counters.read().expect("counters").malformed, 0);
    let sampled = events(&mut dp).into_iter().find_map(|e| match e {
        Event::Payload {
            data, payload_len, ..
        } => Some((data, payload_len)),
        _ => None,
    });
    assert_eq!(
        sampled,
        Some((vec![1; 16], 16)),
        "the payload this fragment carries"
    );
}

#[test]
fn ipv6_extension_chain_is_walked_to_the_transport_header() {
    let mut dp = load(DatapathConfig::default());
    const HOP: u8 = 0;
    const DEST: u8 = 60;
    const FRAG: u8 = 44;
    let datagram = udp(7000, 8000, b"hello");
    let chain = ipv6_ext(
        DEST,
        &ipv6_ext(FRAG, &ipv6_fragment(ip_proto::UDP, 0, true, &datagram)),
    );
    let packet = ipv6(IP6_A, IP6_B, HOP, &chain);
    pass(
        &mut dp,
        PROGRAM_FROM_CONTAINER,
        &ethernet(B, A, ETH_P_IPV6, &packet),
    );
    let later = ipv6(
        IP6_A,
        IP6_B,
        FRAG,
        &ipv6_fragment(ip_proto::UDP, 2, false, &[0; 24]),
    );
    pass(
        &mut dp,
        PROGRAM_FROM_CONTAINER,
        &ethernet(B, A, ETH_P_IPV6, &later),
    );
    let icmp = ipv6(IP6_B, IP6_A, ip_proto::ICMPV6, &[128, 0, 0, 0, 0, 1, 0, 1]);
    pass(
        &mut dp,
        PROGRAM_FROM_CONTAINER,
        &ethernet(A, B, ETH_P_IPV6, &icmp),
    );

    let flows = flows(&mut dp);
    assert_eq!(flows.len(), 3);
    let first = flows[&key(IP6_A, IP6_B, 7000, 8000, ip_proto::UDP, 6)];
    assert_eq!((first.packets, first.bytes), (1, packet.len() as u64));
    assert_eq!(
        flows[&key(IP6_A, IP6_B, 0, 0, ip_proto::UDP, 6)].bytes,
        40 + 8 + 24
    );
    assert_eq!(
        flows[&key(IP6_B, IP6_A, 0, 0, ip_proto::ICMPV6, 6)].bytes,
        48
    );
}

#[test]
fn malformed_and_truncated_frames_pass_unchanged() {
    let mut dp = load(DatapathConfig::default());
    let good_udp = ipv4(IP_A, IP_B, ip_proto::UDP, &[], 0, &udp(1, 2, b"x"));
    let mut bad_ihl = good_udp.clone();
    bad_ihl[0] = 0x43;
    let mut bad_version = good_udp.clone();
    bad_version[0] = 0x75;
    let mut total_below_header = good_udp.clone();
    total_below_header[2..4].copy_from_slice(&10u16.to_be_bytes());
    let short_tcp = ipv4(
        IP_A,
        IP_B,
        ip_proto::TCP,
        &[],
        0,
        &[0, 80, 0, 81, 0, 0, 0, 1],
    );
    let long_chain = {
        // Nine hop-by-hop headers: one more than the walk's bound.
        let mut chain = udp(9, 9, b"deep");
        chain = ipv6_ext(ip_proto::UDP, &chain);
        for _ in 0..8 {
            chain = ipv6_ext(0, &chain);
        }
        ipv6(IP6_A, IP6_B, 0, &chain)
    };
    let cut_chain = {
        let full = ipv6(
            IP6_A,
            IP6_B,
            0,
            &ipv6_ext(60, &ipv6_ext(ip_proto::UDP, &udp(1, 1, b""))),
        );
        full[..44].to_vec()
    };
    // Frames cut inside the IP header are refused by the kernel's test-run
    // harness itself (it reads the IP header to build a socket); they cross
    // a real veth in the namespace tests instead.
    let frames: Vec<Vec<u8>> = vec![
        ethernet(B, A, ETH_P_IP, &bad_ihl),
        ethernet(B, A, ETH_P_IP, &bad_version),
        ethernet(B, A, ETH_P_IP, &total_below_header),
        ethernet(B, A, ETH_P_IP, &short_tcp),
        ethernet(B, A, ETH_P_IPV6, &long_chain),
        ethernet(B, A, ETH_P_IPV6, &cut_chain),
        ethernet(B, A, ETH_P_8021Q, &[0, 1]),
        ethernet(B, A, 0x88cc, &[0xde, 0xad, 0xbe, 0xef]),
        ethernet(B, A, ETH_P_ARP, &[0, 1, 8]),
    ];
    // Towards the container first: the other order would make the second
    // run a duplicate of a flow counted from a container, and skipped.
    for frame in &frames {
        pass(&mut dp, PROGRAM_TO_CONTAINER, frame);
        pass(&mut dp, PROGRAM_FROM_CONTAINER, frame);
    }
    let kernel = dp.counters.read().expect("counters");
    // Per program: bad IHL, bad version, total length below the header,
    // the cut TCP header, the cut IPv6 chain, the cut VLAN tag. A chain
    // deeper than the walk's bound is not malformed, only not followed.
    assert_eq!(kernel.malformed, 2 * 6);
    assert_eq!(kernel.non_ip, 2);
    let flows = flows(&mut dp);
    // The cut TCP header and the cut or too-deep IPv6 chains are still
    // counted, without ports.
    assert_eq!(
        flows[&key(v4_mapped(IP_A), v4_mapped(IP_B), 0, 0, ip_proto::TCP, 4)].packets,
        2
    );
    assert_eq!(
        flows[&key(IP6_A, IP6_B, 0, 0, 0, 6)].packets,
        2,
        "too-deep chain"
    );
    assert_eq!(
        flows[&key(IP6_A, IP6_B, 0, 0, 60, 6)].packets,
        2,
        "cut chain"
    );
    assert_eq!(flows.len(), 3);
}

#[test]
fn arp_from_a_container_is_reported_and_not_towards_it() {
    let mut dp = load(DatapathConfig::default());
    let reply = ethernet(B, A, ETH_P_ARP, &arp(2, A, IP_B, B, IP_A));
    pass(&mut dp, PROGRAM_FROM_CONTAINER, &reply);
    pass(&mut dp, PROGRAM_TO_CONTAINER, &reply);
    let events = events(&mut dp);
    assert_eq!(events.len(), 1);
    let Event::Arp { eth_src, arp, .. } = &events[0] else {
        panic!("expected an ARP event, got {events:?}");
    };
    assert_eq!(*eth_src, A);
    assert_eq!(arp.operation, Some(2));
    assert_eq!(arp.sender_mac, Some(A));
    assert_eq!(arp.sender_ip, Some(IP_B.into()));
    assert_eq!(arp.target_ip, Some(IP_A.into()));
}

#[test]
fn capture_sizes_and_random_samples_follow_the_settings() {
    let config = DatapathConfig {
        payload_bytes: 16,
        payload_packets: 1,
        sample_rate: 1,
        ..DatapathConfig::default()
    };
    let mut dp = load(config);
    let payload: Vec<u8> = (0..200).collect();
    let frame = a_to_b(
        ip_proto::TCP,
        &tcp(1234, 80, tcp_flag::ACK | tcp_flag::PSH, &payload),
    );
    pass(&mut dp, PROGRAM_FROM_CONTAINER, &frame);
    pass(&mut dp, PROGRAM_FROM_CONTAINER, &frame);
    let events = events(&mut dp);
    let payloads: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Payload {
                data, payload_len, ..
            } => Some((data.clone(), *payload_len)),
            _ => None,
        })
        .collect();
    assert_eq!(payloads, vec![(payload[..16].to_vec(), 200)]);
    let samples: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::PacketSample {
                data, frame_len, ..
            } => Some((data.clone(), *frame_len)),
            _ => None,
        })
        .collect();
    assert_eq!(samples.len(), 2, "1-in-1 samples every packet");
    assert!(samples
        .iter()
        .all(|(data, len)| data.as_slice() == &frame[..128] && *len == frame.len() as u32));
}

#[test]
fn events_that_do_not_fit_the_ring_are_counted_as_lost() {
    // One page of ring buffer holds only a few 576-byte capture records.
    let config = DatapathConfig {
        ring_bytes: 4096,
        sample_rate: 1,
        payload_bytes: 0,
        ..DatapathConfig::default()
    };
    let mut dp = load(config);
    let frame = ethernet(B, A, 0x88b5, &[0; 46]);
    for _ in 0..50 {
        pass(&mut dp, PROGRAM_FROM_CONTAINER, &frame);
    }
    let received = events(&mut dp)
        .iter()
        .filter(|e| matches!(e, Event::PacketSample { .. }))
        .count() as u64;
    let lost = dp.counters.read().expect("counters").lost_packet_sample;
    assert!(lost > 0, "a one-page ring cannot hold 50 samples");
    assert_eq!(
        received + lost,
        50,
        "every sample is either delivered or counted lost"
    );
}

/// Whether the ring's reader was woken since the last call: its fd in an
/// edge-triggered epoll set, which a wakeup readies once.
struct Wakeups(OwnedFd);

impl Wakeups {
    fn watch(ring: &impl AsRawFd) -> Self {
        // SAFETY: a plain syscall.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(epoll >= 0, "epoll_create1");
        // SAFETY: a new fd, owned by nothing else.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        let mut interest = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: both fds are open; `interest` is read during the call.
        let added = unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                ring.as_raw_fd(),
                &mut interest,
            )
        };
        assert_eq!(added, 0, "epoll_ctl");
        Self(epoll)
    }

    fn since_last(&self) -> bool {
        let mut ready = libc::epoll_event { events: 0, u64: 0 };
        // SAFETY: one event's room; a zero timeout never blocks.
        let n = unsafe { libc::epoll_wait(self.0.as_raw_fd(), &mut ready, 1, 0) };
        assert!(n >= 0, "epoll_wait");
        n == 1
    }
}

/// The programs wake the agent early once a quarter of the ring waits,
/// then at each thirty-second of the ring filled past it, not at every
/// record: each wakeup is a self-interrupt on the CPU that sent it.
#[test]
fn the_reader_is_woken_past_a_quarter_of_the_ring_by_steps_not_by_every_record() {
    // 64 KiB: a quarter is 256 new-flow records of 64 bytes (56 and the
    // kernel's 8-byte header), a thirty-second 32 of them.
    let mut dp = load(DatapathConfig {
        ring_bytes: 64 * 1024,
        payload_bytes: 0,
        ..DatapathConfig::default()
    });
    let wakeups = Wakeups::watch(&dp.events);
    let mut woken_by = Vec::new();
    for n in 1..=768u16 {
        let syn = a_to_b(ip_proto::TCP, &tcp(n, 80, tcp_flag::SYN, &[]));
        pass(&mut dp, PROGRAM_FROM_CONTAINER, &syn);
        if wakeups.since_last() {
            woken_by.push(n);
        }
    }
    let expected: Vec<u16> = (256..=768).step_by(32).collect();
    assert_eq!(woken_by, expected, "the records that woke the reader");
    let opened = events(&mut dp)
        .iter()
        .filter(|e| matches!(e, Event::NewFlow { .. }))
        .count();
    assert_eq!(opened, 768, "every new flow's event is in the ring");
}

#[test]
fn with_new_flow_events_off_flows_are_counted_and_nothing_is_sent() {
    let config = DatapathConfig {
        new_flow_events: false,
        payload_bytes: 0,
        dns_events: false,
        ..DatapathConfig::default()
    };
    let mut dp = load(config);
    for port in 0..5u16 {
        let frame = a_to_b(ip_proto::UDP, &udp(4000 + port, 53, b"query"));
        pass(&mut dp, PROGRAM_FROM_CONTAINER, &frame);
        pass(&mut dp, PROGRAM_FROM_CONTAINER, &frame);
    }
    let flows = flows(&mut dp);
    assert_eq!(flows.len(), 5);
    assert!(flows.values().all(|stats| stats.packets == 2));
    assert_eq!(events(&mut dp), [], "counting only: no event at all");
}

/// Every packet of port 53 goes up whole (to 512 bytes), TCP and UDP,
/// both ways, beyond the flow's two payload samples; other ports do not.
#[test]
fn every_dns_packet_is_sent_up_whole() {
    let mut dp = load(DatapathConfig::default());
    let long_answer = [0xa5; 700];
    let frames = [
        (
            PROGRAM_FROM_CONTAINER,
            ipv4(IP_A, IP_B, ip_proto::UDP, &[], 0, &udp(4000, 53, b"query")),
        ),
        (
            PROGRAM_TO_CONTAINER,
            ipv4(
                IP_B,
                IP_A,
                ip_proto::UDP,
                &[],
                0,
                &udp(53, 4000, &long_answer),
            ),
        ),
        (
            PROGRAM_FROM_CONTAINER,
            ipv4(
                IP_A,
                IP_B,
                ip_proto::TCP,
                &[],
                0,
                &tcp(4001, 53, 0x18, b"\0\x05query"),
            ),
        ),
        (
            PROGRAM_FROM_CONTAINER,
            ipv4(IP_A, IP_B, ip_proto::UDP, &[], 0, &udp(4002, 5353, b"mdns")),
        ),
    ];
    for _ in 0..4 {
        for (program, packet) in &frames {
            pass(&mut dp, program, &ethernet(B, A, ETH_P_IP, packet));
        }
    }
    let dns: Vec<(u16, u8, u32, usize)> = events(&mut dp)
        .iter()
        .filter_map(|e| match e {
            Event::Dns {
                key,
                payload_len,
                data,
                ..
            } => Some((key.src_port, key.protocol, *payload_len, data.len())),
            _ => None,
        })
        .collect();
    let round = [
        (4000, ip_proto::UDP, 5, 5),
        (53, ip_proto::UDP, 700, monitor_common::MAX_CAPTURE),
        (4001, ip_proto::TCP, 7, 7),
    ];
    assert_eq!(
        dns,
        round.repeat(4),
        "each DNS packet of the four rounds, no other"
    );

    let mut off = load(DatapathConfig {
        dns_events: false,
        ..DatapathConfig::default()
    });
    for (program, packet) in &frames {
        pass(&mut off, program, &ethernet(B, A, ETH_P_IP, packet));
    }
    assert!(
        !events(&mut off)
            .iter()
            .any(|e| matches!(e, Event::Dns { .. })),
        "no DNS event when switched off"
    );
}

/// What the capture ring holds. The agent maps the ring only while a
/// capture runs (an unmapped ring drains nothing); records written before
/// stay in the kernel's ring until it is mapped.
fn captured(datapath: &mut Datapath) -> Vec<monitor::datapath::CapturedPacket> {
    datapath
        .capture
        .ring
        .open()
        .expect("mapping the capture ring");
    let mut packets = Vec::new();
    assert_eq!(
        datapath.capture.ring.drain(&mut packets),
        0,
        "undecodable records"
    );
    packets
}

/// BPF_PROG_TEST_RUN runs the programs on the loopback device.
const TEST_RUN_IFINDEX: u32 = 1;

fn capture_filter(capture_id: u32, snaplen: u32) -> monitor_common::CaptureFilter {
    monitor_common::CaptureFilter {
        capture_id,
        snaplen,
        peer: [0; 16],
        port: 0,
        protocol: 0,
        flags: 0,
    }
}

#[test]
fn without_a_capture_nothing_is_captured() {
    let mut dp = load(DatapathConfig::default());
    let frame = a_to_b(ip_proto::UDP, &udp(1000, 53, b"q"));
    pass(&mut dp, PROGRAM_FROM_CONTAINER, &frame);
    pass(&mut dp, PROGRAM_TO_CONTAINER, &frame);
    // Another veth's capture does not select these.
    dp.capture
        .filters
        .set(TEST_RUN_IFINDEX + 1000, &capture_filter(7, 1600))
        .unwrap();
    pass(&mut dp, PROGRAM_FROM_CONTAINER, &frame);
    pass(&mut dp, PROGRAM_TO_CONTAINER, &frame);
    assert_eq!(captured(&mut dp), vec![]);
    dp.capture.filters.clear(TEST_RUN_IFINDEX + 1000).unwrap();
    pass(&mut dp, PROGRAM_FROM_CONTAINER, &frame);
    assert_eq!(captured(&mut dp), vec![]);
}

#[test]
fn a_capture_keeps_only_the_frames_its_filter_matches_in_both_directions() {
    let mut dp = load(DatapathConfig::default());
    let to_b_53 = a_to_b(ip_proto::UDP, &udp(1000, 53, &[7; 300]));
    let from_b_53 = ethernet(
        A,
        B,
        ETH_P_IP,
        &ipv4(IP_B, IP_A, ip_proto::UDP, &[], 0, &udp(53, 1000, b"answer")),
    );
    let to_b_80 = a_to_b(ip_proto::TCP, &tcp(1001, 80, tcp_flag::SYN, &[]));
    let to_c_53 = ethernet(
        B,
        A,
        ETH_P_IP,
        &ipv4(
            IP_A,
            [10, 9, 0, 4],
            ip_proto::UDP,
            &[],
            0,
            &udp(1000, 53, b"q"),
        ),
    );
    let arp = arp_request(A, A, IP_A, IP_B);
    let filter = monitor_common::CaptureFilter {
        peer: v4_mapped(IP_B),
        port: 53,
        protocol: ip_proto::UDP,
        flags: monitor_common::CAPTURE_MATCH_PEER,
        ..capture_filter(42, 100)
    };
    dp.capture.filters.set(TEST_RUN_IFINDEX, &filter).unwrap();
    for frame in [&to_b_53, &to_b_80, &to_c_53, &arp] {
        pass(&mut dp, PROGRAM_FROM_CONTAINER, frame);
    }
    pass(&mut dp, PROGRAM_TO_CONTAINER, &from_b_53);
    let packets = captured(&mut dp);
    let seen: Vec<_> = packets
        .iter()
        .map(|p| {
            (
                p.capture_id,
                p.ifindex,
                p.direction,
                p.original_len,
                p.data.clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                42,
                TEST_RUN_IFINDEX,
                monitor_common::Direction::FromContainer,
                to_b_53.len() as u32,
                to_b_53[..100].to_vec()
            ),
            (
                42,
                TEST_RUN_IFINDEX,
                monitor_common::Direction::ToContainer,
                from_b_53.len() as u32,
                from_b_53.clone()
            ),
        ]
    );
    assert!(packets[0].timestamp_ns <= packets[1].timestamp_ns);

    // No criteria: every frame, ARP included, whole up to the snaplen.
    dp.capture
        .filters
        .set(TEST_RUN_IFINDEX, &capture_filter(43, 1600))
        .unwrap();
    for frame in [&to_b_53, &to_b_80, &to_c_53, &arp] {
        pass(&mut dp, PROGRAM_FROM_CONTAINER, frame);
    }
    let all: Vec<_> = captured(&mut dp).into_iter().map(|p| p.data).collect();
    assert_eq!(all, vec![to_b_53, to_b_80, to_c_53, arp]);

    dp.capture.filters.clear(TEST_RUN_IFINDEX).unwrap();
    pass(&mut dp, PROGRAM_FROM_CONTAINER, &from_b_53);
    assert_eq!(captured(&mut dp), vec![]);
}

#[test]
fn capture_records_that_do_not_fit_the_ring_are_counted_as_lost() {
    let mut dp = load(DatapathConfig {
        capture_ring_bytes: 4096,
        ..DatapathConfig::default()
    });
    dp.capture
        .filters
        .set(TEST_RUN_IFINDEX, &capture_filter(1, 1600))
        .unwrap();
    let frame = ethernet(B, A, 0x88b5, &[0; 46]);
    for _ in 0..20 {
        pass(&mut dp, PROGRAM_FROM_CONTAINER, &frame);
    }
    let received = captured(&mut dp).len() as u64;
    let lost = dp.capture.ring.lost().unwrap();
    assert!(lost > 0, "a one-page ring cannot hold 20 records");
    assert_eq!(
        received + lost,
        20,
        "every record delivered or counted lost"
    );
}
