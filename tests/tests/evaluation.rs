//! The evaluation corpus: labelled attacks, made with real tools (nmap,
//! hping3, raw frames, busybox) from real containers, and benign traffic
//! that looks risky, all at once against one agent at its default
//! detector settings. Every attack must be alerted naming its ends, and
//! the benign mix must raise nothing. Attack networks are `--internal`:
//! nothing a scenario sends (forged sources included) leaves the host.
//!
//! `CROSSMON_EVAL_BENIGN_SECONDS` sets how long the benign mix runs (120
//! here, 600 in `cargo xtask eval`); with `CROSSMON_EVAL_REPORT=FILE` the
//! figures are written there as Markdown (what `cargo xtask eval` makes
//! `docs/EVALUATION.md` of, naming `CROSSMON_EVAL_COMMIT`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use integration_tests::{
    agent::Agent,
    docker::{docker, docker_ready, Bypass, Container, DockerNetwork},
    frames::{self, ETH_P_IP},
    net::in_netns,
    traffic::RawSocket,
};
use serde_json::Value;

/// What an attack must raise: its kind, naming the attacker as source and
/// the victim as destination (`None` for a sweep, which has none).
struct Expected {
    scenario: &'static str,
    what: String,
    kind: &'static str,
    source: String,
    /// Other sources that may be named instead (a distributed scan names
    /// the one that tried most).
    also: Vec<String>,
    destination: Option<String>,
    started: Option<Instant>,
}

/// A network of the corpus, internal unless the scenario needs the host.
fn network(what: &str) -> DockerNetwork {
    DockerNetwork::create(what, &["--internal"]).expect("network")
}

