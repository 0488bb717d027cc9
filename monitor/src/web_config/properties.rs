//! Property tests of `--web-config` files: any text, and documents of every
//! section with right, near and wrong values, load as a config or fail with
//! an error naming the file; never a panic.

use proptest::{collection, option, prelude::*, sample::select};
use serde_yaml::{Mapping, Value};

use super::{
    basic_auth::DECOY_HASH,
    fixtures::{Scratch, CERT, KEY},
};

/// Mostly one of `choices`, sometimes any text, a number or a list.
fn one_of(choices: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop_oneof![
        20 => select(choices).prop_map(Value::from),
        1 => any::<String>().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => Just(Value::Sequence(vec![Value::from("a")])),
    ]
}

fn list_of(choices: &'static [&'static str]) -> impl Strategy<Value = Value> {
    collection::vec(one_of(choices), 0..4).prop_map(Value::Sequence)
}

/// Present with probability `p`.
fn sometimes<S: Strategy>(p: f64, value: S) -> impl Strategy<Value = Option<S::Value>> {
    option::weighted(p, value)
}

/// A mapping of the entries that are present.
fn mapping(entries: Vec<(&str, Option<Value>)>) -> Value {
    let mut map = Mapping::new();
    for (key, value) in entries {
        if let Some(value) = value {
            map.insert(Value::from(key), value);
        }
    }
    Value::Mapping(map)
}

/// `name_file` and `name` (inline PEM): mostly the scratch file, else the
/// PEM inline, else anything, both set included.
fn pem_source(
    file: &'static str,
    pem: &'static str,
) -> impl Strategy<Value = (Option<Value>, Option<Value>)> {
    prop_oneof![
        6 => Just((Some(Value::from(file)), None)),
        2 => Just((None, Some(Value::from(pem)))),
        1 => (
            option::of(one_of(&["cert.pem", "key.pem", "missing.pem", ""])),
            option::of(one_of(&[CERT, KEY, "-----BEGIN CERTIFICATE-----\n", ""])),
        ),
    ]
}

fn tls_section() -> impl Strategy<Value = Value> {
    let version = || sometimes(0.3, one_of(&["TLS10", "TLS11", "TLS12", "TLS13", "TLS14"]));
    // No client certificates, verified ones, or any mix of CA and type.
    let client_auth = prop_oneof![
        6 => Just((None, None)),
        2 => Just((
            Some(Value::from("cert.pem")),
            Some(Value::from("RequireAndVerifyClientCert")),
        )),
        1 => (
            option::of(one_of(&["cert.pem", "missing.pem"])),
            option::of(one_of(&[
                "NoClientCert",
                "RequestClientCert",
                "RequireClientCert",
                "RequireAnyClientCert",
                "VerifyClientCertIfGiven",
                "RequireAndVerifyClientCert",
                "Sometimes",
            ])),
        ),
    ];
    (
        (
            pem_source("cert.pem", CERT),
            pem_source("key.pem", KEY),
            client_auth,
        ),
        (
            version(),
            version(),
            sometimes(
                0.3,
                list_of(&[
                    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                    "TLS_RSA_WITH_AES_128_CBC_SHA",
                ]),
            ),
            sometimes(
                0.3,
                list_of(&["X25519", "CurveP256", "CurveP384", "CurveP521"]),
            ),
        ),
        (
            sometimes(0.3, any::<bool>().prop_map(Value::Bool)),
            sometimes(0.05, list_of(&["client.example"])),
            sometimes(0.05, one_of(&["fast"])),
        ),
    )
        .prop_map(
            |(
                ((cert_file, cert), (key_file, key), (client_ca_file, client_auth_type)),
                (min_version, max_version, cipher_suites, curves),
                (prefer_server, allowed_sans, unknown),
            )| {
                mapping(vec![
                    ("cert_file", cert_file),
                    ("cert", cert),
                    ("key_file", key_file),
                    ("key", key),
                    ("client_ca_file", client_ca_file),
                    ("client_auth_type", client_auth_type),
                    ("min_version", min_version),
                    ("max_version", max_version),
                    ("cipher_suites", cipher_suites),
                    ("curve_preferences", curves),
                    ("prefer_server_cipher_suites", prefer_server),
                    ("client_allowed_sans", allowed_sans),
                    ("cipher", unknown),
                ])
            },
        )
}

fn http_section() -> impl Strategy<Value = Value> {
    let name = select(
        &[
            "Content-Security-Policy",
            "Strict-Transport-Security",
            "X-Content-Type-Options",
            "X-Frame-Options",
            "X-XSS-Protection",
            "Server",
        ][..],
    );
    let value = prop_oneof![
        select(&["nosniff", "deny", "sameorigin", "", "max-age=31536000"][..])
            .prop_map(str::to_owned),
        any::<String>(),
    ];
    (
        option::of(prop_oneof![
            any::<bool>().prop_map(Value::Bool),
            one_of(&["yes"])
        ]),
        option::of(
            collection::btree_map(name, value, 0..4).prop_map(|headers| {
                Value::Mapping(
                    headers
                        .into_iter()
                        .map(|(name, value)| (Value::from(name), Value::from(value)))
                        .collect(),
                )
            }),
        ),
    )
        .prop_map(|(http2, headers)| mapping(vec![("http2", http2), ("headers", headers)]))
}

/// A document with each section present or not, and sometimes one that
/// crossmon refuses by name.
fn document() -> impl Strategy<Value = Value> {
    let users = collection::btree_map(
        select(&["alice", "bob", ""][..]),
        one_of(&[DECOY_HASH, "hunter2", "$2y$03$x"]),
        0..3,
    )
    .prop_map(|users| {
        Value::Mapping(
            users
                .into_iter()
                .map(|(user, hash)| (Value::from(user), hash))
                .collect(),
        )
    });
    (
        option::of(tls_section()),
        option::of(http_section()),
        option::of(users),
        sometimes(0.05, one_of(&["1s"])),
    )
        .prop_map(|(tls, http, users, rate_limit)| {
            mapping(vec![
                ("tls_server_config", tls),
                ("http_server_config", http),
                ("basic_auth_users", users),
                ("rate_limit", rate_limit),
            ])
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn any_text_loads_or_fails_naming_the_file(text in any::<String>()) {
        let scratch = Scratch::new();
        if let Err(error) = scratch.load(&text) {
            let error = format!("{error:#}");
            prop_assert!(error.starts_with("--web-config "), "{}", error);
        }
    }

    #[test]
    fn documents_load_as_they_say_or_fail_naming_the_file(document in document()) {
        let yaml = serde_yaml::to_string(&document).expect("YAML");
        let scratch = Scratch::new();
        match scratch.load(&yaml) {
            Ok(config) => {
                let present = |section: &str| {
                    document.get(section).is_some_and(|value| !value.is_null())
                };
                prop_assert_eq!(config.tls.is_some(), present("tls_server_config"), "{}", yaml);
                let users = document
                    .get("basic_auth_users")
                    .and_then(Value::as_mapping)
                    .map_or(0, Mapping::len);
                if users > 0 {
                    let policy = config.policy.as_ref();
                    prop_assert!(policy.is_some_and(|policy| policy.basic_auth.is_some()));
                }
            }
            Err(error) => {
                let error = format!("{error:#}");
                let file = scratch.0.join("web.yml");
                prop_assert!(
                    error.starts_with(&format!("--web-config {}", file.display())),
                    "{error}"
                );
            }
        }
    }
}
