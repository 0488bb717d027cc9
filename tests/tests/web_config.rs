//! `crossmon run --web-config`: the real binary serving HTTPS with basic
//! auth, and with client certificates, checked with curl on loopback; and
//! bad configs, which must stop it at start with the reason.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{
    agent::{our_programs_on, wait_until, Agent},
    crossmon_bin,
    prometheus::{prometheus_installed, Prometheus, Scrape, Tls},
    require_root,
    scratch::Scratch,
    traffic, TestNet,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedKey, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

const PASSWORD: &str = "open sesame";

#[test]
fn https_with_basic_auth_answers_only_the_right_credentials() {
    require_root();
    let scratch = Scratch::new("web-config");
    let server = self_signed();
    // In a subdirectory, named relative to the config file.
    scratch.write("tls/server.pem", &server.cert.pem());
    scratch.write("tls/server-key.pem", &server.key_pair.serialize_pem());
    let hash = bcrypt::hash(PASSWORD, 4).expect("bcrypt hash");
    let config = scratch.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: tls/server.pem\n  key_file: tls/server-key.pem\n\
             http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n\
             basic_auth_users:\n  alice: '{hash}'\n"
        ),
    );
    let ca = scratch.path("tls/server.pem");
    let ca = ca.to_str().expect("UTF-8 path");
    let alice = format!("alice:{PASSWORD}");
    let agent = Agent::start_with(
        &[
            "--no-docker",
            "--web-config",
            config.to_str().expect("UTF-8"),
        ],
        |addr| curl(&["--cacert", ca, "--user", &alice, &https(addr, "/healthz")]).status == 200,
    );
    let addr = agent.addr;

    // The live map (`/`, its script, its data) is behind the same TLS and
    // credentials as the rest.
    for path in [
        "/healthz",
        "/api/v1/flows",
        "/",
        "/ui/app.js",
        "/api/v1/graph",
    ] {
        let answer = curl(&["--cacert", ca, "--user", &alice, &https(addr, path)]);
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        assert_eq!(
            answer.version, "2",
            "HTTP/2 by ALPN, the default: {answer:?}"
        );
        assert!(
            answer.has_header("x-content-type-options: nosniff"),
            "{answer:?}"
        );
    }
    let answer = curl(&[
        "--http1.1",
        "--cacert",
        ca,
        "--user",
        &alice,
        &https(addr, "/healthz"),
    ]);
    assert_eq!(
        (answer.status, answer.version.as_str()),
        (200, "1.1"),
        "{answer:?}"
    );
    // The certificate also names localhost.
    let localhost = format!("localhost:{}:127.0.0.1", addr.port());
    let url = format!("https://localhost:{}/healthz", addr.port());
    let answer = curl(&[
        "--resolve",
        &localhost,
        "--cacert",
        ca,
        "--user",
        &alice,
        &url,
    ]);
    assert_eq!(answer.status, 200, "{answer:?}");

    for (what, credentials) in [
        ("no credentials", None),
        ("a wrong password", Some("alice:open sesam")),
        ("an unknown user", Some("mallory:open sesame")),
    ] {
        for path in [
            "/healthz",
            "/api/v1/flows",
            "/",
            "/api/v1/graph",
            "/no/such/path",
        ] {
            let mut args = vec!["--cacert", ca];
            args.extend(credentials.iter().flat_map(|c| ["--user", *c]));
            let url = https(addr, path);
            args.push(&url);
            let answer = curl(&args);
            assert_eq!(answer.status, 401, "{what}, {path}: {answer:?}");
            assert!(
                answer.has_header("www-authenticate: basic realm=\"crossmon\""),
                "{answer:?}"
            );
        }
    }

    // Not the configured certificate's CA: no answer at all.
    let answer = curl(&["--user", &alice, &https(addr, "/healthz")]);
    assert_eq!(answer.status, 0, "{answer:?}");
    assert!(answer.stderr.contains("certificate"), "{answer:?}");
    // Plain HTTP and garbage get no HTTP answer, and the agent keeps serving.
    let answer = curl(&["--user", &alice, &format!("http://{addr}/healthz")]);
    assert_eq!(answer.status, 0, "plain HTTP to the TLS port: {answer:?}");
    let mut garbage = TcpStream::connect(addr).expect("connect");
    let _ = garbage.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 1, 2, 3]);
    drop(garbage);
    let answer = curl(&["--cacert", ca, "--user", &alice, &https(addr, "/healthz")]);
    assert_eq!(answer.status, 200, "after bad handshakes: {answer:?}");

    let (status, log) = agent.stop();
    assert!(status.success(), "exit status {status}; log:\n{log}");
    assert!(log.contains("--web-config in effect"), "log:\n{log}");
}

