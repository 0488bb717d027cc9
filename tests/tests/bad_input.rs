//! Bad input at start: every flag of `crossmon run` with an invalid value,
//! a bad config file, bad environment values. Each stops crossmon at once
//! with exit status 2 and a message naming what was wrong; none of them
//! starts the agent, panics or hangs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{
    collections::BTreeSet,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{crossmon_bin, scratch::Scratch};

/// Runs crossmon and returns its exit status and standard error; a process
/// still running after a few seconds has accepted the input, which fails
/// the test (and is killed).
fn refusal(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(crossmon_bin())
        .args(args)
        .env_remove("CROSSMON_LISTEN")
        .env_remove("DOCKER_HOST")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("crossmon");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for crossmon") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("crossmon {args:?} {env:?} started instead of refusing its input");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    (status.code(), stderr)
}

fn assert_refused(args: &[&str], env: &[(&str, &str)], named: &str) {
    let (code, stderr) = refusal(args, env);
    assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
    assert!(
        stderr.contains(named) && !stderr.contains("panicked"),
        "{args:?} {env:?} must be refused naming {named:?}: {stderr}"
    );
}

/// The long flags `crossmon <command> --help` lists.
fn flags_of(command: &str) -> BTreeSet<String> {
    let help = Command::new(crossmon_bin())
        .args([command, "--help"])
        .output()
        .expect("crossmon --help");
    String::from_utf8_lossy(&help.stdout)
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("--"))
        .map(|flag| {
            flag.trim_end_matches([',', '='])
                .split(['=', '[', '<'])
                .next()
                .unwrap_or_default()
        })
        .filter(|flag| !flag.is_empty() && !["help", "version"].contains(flag))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_run_flag_with_an_invalid_value_exits_2_naming_it() {
    let scratch = Scratch::new("bad-input");
    let a_file = scratch.write("a-file", "");
    let a_file = a_file.to_str().expect("UTF-8 path");
    let under_a_file = format!("{a_file}/evidence");
    let cases: &[(&str, &[&str])] = &[
        ("listen", &["nowhere", "127.0.0.1:99999", ""]),
        ("capture-on-alert", &[&under_a_file]),
        ("capture-on-alert-kinds", &["nonsense", ","]),
        ("capture-on-alert-duration", &["0s", "soon"]),
        ("capture-on-alert-count", &["0", "many"]),
        ("capture-on-alert-max-mib", &["0", "-5"]),
        ("web-config", &["/nonexistent/web.yml"]),
        (
            "docker-host",
            &["ftp://docker", "unix://relative.sock", "tcp://nohost", ""],
        ),
        ("docker-exec-root", &[a_file, "relative/dir", ""]),
        ("flow-capacity", &["0", "-1", "many"]),
        ("payload-bytes", &["513", "-1"]),
        ("payload-packets", &["256", "x"]),
        ("sample-rate", &["-1", "often"]),
        ("ring-bytes", &["1000", "0", "4097"]),
        ("new-flow-events", &["maybe", ""]),
        ("dns", &["maybe", ""]),
        ("poll-interval", &["0s", "soon", "-1s"]),
        ("idle-timeout", &["0s", "forever"]),
        ("close-linger", &["0s", "a moment"]),
        ("max-series", &["0", "lots"]),
        ("series-grace", &["0m", "a while"]),
        ("config", &["/nonexistent/crossmon.toml"]),
        ("state-dir", &[a_file]),
        ("flow-log", &["/nonexistent/flows.jsonl", "/"]),
        ("flow-log-interval", &["0s", "x"]),
        ("flow-log-max-mib", &["0", "-5"]),
        ("flow-log-keep", &["-1", "some"]),
        ("alert-log", &["/nonexistent/alerts.jsonl", "/"]),
        ("alert-cooldown", &["0s", "later"]),
        ("attach-mode", &["xdp", ""]),
        ("ebpf-log", &["loud"]),
        ("policy", &["/nonexistent/policy.yaml", a_file]),
    ];
    let covered: BTreeSet<String> = cases
        .iter()
        .map(|(flag, _)| (*flag).to_owned())
        .chain(["no-docker".to_owned(), "enforce".to_owned()])
        .collect();
    assert_eq!(
        flags_of("run"),
        covered,
        "every flag of `crossmon run` needs its invalid values here"
    );
    for (flag, values) in cases {
        for value in *values {
            // `--flag=value`: a value like `-1` is then not taken for a flag.
            assert_refused(
                &["run", &format!("--{flag}={value}")],
                &[],
                &format!("--{flag}"),
            );
        }
    }
    // A switch takes no value.
    assert_refused(&["run", "--no-docker=yes"], &[], "--no-docker");
    assert_refused(&["run", "--enforce=yes"], &[], "--enforce");
    assert_refused(&["run", "--bogus"], &[], "--bogus");
}

