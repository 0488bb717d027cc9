//! `dns_tunnel` and `nxdomain_storm`, from the DNS messages crossing the
//! veths. Tunnelling (iodine, dnscat2, DNS exfiltration) encodes data in
//! the labels of names under one domain the attacker serves: many
//! distinct names under that domain, long labels of high entropy. An
//! NXDOMAIN storm is a container asking for names that do not exist, many
//! a window: a domain-generation algorithm looking for its server, or a
//! misconfiguration worth knowing about. Ordinary lookups repeat a few
//! names, so both are counted per container and window.

use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::{config::DnsAbuse, Alert, Detector, Findings, Severity};
use crate::{
    clock,
    datapath::{
        dns as wire,
        events::{Event, Seen},
    },
    docker::{Directory, EndKind, FlowEnd},
    event_log::EventBatch,
    model::key_addrs,
};
use monitor_common::{Direction, FlowKey};

/// Domains followed per container and window; more are not counted.
const MAX_DOMAINS: usize = 1024;
/// NXDOMAIN response code.
const NXDOMAIN: u8 = 3;

#[derive(Default)]
struct Domain {
    names: HashSet<String>,
    high_entropy: u64,
    alerted: bool,
    resolver: Option<FlowEnd>,
}

struct Window {
    client: FlowEnd,
    started_ns: u64,
    domains: HashMap<String, Domain>,
    nxdomain: u64,
    nxdomain_names: Vec<String>,
    nxdomain_alerted: bool,
}

impl Window {
    fn new(client: FlowEnd, started_ns: u64) -> Self {
        Self {
            client,
            started_ns,
            domains: HashMap::new(),
            nxdomain: 0,
            nxdomain_names: Vec::new(),
            nxdomain_alerted: false,
        }
    }
}

pub struct DnsDetector {
    config: DnsAbuse,
    window_ns: u64,
    /// By the asking container's name.
    windows: HashMap<String, Window>,
}

impl DnsDetector {
    pub fn new(config: &DnsAbuse) -> Self {
        Self {
            window_ns: u64::try_from(config.window.as_nanos()).unwrap_or(u64::MAX),
            config: config.clone(),
            windows: HashMap::new(),
        }
    }

    /// The open window of `client`, a new one once the last has run out.
    /// Borrows only the windows, so callers keep reading the settings.
    fn window(
        windows: &mut HashMap<String, Window>,
        window_ns: u64,
        client: FlowEnd,
        now_ns: u64,
    ) -> &mut Window {
        let name = Alert::end_name(&client).into_owned();
        let window = windows
            .entry(name)
            .or_insert_with(|| Window::new(client.clone(), now_ns));
        if now_ns.saturating_sub(window.started_ns) >= window_ns {
            *window = Window::new(client, now_ns);
        }
        window
    }

    /// A query a container sent.
    fn query(
        &mut self,
        client: FlowEnd,
        resolver: FlowEnd,
        name: &str,
        now_ns: u64,
        found: &mut Findings,
    ) {
        let config = &self.config;
        let window = Self::window(&mut self.windows, self.window_ns, client, now_ns);
        let domain = registered_domain(name);
        if !window.domains.contains_key(domain) && window.domains.len() >= MAX_DOMAINS {
            return;
        }
        let entry = window.domains.entry(domain.to_owned()).or_default();
        entry.resolver.get_or_insert(resolver);
        if entry.names.len() < config.max_subdomains && entry.names.insert(name.to_owned()) {
            let label = longest_label(name);
            if label.len() >= config.entropy_min_length && entropy(label) >= config.min_entropy {
                entry.high_entropy += 1;
            }
        }
        let distinct = entry.names.len();
        if entry.alerted
            || (distinct < config.max_subdomains
                && entry.high_entropy < config.min_high_entropy_names)
        {
            return;
        }
        entry.alerted = true;
        let mut examples: Vec<&String> = entry.names.iter().collect();
        examples.sort();
        examples.truncate(5);
        found.alerts.push(Alert {
            capture: None,
            node: None,
            time: clock::rfc3339_ms(now_ns),
            kind: "dns_tunnel",
            severity: Severity::Warning,
            summary: format!(
                "{} asked for {distinct} distinct names under {domain} ({} of high entropy) within {}",
                Alert::end_name(&window.client),
                entry.high_entropy,
                humantime::format_duration(config.window)
            ),
            evidence: json!({
                "domain": domain,
                "distinct_names": distinct,
                "high_entropy_names": entry.high_entropy,
                "examples": examples,
                "window_seconds": config.window.as_secs_f64(),
            }),
            source: window.client.clone(),
            destination: entry.resolver.clone(),
        });
    }

