//! DNS per container against real containers: Debian's dnsmasq runs in
//! one container's network namespace, another asks it over UDP and TCP.
//! `/api/v1/dns` then holds exactly those queries with their answers
//! (names, types, codes, addresses, latency), the flow log a line each,
//! `/metrics` the counts by container and code; ordinary lookups raise no
//! DNS alert, a tunnelling pattern (many distinct names under one domain,
//! each NXDOMAIN) raises `dns_tunnel` and `nxdomain_storm`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, UdpSocket},
    process::{Child, Command, Stdio},
    time::Duration,
};

use integration_tests::{
    agent::{get, get_json, wait_until, Agent},
    docker::{docker_ready, Container, DockerNetwork},
    net::in_netns,
    scratch::Scratch,
};
use monitor::datapath::dns;
use serde_json::Value;

/// dnsmasq serving `crossmon.test` from its command line, in the network
/// namespace of `container`; killed on drop.
struct Dnsmasq(Child);

impl Dnsmasq {
    fn start(container: &Container, ip: &str) -> Dnsmasq {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", container.netns().unwrap()))
            .args([
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--user=root",
                "--pid-file=",
                "--bind-interfaces",
                "--port=53",
                "--local=/crossmon.test/",
                "--host-record=db.crossmon.test,10.77.0.5",
                "--host-record=db.crossmon.test,10.77.0.6",
            ])
            .arg(format!("--listen-address={ip}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting dnsmasq (package dnsmasq-base; `cargo xtask setup` installs it)");
        Dnsmasq(child)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A query for `name` (type A) with id `id`.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.extend_from_slice(&[0, 0, 1, 0, 1]);
    out
}

/// Asks `server` over UDP from `netns` for each name; returns the answers.
fn ask_udp(netns: &str, server: &str, names: &[(u16, &str)]) -> Vec<dns::Message> {
    in_netns(netns, || {
        let socket = UdpSocket::bind(("0.0.0.0", 0))?;
        socket.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut answers = Vec::new();
        for (id, name) in names {
            socket.send_to(&query(*id, name), (server, 53))?;
            let mut buf = [0; 1500];
            let (len, _) = socket.recv_from(&mut buf)?;
            answers.push(dns::parse(&buf[..len]).expect("dnsmasq answers DNS"));
        }
        Ok(answers)
    })
    .unwrap()
}

fn ask_tcp(netns: &str, server: &str, id: u16, name: &str) -> dns::Message {
    in_netns(netns, || {
        let mut stream = TcpStream::connect((server, 53))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        let message = query(id, name);
        let mut framed = (message.len() as u16).to_be_bytes().to_vec();
        framed.extend(message);
        stream.write_all(&framed)?;
        let mut len = [0; 2];
        stream.read_exact(&mut len)?;
        let mut answer = vec![0; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut answer)?;
        Ok(dns::parse(&answer).expect("dnsmasq answers DNS"))
    })
    .unwrap()
}

fn addresses(message: &dns::Message) -> Vec<String> {
    let mut all: Vec<String> = message.answers.iter().map(|r| r.data.text()).collect();
    all.sort();
    all
}

fn metric(agent: &Agent, line_start: &str) -> Option<f64> {
    let (_, text) = get(agent.addr, "/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
}

fn dns_alerts(agent: &Agent) -> Vec<Value> {
    agent
        .alerts()
        .into_iter()
        .filter(|a| a["kind"] == "dns_tunnel" || a["kind"] == "nxdomain_storm")
        .collect()
}

#[test]
fn queries_and_answers_between_containers_are_recorded_exactly() {
    docker_ready();
    let net = DockerNetwork::create("dns", &[]).expect("network");
    let server = net.run("resolver");
    let client = net.run("asker");
    let scratch = Scratch::new("dns");
    let flow_log = scratch.dir().join("flows.jsonl");
    let agent = Agent::start(&["--flow-log", flow_log.to_str().unwrap()]);
    agent.wait_attached(&[&server.name, &client.name]);
    let server_ip = server.ip(&net.name).unwrap();
    let client_ip = client.ip(&net.name).unwrap();
    let _dnsmasq = Dnsmasq::start(&server, &server_ip);
    let netns = client.netns().unwrap();
    // dnsmasq listens once it has started: ask until it answers.
    wait_until("dnsmasq answering", || {
        in_netns(&netns, || {
            let socket = UdpSocket::bind(("0.0.0.0", 0))?;
            socket.set_read_timeout(Some(Duration::from_millis(300)))?;
            socket.send_to(&query(1, "db.crossmon.test"), (server_ip.as_str(), 53))?;
            Ok(socket.recv_from(&mut [0; 512]).is_ok())
        })
        .unwrap_or(false)
    });
    let asked = format!("{{container=\"{}\"", client.name);
    let count = |family: &str, labels: &str| {
        metric(&agent, &format!("{family}{asked}{labels}}}")).unwrap_or(0.0)
    };
    // Queries sent before dnsmasq listened are counted too: from here on
    // the counts must grow by exactly what is sent.
    wait_until("the warm-up answer counted", || {
        count("crossmon_dns_responses_total", ",rcode=\"NOERROR\"") >= 1.0
    });
    let queries_before = count("crossmon_dns_queries_total", "");
    let noerror_before = count("crossmon_dns_responses_total", ",rcode=\"NOERROR\"");

    let udp = ask_udp(
        &netns,
        &server_ip,
        &[
            (0x1111, "db.crossmon.test"),
            (0x2222, "missing.crossmon.test"),
        ],
    );
    let tcp = ask_tcp(&netns, &server_ip, 0x3333, "db.crossmon.test");
    assert_eq!(addresses(&udp[0]), ["10.77.0.5", "10.77.0.6"]);
    assert_eq!((udp[1].rcode, udp[1].answers.len()), (3, 0), "NXDOMAIN");
    assert_eq!(addresses(&tcp), ["10.77.0.5", "10.77.0.6"]);

    let ours =
        |record: &Value| [0x1111, 0x2222, 0x3333].contains(&record["id"].as_u64().unwrap_or(0));
    let mut records = Vec::new();
    wait_until("three DNS records", || {
        records = get_json(agent.addr, "/api/v1/dns")
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| ours(r))
            .cloned()
            .collect();
        records.len() == 3
    });
    // Newest first.
    records.reverse();
    let expected = [
        (
            "udp",
            0x1111,
            "db.crossmon.test",
            "NOERROR",
            addresses(&udp[0]),
        ),
        ("udp", 0x2222, "missing.crossmon.test", "NXDOMAIN", vec![]),
        (
            "tcp",
            0x3333,
            "db.crossmon.test",
            "NOERROR",
            addresses(&tcp),
        ),
    ];
    for (record, (protocol, id, name, rcode, answers)) in records.iter().zip(expected) {
        assert_eq!(record["container"], client.name.as_str(), "{record}");
        assert_eq!(record["client_ip"], client_ip.as_str());
        assert_eq!(record["server"], server.name.as_str());
        assert_eq!(record["server_ip"], server_ip.as_str());
        assert_eq!(record["protocol"], protocol);
        assert_eq!(record["id"], id);
        assert_eq!(record["name"], name);
        assert_eq!(record["type"], "A");
        assert_eq!(record["rcode"], rcode);
        let mut seen: Vec<String> = record["answers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        seen.sort();
        assert_eq!(seen, answers, "{record}");
        let latency = record["latency_ms"]
            .as_f64()
            .expect("query and answer both seen");
        assert!(latency > 0.0 && latency < 1000.0, "{record}");
    }

    wait_until("DNS counts", || {
        count("crossmon_dns_queries_total", "") == queries_before + 3.0
    });
    assert_eq!(
        count("crossmon_dns_responses_total", ",rcode=\"NOERROR\""),
        noerror_before + 2.0
    );
    assert_eq!(
        count("crossmon_dns_responses_total", ",rcode=\"NXDOMAIN\""),
        1.0
    );
    assert_eq!(metric(&agent, "crossmon_dns_malformed_total "), Some(0.0));

    // The flow log: a line per record, after the next poll.
    wait_until("the DNS lines of the flow log", || {
        let text = std::fs::read_to_string(&flow_log).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|l: &Value| l["event"] == "dns" && ours(l))
            .collect();
        lines.len() == 3
            && lines.iter().zip(&records).all(|(line, record)| {
                [
                    "time",
                    "container",
                    "name",
                    "type",
                    "rcode",
                    "answers",
                    "latency_ms",
                ]
                .iter()
                .all(|field| line[field] == record[field])
            })
    });
    assert!(
        dns_alerts(&agent).is_empty(),
        "ordinary lookups: {:?}",
        dns_alerts(&agent)
    );

    // Tunnelling: 100 distinct names under one domain, each NXDOMAIN.
    let names: Vec<String> = (0..100)
        .map(|i| format!("c{i:03}x7q.tunnel.crossmon.test"))
        .collect();
    let queries: Vec<(u16, &str)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (0x4000 + i as u16, n.as_str()))
        .collect();
    ask_udp(&netns, &server_ip, &queries);
    let tunnel = agent.wait_for_alert("dns_tunnel", |a| {
        a["source"]["name"] == client.name.as_str()
    });
    assert_eq!(tunnel["evidence"]["domain"], "crossmon.test");
    assert_eq!(tunnel["destination"]["name"], server.name.as_str());
    let storm = agent.wait_for_alert("nxdomain_storm", |a| {
        a["source"]["name"] == client.name.as_str()
    });
    assert_eq!(storm["evidence"]["nxdomain"], 50);
}