#[test]
fn invalid_environment_values_exit_2_naming_them() {
    assert_refused(&["run"], &[("CROSSMON_LISTEN", "nowhere")], "--listen");
    assert_refused(&["run"], &[("DOCKER_HOST", "ftp://docker")], "DOCKER_HOST");
}

#[test]
fn every_doctor_flag_with_an_invalid_value_exits_2_naming_it() {
    assert_eq!(
        flags_of("doctor"),
        BTreeSet::from(["docker-host".to_owned()])
    );
    assert_refused(
        &["doctor", "--docker-host", "ftp://docker"],
        &[],
        "--docker-host",
    );
    assert_refused(&["doctor", "--bogus"], &[], "--bogus");
}

#[test]
fn a_bad_config_file_exits_2_naming_the_key() {
    let scratch = Scratch::new("config");
    for (text, named) in [
        ("[port_scan]\nthreshhold = 5\n", "threshhold"),
        ("[syn_flood]\nwindow = \"often\"\n", "window"),
        ("[new_connection]\nlearning_period = 5\n", "learning_period"),
        ("[portscan]\n", "portscan"),
        ("[traffic_spike]\nfactor = 0.5\n", "traffic_spike.factor"),
        (
            "[cleartext]\nalert_payload_bytes = 4096\n",
            "alert_payload_bytes",
        ),
        ("not toml at all", "crossmon.toml"),
    ] {
        let config = scratch.write("crossmon.toml", text);
        let config = config.to_str().expect("UTF-8 path");
        assert_refused(&["run", "--config", config], &[], named);
        assert_refused(&["run", "--config", config], &[], "crossmon.toml");
    }
}

#[test]
fn a_bad_policy_or_its_misuse_exits_2_naming_it() {
    let scratch = Scratch::new("policy");
    let good = scratch.write("good.yaml", "version: 1\n");
    let good = good.to_str().expect("UTF-8 path");
    for (text, named) in [
        ("version: 1\nrulez: []\n", "rulez"),
        ("version: 1\ndefaults: {\"*\": block}\n", "block"),
        (
            "version: 1\nrules:\n  - {name: a, from: {service: w}, to: {}}\n",
            "rules[0] (a): to: no selector",
        ),
    ] {
        let policy = scratch.write("policy.yaml", text);
        let policy = policy.to_str().expect("UTF-8 path");
        assert_refused(&["run", "--policy", policy], &[], named);
        assert_refused(&["policy", "check", policy], &[], named);
    }
    // Enforcement needs a policy.
    assert_refused(&["run", "--enforce"], &[], "--policy");
    assert_refused(
        &["run", "--policy", good, "--no-docker"],
        &[],
        "--no-docker",
    );
    assert_refused(
        &[
            "policy",
            "learn",
            "--duration",
            "1s",
            "--output",
            "/nonexistent/p.yaml",
        ],
        &[],
        "--output",
    );
    assert_refused(
        &["policy", "learn", "--duration", "0s", "--output", good],
        &[],
        "--duration",
    );
}
