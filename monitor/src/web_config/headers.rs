//! `http_server_config.headers`: the response headers a config may add.

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Context as _};
use axum::http::{HeaderName, HeaderValue};

/// The headers exporter-toolkit lets a config set, with the values it
/// accepts where they form a closed set (empty: any value).
const SETTABLE_HEADERS: [(&str, &[&str]); 5] = [
    ("Content-Security-Policy", &[]),
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
];

pub(super) fn response_headers(
    configured: BTreeMap<String, String>,
) -> anyhow::Result<Vec<(HeaderName, HeaderValue)>> {
    let mut headers = Vec::new();
    for (name, value) in configured {
        let Some((_, allowed)) = SETTABLE_HEADERS.iter().find(|(known, _)| *known == name) else {
            let settable: Vec<&str> = SETTABLE_HEADERS.iter().map(|(name, _)| *name).collect();
            bail!(
                "{name} cannot be set; the settable headers are {}",
                settable.join(", ")
            );
        };
        // exporter-toolkit: a blank value leaves the header unset.
        if value.is_empty() {
            continue;
        }
        ensure!(
            allowed.is_empty() || allowed.contains(&value.as_str()),
            "{name}: {value:?} is not one of {allowed:?}"
        );
        let value = HeaderValue::from_str(&value)
            .with_context(|| format!("{name}: {value:?} is not a valid header value"))?;
        headers.push((HeaderName::from_bytes(name.as_bytes())?, value));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::Scratch;

    #[test]
    fn only_documented_headers_with_documented_values() {
        let scratch = Scratch::new();
        let err = scratch.error("http_server_config:\n  headers:\n    Server: crossmon\n");
        assert!(err.contains("Server cannot be set"), "{err}");
        let err = scratch.error("http_server_config:\n  headers:\n    X-Frame-Options: allow\n");
        assert!(
            err.contains("X-Frame-Options: \"allow\" is not one of"),
            "{err}"
        );
        let config = scratch
            .load("http_server_config:\n  headers:\n    X-Frame-Options: deny\n    X-XSS-Protection: ''\n")
            .expect("headers");
        let policy = config.policy.expect("a policy");
        assert_eq!(policy.headers.len(), 1, "a blank value sets nothing");
    }
}
