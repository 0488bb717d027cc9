//! `--config FILE`: the detectors' settings, in TOML. Every key has a
//! documented default, so the file holds only what an operator changes;
//! an unknown key or a bad value is an error naming it.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use serde::{Deserialize, Deserializer};

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectConfig {
    pub port_scan: Scan,
    pub host_sweep: Scan,
    pub syn_flood: SynFlood,
    pub new_connection: NewConnection,
    pub traffic_spike: TrafficSpike,
    pub cleartext: Cleartext,
    pub host_access: HostAccess,
    pub ip_spoof: Toggle,
    pub arp_spoof: Toggle,
    pub isolation_violation: Toggle,
}

/// A detector without settings of its own.
#[derive(Clone, Debug, Deserialize)]
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
#[derive(Clone, Debug, Deserialize)]
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
}

impl Default for Scan {
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_secs(60),
            threshold: 20.0,
            answered_weight: 0.25,
        }
    }
}

/// Many SYNs to one destination, few handshakes completed.
#[derive(Clone, Debug, Deserialize)]
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

/// A service talking to a service (and port) it never talked to before.
#[derive(Clone, Debug, Deserialize)]
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
#[derive(Clone, Debug, Deserialize)]
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
            warmup_windows: 5,
        }
    }
}

/// Cleartext between containers where TLS is required.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cleartext {
    pub enabled: bool,
    /// Ports expected to carry TLS, besides the well-known ones.
    pub tls_ports: Vec<u16>,
    /// Compose services, container names or ports (as text) whose
    /// connections must be encrypted.
    pub require_tls: Vec<String>,
}

impl Default for Cleartext {
    fn default() -> Self {
        Self {
            enabled: true,
            tls_ports: Vec::new(),
            require_tls: Vec::new(),
        }
    }
}

/// Containers reaching for the host's sensitive ports.
#[derive(Clone, Debug, Deserialize)]
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
            ("syn_flood.window", self.syn_flood.window),
            ("traffic_spike.window", self.traffic_spike.window),
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
            ("traffic_spike.factor", self.traffic_spike.factor),
        ] {
            anyhow::ensure!(
                value.is_finite() && value > 0.0,
                "{key} = {value}: must be above 0"
            );
        }
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
        assert_eq!(config.port_scan.answered_weight, 0.25);
        assert_eq!(config.cleartext.require_tls, ["db", "5432"]);
        assert!(!config.arp_spoof.enabled);
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
}
