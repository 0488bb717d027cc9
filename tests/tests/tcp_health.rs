//! TCP health between real containers: the handshake's round trip as the
//! veths see it, direct and behind a slow link (tbf with a queue on the
//! server's side: this kernel has no netem), the histogram moving by the
//! queue's delay, in the flow API and the flow log too; resets counted by
//! sender and receiver; SYNs retransmitted (the server drops them) counted
//! as the client's kernel counts them, from `tcp:tcp_retransmit_skb`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{net::UdpSocket, process::Command, time::Duration};

use integration_tests::{
    agent::{get, get_json, wait_until, Agent},
    docker::{docker_ready, DockerNetwork},
    net::in_netns,
    scratch::Scratch,
};
use serde_json::Value;

/// `crossmon_tcp_handshake_rtt_seconds` of the pair: cumulative bucket
/// counts by bound, the sum and the count.
fn rtt(agent: &Agent, client: &str, server: &str) -> (Vec<(String, f64)>, f64, f64) {
    let (_, text) = get(agent.addr, "/metrics").unwrap();
    let labels = format!("destination=\"{server}\",source=\"{client}\"");
    let mut buckets = Vec::new();
    let (mut sum, mut count) = (0.0, 0.0);
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("crossmon_tcp_handshake_rtt_seconds") else {
            continue;
        };
        let value: f64 = rest.rsplit(' ').next().unwrap().parse().unwrap();
        if !rest.contains(&labels)
            && !rest.contains(&format!("source=\"{client}\",destination=\"{server}\""))
        {
            continue;
        }
        if let Some(bucket) = rest.strip_prefix("_bucket{") {
            let le = bucket
                .split("le=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            buckets.push((le.to_owned(), value));
        } else if rest.starts_with("_sum") {
            sum = value;
        } else if rest.starts_with("_count") {
            count = value;
        }
    }
    (buckets, sum, count)
}

fn bucket(buckets: &[(String, f64)], le: &str) -> f64 {
    buckets
        .iter()
        .find(|(bound, _)| bound == le)
        .map_or(-1.0, |(_, n)| *n)
}

/// `Tcp: RetransSegs` of the namespace at `netns`.
fn retrans_segs(netns: &str) -> f64 {
    let output = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["cat", "/proc/net/snmp"])
        .output()
        .expect("nsenter");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next().unwrap(), tcp.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "RetransSegs")
        .unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// A blocking connect with TCP_SYNCNT 1: the errno it fails with.
fn connect_with_one_retry(target: std::net::SocketAddrV4) -> i32 {
    // SAFETY: plain socket calls on a descriptor this function owns, with
    // buffers of the sizes passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_SYNCNT,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let address = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: target.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(target.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let result = libc::connect(
            fd,
            (&raw const address).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        let errno = if result == 0 {
            0
        } else {
            *libc::__errno_location()
        };
        libc::close(fd);
        errno
    }
}

fn resets(agent: &Agent, sender: &str, receiver: &str) -> f64 {
    counter(agent, "crossmon_tcp_resets_total", sender, receiver)
}