    /// An NXDOMAIN response to a container.
    fn nxdomain(
        &mut self,
        client: FlowEnd,
        resolver: FlowEnd,
        name: &str,
        now_ns: u64,
        found: &mut Findings,
    ) {
        let config = &self.config;
        let window = Self::window(&mut self.windows, self.window_ns, client, now_ns);
        window.nxdomain += 1;
        if window.nxdomain_names.len() < 5 {
            window.nxdomain_names.push(name.to_owned());
        }
        if window.nxdomain_alerted || window.nxdomain < config.max_nxdomain {
            return;
        }
        window.nxdomain_alerted = true;
        found.alerts.push(Alert {
            capture: None,
            node: None,
            time: clock::rfc3339_ms(now_ns),
            kind: "nxdomain_storm",
            severity: Severity::Warning,
            summary: format!(
                "{} got {} NXDOMAIN answers within {}",
                Alert::end_name(&window.client),
                window.nxdomain,
                humantime::format_duration(config.window)
            ),
            evidence: json!({
                "nxdomain": window.nxdomain,
                "examples": window.nxdomain_names,
                "window_seconds": config.window.as_secs_f64(),
            }),
            source: window.client.clone(),
            destination: Some(resolver),
        });
    }

    fn message(
        &mut self,
        seen: &Seen,
        key: &FlowKey,
        data: &[u8],
        directory: &Directory,
        found: &mut Findings,
    ) {
        let Ok(message) = wire::parse(wire::message_bytes(key.protocol, data)) else {
            return;
        };
        let Some(question) = message.questions.first() else {
            return;
        };
        let (src, dst) = key_addrs(key);
        let end = |ip, behind_veth: bool| {
            behind_veth
                .then(|| directory.by_veth_end(seen.ifindex))
                .flatten()
                .unwrap_or_else(|| directory.by_address(ip))
        };
        let from_veth = seen.direction == Direction::FromContainer;
        let (src_end, dst_end) = (end(src, from_veth), end(dst, !from_veth));
        // Only containers are judged: the host's own resolver traffic is
        // not theirs to explain.
        if !message.response && src_end.kind == EndKind::Container {
            self.query(src_end, dst_end, &question.name, seen.timestamp_ns, found);
        } else if message.response
            && message.rcode == NXDOMAIN
            && dst_end.kind == EndKind::Container
        {
            self.nxdomain(dst_end, src_end, &question.name, seen.timestamp_ns, found);
        }
    }
}

impl Detector for DnsDetector {
    fn events(&mut self, batch: &EventBatch<'_>, found: &mut Findings) {
        for event in batch.events {
            if let Event::Dns {
                seen, key, data, ..
            } = event
            {
                self.message(seen, key, data, batch.directory, found);
            }
        }
        // Windows of containers gone quiet are forgotten.
        let window_ns = self.window_ns;
        self.windows
            .retain(|_, w| batch.now_ns.saturating_sub(w.started_ns) < window_ns.saturating_mul(2));
    }
}

/// The domain a name is registered under, as its last two labels (no
/// public-suffix list: under `co.uk` every name counts as one domain,
/// which errs towards alerting).
fn registered_domain(name: &str) -> &str {
    let mut dots = name.rmatch_indices('.');
    dots.next();
    match dots.next() {
        Some((at, _)) => &name[at + 1..],
        None => name,
    }
}

