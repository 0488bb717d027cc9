//! The file format. Keys crossmon knows but does not implement are read
//! (as `serde_yaml::Value`) only to be refused by name.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map of web config sections")]
pub(super) struct FileFormat {
    pub(super) tls_server_config: Option<TlsSection>,
    pub(super) http_server_config: Option<HttpSection>,
    #[serde(default)]
    pub(super) basic_auth_users: BTreeMap<String, String>,
    pub(super) rate_limit: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map of TLS settings")]
pub(super) struct TlsSection {
    pub(super) cert: Option<String>,
    pub(super) key: Option<String>,
    pub(super) client_ca: Option<String>,
    pub(super) cert_file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) client_ca_file: Option<PathBuf>,
    pub(super) client_auth_type: Option<ClientAuth>,
    pub(super) min_version: Option<TlsVersion>,
    pub(super) max_version: Option<TlsVersion>,
    pub(super) cipher_suites: Option<Vec<String>>,
    pub(super) curve_preferences: Option<Vec<String>>,
    pub(super) prefer_server_cipher_suites: Option<bool>,
    pub(super) client_allowed_sans: Option<serde_yaml::Value>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a map of HTTP settings")]
pub(super) struct HttpSection {
    pub(super) http2: Option<bool>,
    #[serde(default)]
    pub(super) headers: BTreeMap<String, String>,
}

/// Go's `tls.ClientAuthType`, by the names exporter-toolkit reads.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub(super) enum ClientAuth {
    #[default]
    NoClientCert,
    RequestClientCert,
    // exporter-toolkit still reads the older name.
    #[serde(alias = "RequireClientCert")]
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TlsVersion {
    #[serde(rename = "TLS10")]
    Tls10,
    #[serde(rename = "TLS11")]
    Tls11,
    #[serde(rename = "TLS12")]
    Tls12,
    #[serde(rename = "TLS13")]
    Tls13,
}

impl TlsVersion {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Tls10 => "TLS10",
            Self::Tls11 => "TLS11",
            Self::Tls12 => "TLS12",
            Self::Tls13 => "TLS13",
        }
    }
}