fn counter(agent: &Agent, family: &str, sender: &str, receiver: &str) -> f64 {
    let (_, text) = get(agent.addr, "/metrics").unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter(|l| {
            l.contains(&format!("source=\"{sender}\""))
                && l.contains(&format!("destination=\"{receiver}\""))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        // From 0, where `sum` starts from -0, which prints as "-0".
        .fold(0.0, |total, value| total + value)
}

/// An agent writing a flow log in a scratch directory, flows ending after
/// 2 s idle (so their `end` lines come soon).
fn agent_with_flow_log(what: &str) -> (Scratch, std::path::PathBuf, Agent) {
    let scratch = Scratch::new(what);
    let flow_log = scratch.dir().join("flows.jsonl");
    let agent = Agent::start(&[
        "--flow-log",
        flow_log.to_str().unwrap(),
        "--idle-timeout",
        "2s",
    ]);
    (scratch, flow_log, agent)
}

/// The flow log's lines so far.
fn flow_log_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn handshake_round_trips_show_a_slow_links_delay_and_resets_are_counted() {
    docker_ready();
    let net = DockerNetwork::create("tcp", &[]).expect("network");
    let client = net.run("client");
    let server = net.run("server");
    let (_scratch, flow_log, agent) = agent_with_flow_log("tcp");
    agent.wait_attached(&[&client.name, &server.name]);
    let server_ip = server.ip(&net.name).unwrap();
    client.ping(&server_ip, 1);

    client.tcp_sessions(&server, &server_ip, 7000, 5, b"fast");
    wait_until("five round trips", || {
        rtt(&agent, &client.name, &server.name).2 == 5.0
    });
    let (buckets, undelayed_sum, _) = rtt(&agent, &client.name, &server.name);
    assert_eq!(
        bucket(&buckets, "0.01"),
        5.0,
        "a bridge between two containers: under 10 ms: {buckets:?}"
    );

    // A slow link: this kernel has no netem (CONFIG_NET_SCH_NETEM is not
    // set), so the server's link is shaped by tbf at 1 Mbit/s and, before
    // each connection, 84 kB queued on it (60 datagrams of 1400 bytes to
    // the client's discard port): its SYN-ACK waits behind them, about
    // (84 kB - the 10 kB burst) / 125 kB/s = 0.59 s.
    let netns = server.netns().unwrap();
    let tc = |args: &[&str]| {
        let status = Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .arg("tc")
            .args(args)
            .status()
            .expect("tc (package iproute2)");
        assert!(status.success(), "tc {args:?}");
    };
    tc(&[
        "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "1mbit", "burst", "10kb", "limit",
        "1mb",
    ]);
    let client_ip = client.ip(&net.name).unwrap();
    let flood = in_netns(&netns, || Ok(UdpSocket::bind(("0.0.0.0", 0))?)).unwrap();
    let mut slow = Vec::new();
    for port in 7001..7006 {
        for _ in 0..60 {
            flood.send_to(&[0; 1400], (client_ip.as_str(), 9)).unwrap();
        }
        client.tcp_sessions(&server, &server_ip, port, 1, b"slow");
        // The API shows it on the client's flow (before the 2 s idle
        // timeout takes it).
        let mut shown = None;
        wait_until("the round trip in /api/v1/flows", || {
            shown = get_json(agent.addr, "/api/v1/flows")
                .as_array()
                .unwrap()
                .iter()
                .find(|f| f["dst_port"] == port && f["src"]["name"] == client.name.as_str())
                .and_then(|f| f["handshake_rtt_ms"].as_f64());
            shown.is_some()
        });
        slow.extend(shown);
        // The queue drains before the next round.
        std::thread::sleep(Duration::from_millis(700));
    }
    wait_until("ten round trips", || {
        rtt(&agent, &client.name, &server.name).2 == 10.0
    });
    let (buckets, sum, _) = rtt(&agent, &client.name, &server.name);
    assert_eq!(
        bucket(&buckets, "0.25"),
        5.0,
        "the delayed five take over 250 ms: {buckets:?}"
    );
    assert_eq!(bucket(&buckets, "1"), 10.0, "and under 1 s: {buckets:?}");
    println!(
        "handshake round trips: 5 direct, 5 behind a 0.59 s queue; sum {sum:.4} s, {:.1} ms each on average of the delayed: {buckets:?}",
        (sum - undelayed_sum) * 1000.0 / 5.0
    );
    assert_eq!(slow.len(), 5, "one per delayed connection: {slow:?}");
    assert!(
        slow.iter().all(|ms| (250.0..1000.0).contains(ms)),
        "{slow:?}"
    );
    tc(&["qdisc", "del", "dev", "eth0", "root"]);

    client.connect_refused(&server_ip, 7100..7103);
    wait_until("three resets from the server", || {
        resets(&agent, &server.name, &client.name) == 3.0
    });

    // Forced retransmissions: the server drops SYNs to 7200; the client
    // gives up soon (TCP_SYNCNT 1: it fails after about 3 s).
    let iptables = |args: &[&str]| {
        let status = Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .arg("iptables")
            .args(args)
            .status()
            .expect("iptables");
        assert!(status.success(), "iptables {args:?}");
    };
    iptables(&["-I", "INPUT", "-p", "tcp", "--dport", "7200", "-j", "DROP"]);
    let target: std::net::SocketAddrV4 = format!("{server_ip}:7200").parse().unwrap();
    let client_netns = client.netns().unwrap();
    // The pair's series counts since the agent started, the kernel's count
    // below is taken over this attempt alone, and the slow connections
    // above may still retransmit (their data waited behind the queue). Both
    // starting points are taken at the end of a quiet window: the kernel's
    // count unchanged over 1.5 s (seven of the agent's 200 ms polls), the
    // series read at its end, so that it holds every retransmission the
    // kernel had counted at its start. This narrows the race, it cannot
    // close it: a timer still pending after the window would retransmit
    // into the attempt's kernel count but not into its flow's.
    let mut kernel = retrans_segs(&client_netns);
    let mut quiet = None;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(1500));
        let series = counter(
            &agent,
            "crossmon_tcp_retransmits_total",
            &client.name,
            &server.name,
        );
        let now = retrans_segs(&client_netns);
        if now == kernel {
            quiet = Some((kernel, series));
            break;
        }
        kernel = now;
    }
    let (before, series_before) =
        quiet.expect("the client's namespace retransmitted in each of 10 windows of 1.5 s");
    let refused = in_netns(&client_netns, || Ok(connect_with_one_retry(target))).unwrap();
    assert_eq!(refused, libc::ETIMEDOUT);
    // The kernel's own count (Tcp: RetransSegs of the client's namespace):
    // two here, the second just before it gives up.
    let retransmitted = retrans_segs(&client_netns) - before;
    assert!(retransmitted >= 1.0);
    // Each value crossmon shows on the way, for a failure to tell "never
    // counted" from "counted differently".
    let mut shown = None;
    wait_until("the client's retransmissions counted", || {
        let counted = counter(
            &agent,
            "crossmon_tcp_retransmits_total",
            &client.name,
            &server.name,
        ) - series_before;
        if shown != Some(counted) {
            println!(
                "crossmon_tcp_retransmits_total: {counted} more than the {series_before} \
                 before (the kernel: {retransmitted})"
            );
            shown = Some(counted);
        }
        counted == retransmitted
    });
    println!("retransmissions: the kernel counted {retransmitted}, crossmon the same");
    // The attempt's line in the flow log (it ends after 2 s idle) carries
    // the same count.
    wait_until("the retransmitted attempt in the flow log", || {
        flow_log_lines(&flow_log).iter().any(|l| {
            l["dst_port"] == 7200
                && l["event"] == "end"
                && l["tcp"]["retransmits"].as_f64() == Some(retransmitted)
        })
    });

    wait_until("the delayed connections in the flow log", || {
        let lines: Vec<Value> = flow_log_lines(&flow_log)
            .into_iter()
            .filter(|l| {
                (7001..7006).contains(&l["dst_port"].as_u64().unwrap_or(0)) && l["event"] == "end"
            })
            .collect();
        lines.len() == 5
            && lines.iter().all(|l| {
                l["tcp"]["handshake_rtt_ms"]
                    .as_f64()
                    .is_some_and(|ms| (250.0..1000.0).contains(&ms))
            })
    });
}