#[test]
fn client_certificates_are_checked_against_client_ca_file() {
    require_root();
    let scratch = Scratch::new("web-config");
    let server = self_signed();
    scratch.write("server.pem", &server.cert.pem());
    scratch.write("server-key.pem", &server.key_pair.serialize_pem());
    let (ca, ca_key) = client_ca();
    scratch.write("clients-ca.pem", &ca.pem());
    let client = client_certificate(&ca, &ca_key);
    let client_pem = scratch.write("client.pem", &client.cert.pem());
    let client_key = scratch.write("client-key.pem", &client.key_pair.serialize_pem());
    // Valid, but from no CA the agent trusts.
    let stranger = self_signed();
    let stranger_pem = scratch.write("stranger.pem", &stranger.cert.pem());
    let stranger_key = scratch.write("stranger-key.pem", &stranger.key_pair.serialize_pem());
    let config = scratch.write(
        "web.yml",
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n  \
         client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: clients-ca.pem\n",
    );
    let server_ca = scratch.path("server.pem");
    let server_ca = server_ca.to_str().expect("UTF-8");
    let [client_pem, client_key, stranger_pem, stranger_key] =
        [&client_pem, &client_key, &stranger_pem, &stranger_key]
            .map(|p| p.to_str().expect("UTF-8"));
    let as_client = |addr: SocketAddr| {
        curl(&[
            "--cacert",
            server_ca,
            "--cert",
            client_pem,
            "--key",
            client_key,
            &https(addr, "/healthz"),
        ])
    };
    let agent = Agent::start_with(
        &[
            "--no-docker",
            "--web-config",
            config.to_str().expect("UTF-8"),
        ],
        |addr| as_client(addr).status == 200,
    );
    let addr = agent.addr;

    assert_eq!(as_client(addr).status, 200);
    let anonymous = curl(&["--cacert", server_ca, &https(addr, "/healthz")]);
    assert_eq!(anonymous.status, 0, "without a certificate: {anonymous:?}");
    let stranger = curl(&[
        "--cacert",
        server_ca,
        "--cert",
        stranger_pem,
        "--key",
        stranger_key,
        &https(addr, "/healthz"),
    ]);
    assert_eq!(stranger.status, 0, "an unknown issuer: {stranger:?}");
    assert_eq!(as_client(addr).status, 200, "after refused handshakes");

    let (status, log) = agent.stop();
    assert!(status.success(), "exit status {status}; log:\n{log}");
}

/// Needs no root: the config is read before anything else.
#[test]
fn bad_web_configs_stop_the_agent_at_start_naming_the_problem() {
    let scratch = Scratch::new("web-config");
    let server = self_signed();
    let other = self_signed();
    scratch.write("server.pem", &server.cert.pem());
    scratch.write("server-key.pem", &server.key_pair.serialize_pem());
    scratch.write("other-key.pem", &other.key_pair.serialize_pem());
    let tls = "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n";
    let missing = scratch.path("missing.pem");
    let cases = [
        (
            format!("{tls}  ciphers: [fast]\n"),
            "unknown field `ciphers`".to_owned(),
        ),
        (
            "basic_auth:\n  alice: x\n".to_owned(),
            "unknown field `basic_auth`".to_owned(),
        ),
        (
            "tls_server_config:\n  cert_file: missing.pem\n  key_file: server-key.pem\n".to_owned(),
            format!("reading cert_file {}", missing.display()),
        ),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: other-key.pem\n".to_owned(),
            "does not belong to the certificate".to_owned(),
        ),
        (
            "basic_auth_users:\n  alice: hunter2\n".to_owned(),
            "\"alice\" is not a bcrypt hash".to_owned(),
        ),
        (
            format!("{tls}  client_auth_type: RequireAndVerifyClientCert\n"),
            "needs client_ca_file".to_owned(),
        ),
        (
            format!("{tls}  min_version: TLS11\n"),
            "TLS11 is not supported".to_owned(),
        ),
        (
            "tls_server_config: [\n".to_owned(),
            "invalid web config".to_owned(),
        ),
    ];
    for (yaml, expected) in cases {
        let config = scratch.write("bad.yml", &yaml);
        let (status, stderr, took) = run_briefly(&config);
        assert!(!status.success(), "{yaml}: accepted");
        assert!(took < Duration::from_secs(5), "{yaml}: took {took:?}");
        let named = format!("--web-config {}", config.display());
        assert!(
            stderr.contains(&named) && stderr.contains(&expected),
            "{yaml}: {stderr}"
        );
        assert!(
            !stderr.contains("hunter2"),
            "the plaintext reached stderr: {stderr}"
        );
    }
    let absent = scratch.path("absent.yml");
    let (status, stderr, _) = run_briefly(&absent);
    assert!(
        !status.success() && stderr.contains("absent.yml: reading the file"),
        "{stderr}"
    );
}

