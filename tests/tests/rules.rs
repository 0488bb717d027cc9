//! The alerting rules shipped in `deploy/prometheus/`: promtool accepts them
//! with every lint fatal, their unit tests pass, and those tests see every
//! rule both fire and stay silent. No root, no agent: promtool evaluates the
//! rules on the series the test file describes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{collections::BTreeSet, path::PathBuf};

use integration_tests::prometheus::{
    prometheus_installed, promtool_check_rules, promtool_test_rules,
};

fn shipped(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/prometheus")
        .join(file)
}

fn read(file: &str) -> String {
    let path = shipped(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn promtool_accepts_the_alerting_rules() {
    prometheus_installed();
    let rules = shipped("crossmon-alerts.yml");
    if let Err(complaint) = promtool_check_rules(&rules) {
        panic!("promtool check rules {}: {complaint}", rules.display());
    }
}

#[test]
fn the_alerting_rules_pass_their_unit_tests() {
    prometheus_installed();
    let tests = shipped("crossmon-alerts.test.yml");
    if let Err(complaint) = promtool_test_rules(&tests) {
        panic!("promtool test rules {}: {complaint}", tests.display());
    }
}

/// promtool passes a rule no test mentions; this makes an untested rule,
/// or one only ever tested silent (or only firing), a failure. A line scan
/// rather than YAML parsing: both files keep one `alert:` or `alertname:`
/// per line, and `exp_alerts: []` on the line after its `alertname:`.
#[test]
fn every_rule_is_tested_firing_and_silent() {
    let rules = read("crossmon-alerts.yml");
    let tests = read("crossmon-alerts.test.yml");
    let value = |line: &str, key: &str| {
        line.trim()
            .trim_start_matches("- ")
            .strip_prefix(key)
            .map(|rest| rest.trim().to_owned())
    };
    let alerts: BTreeSet<String> = rules
        .lines()
        .filter_map(|line| value(line, "alert:"))
        .collect();
    assert!(!alerts.is_empty(), "no `alert:` in crossmon-alerts.yml");

    let (mut firing, mut silent) = (BTreeSet::new(), BTreeSet::new());
    let lines: Vec<&str> = tests.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = value(line, "alertname:") else {
            continue;
        };
        let next = lines.get(i + 1).map_or("", |next| next.trim());
        match next {
            "exp_alerts: []" => silent.insert(name),
            "exp_alerts:" => firing.insert(name),
            other => panic!("after `alertname: {name}`, `exp_alerts:` expected, not `{other}`"),
        };
    }
    for (outcome, tested) in [("firing", &firing), ("silent", &silent)] {
        let untested: Vec<_> = alerts.difference(tested).collect();
        assert!(untested.is_empty(), "never tested {outcome}: {untested:?}");
        let unknown: Vec<_> = tested.difference(&alerts).collect();
        assert!(
            unknown.is_empty(),
            "tested but not in the rules: {unknown:?}"
        );
    }
}
