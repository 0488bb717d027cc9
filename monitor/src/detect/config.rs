//! `--config FILE`: the detectors' settings, in TOML. Every key has a
//! documented default, so the file holds only what an operator changes;
//! an unknown key or a bad value is an error naming it.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use monitor_common::MAX_CAPTURE;
use serde::{Deserialize, Deserializer};

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DetectConfig {
    pub port_scan: Scan,
    pub host_sweep: Scan,
    pub syn_flood: SynFlood,
    pub packet_flood: PacketFlood,
    pub new_connection: NewConnection,
    pub traffic_spike: TrafficSpike,
    pub cleartext: Cleartext,
    pub host_access: HostAccess,
    pub ip_spoof: Toggle,
    pub arp_spoof: Toggle,
    pub isolation_violation: Toggle,
    pub dns: DnsAbuse,
}

/// `dns_tunnel` and `nxdomain_storm`: what one container asks of DNS
/// within a window.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DnsAbuse {
    pub enabled: bool,
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    /// Tunnelling: this many distinct names under one domain (its last
    /// two labels)...
    pub max_subdomains: usize,
    /// ...or this many whose longest label is `entropy_min_length` bytes
    /// or more with `min_entropy` bits per byte or more.
    pub min_high_entropy_names: u64,
    pub entropy_min_length: usize,
    pub min_entropy: f64,
    /// NXDOMAIN answers to one container within the window.
    pub max_nxdomain: u64,
}

impl Default for DnsAbuse {
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_secs(60),
            max_subdomains: 100,
            min_high_entropy_names: 10,
            entropy_min_length: 24,
            min_entropy: 3.5,
            max_nxdomain: 50,
        }
    }
}

/// A detector without settings of its own.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Toggle {
    pub enabled: bool,
}

impl Default for Toggle {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// `port_scan` (one source, many ports of one destination) and
/// `host_sweep` (one source, many destinations) alike.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Scan {
    pub enabled: bool,
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    /// Alert when the distinct targets tried within the window weigh this
    /// much: a refused or unanswered one weighs 1, an answered one
    /// `answered_weight`.
    pub threshold: f64,
    pub answered_weight: f64,
    /// A slow scan stays under `threshold` per `window`; over this longer
    /// window it still adds up to `slow_threshold`. (Shorter than `window`,
    /// it is just a second window.)
    #[serde(deserialize_with = "duration")]
    pub slow_window: Duration,
    pub slow_threshold: f64,
}

impl Default for Scan {
    /// An answered target (a service, a host) weighs a tenth: a load
    /// balancer over 80 backends (80 answered, 8) stays far below, while a
    /// scan, which mostly finds nothing, crosses at 20 targets.
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_secs(60),
            threshold: 20.0,
            answered_weight: 0.1,
            slow_window: Duration::from_secs(600),
            slow_threshold: 40.0,
        }
    }
}

/// Many SYNs to one destination, few handshakes completed.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SynFlood {
    pub enabled: bool,
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    /// SYNs to one destination (address and port) within the window.
    pub min_syns: u64,
    /// Alert when fewer than this share of those connections completed.
    pub max_completed_ratio: f64,
}

impl Default for SynFlood {
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_secs(10),
            min_syns: 1000,
            max_completed_ratio: 0.2,
        }
    }
}

/// Many UDP or ICMP packets from one container to one destination.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PacketFlood {
    pub enabled: bool,
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    /// Packets of one protocol on one edge within the window...
    pub min_packets: u64,
    /// ...and this many times the edge's moving average of earlier
    /// windows (a steady stream is its own baseline).
    pub factor: f64,
}

impl Default for PacketFlood {
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_secs(10),
            min_packets: 50_000,
            factor: 10.0,
        }
    }
}

/// A service talking to a service (and port) it never talked to before.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NewConnection {
    pub enabled: bool,
    /// How long edges are learnt silently after the baseline was created.
    #[serde(deserialize_with = "duration")]
    pub learning_period: Duration,
}

impl Default for NewConnection {
    fn default() -> Self {
        Self {
            enabled: true,
            learning_period: Duration::from_secs(24 * 3600),
        }
    }
}