#[test]
fn prometheus_scrapes_over_tls_with_basic_auth_and_is_refused_without() {
    require_root();
    prometheus_installed();
    let scratch = Scratch::new("web-config");
    let server = self_signed();
    let ca = scratch.write("server.pem", &server.cert.pem());
    scratch.write("server-key.pem", &server.key_pair.serialize_pem());
    let hash = bcrypt::hash(PASSWORD, 4).expect("bcrypt hash");
    let config = scratch.write(
        "web.yml",
        &format!(
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n\
             basic_auth_users:\n  prometheus: '{hash}'\n"
        ),
    );
    let ca_text = ca.to_str().expect("UTF-8 path");
    let credentials = format!("prometheus:{PASSWORD}");
    let agent = Agent::start_with(
        &[
            "--no-docker",
            "--web-config",
            config.to_str().expect("UTF-8"),
        ],
        |addr| {
            curl(&[
                "--cacert",
                ca_text,
                "--user",
                &credentials,
                &https(addr, "/healthz"),
            ])
            .status
                == 200
        },
    );
    let net = TestNet::new(2).expect("test network");
    for host in net.hosts() {
        wait_until("attachment", || {
            our_programs_on(host.veth_name()).len() == 2
        });
    }
    traffic::ping(net.host(0), net.host(1).ip4().into(), 3, 56).expect("ping");

    let tls = Tls {
        ca_file: ca.clone(),
        server_name: None,
    };
    let authorised = Prometheus::start(&Scrape {
        https: Some(tls.clone()),
        basic_auth: Some(("prometheus".to_owned(), PASSWORD.to_owned())),
        ..Scrape::new(agent.addr)
    });
    authorised.wait_for_target_up();
    // Request and reply share their labels without Docker: 3 + 3.
    authorised.wait_for_value(r#"sum(crossmon_flow_packets_total{protocol="icmp"})"#, 6.0);

    let anonymous = Prometheus::start(&Scrape {
        https: Some(tls),
        ..Scrape::new(agent.addr)
    });
    wait_until("the anonymous scrape to fail", || {
        let (health, error) = anonymous.target_health();
        health == "down" && error.contains("401")
    });
}

fn https(addr: SocketAddr, path: &str) -> String {
    format!("https://{addr}{path}")
}

#[derive(Debug)]
struct Answer {
    /// 0: no HTTP answer (refused handshake, not HTTP).
    status: u16,
    version: String,
    headers: String,
    stderr: String,
}

impl Answer {
    fn has_header(&self, line: &str) -> bool {
        self.headers
            .lines()
            .any(|header| header.trim().eq_ignore_ascii_case(line))
    }
}

/// One request with the curl CLI: its TLS and HTTP/2 are not ours.
fn curl(args: &[&str]) -> Answer {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "5"])
        .args(["--output", "/dev/null", "--dump-header", "-"])
        .args(["--write-out", "\n%{http_code} %{http_version}"])
        .args(args)
        .output()
        .expect("curl (installed by `cargo xtask setup`)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (headers, summary) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let (status, version) = summary.split_once(' ').unwrap_or((summary, ""));
    Answer {
        status: status.parse().unwrap_or(0),
        version: version.to_owned(),
        headers: headers.to_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `crossmon run --web-config CONFIG`, which must exit by itself.
fn run_briefly(config: &Path) -> (ExitStatus, String, Duration) {
    let started = Instant::now();
    let mut child = Command::new(crossmon_bin())
        .args([
            "run",
            "--no-docker",
            "--listen",
            "127.0.0.1:0",
            "--web-config",
        ])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("crossmon");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("crossmon still running with {}", config.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = started.elapsed();
    let output = child.wait_with_output().expect("stderr");
    (
        status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
        took,
    )
}

fn self_signed() -> CertifiedKey {
    rcgen::generate_simple_self_signed(["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("self-signed certificate")
}

fn client_ca() -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new([]).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "crossmon test clients");
    (params.self_signed(&key).expect("CA certificate"), key)
}

fn client_certificate(ca: &rcgen::Certificate, ca_key: &KeyPair) -> CertifiedKey {
    let key_pair = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(["prometheus".to_owned()]).expect("parameters");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params
        .signed_by(&key_pair, ca, ca_key)
        .expect("client certificate");
    CertifiedKey { cert, key_pair }
}
