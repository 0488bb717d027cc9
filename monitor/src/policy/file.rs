//! The policy file (YAML): its format, and the checks that turn it into a
//! [`Policy`]. Every error names the key at fault.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    path::Path,
};

use anyhow::{bail, ensure, Context as _};
use monitor_common::{ip_proto, PolicyAction};
use serde::Deserialize;

use super::select::Selector;

/// The one version this crossmon reads.
pub const VERSION: u32 = 1;
/// Ports one rule may name (ranges included): each is a kernel map entry
/// per pair of containers it applies to.
const MAX_PORTS_PER_RULE: usize = 1024;
/// Counter names the kernel reserves, and the prefix of network defaults.
pub const SPOOFED_SOURCE: &str = "spoofed_source";
pub const SPOOFED_ARP: &str = "spoofed_arp";
pub const DEFAULT_PREFIX: &str = "default:";
/// The `defaults` key of every network not listed.
pub const ANY_NETWORK: &str = "*";
/// What a network without a default (and no `"*"`) gets: nothing breaks,
/// everything outside the rules is seen.
const UNLISTED_DEFAULT: Action = Action::Alert;

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a crossmon policy: version, defaults, rules"
)]
struct FileFormat {
    version: u32,
    #[serde(default)]
    defaults: BTreeMap<String, Action>,
    #[serde(default)]
    rules: Vec<RuleFormat>,
}

#[derive(Debug, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a rule: name, from, to, protocol, ports, action"
)]
struct RuleFormat {
    name: String,
    from: Selector,
    to: Selector,
    #[serde(default)]
    protocol: Protocol,
    #[serde(default)]
    ports: Vec<PortSpec>,
    #[serde(default)]
    action: Action,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Allow,
    Alert,
    Deny,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Alert => "alert",
            Action::Deny => "deny",
        }
    }

    pub fn kernel(self) -> PolicyAction {
        match self {
            Action::Allow => PolicyAction::Allow,
            Action::Alert => PolicyAction::Alert,
            Action::Deny => PolicyAction::Deny,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP and ICMPv6.
    Icmp,
    /// TCP and UDP with `ports`; TCP, UDP, ICMP and ICMPv6 without.
    #[default]
    Any,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Any => "any",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a port (80) or a range (\"8000-8010\")")]
enum PortSpec {
    Port(u16),
    Range(String),
}

/// One rule, checked and expanded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub from: Selector,
    pub to: Selector,
    /// IP protocol numbers.
    pub protocols: BTreeSet<u8>,
    /// Empty: any port.
    pub ports: BTreeSet<u16>,
    pub action: Action,
    /// As written, for people: `tcp/80,443`, `any`.
    pub traffic: String,
}

impl Rule {
    /// Whether the rule covers this protocol and destination port (0 for
    /// protocols without ports).
    pub fn covers(&self, protocol: u8, port: u16) -> bool {
        self.protocols.contains(&protocol) && (self.ports.is_empty() || self.ports.contains(&port))
    }
}

/// A valid policy: rules in the file's order (the first that matches
/// decides), and a default per network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub rules: Vec<Rule>,
    defaults: BTreeMap<String, Action>,
}

impl Policy {
    /// Reads and checks `path`; the error says what is wrong, and where.
    pub fn load(path: &Path) -> anyhow::Result<Policy> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read it", path.display()))?;
        Policy::parse(&text).with_context(|| path.display().to_string())
    }

    pub fn parse(text: &str) -> anyhow::Result<Policy> {
        let file: FileFormat = serde_yaml::from_str(text).context("not a valid policy")?;
        ensure!(
            file.version == VERSION,
            "version: {} is not a policy version this crossmon reads (only {VERSION})",
            file.version
        );
        let mut names = HashSet::new();
        let rules = file
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, rule)| {
                let at = format!("rules[{i}] ({})", rule.name);
                let rule = checked(rule).with_context(|| at.clone())?;
                ensure!(
                    names.insert(rule.name.clone()),
                    "{at}: name: another rule has this name; names label the policy counters"
                );
                Ok(rule)
            })
            .collect::<anyhow::Result<Vec<Rule>>>()?;
        for network in file.defaults.keys() {
            ensure!(!network.is_empty(), "defaults: a network name is empty");
        }
        Ok(Policy {
            rules,
            defaults: file.defaults,
        })
    }

    /// The default of `network`: its own, else `"*"`'s, else `alert`.
    pub fn default_for(&self, network: &str) -> Action {
        self.defaults
            .get(network)
            .or_else(|| self.defaults.get(ANY_NETWORK))
            .copied()
            .unwrap_or(UNLISTED_DEFAULT)
    }
}