/// Bytes on one edge far above its own moving baseline.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrafficSpike {
    pub enabled: bool,
    /// Traffic is summed per window; the baseline is a moving average of
    /// earlier windows.
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    /// Alert when a window carries this many times the baseline...
    pub factor: f64,
    /// ...and at least this many bytes (quiet edges page nobody).
    pub min_bytes: u64,
    /// Windows of history an edge needs before it can spike.
    pub warmup_windows: u32,
}

impl Default for TrafficSpike {
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_secs(60),
            factor: 10.0,
            min_bytes: 100 * 1024 * 1024,
            // Two minutes of history make a baseline: a new edge's bulk
            // transfer is learnt, not alerted, and an exfiltration from an
            // edge two minutes old is caught.
            warmup_windows: 2,
        }
    }
}

/// Cleartext between containers where TLS is required.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Cleartext {
    pub enabled: bool,
    /// Ports expected to carry TLS, besides the well-known ones.
    pub tls_ports: Vec<u16>,
    /// Compose services, container names or ports (as text) whose
    /// connections must be encrypted.
    pub require_tls: Vec<String>,
    /// Payload bytes an alert may quote (escaped). 0: only the protocol's
    /// opening word and how many bytes were withheld.
    pub alert_payload_bytes: usize,
}

impl Default for Cleartext {
    fn default() -> Self {
        Self {
            enabled: true,
            tls_ports: Vec::new(),
            require_tls: Vec::new(),
            alert_payload_bytes: 0,
        }
    }
}

/// Containers reaching for the host's sensitive ports.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HostAccess {
    pub enabled: bool,
    /// Host ports a container has no business opening.
    pub ports: Vec<u16>,
}

impl Default for HostAccess {
    fn default() -> Self {
        Self {
            enabled: true,
            ports: vec![22, 2375, 2376],
        }
    }
}

/// The one switch every detector's settings have: a detector switched
/// off is left out of the registry, and nothing else checks it.
pub trait Enabled {
    fn enabled(&self) -> bool;
}

macro_rules! enabled {
    ($($settings:ty),*) => {$(
        impl Enabled for $settings {
            fn enabled(&self) -> bool {
                self.enabled
            }
        }
    )*};
}
enabled!(
    Toggle,
    Scan,
    SynFlood,
    PacketFlood,
    NewConnection,
    TrafficSpike,
    Cleartext,
    HostAccess,
    DnsAbuse
);

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    let duration = humantime::parse_duration(&text)
        .map_err(|err| serde::de::Error::custom(format!("{text:?}: {err}")))?;
    if duration.is_zero() {
        return Err(serde::de::Error::custom("must be longer than zero"));
    }
    Ok(duration)
}

