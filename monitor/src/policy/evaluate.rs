//! The policy's verdict on one packet, in user space: what `check` prints,
//! what the alerts name, and the reference the compiled kernel maps are
//! tested against.

use monitor_common::ip_proto;

use super::file::{Action, Policy, Rule, DEFAULT_PREFIX};
use crate::docker::Container;

/// What decided a verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judge<'a> {
    Rule(&'a Rule),
    /// No rule matched: the network's default.
    Default(&'a str),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judgement<'a> {
    pub action: Action,
    pub by: Judge<'a>,
}

impl Judgement<'_> {
    /// The `rule` label of the policy counters.
    pub fn counter_name(&self) -> String {
        match self.by {
            Judge::Rule(rule) => rule.name.clone(),
            Judge::Default(network) => default_counter(network),
        }
    }
}

pub fn default_counter(network: &str) -> String {
    format!("{DEFAULT_PREFIX}{network}")
}

/// Whether the port of a packet of `protocol` means anything.
pub fn has_ports(protocol: u8) -> bool {
    matches!(protocol, ip_proto::TCP | ip_proto::UDP)
}

/// The first rule matching `src` sending `protocol` to `dst`'s `port` on
/// `network` decides; without one, the network's default. `port` is
/// ignored for protocols without ports.
pub fn evaluate<'a>(
    policy: &'a Policy,
    src: &Container,
    dst: &Container,
    network: &'a str,
    protocol: u8,
    port: u16,
) -> Judgement<'a> {
    let port = if has_ports(protocol) { port } else { 0 };
    policy
        .rules
        .iter()
        .find(|rule| rule.covers(protocol, port) && rule.from.matches(src) && rule.to.matches(dst))
        .map_or(
            Judgement {
                action: policy.default_for(network),
                by: Judge::Default(network),
            },
            |rule| Judgement {
                action: rule.action,
                by: Judge::Rule(rule),
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::select::tests::container;

    #[test]
    fn the_first_matching_rule_decides_else_the_default() {
        let policy = Policy::parse(
            r#"
version: 1
defaults: {"*": deny, open: allow}
rules:
  - {name: no-admin, from: {service: shop/web}, to: {service: shop/api}, protocol: tcp, ports: [9000], action: deny}
  - {name: web-api, from: {service: shop/web}, to: {service: shop/api}, protocol: tcp}
"#,
        )
        .expect("valid");
        let web = container("web", Some("shop"), Some("web"));
        let api = container("api", Some("shop"), Some("api"));
        let judge = |src, dst, network, protocol, port| {
            let j = evaluate(&policy, src, dst, network, protocol, port);
            (j.action, j.counter_name())
        };
        assert_eq!(
            judge(&web, &api, "n", ip_proto::TCP, 80),
            (Action::Allow, "web-api".into())
        );
        assert_eq!(
            judge(&web, &api, "n", ip_proto::TCP, 9000),
            (Action::Deny, "no-admin".into())
        );
        assert_eq!(
            judge(&web, &api, "n", ip_proto::UDP, 80),
            (Action::Deny, "default:n".into())
        );
        assert_eq!(
            judge(&api, &web, "open", ip_proto::TCP, 80),
            (Action::Allow, "default:open".into())
        );
    }
}
