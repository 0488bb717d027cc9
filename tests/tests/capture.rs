//! Packet capture against real containers: `crossmon capture` through a
//! running agent's API writes pcapng that tshark reads back as exactly the
//! packets sent, with their addresses, ports, lengths, directions and
//! order; a port scan with `--capture-on-alert` leaves its SYNs and RSTs
//! in the file its alert names; behind `--web-config` the CLI needs the CA
//! and the credentials; bad requests fail with one line and exit status 2.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{
    net::UdpSocket,
    process::{Command, Output},
    time::Duration,
};

use integration_tests::{
    agent::{get, wait_until, Agent},
    crossmon_bin,
    docker::{docker_ready, DockerNetwork},
    net::in_netns,
    scratch::Scratch,
    tshark::{capture, running_captures, tshark, IN, OUT},
};

fn one_line_exit_2(output: &Output, says: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(says), "{stderr}");
}

#[test]
fn udp_datagrams_and_a_tcp_exchange_are_captured_exactly_in_both_directions() {
    docker_ready();
    let net = DockerNetwork::create("capture", &[]).expect("network");
    let a = net.run("a");
    let b = net.run("b");
    let agent = Agent::start(&[]);
    agent.wait_attached(&[&a.name, &b.name]);
    let ip_a = a.ip(&net.name).unwrap();
    let ip_b = b.ip(&net.name).unwrap();
    // Warm ARP: with `--peer` ARP is not captured anyway; the first packets
    // are then not delayed.
    a.ping(&ip_b, 1);

    let scratch = Scratch::new("capture");
    let file = scratch.dir().join("a.pcapng");
    let capturing = capture(
        agent.addr,
        &[
            "--container",
            &a.name,
            "--peer",
            &b.name,
            "--duration",
            "6s",
            "-w",
        ],
    )
    .arg(&file)
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    wait_until("the capture running", || running_captures(agent.addr) == 1);

    // Exactly five datagrams A -> B:9999, each a different size, B listening
    // (no ICMP unreachable back).
    let receiver = in_netns(&b.netns().unwrap(), || {
        Ok(UdpSocket::bind(("0.0.0.0", 9999))?)
    })
    .unwrap();
    let payloads: Vec<usize> = vec![10, 200, 30, 1400, 5];
    in_netns(&a.netns().unwrap(), || {
        let socket = UdpSocket::bind(("0.0.0.0", 40000))?;
        for len in &payloads {
            socket.send_to(&vec![0x5a; *len], (ip_b.as_str(), 9999))?;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    })
    .unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    for _ in &payloads {
        receiver.recv_from(&mut [0; 2000]).unwrap();
    }
    a.tcp_sessions(&b, &ip_b, 8080, 1, b"hello");
    // Traffic to a third container is not B's: the peer filter leaves it out.
    let c = net.run("c");
    a.ping(&c.ip(&net.name).unwrap(), 2);

    let output = capturing.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let packets = tshark(&file);
    let udp: Vec<&Vec<String>> = packets.iter().filter(|p| p[4] == "17").collect();
    let expected_udp: Vec<Vec<String>> = payloads
        .iter()
        .map(|len| {
            let frame = 14 + 20 + 8 + len;
            [
                a.name.as_str(),
                OUT,
                &ip_a,
                &ip_b,
                "17",
                "40000",
                "9999",
                "",
                "",
                "",
                "",
                &frame.to_string(),
                &frame.to_string(),
            ]
            .map(str::to_owned)
            .to_vec()
        })
        .collect();
    assert_eq!(
        udp.into_iter().cloned().collect::<Vec<_>>(),
        expected_udp,
        "every datagram once, in order, whole"
    );
    assert!(
        packets.iter().all(|p| p[4] == "17" || p[4] == "6"),
        "only B's UDP and TCP: {packets:?}"
    );
    let tcp = |dir: &str| -> Vec<&Vec<String>> {
        packets
            .iter()
            .filter(|p| p[4] == "6" && p[1] == dir)
            .collect()
    };
    let (sent, received) = (tcp(OUT), tcp(IN));
    assert!(sent
        .iter()
        .all(|p| p[2] == ip_a && p[3] == ip_b && p[8] == "8080"));
    assert!(received
        .iter()
        .all(|p| p[2] == ip_b && p[3] == ip_a && p[7] == "8080"));
    let flags = |list: &[&Vec<String>]| list.iter().map(|p| p[9].clone()).collect::<Vec<_>>();
    assert_eq!(
        flags(&sent).first().map(String::as_str),
        Some("··········S·"),
        "{packets:?}"
    );
    assert_eq!(
        flags(&received).first().map(String::as_str),
        Some("·······A··S·"),
        "{packets:?}"
    );
    assert_eq!(
        sent.iter()
            .filter(|p| p[10] != "0")
            .map(|p| p[10].as_str())
            .collect::<Vec<_>>(),
        vec!["5"],
        "the request's five bytes, once"
    );
    assert!(flags(&sent).iter().any(|f| f.contains('F')), "A's FIN");
    assert!(flags(&received).iter().any(|f| f.contains('F')), "B's FIN");
    assert_eq!(
        running_captures(agent.addr),
        0,
        "the capture stopped with its duration"
    );
}

#[test]
fn a_snaplen_truncates_and_keeps_the_original_length() {
    docker_ready();
    let net = DockerNetwork::create("snap", &[]).expect("network");
    let a = net.run("a");
    let b = net.run("b");
    let agent = Agent::start(&[]);
    agent.wait_attached(&[&a.name, &b.name]);
    let ip_b = b.ip(&net.name).unwrap();
    let scratch = Scratch::new("capture");
    let file = scratch.dir().join("snap.pcapng");
    let capturing = capture(
        agent.addr,
        &[
            "--container",
            &b.name,
            "--protocol",
            "icmp",
            "--count",
            "4",
            "--snaplen",
            "60",
            "-w",
        ],
    )
    .arg(&file)
    .spawn()
    .unwrap();
    wait_until("the capture running", || running_captures(agent.addr) == 1);
    a.exec(&["ping", "-q", "-c", "2", "-s", "500", &ip_b])
        .unwrap();
    let output = capturing.wait_with_output().unwrap();
    assert!(output.status.success());
    let packets = tshark(&file);
    let dirs: Vec<&str> = packets.iter().map(|p| p[1].as_str()).collect();
    // Request in (to B), reply out, twice.
    assert_eq!(dirs, vec![IN, OUT, IN, OUT], "{packets:?}");
    assert!(
        packets.iter().all(|p| p[11] == "542" && p[12] == "60"),
        "{packets:?}"
    );
}

#[test]
fn bad_requests_fail_with_one_line_and_exit_status_2() {
    docker_ready();
    let net = DockerNetwork::create("badcap", &[]).expect("network");
    let a = net.run("a");
    let agent = Agent::start(&[]);
    agent.wait_attached(&[&a.name]);
    let scratch = Scratch::new("capture");
    let file = scratch.dir().join("never.pcapng");
    let file = file.to_str().unwrap();
    let run = |args: &[&str]| capture(agent.addr, args).output().unwrap();
    one_line_exit_2(
        &run(&["--container", "no-such-container", "-w", file]),
        "no container named",
    );
    one_line_exit_2(
        &run(&["--container", &a.name, "--peer", "no-such-peer", "-w", file]),
        "neither a container nor an IP address",
    );
    one_line_exit_2(
        &run(&["--container", &a.name, "--port", "http", "-w", file]),
        "--port",
    );
    one_line_exit_2(
        &run(&["--container", &a.name, "--protocol", "sctp", "-w", file]),
        "--protocol",
    );
    let nobody = Command::new(crossmon_bin())
        .args([
            "capture",
            "--url",
            "http://127.0.0.1:1",
            "--container",
            &a.name,
            "-w",
            file,
        ])
        .output()
        .unwrap();
    one_line_exit_2(&nobody, "no crossmon agent answers");
    assert!(
        !std::path::Path::new(file).exists(),
        "a refused capture leaves no file"
    );
    // The API says the same in one line, with 400.
    let (status, body) = get(agent.addr, "/api/v1/capture?container=no-such-container").unwrap();
    assert_eq!(
        (status, body.trim()),
        (400, "no container named \"no-such-container\"")
    );
}

#[test]
fn a_port_scan_leaves_a_capture_of_its_syns_and_rsts_named_in_the_alert() {
    docker_ready();
    let net = DockerNetwork::create("scancap", &[]).expect("network");
    let target = net.run("target");
    let scanner = net.run("scanner");
    let scratch = Scratch::new("capture");
    let dir = scratch.dir().join("evidence");
    let agent = Agent::start(&[
        "--capture-on-alert",
        dir.to_str().unwrap(),
        "--capture-on-alert-duration",
        "5s",
    ]);
    agent.wait_attached(&[&target.name, &scanner.name]);
    let target_ip = target.ip(&net.name).unwrap();
    let scanner_ip = scanner.ip(&net.name).unwrap();
    scanner.connect_refused(&target_ip, 30_000..30_030);
    let alert = agent.wait_for_alert("port_scan", |_| true);
    let name = alert["capture"]
        .as_str()
        .unwrap_or_else(|| panic!("the alert names its capture: {alert}"));
    // The scan goes on while the capture runs.
    scanner.connect_refused(&target_ip, 30_030..30_050);
    wait_until("the capture on alert finished", || {
        running_captures(agent.addr) == 0
    });
    let packets = tshark(&dir.join(name));
    let syns = packets
        .iter()
        .filter(|p| {
            p[0] == scanner.name
                && p[1] == OUT
                && p[2] == scanner_ip
                && p[3] == target_ip
                && p[9] == "··········S·"
        })
        .count();
    let rsts = packets
        .iter()
        .filter(|p| p[1] == IN && p[2] == target_ip && p[3] == scanner_ip && p[9] == "·······A·R··")
        .count();
    assert!(
        syns >= 20 && rsts >= 20,
        "{syns} SYNs, {rsts} RSTs: {packets:?}"
    );
    assert!(
        packets
            .iter()
            .all(|p| p[2] == target_ip || p[3] == target_ip),
        "only the pair's packets"
    );
}

#[test]
fn an_unwritable_capture_directory_stops_the_agent_at_start_with_status_2() {
    integration_tests::require_root();
    let scratch = Scratch::new("capture");
    let file = scratch.write("not-a-directory", "");
    let output = Command::new(crossmon_bin())
        .args(["run", "--no-docker", "--capture-on-alert"])
        .arg(file.join("evidence"))
        .output()
        .unwrap();
    one_line_exit_2(&output, "--capture-on-alert");
}

#[test]
fn over_https_with_basic_auth_the_cli_needs_the_ca_and_the_credentials() {
    docker_ready();
    let net = DockerNetwork::create("tlscap", &[]).expect("network");
    let a = net.run("a");
    let b = net.run("b");
    let scratch = Scratch::new("capture");
    let server = rcgen::generate_simple_self_signed(["127.0.0.1".to_owned()]).unwrap();
    scratch.write("server.pem", &server.cert.pem());
    scratch.write("server-key.pem", &server.key_pair.serialize_pem());
    let other = rcgen::generate_simple_self_signed(["127.0.0.1".to_owned()]).unwrap();
    let other_ca = scratch.write("other.pem", &other.cert.pem());
    let hash = bcrypt::hash("open sesame", 4).unwrap();
    let config = scratch.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n\
             basic_auth_users:\n  alice: '{hash}'\n"
        ),
    );
    let ca = scratch.path("server.pem");
    let ca = ca.to_str().unwrap();
    let agent = Agent::start_with(&["--web-config", config.to_str().unwrap()], |addr| {
        Command::new("curl")
            .args(["-sf", "--cacert", ca, "--user", "alice:open sesame"])
            .arg(format!("https://{addr}/healthz"))
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let url = format!("https://{}", agent.addr);
    let file = scratch.dir().join("tls.pcapng");
    let cli = |extra: &[&str]| {
        let mut command = Command::new(crossmon_bin());
        command
            .args(["capture", "--url", &url, "--container", &a.name])
            .args(["--protocol", "icmp", "--count", "2", "-w"])
            .arg(&file)
            .args(extra);
        command
    };
    one_line_exit_2(&cli(&["--cacert", ca]).output().unwrap(), "unauthorised");
    one_line_exit_2(
        &cli(&[
            "--cacert",
            other_ca.to_str().unwrap(),
            "--user",
            "alice:open sesame",
        ])
        .output()
        .unwrap(),
        "TLS",
    );
    one_line_exit_2(
        &cli(&["--user", "alice:open sesame"]).output().unwrap(),
        "--cacert",
    );
    // Attached only once the engine answered: wait for both.
    wait_until("containers attached", || {
        Command::new("curl")
            .args(["-sf", "--cacert", ca, "--user", "alice:open sesame"])
            .arg(format!("{url}/api/v1/containers"))
            .output()
            .is_ok_and(|o| {
                let text = String::from_utf8_lossy(&o.stdout);
                text.contains(&a.name)
                    && text.contains(&b.name)
                    && !text.contains("\"attached\":false")
            })
    });
    let capturing = cli(&["--cacert", ca, "--user", "alice:open sesame"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    a.ping(&b.ip(&net.name).unwrap(), 1);
    let output = capturing.wait_with_output().unwrap();
    assert!(output.status.success());
    let packets = tshark(&file);
    let dirs: Vec<&str> = packets.iter().map(|p| p[1].as_str()).collect();
    assert_eq!(
        dirs,
        vec![OUT, IN],
        "the echo request and its reply: {packets:?}"
    );
}
