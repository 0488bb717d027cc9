//! Property tests of what turns the engine's answers into identities: JSON
//! as the engine might send it (fields missing, of the wrong type, or with
//! odd values: bad addresses, MACs, ports, `crossmon.*` labels) goes through
//! serde into bollard's types, then through [`container`] and [`network`],
//! then into a [`Directory`]. Nothing may panic, and what comes out must be
//! what the input said or a safe default.

use std::collections::HashSet;

use bollard::models::{ContainerInspectResponse, Network as EngineNetwork};
use monitor_common::{
    ip_proto::{TCP, UDP},
    FlowKey, FlowStats,
};
use proptest::{collection, option, prelude::*, sample::select};
use serde_json::{json, Map, Value};

use super::*;
use crate::docker::{Directory, EndKind};

/// Strings an engine could send, or a broken one: addresses, MACs, port
/// specs, label values, users, modes, near misses of each.
const TELLING: &[&str] = &[
    "",
    "/",
    "/web",
    "web",
    "0",
    "-1",
    "4294967296",
    "10.0.0.2",
    "300.1.2.3",
    "10.0.0",
    "fd00::2",
    "::ffff:10.0.0.2",
    "fe80::1%eth0",
    "02:42:ac:11:00:02",
    "02:42:AC:11:00:02",
    "02:42:ac:11:00",
    "02:42:ac:11:00:02:03",
    "zz:42:ac:11:00:02",
    "80/tcp",
    "53/udp",
    "8080",
    "65536/tcp",
    "0/tcp",
    "-1/tcp",
    "132/sctp",
    "http/tcp",
    "80/",
    "/tcp",
    "80/tcp/udp",
    "off",
    "OFF",
    "on",
    "required",
    "root",
    "0:0",
    "1000:1000",
    "host",
    "none",
    "container:0123456789abcdef",
    "bridge",
    "false",
    "FALSE",
    "true",
    "CAP_NET_RAW",
    "net_admin",
    "ALL",
    "/var/run/docker.sock",
    "é",
    "0123456789abcdéf",
    "\u{0}",
];

const LABEL_KEYS: &[&str] = &[
    "crossmon.metrics",
    "crossmon.tls",
    "crossmon.",
    "com.docker.compose.project",
    "com.docker.compose.service",
];

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(TELLING).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// An address: IPv4, IPv6, or any other text.
fn ip_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_string()),
        any::<std::net::Ipv6Addr>().prop_map(|ip| ip.to_string()),
        text(),
    ]
}

fn mac_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<[u8; 6]>().prop_map(|mac| mac.map(|b| format!("{b:02x}")).join(":")),
        text(),
    ]
}

/// `port/protocol` as Docker writes it, with any protocol, or any text.
fn port_spec() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<u16>(), select(&["/tcp", "/udp", "/sctp", ""][..]))
            .prop_map(|(port, protocol)| format!("{port}{protocol}")),
        text(),
    ]
}

/// Mostly `text` as a JSON string, sometimes null or a value of the wrong type.
fn value_of(text: impl Strategy<Value = String>) -> impl Strategy<Value = Value> {
    prop_oneof![
        40 => text.prop_map(Value::String),
        1 => any::<i64>().prop_map(Value::from),
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
    ]
}

fn string_value() -> impl Strategy<Value = Value> {
    value_of(text())
}

fn strings(max: usize) -> impl Strategy<Value = Value> {
    collection::vec(string_value(), 0..max).prop_map(Value::Array)
}

/// An object with each field present or not.
fn object(fields: Vec<(&'static str, Option<Value>)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(name, value)| Some((name.to_owned(), value?)))
            .collect::<Map<_, _>>(),
    )
}

fn labels() -> impl Strategy<Value = Value> {
    let key = prop_oneof![3 => select(LABEL_KEYS).prop_map(str::to_owned), 1 => text()];
    collection::btree_map(key, string_value(), 0..5)
        .prop_map(|map| Value::Object(map.into_iter().collect()))
}

fn exposed_ports() -> impl Strategy<Value = Value> {
    collection::btree_map(port_spec(), Just(json!({})), 0..4)
        .prop_map(|map| Value::Object(map.into_iter().collect()))
}