/// Docker isolates two networks from each other: what one container sends
/// to a container of the other is dropped by netfilter on the host, and
/// counted as `docker_isolation`, exactly once a packet; the flow log's
/// line of the unanswered flow says so.
#[test]
fn an_isolation_drop_is_counted_with_its_reason() {
    docker_ready();
    let one = DockerNetwork::create("iso-a", &[]).expect("network");
    let two = DockerNetwork::create("iso-b", &[]).expect("network");
    let sender = one.run("sender");
    let target = two.run("target");
    let (_scratch, flow_log, agent) = agent_with_flow_log("isolation");
    agent.wait_attached(&[&sender.name, &target.name]);
    let target_ip = target.ip(&two.name).unwrap();
    // Five datagrams, each dropped on the host between the two bridges
    // (the first waits for the gateway's ARP answer, none is lost).
    in_netns(&sender.netns().unwrap(), || {
        let socket = UdpSocket::bind(("0.0.0.0", 0))?;
        for _ in 0..5 {
            socket.send_to(b"blocked", (target_ip.as_str(), 9999))?;
        }
        Ok(())
    })
    .unwrap();
    wait_until("five isolation drops", || {
        drops(&agent, &sender.name, "docker_isolation") == 5.0
    });
    // Where crossmon infers "unanswered" from silence, the flow log says
    // what the kernel did.
    let mut line = Value::Null;
    wait_until("the unanswered flow in the flow log", || {
        line = flow_log_lines(&flow_log)
            .into_iter()
            .find(|l| l["dst_port"] == 9999 && l["event"] == "end")
            .unwrap_or_default();
        !line.is_null()
    });
    assert_eq!(line["outcome"], "unanswered", "{line}");
    assert_eq!(line["kernel_drop"]["reason"], "docker_isolation", "{line}");
    assert_eq!(line["kernel_drop"]["packets"], 5, "{line}");
    assert_eq!(
        drops(&agent, &sender.name, "docker_isolation"),
        5.0,
        "no more"
    );
}

fn drops(agent: &Agent, source: &str, reason: &str) -> f64 {
    let (_, text) = get(agent.addr, "/metrics").unwrap();
    let labels = [
        format!("source=\"{source}\""),
        format!("reason=\"{reason}\""),
    ];
    text.lines()
        .filter(|l| l.starts_with("crossmon_drops_total{") && labels.iter().all(|x| l.contains(x)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}