/// The longest label of a name (where encoded data goes).
fn longest_label(name: &str) -> &str {
    name.split('.')
        .max_by_key(|label| label.len())
        .unwrap_or_default()
}

/// Shannon entropy of a label's bytes, in bits per byte.
fn entropy(label: &str) -> f64 {
    let mut counts = [0u32; 256];
    for byte in label.bytes() {
        counts[usize::from(byte)] += 1;
    }
    let len = label.len() as f64;
    counts
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| {
            let p = f64::from(n) / len;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::EndIdentity;

    fn container(name: &str) -> FlowEnd {
        let identity = EndIdentity {
            name: Some(name.into()),
            ..EndIdentity::bare(EndKind::Container)
        };
        FlowEnd::new(std::sync::Arc::new(identity), None)
    }

    fn run(queries: &[&str], nx: usize) -> Vec<Alert> {
        let mut detector = DnsDetector::new(&DnsAbuse::default());
        let mut found = Findings::default();
        for (i, name) in queries.iter().enumerate() {
            detector.query(
                container("app"),
                container("dns"),
                name,
                i as u64 * 1_000_000,
                &mut found,
            );
        }
        for i in 0..nx {
            detector.nxdomain(
                container("app"),
                container("dns"),
                "nope.example",
                i as u64 * 1_000_000,
                &mut found,
            );
        }
        found.alerts
    }

    #[test]
    fn ordinary_lookups_raise_nothing() {
        let names = [
            "db",
            "cache.internal",
            "api.github.com",
            "registry-1.docker.io",
            "d3kd8f7a9sd0f.cloudfront.net",
            "www.example.com",
            "mail.example.com",
        ];
        let queries: Vec<&str> = names.iter().cycle().take(500).copied().collect();
        assert!(run(&queries, DnsAbuse::default().max_nxdomain as usize - 1).is_empty());
    }

    #[test]
    fn many_distinct_subdomains_of_one_domain_are_tunnelling() {
        let names: Vec<String> = (0..DnsAbuse::default().max_subdomains)
            .map(|i| format!("chunk{i}.t.evil.io"))
            .collect();
        let queries: Vec<&str> = names.iter().map(String::as_str).collect();
        let alerts = run(&queries, 0);
        assert_eq!(alerts.len(), 1, "one alert per window and domain");
        assert_eq!(alerts[0].kind, "dns_tunnel");
        assert_eq!(alerts[0].evidence["domain"], "evil.io");
        assert_eq!(
            run(&queries[..queries.len() - 1], 0).len(),
            0,
            "one below is silent"
        );
    }

    #[test]
    fn a_few_high_entropy_names_are_enough() {
        // Base32 of random bytes, as iodine and exfiltration tools send.
        let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
        let mut state: u64 = 7;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 59) as usize
        };
        let names: Vec<String> = (0..DnsAbuse::default().min_high_entropy_names)
            .map(|_| {
                let label: String = (0..52).map(|_| char::from(alphabet[next()])).collect();
                format!("{label}.x.tun.example")
            })
            .collect();
        for name in &names {
            assert!(
                entropy(longest_label(name)) >= DnsAbuse::default().min_entropy,
                "{name}"
            );
        }
        let queries: Vec<&str> = names.iter().map(String::as_str).collect();
        let alerts = run(&queries, 0);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].evidence["high_entropy_names"], queries.len());
    }

    #[test]
    fn an_nxdomain_storm_alerts_once() {
        let alerts = run(&[], 3 * DnsAbuse::default().max_nxdomain as usize);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].kind, "nxdomain_storm");
    }

    #[test]
    fn the_registered_domain_is_the_last_two_labels() {
        assert_eq!(registered_domain("a.b.evil.io"), "evil.io");
        assert_eq!(registered_domain("evil.io"), "evil.io");
        assert_eq!(registered_domain("localhost"), "localhost");
    }
}