fn checked(rule: RuleFormat) -> anyhow::Result<Rule> {
    ensure!(!rule.name.is_empty(), "name: empty");
    ensure!(
        ![SPOOFED_SOURCE, SPOOFED_ARP].contains(&rule.name.as_str())
            && !rule.name.starts_with(DEFAULT_PREFIX),
        "name: {:?} is reserved for crossmon's own counters",
        rule.name
    );
    ensure!(
        rule.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)),
        "name: {:?}: only letters, digits and - _ . / (it labels a metric)",
        rule.name
    );
    rule.from.check().context("from")?;
    rule.to.check().context("to")?;
    let mut ports = BTreeSet::new();
    for (i, spec) in rule.ports.iter().enumerate() {
        let (low, high) = match spec {
            PortSpec::Port(port) => (*port, *port),
            PortSpec::Range(text) => range(text).with_context(|| format!("ports[{i}]"))?,
        };
        ensure!(low != 0, "ports[{i}]: port 0 is no port");
        ports.extend(low..=high);
        ensure!(
            ports.len() <= MAX_PORTS_PER_RULE,
            "ports: more than {MAX_PORTS_PER_RULE} ports in one rule"
        );
    }
    let protocols: BTreeSet<u8> = match (rule.protocol, ports.is_empty()) {
        (Protocol::Tcp, _) => [ip_proto::TCP].into(),
        (Protocol::Udp, _) => [ip_proto::UDP].into(),
        (Protocol::Icmp, true) => [ip_proto::ICMP, ip_proto::ICMPV6].into(),
        (Protocol::Icmp, false) => bail!("ports: ICMP has no ports"),
        (Protocol::Any, false) => [ip_proto::TCP, ip_proto::UDP].into(),
        (Protocol::Any, true) => [
            ip_proto::TCP,
            ip_proto::UDP,
            ip_proto::ICMP,
            ip_proto::ICMPV6,
        ]
        .into(),
    };
    let traffic = if rule.ports.is_empty() {
        rule.protocol.name().to_owned()
    } else {
        let ports: Vec<String> = rule
            .ports
            .iter()
            .map(|spec| match spec {
                PortSpec::Port(port) => port.to_string(),
                PortSpec::Range(text) => text.clone(),
            })
            .collect();
        format!("{}/{}", rule.protocol.name(), ports.join(","))
    };
    Ok(Rule {
        name: rule.name,
        from: rule.from,
        to: rule.to,
        protocols,
        ports,
        action: rule.action,
        traffic,
    })
}

fn range(text: &str) -> anyhow::Result<(u16, u16)> {
    let parsed = text.split_once('-').and_then(|(low, high)| {
        Some((
            low.trim().parse::<u16>().ok()?,
            high.trim().parse::<u16>().ok()?,
        ))
    });
    match parsed {
        Some((low, high)) if low <= high => Ok((low, high)),
        _ => bail!("{text:?}: expected a port or a range LOW-HIGH, LOW <= HIGH"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
version: 1
defaults:
  "*": alert
  shop_default: deny
rules:
  - name: web-to-api
    from: {service: shop/web}
    to: {service: shop/api}
    protocol: tcp
    ports: [8080, "9000-9002"]
  - name: ping-anything
    from: {labels: {role: probe}}
    to: {container: db}
    protocol: icmp
"#;

    fn error(text: &str) -> String {
        format!("{:#}", Policy::parse(text).expect_err("invalid"))
    }

    #[test]
    fn the_documented_example_reads_as_written() {
        let policy = Policy::parse(EXAMPLE).expect("valid");
        assert_eq!(policy.rules.len(), 2);
        let web = &policy.rules[0];
        assert_eq!(web.ports, [8080, 9000, 9001, 9002].into());
        assert_eq!(web.protocols, [ip_proto::TCP].into());
        assert_eq!(web.action, Action::Allow);
        assert_eq!(web.traffic, "tcp/8080,9000-9002");
        assert!(web.covers(ip_proto::TCP, 9001) && !web.covers(ip_proto::TCP, 9003));
        assert!(!web.covers(ip_proto::UDP, 8080));
        let ping = &policy.rules[1];
        assert_eq!(ping.protocols, [ip_proto::ICMP, ip_proto::ICMPV6].into());
        assert!(ping.covers(ip_proto::ICMP, 0));
        assert_eq!(policy.default_for("shop_default"), Action::Deny);
        assert_eq!(policy.default_for("other"), Action::Alert);
        let no_star = Policy::parse("version: 1\n").expect("valid");
        assert_eq!(no_star.default_for("any"), Action::Alert);
    }

    #[test]
    fn errors_name_the_key_at_fault() {
        for (text, expected) in [
            ("version: 2\n", "version: 2"),
            ("version: 1\nrulez: []\n", "unknown field `rulez`"),
            ("version: 1\ndefaults: {\"*\": block}\n", "unknown variant `block`"),
            (
                "version: 1\nrules:\n  - {name: a, from: {service: w}, to: {service: x}, port: [1]}\n",
                "unknown field `port`",
            ),
            (
                "version: 1\nrules:\n  - {name: a, from: {servce: w}, to: {service: x}}\n",
                "unknown field `servce`",
            ),
            (
                "version: 1\nrules:\n  - {name: a, from: {}, to: {service: x}}\n",
                "rules[0] (a): from: no selector",
            ),
            (
                "version: 1\nrules:\n  - {name: a, from: {service: w}, to: {service: x}, protocol: icmp, ports: [1]}\n",
                "rules[0] (a): ports: ICMP has no ports",
            ),
            (
                "version: 1\nrules:\n  - {name: a, from: {service: w}, to: {service: x}, ports: [\"9-3\"]}\n",
                "rules[0] (a): ports[0]: \"9-3\"",
            ),
            (
                "version: 1\nrules:\n  - {name: a, from: {service: w}, to: {service: x}, ports: [\"1-2000\"]}\n",
                "more than 1024 ports",
            ),
            (
                "version: 1\nrules:\n  - {name: a, from: {service: w}, to: {service: x}}\n  - {name: a, from: {service: w}, to: {service: x}}\n",
                "rules[1] (a): name: another rule has this name",
            ),
            (
                "version: 1\nrules:\n  - {name: \"default:x\", from: {service: w}, to: {service: x}}\n",
                "reserved",
            ),
            (
                "version: 1\nrules:\n  - {name: \"a b\", from: {service: w}, to: {service: x}}\n",
                "only letters",
            ),
        ] {
            let message = error(text);
            assert!(message.contains(expected), "{text:?}: {message}");
        }
    }
}