impl DetectConfig {
    pub fn load(path: &Path) -> anyhow::Result<DetectConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--config {}: reading the file", path.display()))?;
        Self::parse(&text).with_context(|| format!("--config {}", path.display()))
    }

    fn parse(text: &str) -> anyhow::Result<DetectConfig> {
        let config: DetectConfig = toml::from_str(text).map_err(|err| {
            // toml's message names the key and shows the line.
            anyhow::anyhow!("{}", err.to_string().trim_end())
        })?;
        config.check()?;
        Ok(config)
    }

    /// Values serde accepts but that make no sense.
    fn check(&self) -> anyhow::Result<()> {
        // Windows close once per poll at most; shorter ones only cost.
        for (key, window) in [
            ("port_scan.window", self.port_scan.window),
            ("host_sweep.window", self.host_sweep.window),
            ("port_scan.slow_window", self.port_scan.slow_window),
            ("host_sweep.slow_window", self.host_sweep.slow_window),
            ("syn_flood.window", self.syn_flood.window),
            ("packet_flood.window", self.packet_flood.window),
            ("traffic_spike.window", self.traffic_spike.window),
            ("dns.window", self.dns.window),
        ] {
            anyhow::ensure!(
                window >= Duration::from_secs(1),
                "{key} = {}: must be at least 1s",
                humantime::format_duration(window)
            );
        }
        let ratios = [
            ("port_scan.answered_weight", self.port_scan.answered_weight),
            (
                "host_sweep.answered_weight",
                self.host_sweep.answered_weight,
            ),
            (
                "syn_flood.max_completed_ratio",
                self.syn_flood.max_completed_ratio,
            ),
        ];
        for (key, value) in ratios {
            anyhow::ensure!(
                (0.0..=1.0).contains(&value),
                "{key} = {value}: must be between 0 and 1"
            );
        }
        for (key, value) in [
            ("port_scan.threshold", self.port_scan.threshold),
            ("host_sweep.threshold", self.host_sweep.threshold),
            ("port_scan.slow_threshold", self.port_scan.slow_threshold),
            ("host_sweep.slow_threshold", self.host_sweep.slow_threshold),
            ("traffic_spike.factor", self.traffic_spike.factor),
            ("packet_flood.factor", self.packet_flood.factor),
        ] {
            anyhow::ensure!(
                value.is_finite() && value > 0.0,
                "{key} = {value}: must be above 0"
            );
        }
        for (key, factor) in [
            ("traffic_spike.factor", self.traffic_spike.factor),
            ("packet_flood.factor", self.packet_flood.factor),
        ] {
            anyhow::ensure!(
                factor > 1.0,
                "{key} = {factor}: must be above 1 (a spike exceeds its baseline)"
            );
        }
        anyhow::ensure!(
            self.packet_flood.min_packets > 0,
            "packet_flood.min_packets = 0: must be at least 1"
        );
        for (key, value) in [
            ("dns.max_subdomains", self.dns.max_subdomains as u64),
            (
                "dns.min_high_entropy_names",
                self.dns.min_high_entropy_names,
            ),
            ("dns.entropy_min_length", self.dns.entropy_min_length as u64),
            ("dns.max_nxdomain", self.dns.max_nxdomain),
        ] {
            anyhow::ensure!(value > 0, "{key} = 0: must be at least 1");
        }
        anyhow::ensure!(
            self.dns.min_entropy.is_finite() && self.dns.min_entropy > 0.0,
            "dns.min_entropy = {}: must be above 0",
            self.dns.min_entropy
        );
        anyhow::ensure!(
            self.syn_flood.min_syns > 0,
            "syn_flood.min_syns = 0: must be at least 1"
        );
        for (key, ports) in [
            ("cleartext.tls_ports", &self.cleartext.tls_ports),
            ("host_access.ports", &self.host_access.ports),
        ] {
            anyhow::ensure!(!ports.contains(&0), "{key}: port 0 is no port");
        }
        anyhow::ensure!(
            self.cleartext
                .require_tls
                .iter()
                .all(|name| !name.trim().is_empty()),
            "cleartext.require_tls: an empty name matches nothing"
        );
        anyhow::ensure!(
            self.cleartext.alert_payload_bytes <= MAX_CAPTURE,
            "cleartext.alert_payload_bytes = {}: at most {MAX_CAPTURE} (what the kernel captures)",
            self.cleartext.alert_payload_bytes
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_every_default() {
        let config = DetectConfig::parse("").expect("empty is fine");
        assert_eq!(config.port_scan.window, Duration::from_secs(60));
        assert!(config.isolation_violation.enabled);
        assert_eq!(config.host_access.ports, [22, 2375, 2376]);
    }

    #[test]
    fn set_keys_override_the_defaults() {
        let config = DetectConfig::parse(
            "[port_scan]\nwindow = \"10s\"\nthreshold = 5\n\n[cleartext]\nrequire_tls = [\"db\", \"5432\"]\n\n[arp_spoof]\nenabled = false\n",
        )
        .expect("valid");
        assert_eq!(config.port_scan.window, Duration::from_secs(10));
        assert_eq!(config.port_scan.threshold, 5.0);
        assert_eq!(config.port_scan.answered_weight, 0.1);
        assert_eq!(config.cleartext.require_tls, ["db", "5432"]);
        assert!(!config.arp_spoof.enabled);
    }

    /// `deploy/crossmon.toml`: every key, at its default.
    const EVERY_KEY: &str = include_str!("../../../deploy/crossmon.toml");

    #[test]
    fn the_documented_file_holds_every_default() {
        assert_eq!(
            DetectConfig::parse(EVERY_KEY).expect("valid"),
            DetectConfig::default()
        );
    }

    /// Every key of the documented file, with values it must refuse: the
    /// error names the key.
    #[test]
    fn every_key_refuses_its_invalid_values_naming_it() {
        let bad: &[(&str, &[&str])] = &[
            ("enabled", &["\"yes\"", "1"]),
            ("window", &["\"0s\"", "\"soon\"", "60", "\"500ms\""]),
            ("threshold", &["0.0", "-1.0", "nan", "inf", "\"20\""]),
            ("answered_weight", &["2.0", "-0.1", "nan"]),
            ("min_syns", &["0", "-1"]),
            ("slow_window", &["\"0s\"", "\"500ms\"", "600"]),
            ("slow_threshold", &["0.0", "-1.0", "nan"]),
            ("min_packets", &["0", "-1"]),
            ("max_completed_ratio", &["1.5", "-1.0"]),
            ("learning_period", &["\"0s\"", "5"]),
            ("factor", &["1.0", "0.5", "-inf"]),
            ("min_bytes", &["-1", "\"lots\""]),
            ("warmup_windows", &["-1", "4294967296"]),
            ("tls_ports", &["[0]", "[70000]", "9443"]),
            ("require_tls", &["[\"\"]", "[5432]"]),
            ("alert_payload_bytes", &["513", "-1"]),
            ("ports", &["[0]", "[-22]"]),
            ("max_subdomains", &["0", "-1"]),
            ("min_high_entropy_names", &["0", "\"many\""]),
            ("entropy_min_length", &["0", "-1"]),
            ("min_entropy", &["0.0", "-1.0", "nan"]),
            ("max_nxdomain", &["0", "-5"]),
        ];
        let documented: toml::Table = toml::from_str(EVERY_KEY).expect("TOML");
        for (table, keys) in &documented {
            let keys = keys.as_table().expect("a table per detector");
            for key in keys.keys() {
                let values = bad
                    .iter()
                    .find(|(name, _)| name == key)
                    .unwrap_or_else(|| panic!("no invalid value tried for {table}.{key}"))
                    .1;
                for value in values {
                    let text = format!("[{table}]\n{key} = {value}\n");
                    let error = match DetectConfig::parse(&text) {
                        Ok(_) => panic!("{text:?} was accepted"),
                        Err(error) => format!("{error:#}"),
                    };
                    assert!(error.contains(key.as_str()), "{text:?}: {error}");
                }
            }
        }
    }

    #[test]
    fn mistakes_name_the_key() {
        let error = |text: &str| format!("{:#}", DetectConfig::parse(text).unwrap_err());
        assert!(error("[port_scan]\nwindwo = \"1s\"\n").contains("windwo"));
        assert!(error("[port_scna]\n").contains("port_scna"));
        assert!(error("[syn_flood]\nwindow = \"soon\"\n").contains("window"));
        assert!(error("[syn_flood]\nmin_syns = -1\n").contains("min_syns"));
        assert!(error("[port_scan]\nanswered_weight = 2.0\n").contains("port_scan.answered_weight"));
        assert!(error("[traffic_spike]\nwindow = \"0s\"\n").contains("longer than zero"));
        assert!(error("[traffic_spike]\nwindow = \"1us\"\n").contains("at least 1s"));
    }

    mod properties {
        use proptest::{collection, prelude::*, sample::select};

        use super::{DetectConfig, EVERY_KEY, MAX_CAPTURE};

        /// (table, key) of every documented setting.
        fn documented_keys() -> Vec<(String, String)> {
            let documented: toml::Table = toml::from_str(EVERY_KEY).expect("TOML");
            documented
                .iter()
                .flat_map(|(table, keys)| {
                    let keys = keys.as_table().expect("a table per detector");
                    keys.keys().map(|key| (table.clone(), key.clone()))
                })
                .collect()
        }

        /// TOML text of a string (JSON's escapes are TOML's).
        fn quoted(text: &str) -> String {
            serde_json::to_string(text).expect("a string serializes")
        }

        fn float(value: f64) -> String {
            match value {
                v if v.is_nan() => "nan".into(),
                v if v.is_infinite() => (if v > 0.0 { "inf" } else { "-inf" }).into(),
                v => format!("{v:e}"),
            }
        }

        fn duration(units: &'static [&'static str], max: u64) -> impl Strategy<Value = String> {
            (0..=max, select(units)).prop_map(|(n, unit)| quoted(&format!("{n}{unit}")))
        }

        /// A value of any TOML type, in the ranges where settings change
        /// meaning and far beyond.
        fn any_value() -> impl Strategy<Value = String> {
            let scalar = prop_oneof![
                any::<bool>().prop_map(|b| b.to_string()),
                any::<i64>().prop_map(|n| n.to_string()),
                (-2i64..70_000).prop_map(|n| n.to_string()),
                any::<f64>().prop_map(float),
                (-2.0f64..3.0).prop_map(float),
                duration(
                    &["ns", "us", "ms", "s", "m", "h", "d", "y", "", "x"],
                    u64::MAX
                ),
                any::<String>().prop_map(|text| quoted(&text)),
            ];
            prop_oneof![
                4 => scalar.clone(),
                1 => collection::vec(scalar, 0..4).prop_map(|items| format!("[{}]", items.join(", "))),
            ]
        }

        /// A value the setting `key` must accept.
        fn valid_value(key: &str) -> BoxedStrategy<String> {
            let ports = || {
                collection::vec(1u16.., 0..4)
                    .prop_map(|ports| format!("{ports:?}"))
                    .boxed()
            };
            match key {
                "enabled" => any::<bool>().prop_map(|b| b.to_string()).boxed(),
                "window" | "slow_window" => (1u64..100_000, select(&["s", "m", "h"][..]))
                    .prop_map(|(n, unit)| quoted(&format!("{n}{unit}")))
                    .boxed(),
                "learning_period" => duration(&["ns", "s", "day"], 10_000)
                    .prop_filter("longer than zero", |text| !text.starts_with("\"0"))
                    .boxed(),
                "threshold" | "slow_threshold" => (1e-6f64..1e9).prop_map(float).boxed(),
                "answered_weight" | "max_completed_ratio" => (0.0f64..=1.0).prop_map(float).boxed(),
                "factor" => (1.001f64..1e6).prop_map(float).boxed(),
                "min_syns" | "min_packets" => (1..=i64::MAX).prop_map(|n| n.to_string()).boxed(),
                "min_bytes" => (0..=i64::MAX).prop_map(|n| n.to_string()).boxed(),
                "warmup_windows" => any::<u32>().prop_map(|n| n.to_string()).boxed(),
                "alert_payload_bytes" => (0..=MAX_CAPTURE).prop_map(|n| n.to_string()).boxed(),
                "tls_ports" | "ports" => ports(),
                "max_subdomains"
                | "min_high_entropy_names"
                | "entropy_min_length"
                | "max_nxdomain" => (1..=i64::MAX).prop_map(|n| n.to_string()).boxed(),
                "min_entropy" => (1e-6f64..8.0).prop_map(float).boxed(),
                "require_tls" => collection::vec("[a-z0-9-]{1,12}", 0..3)
                    .prop_map(|names| format!("{names:?}"))
                    .boxed(),
                other => panic!("no valid values known for {other}: add them here"),
            }
        }

        /// Documents setting some of the keys, each to a value from `values`.
        fn documents(
            values: impl Fn(&str) -> BoxedStrategy<String>,
        ) -> impl Strategy<Value = (String, Vec<String>)> {
            let settings: Vec<_> = documented_keys()
                .into_iter()
                .map(|(table, key)| {
                    let value = values(&key);
                    (any::<bool>(), value).prop_map(move |(set, value)| {
                        set.then(|| (table.clone(), key.clone(), value))
                    })
                })
                .collect();
            settings.prop_map(|settings| {
                let mut text = String::new();
                let mut keys = Vec::new();
                let mut table = String::new();
                for (name, key, value) in settings.into_iter().flatten() {
                    if name != table {
                        text.push_str(&format!("[{name}]\n"));
                        table = name;
                    }
                    text.push_str(&format!("{key} = {value}\n"));
                    keys.push(key);
                }
                (text, keys)
            })
        }

        proptest! {
            #[test]
            fn any_text_is_a_config_or_an_error(text in any::<String>()) {
                let _ = DetectConfig::parse(&text);
            }

            #[test]
            fn valid_values_are_accepted((text, _) in documents(valid_value)) {
                if let Err(error) = DetectConfig::parse(&text) {
                    prop_assert!(false, "{text}refused: {error:#}");
                }
            }

            #[test]
            fn refusals_name_a_key_that_was_set(
                (text, keys) in documents(|_| any_value().boxed()),
            ) {
                if let Err(error) = DetectConfig::parse(&text) {
                    let error = format!("{error:#}");
                    prop_assert!(
                        keys.iter().any(|key| error.contains(key.as_str())),
                        "{text}refused without naming a key set: {error}"
                    );
                }
            }
        }
    }
}
