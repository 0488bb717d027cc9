//! `tls_server_config`: the rustls `ServerConfig` (versions, cipher suites,
//! groups, certificate, client certificates) and ALPN.

use std::{path::Path, sync::Arc};

use anyhow::{bail, ensure, Context as _};
use rustls::{
    crypto::{ring as ring_provider, SupportedKxGroup},
    ServerConfig, SupportedCipherSuite, SupportedProtocolVersion,
};

use super::{
    client_cert::client_verifier,
    file::{TlsSection, TlsVersion},
    pem::Pem,
};

impl TlsSection {
    pub(super) fn server_config(
        self,
        dir: &Path,
        http2: bool,
    ) -> anyhow::Result<Arc<ServerConfig>> {
        ensure!(
            self.client_allowed_sans.is_none(),
            "client_allowed_sans is not supported by crossmon; \
             give the allowed clients certificates from a CA of their own (client_ca_file)"
        );
        let versions = protocol_versions(self.min_version, self.max_version)?;
        let mut provider = ring_provider::default_provider();
        // An empty list means Go's defaults in exporter-toolkit: ours too.
        if let Some(names) = self.cipher_suites.filter(|names| !names.is_empty()) {
            provider.cipher_suites = cipher_suites(&names)?;
        }
        if let Some(names) = self.curve_preferences.filter(|names| !names.is_empty()) {
            provider.kx_groups = kx_groups(&names)?;
        }
        let provider = Arc::new(provider);

        let cert = Pem::read("cert", self.cert, self.cert_file, dir)?
            .context("neither cert_file nor cert is set")?;
        let key = Pem::read("key", self.key, self.key_file, dir)?
            .context("neither key_file nor key is set")?;
        let client_ca = Pem::read("client_ca", self.client_ca, self.client_ca_file, dir)?;
        let client_auth = self.client_auth_type.unwrap_or_default();
        let verifier = client_verifier(client_auth, client_ca, &provider)?;

        let builder = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .context("min_version, max_version, cipher_suites and curve_preferences leave nothing to negotiate")?;
        let builder = match verifier {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(cert.certificates()?, key.private_key()?)
            .map_err(|err| match err {
                rustls::Error::InconsistentKeys(_) => anyhow::anyhow!(
                    "the private key in {} does not belong to the certificate in {}",
                    key.origin,
                    cert.origin
                ),
                err => anyhow::anyhow!("{} with {}: {err}", cert.origin, key.origin),
            })?;
        // exporter-toolkit's default: the server's order of suites wins.
        config.ignore_client_order = self.prefer_server_cipher_suites.unwrap_or(true);
        config.alpn_protocols = if http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Ok(Arc::new(config))
    }
}

fn protocol_versions(
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
) -> anyhow::Result<Vec<&'static SupportedProtocolVersion>> {
    let (min, max) = (
        min.unwrap_or(TlsVersion::Tls12),
        max.unwrap_or(TlsVersion::Tls13),
    );
    for (key, version) in [("min_version", min), ("max_version", max)] {
        ensure!(
            version >= TlsVersion::Tls12,
            "{key}: {} is not supported; crossmon's TLS library (rustls) speaks TLS12 and TLS13 only",
            version.name()
        );
    }
    ensure!(
        min <= max,
        "min_version {} is above max_version {}",
        min.name(),
        max.name()
    );
    Ok([
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(version, _)| (min..=max).contains(version))
    .map(|(_, supported)| supported)
    .collect())
}

/// Go names cipher suites as IANA does, and so does rustls. As in Go, the
/// list governs TLS 1.2 only: the TLS 1.3 suites are always offered.
fn cipher_suites(names: &[String]) -> anyhow::Result<Vec<SupportedCipherSuite>> {
    let all = ring_provider::ALL_CIPHER_SUITES;
    let tls12 = || all.iter().filter(|suite| suite.tls13().is_none());
    let mut suites: Vec<SupportedCipherSuite> = all
        .iter()
        .filter(|suite| suite.tls13().is_some())
        .copied()
        .collect();
    for name in names {
        let suite = tls12()
            .find(|suite| suite.suite().as_str() == Some(name.as_str()))
            .with_context(|| {
                let offered: Vec<&str> = tls12().filter_map(|s| s.suite().as_str()).collect();
                format!(
                    "cipher_suites: {name} is not available; crossmon offers {}",
                    offered.join(", ")
                )
            })?;
        suites.push(*suite);
    }
    Ok(suites)
}

fn kx_groups(names: &[String]) -> anyhow::Result<Vec<&'static dyn SupportedKxGroup>> {
    names
        .iter()
        .map(|name| match name.as_str() {
            "X25519" => Ok(ring_provider::kx_group::X25519),
            "CurveP256" => Ok(ring_provider::kx_group::SECP256R1),
            "CurveP384" => Ok(ring_provider::kx_group::SECP384R1),
            other => bail!(
                "curve_preferences: {other} is not available; crossmon offers X25519, CurveP256 and CurveP384"
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{Scratch, TLS};

    #[test]
    fn supported_tls_options_load() {
        let scratch = Scratch::new();
        let yaml = format!(
            "{TLS}  min_version: TLS12\n  max_version: TLS13\n  prefer_server_cipher_suites: false\n  \
             cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]\n  curve_preferences: [X25519, CurveP256]\n\
             http_server_config:\n  http2: false\n"
        );
        let tls = scratch.load(&yaml).expect("options").tls.expect("tls");
        assert!(!tls.ignore_client_order);
        assert_eq!(tls.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn unavailable_tls_options_are_refused_by_name() {
        let scratch = Scratch::new();
        let err = scratch.error(&format!("{TLS}  client_allowed_sans: [a]\n"));
        assert!(
            err.contains("client_allowed_sans is not supported"),
            "{err}"
        );
        let err = scratch.error(&format!("{TLS}  curve_preferences: [CurveP521]\n"));
        assert!(err.contains("CurveP521 is not available"), "{err}");
        let err = scratch.error(&format!(
            "{TLS}  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n"
        ));
        assert!(
            err.contains("TLS_RSA_WITH_AES_128_CBC_SHA is not available"),
            "{err}"
        );
    }

    #[test]
    fn tls_versions_below_1_2_are_refused() {
        let scratch = Scratch::new();
        for (setting, expected) in [
            ("min_version: TLS10", "min_version: TLS10 is not supported"),
            ("max_version: TLS11", "max_version: TLS11 is not supported"),
            (
                "min_version: TLS13\n  max_version: TLS12",
                "min_version TLS13 is above max_version TLS12",
            ),
            ("min_version: TLS14", "unknown variant `TLS14`"),
        ] {
            let err = scratch.error(&format!("{TLS}  {setting}\n"));
            assert!(err.contains(expected), "{setting}: {err}");
        }
        assert!(scratch
            .load(&format!("{TLS}  min_version: TLS13\n"))
            .is_ok());
    }
}