fn endpoint_settings() -> impl Strategy<Value = Value> {
    (
        option::of(string_value()),
        option::of(value_of(ip_text())),
        option::of(value_of(ip_text())),
        option::of(value_of(mac_text())),
        option::of(value_of(ip_text())),
    )
        .prop_map(|(network_id, ip, ipv6, mac, gateway)| {
            object(vec![
                ("NetworkID", network_id),
                ("IPAddress", ip),
                ("GlobalIPv6Address", ipv6),
                ("MacAddress", mac),
                ("Gateway", gateway),
            ])
        })
}

/// `GET /containers/{id}/json`, every part optional.
fn inspect() -> impl Strategy<Value = Value> {
    let config = (
        option::of(string_value()),
        option::of(string_value()),
        option::of(labels()),
        option::of(exposed_ports()),
    )
        .prop_map(|(image, user, labels, exposed)| {
            object(vec![
                ("Image", image),
                ("User", user),
                ("Labels", labels),
                ("ExposedPorts", exposed),
            ])
        });
    let host_config = (
        option::of(string_value()),
        option::of(string_value()),
        option::of(any::<bool>().prop_map(Value::Bool)),
        option::of(strings(4)),
        option::of(strings(4)),
    )
        .prop_map(|(network_mode, pid_mode, privileged, cap_add, cap_drop)| {
            object(vec![
                ("NetworkMode", network_mode),
                ("PidMode", pid_mode),
                ("Privileged", privileged),
                ("CapAdd", cap_add),
                ("CapDrop", cap_drop),
            ])
        });
    let pid = prop_oneof![
        8 => (0i64..100_000).prop_map(Value::from),
        4 => any::<i64>().prop_map(Value::from),
        1 => string_value(),
    ];
    let networks = collection::btree_map(text(), endpoint_settings(), 0..3)
        .prop_map(|map| json!({ "Networks": Value::Object(map.into_iter().collect()) }));
    let mounts = collection::vec(
        option::of(string_value()).prop_map(|source| object(vec![("Source", source)])),
        0..3,
    )
    .prop_map(Value::Array);
    (
        option::of(string_value()),
        option::of(string_value()),
        option::of(config),
        option::of(pid.prop_map(|pid| json!({ "Pid": pid }))),
        option::of(host_config),
        option::of(networks),
        option::of(mounts),
    )
        .prop_map(|(id, name, config, state, host, networks, mounts)| {
            object(vec![
                ("Id", id),
                ("Name", name),
                ("Config", config),
                ("State", state),
                ("HostConfig", host),
                ("NetworkSettings", networks),
                ("Mounts", mounts),
            ])
        })
}

/// `GET /networks`, one entry.
fn engine_network() -> impl Strategy<Value = Value> {
    let driver = prop_oneof![
        3 => select(&["bridge", "overlay", "host", "null", "macvlan"][..])
            .prop_map(Value::from),
        1 => string_value(),
    ];
    let options =
        (option::of(string_value()), option::of(string_value())).prop_map(|(bridge, icc)| {
            object(vec![
                ("com.docker.network.bridge.name", bridge),
                ("com.docker.network.bridge.enable_icc", icc),
            ])
        });
    let ipam = collection::vec(
        (option::of(string_value()), option::of(string_value()))
            .prop_map(|(subnet, gateway)| object(vec![("Subnet", subnet), ("Gateway", gateway)])),
        0..3,
    )
    .prop_map(|config| json!({ "Config": config }));
    (
        option::of(string_value()),
        option::of(string_value()),
        option::of(driver),
        option::of(options),
        option::of(ipam),
    )
        .prop_map(|(id, name, driver, options, ipam)| {
            object(vec![
                ("Id", id),
                ("Name", name),
                ("Driver", driver),
                ("Options", options),
                ("IPAM", ipam),
            ])
        })
}

/// Any JSON at all, its object keys often the engine's own field names.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    let key = prop_oneof![
        select(
            &[
                "Id",
                "Name",
                "Config",
                "State",
                "Pid",
                "HostConfig",
                "NetworkSettings",
                "Networks",
                "Labels",
                "ExposedPorts",
                "IPAddress",
                "MacAddress",
                "Mounts",
                "IPAM",
                "Options",
                "Driver",
            ][..]
        )
        .prop_map(str::to_owned),
        text(),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// The string a JSON field held, if it was one.
fn field<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |value, name| value.get(name))?
        .as_str()
}