/// `program ARGS` in the network namespace of `container`, which must
/// succeed (but `timeout`, which ends a flood by design).
fn tool(container: &Container, program: &str, args: &[&str]) -> String {
    let output = run_in(container, program, args);
    assert!(
        output.status.success() || program == "timeout",
        "{program} {args:?} in {}: {}",
        container.name,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn run_in(container: &Container, program: &str, args: &[&str]) -> std::process::Output {
    let netns = container.netns().expect("netns");
    Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("{program} (apt-get install {program}): {err}"))
}

/// How long a UDP or ICMP flood lasts: the detector's window and a bit,
/// since a flood goes on until someone stops it.
const FLOOD_SECONDS: &str = "12";

/// `hping3 --flood MODE... target` from `attacker` for [`FLOOD_SECONDS`];
/// the packets it sent (its statistics, printed when interrupted).
fn hping3_flood(attacker: &Container, mode: &[&str], target: &str) -> u64 {
    let mut args = vec!["-s", "INT", FLOOD_SECONDS, "hping3", "-q", "--flood"];
    args.extend(mode);
    args.push(target);
    let output = run_in(attacker, "timeout", &args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr
        .lines()
        .find_map(|line| {
            let (sent, _) = line.split_once(" packets transmitted")?;
            sent.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("hping3 {mode:?} printed no statistics: {stderr}"))
}

fn ip(container: &Container, network: &DockerNetwork) -> String {
    container.ip(&network.name).expect("ip")
}

fn ipv4(container: &Container, network: &DockerNetwork) -> [u8; 4] {
    ip(container, network)
        .parse::<std::net::Ipv4Addr>()
        .expect("IPv4")
        .octets()
}

/// The attacks, each with what it must raise; `run` sends them all and
/// marks when each began.
struct Attacks {
    expected: Mutex<Vec<Expected>>,
}

impl Attacks {
    fn expect(
        &self,
        scenario: &'static str,
        what: &str,
        kind: &'static str,
        (source, destination): (&Container, Option<&Container>),
    ) -> usize {
        let mut expected = self.expected.lock().unwrap();
        expected.push(Expected {
            scenario,
            what: what.to_owned(),
            kind,
            source: source.name.clone(),
            also: Vec::new(),
            destination: destination.map(|d| d.name.clone()),
            started: None,
        });
        expected.len() - 1
    }

    fn expect_named(
        &self,
        scenario: &'static str,
        what: &'static str,
        kind: &'static str,
        source: &Container,
        destination: &str,
    ) -> usize {
        let index = self.expect(scenario, what, kind, (source, None));
        self.expected.lock().unwrap()[index].destination = Some(destination.to_owned());
        index
    }

    fn start(&self, index: usize) {
        self.expected.lock().unwrap()[index].started = Some(Instant::now());
    }

    /// Adds what only the attack's run could tell (how much it sent) to
    /// its description.
    fn tell(&self, index: usize, told: &str) {
        self.expected.lock().unwrap()[index].what.push_str(told);
    }
}

/// When each alert (kind, source, destination) was first seen.
type Seen = BTreeMap<(String, String, String), (Instant, Value)>;

fn end_name(end: &Value) -> String {
    end["name"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| end["ip"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn watch(agent: &Agent, seen: &Mutex<Seen>) {
    let now = Instant::now();
    // A slow answer (the agent is busy too) is asked again next time.
    let alerts = integration_tests::agent::get(agent.addr, "/api/v1/alerts")
        .and_then(|(_, body)| serde_json::from_str::<Vec<Value>>(&body).ok())
        .unwrap_or_default();
    let mut seen = seen.lock().unwrap();
    for alert in alerts {
        let key = (
            alert["kind"].as_str().unwrap_or_default().to_owned(),
            end_name(&alert["source"]),
            alert.get("destination").map(end_name).unwrap_or_default(),
        );
        seen.entry(key).or_insert((now, alert));
    }
}

fn seconds() -> u64 {
    std::env::var("CROSSMON_EVAL_BENIGN_SECONDS")
        .ok()
        .map(|s| s.parse().expect("CROSSMON_EVAL_BENIGN_SECONDS: seconds"))
        .unwrap_or(120)
}

#[test]
fn every_attack_is_alerted_naming_its_ends_and_the_benign_mix_raises_nothing() {
    docker_ready();
    for program in ["nmap", "hping3", "nsenter"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "needs {program} (cargo xtask setup installs it)"
        );
    }
    let benign_for = Duration::from_secs(seconds());
    let attacks = Attacks {
        expected: Mutex::new(Vec::new()),
    };
    let corpus = Corpus::create();
    let agent = Agent::start(&[]);
    let names = corpus.names();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    let missing = loop {
        // Busy attaching a hundred veths, the agent may answer late: ask
        // again.
        let list = integration_tests::agent::get(agent.addr, "/api/v1/containers")
            .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
            .unwrap_or_default();
        let attached: Vec<&str> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["attached"] == true)
            .filter_map(|c| c["name"].as_str())
            .collect();
        let missing: Vec<&str> = names
            .iter()
            .filter(|n| !attached.contains(n))
            .copied()
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(missing.is_empty(), "not attached within 180 s: {missing:?}");
    let seen = Mutex::new(Seen::new());
    let benign_started = Instant::now();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let attacks = &attacks;
        let corpus = &corpus;
        let handles = vec![
            scope.spawn(move || corpus.scans(attacks)),
            scope.spawn(move || corpus.slow_scan(attacks)),
            scope.spawn(move || corpus.sweeps(attacks)),
            scope.spawn(move || corpus.floods(attacks)),
            scope.spawn(move || corpus.spoofing_and_access(attacks)),
            scope.spawn(move || corpus.exfiltration(attacks)),
            scope.spawn(move || corpus.benign(benign_for)),
        ];
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                watch(&agent, &seen);
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        for handle in handles {
            handle.join().expect("a scenario panicked");
        }
        // The last attack's alert may take a window to come (the slow
        // scan's, the exfiltration's): up to a minute more.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline && !all_found(attacks, &seen.lock().unwrap()) {
            std::thread::sleep(Duration::from_millis(500));
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    watch(&agent, &seen);
    let seen = seen.into_inner().unwrap();
    let expected = attacks.expected.into_inner().unwrap();
    let false_alerts: Vec<&Value> = seen
        .values()
        .map(|(_, alert)| alert)
        .filter(|alert| benign_tag(alert, "benign-"))
        .collect();
    let report = report(&expected, &seen, &false_alerts, benign_started.elapsed());
    if let Ok(path) = std::env::var("CROSSMON_EVAL_REPORT") {
        std::fs::write(&path, &report).expect("writing the report");
    }
    println!("{report}");
    let missed: Vec<String> = expected
        .iter()
        .filter(|e| found(e, &seen).is_none())
        .map(|e| {
            format!(
                "{} ({} from {} to {:?})",
                e.scenario, e.kind, e.source, e.destination
            )
        })
        .collect();
    assert!(
        missed.is_empty(),
        "attacks not alerted: {missed:?}\n{report}"
    );
    assert!(false_alerts.is_empty(), "false alerts: {false_alerts:#?}");
}

/// Whether an alert (kind, source, destination) is what `expected` wants.
fn is(expected: &Expected, (kind, source, destination): &(String, String, String)) -> bool {
    kind == expected.kind
        && (*source == expected.source || expected.also.contains(source))
        && expected.destination.as_deref().unwrap_or_default() == destination
}

fn found<'a>(expected: &Expected, seen: &'a Seen) -> Option<&'a (Instant, Value)> {
    seen.iter()
        .find(|(key, _)| is(expected, key))
        .map(|(_, at)| at)
}

fn all_found(attacks: &Attacks, seen: &Seen) -> bool {
    attacks
        .expected
        .lock()
        .unwrap()
        .iter()
        .all(|e| found(e, seen).is_some())
}

/// The benign scenarios, by the tag their containers' names begin with.
const BENIGN: &[(&str, &str)] = &[
    ("benign-lb", "a load balancer calling 80 backends (HTTP) in a loop"),
    ("benign-svc", "a frontend calling 6 backends (HTTP) in a loop, pinging each (health checks)"),
    ("benign-bulk", "bulk transfers: 50 MiB over HTTP every 10 s"),
    ("benign-dns", "DNS: 10 queries a second to a DNS server container"),
    ("benign-api", "rolling restart of a compose service (3 replicas, one replaced every 30 s) while a client calls it"),
    ("benign-job", "short-lived job containers (docker run --rm, talk first, exit) every 10 s"),
];

/// Whether either end of `alert` is a container whose name (without the
/// harness's prefix) begins with `tag`.
fn benign_tag(alert: &Value, tag: &str) -> bool {
    let ends = [
        end_name(&alert["source"]),
        alert.get("destination").map(end_name).unwrap_or_default(),
    ];
    ends.iter().any(|name| strip(name).starts_with(tag))
}

fn report(
    expected: &[Expected],
    seen: &Seen,
    false_alerts: &[&Value],
    benign_ran: Duration,
) -> String {
    let mut out = String::new();
    let commit = std::env::var("CROSSMON_EVAL_COMMIT").unwrap_or_else(|_| "uncommitted".into());
    out.push_str(&format!(
        "# Evaluation\n\nGenerated by `cargo xtask eval` from commit `{commit}`: every scenario in real containers \
         (tests/tests/evaluation.rs) against one agent at its default detector settings, attacks and the \
         benign mix at once on one host.\n\n## Attacks\n\n| scenario | how | alert | source -> destination | detected | time to alert (s) |\n|---|---|---|---|---|---|\n"
    ));
    for e in expected {
        let hit = found(e, seen);
        let time = match (hit, e.started) {
            (Some((at, _)), Some(started)) => {
                format!("{:.1}", at.saturating_duration_since(started).as_secs_f64())
            }
            _ => "-".into(),
        };
        out.push_str(&format!(
            "| {} | {} | `{}` | {} -> {} | {} | {} |\n",
            e.scenario,
            e.what,
            e.kind,
            strip(&e.source),
            e.destination.as_deref().map_or("(none)".into(), strip),
            if hit.is_some() { "yes" } else { "NO" },
            time
        ));
    }
    let detected = expected.iter().filter(|e| found(e, seen).is_some()).count();
    out.push_str(&format!(
        "\nDetected {detected} of {} attacks.\n\n## Benign traffic ({} s)\n\n| scenario | false alerts |\n|---|---|\n",
        expected.len(),
        benign_ran.as_secs()
    ));
    for (tag, scenario) in BENIGN {
        let alerts = false_alerts.iter().filter(|a| benign_tag(a, tag)).count();
        out.push_str(&format!("| {scenario} | {alerts} |\n"));
    }
    out.push_str(&format!("\nFalse alerts in all: {}.\n", false_alerts.len()));
    let others: Vec<String> = seen
        .keys()
        .filter(|key| !expected.iter().any(|e| is(e, key)))
        .map(|(kind, source, destination)| {
            format!("`{kind}` {} -> {}", strip(source), strip(destination))
        })
        .collect();
    out.push_str(&format!(
        "\nOther alerts the attacks raised (besides the expected ones): {}.\n",
        if others.is_empty() {
            "none".into()
        } else {
            others.join("; ")
        }
    ));
    out
}

/// A container's name without the harness's unique prefix.
fn strip(name: &str) -> String {
    name.splitn(3, '-').nth(2).unwrap_or(name).to_owned()
}

/// Every container of the corpus, made before the agent starts.
struct Corpus {
    scanners: Vec<(&'static str, &'static str, Container, Container)>,
    slow: (Container, Container),
    distributed: (Vec<Container>, Container),
    arp_sweeper: Container,
    icmp_sweeper: Container,
    metadata_prober: Container,
    floods: Vec<(&'static str, Container, Container)>,
    spoofer: (Container, Container, Container),
    tls: (Container, Container),
    prober: Container,
    isolated: (Container, Container, DockerNetwork, DockerNetwork),
    exfil: (Container, Container),
    benign: Benign,
    // Networks last: fields drop in order, and a network with containers
    // cannot be removed.
    scan_net: DockerNetwork,
    sweep_net: DockerNetwork,
    flood_net: DockerNetwork,
    access_net: DockerNetwork,
}

/// The benign mix.
struct Benign {
    balancer: Container,
    backends: Vec<Container>,
    frontend: Container,
    services: Vec<Container>,
    bulk: (Container, Container),
    dns: (Container, Container),
    api: Mutex<Vec<Container>>,
    api_client: Container,
    lb_net: DockerNetwork,
    svc_net: DockerNetwork,
}

/// `count` containers made `count` at a time on 2 cores (four threads).
fn many(count: usize, make: impl Fn(usize) -> Container + Sync) -> Vec<Container> {
    let made = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for lane in 0..4 {
            let (made, make) = (&made, &make);
            scope.spawn(move || {
                for i in (lane..count).step_by(4) {
                    let container = make(i);
                    made.lock().unwrap().push((i, container));
                }
            });
        }
    });
    let mut made = made.into_inner().unwrap();
    made.sort_by_key(|(i, _)| *i);
    made.into_iter().map(|(_, c)| c).collect()
}

const HTTPD: &[&str] = &["httpd", "-f", "-p", "80", "-h", "/"];

impl Corpus {
    fn create() -> Corpus {
        let scan_net = network("scans");
        let scanners = [
            ("tcp_connect_scan", "nmap -sT -Pn -p 1-100"),
            ("syn_scan", "nmap -sS -Pn -p 1-100"),
            ("fin_scan", "nmap -sF -Pn -p 1-100"),
            ("xmas_scan", "nmap -sX -Pn -p 1-100"),
            ("udp_scan", "nmap -sU -Pn -p 1-100 --max-retries 0"),
            ("filtered_scan", "nmap -sS -Pn -p 1-100 (victim drops all)"),
        ]
        .into_iter()
        .map(|(scenario, how)| {
            (
                scenario,
                how,
                scan_net.run(&format!("{scenario}-attacker")),
                scan_net.run(&format!("{scenario}-victim")),
            )
        })
        .collect();
        let slow = (scan_net.run("slow-attacker"), scan_net.run("slow-victim"));
        let distributed = (
            (0..3)
                .map(|i| scan_net.run(&format!("split{i}-attacker")))
                .collect(),
            scan_net.run("split-victim"),
        );
        let sweep_net = network("sweeps");
        let arp_sweeper = sweep_net.run("arp-sweeper");
        let icmp_sweeper = sweep_net.run("icmp-sweeper");
        let metadata_prober = sweep_net.run("metadata-prober");
        let flood_net = network("floods");
        let floods = ["syn_flood", "syn_flood_spoofed", "udp_flood", "icmp_flood"]
            .into_iter()
            .map(|what| {
                (
                    what,
                    flood_net.run(&format!("{what}-attacker")),
                    flood_net.run(&format!("{what}-victim")),
                )
            })
            .collect();
        // The host is reached through its gateway address: not internal.
        let access_net = DockerNetwork::create("access", &[]).expect("network");
        let spoofer = (
            access_net.run("spoofer"),
            access_net.run("spoof-victim"),
            access_net.run("spoof-target"),
        );
        let tls = (access_net.run("tls-client"), access_net.run("tls-server"));
        let prober = access_net.run("host-prober");
        // Isolated by Docker's rules between bridges (internal networks
        // have no route between them to bypass).
        let one = DockerNetwork::create("iso-a", &[]).expect("network");
        let two = DockerNetwork::create("iso-b", &[]).expect("network");
        let (a, b) = (one.run("isolated-a"), two.run("isolated-b"));
        let exfil = (scan_net.run("insider"), scan_net.run("drop"));
        Corpus {
            scan_net,
            scanners,
            slow,
            distributed,
            sweep_net,
            arp_sweeper,
            icmp_sweeper,
            metadata_prober,
            flood_net,
            floods,
            access_net,
            spoofer,
            tls,
            prober,
            isolated: (a, b, one, two),
            exfil,
            benign: Benign::create(),
        }
    }

    fn names(&self) -> Vec<String> {
        let mut all: Vec<&Container> = Vec::new();
        for (_, _, a, v) in &self.scanners {
            all.extend([a, v]);
        }
        all.extend([&self.slow.0, &self.slow.1, &self.distributed.1]);
        all.extend(&self.distributed.0);
        all.extend([&self.arp_sweeper, &self.icmp_sweeper, &self.metadata_prober]);
        for (_, a, v) in &self.floods {
            all.extend([a, v]);
        }
        all.extend([&self.spoofer.0, &self.spoofer.1, &self.spoofer.2]);
        all.extend([
            &self.tls.0,
            &self.tls.1,
            &self.prober,
            &self.isolated.0,
            &self.isolated.1,
        ]);
        all.extend([&self.exfil.0, &self.exfil.1]);
        let mut names: Vec<String> = all.iter().map(|c| c.name.clone()).collect();
        names.extend(self.benign_names());
        names
    }

    fn benign_names(&self) -> Vec<String> {
        let b = &self.benign;
        let mut all: Vec<&Container> = vec![&b.balancer, &b.frontend, &b.api_client];
        all.extend(&b.backends);
        all.extend(&b.services);
        all.extend([&b.bulk.0, &b.bulk.1, &b.dns.0, &b.dns.1]);
        let mut names: Vec<String> = all.iter().map(|c| c.name.clone()).collect();
        names.extend(b.api.lock().unwrap().iter().map(|c| c.name.clone()));
        names
    }

    fn scans(&self, attacks: &Attacks) {
        for (scenario, how, attacker, victim) in &self.scanners {
            let index = attacks.expect(scenario, how, "port_scan", (attacker, Some(victim)));
            let target = ip(victim, &self.scan_net);
            if *scenario == "filtered_scan" {
                tool(
                    victim,
                    "iptables",
                    &["-A", "INPUT", "-p", "tcp", "-j", "DROP"],
                );
            }
            let mut args: Vec<&str> = how
                .split_whitespace()
                .skip(1)
                .take_while(|a| !a.starts_with('('))
                .collect();
            args.extend(["-T4", "--max-rtt-timeout", "200ms", &target]);
            attacks.start(index);
            tool(attacker, "nmap", &args);
        }
    }

    /// 15 ports a minute, under `port_scan`'s 20, until past the 10 minutes'
    /// 40.
    fn slow_scan(&self, attacks: &Attacks) {
        let (attacker, victim) = &self.slow;
        let index = attacks.expect(
            "slow_scan",
            "one refused port every 4 s (15 a minute, under the threshold of 20)",
            "port_scan",
            (attacker, Some(victim)),
        );
        let target = ip(victim, &self.scan_net);
        attacks.start(index);
        for port in 1..=41u16 {
            attacker.connect_refused(&target, port..port + 1);
            std::thread::sleep(Duration::from_secs(4));
        }
    }

    fn sweeps(&self, attacks: &Attacks) {
        // Three containers share out 24 ports of one victim: 8 each.
        let (attackers, victim) = &self.distributed;
        let index = attacks.expect(
            "distributed_scan",
            "3 containers, 8 refused ports each",
            "port_scan",
            (&attackers[0], Some(victim)),
        );
        attacks.expected.lock().unwrap()[index].also =
            attackers[1..].iter().map(|a| a.name.clone()).collect();
        let target = ip(victim, &self.scan_net);
        attacks.start(index);
        for port in 1000..1024u16 {
            attackers[usize::from(port % 3)].connect_refused(&target, port..port + 1);
        }
        let subnet = |c: &Container| {
            let ip = ip(c, &self.sweep_net);
            let (prefix, _) = ip.rsplit_once('.').expect("IPv4");
            format!("{prefix}.0/24")
        };
        let index = attacks.expect(
            "arp_sweep",
            "nmap -sn (ARP discovery) of its /24",
            "host_sweep",
            (&self.arp_sweeper, None),
        );
        attacks.start(index);
        tool(
            &self.arp_sweeper,
            "nmap",
            &["-sn", "-PR", "-T4", &subnet(&self.arp_sweeper)],
        );
        let index = attacks.expect(
            "icmp_sweep",
            "nmap -sn -PE --send-ip (ICMP echo) of its /24",
            "host_sweep",
            (&self.icmp_sweeper, None),
        );
        attacks.start(index);
        tool(
            &self.icmp_sweeper,
            "nmap",
            &[
                "-sn",
                "-PE",
                "--send-ip",
                "-T4",
                &subnet(&self.icmp_sweeper),
            ],
        );
    }

    fn floods(&self, attacks: &Attacks) {
        for (what, attacker, victim) in &self.floods {
            let target = ip(victim, &self.flood_net);
            let (kind, how) = match *what {
                "syn_flood" => (
                    "syn_flood",
                    "hping3 -S -p 80, 5,000 SYNs at 10,000 a second",
                ),
                "syn_flood_spoofed" => (
                    "syn_flood",
                    "5,000 SYNs from 200 forged addresses of its subnet (raw frames)",
                ),
                "udp_flood" => ("udp_flood", "hping3 --flood --udp -p 53 for 12 s"),
                _ => ("icmp_flood", "hping3 --flood --icmp for 12 s"),
            };
            let index = attacks.expect(what, how, kind, (attacker, Some(victim)));
            attacks.start(index);
            match *what {
                "syn_flood" => {
                    tool(
                        attacker,
                        "hping3",
                        &["-q", "-S", "-p", "80", "-i", "u100", "-c", "5000", &target],
                    );
                }
                "syn_flood_spoofed" => self.spoofed_syns(attacker, victim),
                flood => {
                    let mode: &[&str] = if flood == "udp_flood" {
                        &["--udp", "-p", "53"]
                    } else {
                        &["--icmp"]
                    };
                    let sent = hping3_flood(attacker, mode, &target);
                    attacks.tell(index, &format!(" ({sent} packets sent)"));
                }
            }
        }
    }

    fn spoofed_syns(&self, attacker: &Container, victim: &Container) {
        let socket = RawSocket::open_in(&attacker.netns().expect("netns")).expect("raw socket");
        let (src, dst) = (
            ipv4(attacker, &self.flood_net),
            ipv4(victim, &self.flood_net),
        );
        let (src_mac, dst_mac) = (
            attacker.mac(&self.flood_net.name).expect("mac"),
            victim.mac(&self.flood_net.name).expect("mac"),
        );
        for i in 0..5000u16 {
            // Unused addresses of the subnet: the SYN-ACKs go nowhere.
            let forged = [src[0], src[1], 200, (i % 200) as u8 + 20];
            let segment = frames::tcp(20_000 + i, 80, monitor_common::tcp_flag::SYN, &[]);
            let packet = frames::ipv4(forged, dst, 6, &[], 0, &segment);
            socket
                .send(&frames::ethernet(dst_mac, src_mac, ETH_P_IP, &packet))
                .expect("send");
        }
    }

    fn spoofing_and_access(&self, attacks: &Attacks) {
        let (spoofer, victim, target) = &self.spoofer;
        let net = &self.access_net;
        let socket = RawSocket::open_in(&spoofer.netns().expect("netns")).expect("raw socket");
        let spoofer_mac = spoofer.mac(&net.name).expect("mac");
        // ARP: "the victim's address is at my MAC", to the target.
        let index = attacks.expect(
            "arp_spoof",
            "unsolicited ARP reply claiming the victim's address",
            "arp_spoof",
            (spoofer, Some(victim)),
        );
        attacks.start(index);
        let frame = frames::arp_reply(
            spoofer_mac,
            spoofer_mac,
            ipv4(victim, net),
            target.mac(&net.name).expect("mac"),
            ipv4(target, net),
        );
        socket.send(&frame).expect("send");
        // IP: a datagram to the target from the victim's address.
        let index = attacks.expect(
            "ip_spoof",
            "UDP from the victim's address",
            "ip_spoof",
            (spoofer, Some(target)),
        );
        attacks.start(index);
        let packet = frames::ipv4(
            ipv4(victim, net),
            ipv4(target, net),
            17,
            &[],
            0,
            &frames::udp(5000, 5000, b"x"),
        );
        let frame = frames::ethernet(
            target.mac(&net.name).expect("mac"),
            spoofer_mac,
            ETH_P_IP,
            &packet,
        );
        socket.send(&frame).expect("send");
        // Cleartext HTTP to port 443.
        let (client, server) = &self.tls;
        let index = attacks.expect(
            "cleartext",
            "HTTP request to port 443",
            "cleartext",
            (client, Some(server)),
        );
        attacks.start(index);
        client.tcp_sessions(
            server,
            &ip(server, net),
            443,
            1,
            b"GET / HTTP/1.1\r\nHost: shop\r\n\r\n",
        );
        // The Docker API on the host, and the metadata address.
        let gateway = docker(&[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
            &net.name,
        ])
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .expect("gateway");
        let index = attacks.expect_named(
            "docker_api",
            "TCP connect to the gateway's port 2375",
            "host_access",
            &self.prober,
            "gateway",
        );
        attacks.start(index);
        let address: SocketAddr = format!("{gateway}:2375").parse().expect("address");
        in_netns(&self.prober.netns().expect("netns"), || {
            let _ = TcpStream::connect_timeout(&address, Duration::from_secs(1));
            Ok(())
        })
        .expect("connecting");
        self.metadata(attacks);
        // Isolation bypassed by an ACCEPT rule between two networks.
        let (a, b, one, two) = &self.isolated;
        let index = attacks.expect(
            "isolation_bypass",
            "TCP between containers on two networks, let through by a DOCKER-USER rule",
            "isolation_violation",
            (a, Some(b)),
        );
        let (a_ip, b_ip) = (ip(a, one), ip(b, two));
        let _bypass = Bypass::between(&a_ip, &b_ip);
        attacks.start(index);
        let listener = in_netns(&b.netns().expect("netns"), || {
            Ok(TcpListener::bind(("0.0.0.0", 8080))?)
        })
        .expect("listener");
        let target: SocketAddr = format!("{b_ip}:8080").parse().expect("address");
        in_netns(&a.netns().expect("netns"), || {
            let _ = TcpStream::connect_timeout(&target, Duration::from_secs(2));
            Ok(())
        })
        .expect("connecting");
        drop(listener);
        // Let the attempt's outcome be decided before the rule goes.
        std::thread::sleep(Duration::from_secs(6));
    }

    /// A connection to 169.254.169.254 from a container on an internal
    /// network, routed on-link to a MAC no one has: the SYN is counted at
    /// the container's veth and goes nowhere.
    fn metadata(&self, attacks: &Attacks) {
        let prober = &self.metadata_prober;
        let index = attacks.expect_named(
            "metadata_access",
            "TCP connect to 169.254.169.254:80",
            "host_access",
            prober,
            "169.254.169.254",
        );
        tool(
            prober,
            "ip",
            &["route", "add", "169.254.169.254/32", "dev", "eth0"],
        );
        tool(
            prober,
            "ip",
            &[
                "neigh",
                "add",
                "169.254.169.254",
                "lladdr",
                "02:00:00:00:00:01",
                "dev",
                "eth0",
            ],
        );
        attacks.start(index);
        let address: SocketAddr = "169.254.169.254:80".parse().expect("address");
        in_netns(&prober.netns().expect("netns"), || {
            let _ = TcpStream::connect_timeout(&address, Duration::from_secs(1));
            Ok(())
        })
        .expect("connecting");
    }

    /// Two minutes of 100 kB a minute, then 150 MiB at once.
    fn exfiltration(&self, attacks: &Attacks) {
        let (insider, drop) = &self.exfil;
        let index = attacks.expect(
            "exfiltration",
            "150 MiB at once on an edge that carried 100 kB a minute for 2 minutes",
            "traffic_spike",
            (insider, Some(drop)),
        );
        let target = ip(drop, &self.scan_net);
        let listener = in_netns(&drop.netns().expect("netns"), || {
            Ok(TcpListener::bind(("0.0.0.0", 9000))?)
        })
        .expect("listener");
        let send = |bytes: usize| {
            let address: SocketAddr = format!("{target}:9000").parse().expect("address");
            std::thread::scope(|scope| {
                let reader = scope.spawn(|| {
                    let (mut accepted, _) = listener.accept().expect("accept");
                    std::io::copy(&mut accepted, &mut std::io::sink()).expect("read")
                });
                in_netns(&insider.netns().expect("netns"), || {
                    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
                    let chunk = vec![0x5a; 64 * 1024];
                    let mut left = bytes;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        stream.write_all(&chunk[..n])?;
                        left -= n;
                    }
                    Ok(())
                })
                .expect("sending");
                reader.join().expect("reader")
            })
        };
        for _ in 0..26 {
            send(20_000);
            std::thread::sleep(Duration::from_secs(5));
        }
        attacks.start(index);
        send(150 * 1024 * 1024);
    }

    fn benign(&self, duration: Duration) {
        self.benign.run(duration);
    }
}

impl Benign {
    fn create() -> Benign {
        let lb_net = network("lb");
        let backends = many(80, |i| {
            Container::run_command(
                &format!("benign-lb-backend{i}"),
                &["--network", &lb_net.name],
                HTTPD,
            )
            .expect("backend")
        });
        let balancer = lb_net.run("benign-lb-balancer");
        let svc_net = network("svc");
        let services = many(6, |i| {
            Container::run_command(
                &format!("benign-svc-backend{i}"),
                &["--network", &svc_net.name],
                HTTPD,
            )
            .expect("service")
        });
        let frontend = svc_net.run("benign-svc-frontend");
        let bulk_server = Container::run_command(
            "benign-bulk-server",
            &["--network", &svc_net.name],
            &["sh", "-c", "busybox dd if=/dev/zero of=/big bs=1M count=50 2>/dev/null; exec httpd -f -p 80 -h /"],
        )
        .expect("bulk server");
        let bulk_client = svc_net.run("benign-bulk-client");
        // Its answers come from the test (busybox-static has no dnsd).
        let dns_server = svc_net.run("benign-dns-server");
        let dns_client = svc_net.run("benign-dns-client");
        let api = (0..3).map(|i| api_replica(&svc_net, i)).collect();
        let api_client = svc_net.run("benign-api-client");
        Benign {
            lb_net,
            balancer,
            backends,
            svc_net,
            frontend,
            services,
            bulk: (bulk_client, bulk_server),
            dns: (dns_client, dns_server),
            api: Mutex::new(api),
            api_client,
        }
    }

    /// Every benign loop, for `duration`; job containers and the rolling
    /// restart from this thread meanwhile.
    fn run(&self, duration: Duration) {
        let ips = |containers: &[Container], net: &DockerNetwork| {
            containers
                .iter()
                .map(|c| ip(c, net))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let lb = format!(
            "while :; do for ip in {}; do wget -q -T 2 -O /dev/null http://$ip/ 2>/dev/null; done; done",
            ips(&self.backends, &self.lb_net)
        );
        let svc = format!(
            "while :; do for ip in {}; do wget -q -T 2 -O /dev/null http://$ip/ 2>/dev/null; ping -c 1 -W 1 $ip >/dev/null; done; sleep 0.2; done",
            ips(&self.services, &self.svc_net)
        );
        let bulk = format!(
            "while :; do wget -q -O /dev/null http://{}/big; sleep 10; done",
            ip(&self.bulk.1, &self.svc_net)
        );
        let dns = format!(
            "while :; do busybox nslookup db.eval {} >/dev/null 2>&1; sleep 0.1; done",
            ip(&self.dns.1, &self.svc_net)
        );
        let api = "while :; do wget -q -T 2 -O /dev/null http://api/ 2>/dev/null; sleep 0.5; done"
            .to_owned();
        for (container, script) in [
            (&self.balancer, lb),
            (&self.frontend, svc),
            (&self.bulk.0, bulk),
            (&self.dns.0, dns),
            (&self.api_client, api),
        ] {
            docker(&["exec", "-d", &container.name, "sh", "-c", &script]).expect("benign loop");
        }
        let resolver = in_netns(&self.dns.1.netns().expect("netns"), || {
            let socket = std::net::UdpSocket::bind(("0.0.0.0", 53))?;
            socket.set_read_timeout(Some(Duration::from_millis(500)))?;
            Ok(socket)
        })
        .expect("the DNS server's socket");
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            // Each query answered as itself with the response bit set: an
            // answer on the wire, which is all the detectors see.
            scope.spawn(|| {
                let mut buffer = [0u8; 512];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok((n, from)) = resolver.recv_from(&mut buffer) {
                        if n > 2 {
                            buffer[2] |= 0x80;
                            let _ = resolver.send_to(&buffer[..n], from);
                        }
                    }
                }
            });
            self.jobs_and_restarts(duration);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }

    /// Short-lived jobs every 10 s, a replica replaced every 30 s.
    fn jobs_and_restarts(&self, duration: Duration) {
        let started = Instant::now();
        let mut round = 0;
        while started.elapsed() < duration {
            // A short-lived job: talks first, exits, removed.
            let job = integration_tests::docker::unique("benign-job");
            let _ = docker(&[
                "run",
                "--rm",
                "--name",
                &job,
                "--network",
                &self.svc_net.name,
                integration_tests::docker::IMAGE,
                "wget",
                "-q",
                "-T",
                "2",
                "-O",
                "/dev/null",
                &format!("http://{}/", ip(&self.services[0], &self.svc_net)),
            ]);
            // Every 30 s one replica of the compose service is replaced.
            if round % 3 == 2 {
                let mut api = self.api.lock().unwrap();
                let slot = (round / 3) % api.len();
                let replacement = api_replica(&self.svc_net, round + 3);
                let old = std::mem::replace(&mut api[slot], replacement);
                drop(old);
            }
            round += 1;
            std::thread::sleep(
                Duration::from_secs(10).min(duration.saturating_sub(started.elapsed())),
            );
        }
    }
}

/// One replica of the compose service `eval/api`, reached by its alias.
fn api_replica(net: &DockerNetwork, i: usize) -> Container {
    Container::run_command(
        &format!("benign-api-replica{i}"),
        &[
            "--network",
            &net.name,
            "--network-alias",
            "api",
            "--label",
            "com.docker.compose.project=eval",
            "--label",
            "com.docker.compose.service=api",
        ],
        HTTPD,
    )
    .expect("api replica")
}
