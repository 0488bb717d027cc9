//! What the unit tests of `--web-config` share: a directory holding a
//! certificate, its key, and the `web.yml` under test.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
};

use axum::http::HeaderValue;
use base64::{engine::general_purpose::STANDARD, Engine as _};

use super::WebConfig;

/// A self-signed P-256 certificate (SAN 127.0.0.1, valid to 2126) and
/// its key, made with `openssl req -x509 -newkey ec`.
pub(super) const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBoTCCAUigAwIBAgIUJu1jul1qDkeVawfQ+NLAsO/qs+AwCgYIKoZIzj0EAwIw
HTEbMBkGA1UEAwwSY3Jvc3Ntb24tdW5pdC10ZXN0MCAXDTI2MTEyOTAzMTIwN1oY
DzIxMjYxMTA1MDMxMjA3WjAdMRswGQYDVQQDDBJjcm9zc21vbi11bml0LXRlc3Qw
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASMSmwP3lFzsq2kO/yiYahUag0rl1Et
sgu2Qp/9QgzRGsf/PNeyCSLopCQGkjnTpwYTtkMEaHGn97wpnOJFa15Io2QwYjAd
BgNVHQ4EFgQU+vQEdVILCz3nztRsW3cT5eh7vbEwHwYDVR0jBBgwFoAU+vQEdVIL
Cz3nztRsW3cT5eh7vbEwDwYDVR0TAQH/BAUwAwEB/zAPBgNVHREECDAGhwR/AAAB
MAoGCCqGSM49BAMCA0cAMEQCIDrCw6hGS5Mssfux+a61pWusUa2aAxVxrHKuMvSc
yEhFAiBiVH3k7cH29Z6th/7G+S5WcNAoqtfLQoi3+e9QGHLevw==
-----END CERTIFICATE-----
";
pub(super) const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgNIwtmfv9QI+dkov4
NdBL0z4iyj72haYP5ADdN68wRtWhRANCAASMSmwP3lFzsq2kO/yiYahUag0rl1Et
sgu2Qp/9QgzRGsf/PNeyCSLopCQGkjnTpwYTtkMEaHGn97wpnOJFa15I
-----END PRIVATE KEY-----
";

/// A directory of its own under the system's temporary directory.
pub(super) struct Scratch(pub(super) PathBuf);

impl Scratch {
    pub(super) fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "crossmon-web-config-unit-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        std::fs::write(dir.join("cert.pem"), CERT).expect("cert");
        std::fs::write(dir.join("key.pem"), KEY).expect("key");
        Self(dir)
    }

    /// Loads `yaml` as `web.yml` in this directory.
    pub(super) fn load(&self, yaml: &str) -> anyhow::Result<WebConfig> {
        let path = self.0.join("web.yml");
        std::fs::write(&path, yaml).expect("web.yml");
        WebConfig::load(&path)
    }

    /// The full error of loading `yaml`, which must fail.
    pub(super) fn error(&self, yaml: &str) -> String {
        match self.load(yaml) {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(err) => format!("{err:#}"),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `tls_server_config` naming the scratch files; tests append settings.
pub(super) const TLS: &str = "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n";

/// An `Authorization: Basic` value for `user` and `password`.
pub(super) fn basic(user: &str, password: &str) -> HeaderValue {
    let encoded = STANDARD.encode(format!("{user}:{password}"));
    HeaderValue::from_str(&format!("Basic {encoded}")).expect("header")
}