/// Checks one container made of `json`; returns it when the engine's
/// answer deserialized and had an id.
fn check_container(json: &Value) -> Result<Option<Container>, TestCaseError> {
    let Ok(inspect) = serde_json::from_value::<ContainerInspectResponse>(json.clone()) else {
        return Ok(None);
    };
    let Some(container) = container(inspect.clone()) else {
        prop_assert!(inspect.id.is_none(), "a container with an id was dropped");
        return Ok(None);
    };
    prop_assert_eq!(Some(&container.id), inspect.id.as_ref());
    prop_assert!(container.id.starts_with(container.short_id()));
    // Engine ids are hex; another id is never cut inside a character.
    prop_assert!(!container.id.is_ascii() || container.short_id().len() <= 12);
    prop_assert!(!container.name.starts_with('/'));
    let pid = inspect.state.as_ref().and_then(|state| state.pid);
    prop_assert_eq!(
        container.pid.map(i64::from),
        pid.filter(|pid| (1..=i64::from(u32::MAX)).contains(pid))
    );
    prop_assert_eq!(
        container.metrics_off(),
        container
            .labels
            .get("crossmon.metrics")
            .is_some_and(|value| value.eq_ignore_ascii_case("off"))
    );
    let specs = inspect
        .config
        .as_ref()
        .and_then(|config| config.exposed_ports.clone())
        .unwrap_or_default();
    for port in &container.exposed_ports {
        prop_assert!(port.1 == TCP || port.1 == UDP);
        prop_assert!(specs.iter().any(|spec| exposed_port(spec) == Some(*port)));
    }
    for spec in &specs {
        if let Some((port, "tcp" | "udp")) = spec.split_once('/') {
            if let Ok(port) = port.parse::<u16>() {
                let protocol = if spec.ends_with("tcp") { TCP } else { UDP };
                prop_assert!(container.exposed_ports.contains(&(port, protocol)));
            }
        }
    }
    for endpoint in &container.endpoints {
        let settings = &json["NetworkSettings"]["Networks"][&endpoint.network];
        for (ip, name) in [
            (endpoint.ip, "IPAddress"),
            (endpoint.ipv6, "GlobalIPv6Address"),
            (endpoint.gateway, "Gateway"),
        ] {
            let text = field(settings, &[name]);
            prop_assert_eq!(ip, text.and_then(|text| text.parse().ok()), "{}", name);
        }
        prop_assert!(endpoint.mac.as_ref().is_none_or(|mac| !mac.is_empty()));
        prop_assert_eq!(
            endpoint.host_ifindex,
            None,
            "only a namespace probe sets it"
        );
    }
    let posture = &container.posture;
    if posture.privileged {
        prop_assert!(posture.cap_net_raw && posture.cap_net_admin);
    }
    let user = field(json, &["Config", "User"]).unwrap_or_default();
    let user = user.split(':').next().unwrap_or_default();
    prop_assert_eq!(
        posture.runs_as_root,
        ["", "root", "0"].contains(&user),
        "user {:?}",
        user
    );
    Ok(Some(container))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn engine_answers_become_containers_or_are_skipped(json in inspect()) {
        check_container(&json)?;
    }

    #[test]
    fn any_json_is_refused_by_serde_or_converted(json in any_json()) {
        if let Ok(inspect) = serde_json::from_value::<ContainerInspectResponse>(json.clone()) {
            let _ = Posture::of(&inspect);
            let _ = container(inspect);
        }
        if let Ok(engine) = serde_json::from_value::<EngineNetwork>(json) {
            let _ = network(engine);
        }
    }

    #[test]
    fn networks_name_their_bridge_and_gateways(json in engine_network()) {
        let Ok(engine) = serde_json::from_value::<EngineNetwork>(json.clone()) else {
            return Ok(());
        };
        let Some(network) = network(engine.clone()) else {
            prop_assert!(engine.id.is_none(), "a network with an id was dropped");
            return Ok(());
        };
        prop_assert_eq!(Some(&network.id), engine.id.as_ref());
        prop_assert_eq!(network.bridge.is_some(), network.driver == "bridge");
        let option = |name: &str| field(&json, &["Options", name]);
        if let Some(bridge) = &network.bridge {
            let default = format!("br-{}", network.id.get(..12).unwrap_or(&network.id));
            prop_assert_eq!(bridge, option("com.docker.network.bridge.name").unwrap_or(&default));
        }
        prop_assert_eq!(
            network.inter_container_communication,
            option("com.docker.network.bridge.enable_icc") != Some("false")
        );
        let gateways: Vec<IpAddr> = json["IPAM"]["Config"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|config| config["Gateway"].as_str()?.parse().ok())
            .collect();
        prop_assert_eq!(network.gateways, gateways);
    }

    /// A directory built from any inventory names every container endpoint
    /// by its address and by its veth, and answers any flow.
    #[test]
    fn directories_of_any_inventory_answer_every_lookup(
        answers in collection::vec(inspect(), 0..5),
        veths in collection::vec(any::<u32>(), 0..8),
        keys in collection::vec((any::<[u8; 16]>(), any::<[u8; 16]>(), any::<u8>(), any::<u8>(), any::<u32>()), 0..8),
    ) {
        let mut inventory = Inventory::default();
        let mut next_veth = veths.iter().copied();
        for json in &answers {
            if let Some(mut container) = check_container(json)? {
                for endpoint in &mut container.endpoints {
                    endpoint.host_ifindex = next_veth.next();
                }
                inventory.containers.insert(container.id.clone(), container);
            }
        }
        let directory = Directory::new(Some(&inventory), HashSet::new());
        let endpoints: Vec<(&Container, &Endpoint)> = inventory
            .containers
            .values()
            .flat_map(|c| c.endpoints.iter().map(move |e| (c, e)))
            .collect();
        for (_, endpoint) in &endpoints {
            for ip in [endpoint.ip, endpoint.ipv6].into_iter().flatten() {
                let end = directory.by_address(ip);
                prop_assert_eq!(end.kind, EndKind::Container);
                prop_assert_eq!(end.ip, Some(ip));
            }
            if let Some(ifindex) = endpoint.host_ifindex {
                let owner = directory.veth_owner(ifindex);
                // A later endpoint given the same veth index took it over.
                let last = endpoints
                    .iter()
                    .rev()
                    .find(|(_, e)| e.host_ifindex == Some(ifindex))
                    .map(|(c, _)| c.id.clone());
                prop_assert_eq!(owner.map(|(c, _)| c.id.clone()), last);
                if let Some((_, owned)) = owner {
                    let end = directory.by_veth_end(ifindex);
                    prop_assert_eq!(end.is_some(), owned.ip.or(owned.ipv6).is_some());
                }
            }
        }
        for (src, dst, protocol, version, ifindex) in keys {
            let key = FlowKey {
                src_addr: src,
                dst_addr: dst,
                protocol,
                ip_version: version % 8,
                ..FlowKey::ZERO
            };
            let stats = FlowStats {
                ifindex,
                direction: version % 3,
                ..FlowStats::default()
            };
            let (a, b) = directory.ends(&key, &stats);
            prop_assert!(a.ip.is_some() && b.ip.is_some());
        }
        for ((a, _), (b, _)) in endpoints.iter().zip(endpoints.iter().rev()) {
            let _ = directory.may_talk(a, b);
        }
    }

    #[test]
    fn macs_parse_back_from_any_case_and_never_panic(mac in any::<[u8; 6]>(), noise in text()) {
        let lower = mac.map(|b| format!("{b:02x}")).join(":");
        prop_assert_eq!(parse_mac(&lower), Some(mac));
        prop_assert_eq!(parse_mac(&lower.to_uppercase()), Some(mac));
        if parse_mac(&noise).is_some() {
            prop_assert_eq!(noise.split(':').count(), 6);
        }
    }

    #[test]
    fn exposed_ports_parse_as_docker_writes_them(port in any::<u16>(), noise in text()) {
        prop_assert_eq!(exposed_port(&format!("{port}/tcp")), Some((port, TCP)));
        prop_assert_eq!(exposed_port(&format!("{port}/udp")), Some((port, UDP)));
        prop_assert_eq!(exposed_port(&port.to_string()), Some((port, TCP)));
        prop_assert_eq!(exposed_port(&format!("{port}/sctp")), None);
        if let Some((_, protocol)) = exposed_port(&noise) {
            prop_assert!(protocol == TCP || protocol == UDP);
        }
    }
}
