//! The certificates and keys of `tls_server_config`, given inline (`cert`)
//! or in a file (`cert_file`).

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// PEM text given inline or in a file, and where it came from, for errors.
pub(super) struct Pem {
    pub(super) origin: String,
    text: Vec<u8>,
}

impl Pem {
    pub(super) fn read(
        name: &str,
        inline: Option<String>,
        file: Option<PathBuf>,
        dir: &Path,
    ) -> anyhow::Result<Option<Pem>> {
        match (inline, file) {
            (Some(_), Some(_)) => bail!("both {name} and {name}_file are set; keep one"),
            (Some(text), None) => Ok(Some(Pem {
                origin: name.to_owned(),
                text: text.into_bytes(),
            })),
            (None, Some(file)) => {
                let path = dir.join(file);
                let origin = format!("{name}_file {}", path.display());
                let text = std::fs::read(&path).with_context(|| format!("reading {origin}"))?;
                Ok(Some(Pem { origin, text }))
            }
            (None, None) => Ok(None),
        }
    }

    pub(super) fn certificates(&self) -> anyhow::Result<Vec<CertificateDer<'static>>> {
        let certs = rustls_pemfile::certs(&mut self.text.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{}: not valid PEM", self.origin))?;
        ensure!(
            !certs.is_empty(),
            "{}: no certificate (PEM \"BEGIN CERTIFICATE\") found",
            self.origin
        );
        Ok(certs)
    }

    pub(super) fn private_key(&self) -> anyhow::Result<PrivateKeyDer<'static>> {
        rustls_pemfile::private_key(&mut self.text.as_slice())
            .with_context(|| format!("{}: not valid PEM", self.origin))?
            .with_context(|| {
                format!(
                    "{}: no private key (PEM PKCS#8, PKCS#1 or SEC1) found",
                    self.origin
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{Scratch, CERT, KEY, TLS};

    #[test]
    fn pem_is_given_inline_or_in_a_file_not_both() {
        let scratch = Scratch::new();
        let inline = format!("tls_server_config:\n  cert: {CERT:?}\n  key: {KEY:?}\n");
        assert!(scratch.load(&inline).expect("inline PEM").tls.is_some());
        let err = scratch.error(&format!("{TLS}  cert: {CERT:?}\n"));
        assert!(err.contains("both cert and cert_file are set"), "{err}");
    }

    #[test]
    fn bad_certificates_and_keys_are_named() {
        let scratch = Scratch::new();
        let err = scratch.error("tls_server_config: {cert_file: key.pem, key_file: key.pem}\n");
        assert!(
            err.contains("cert_file") && err.contains("no certificate"),
            "{err}"
        );
        let err = scratch.error("tls_server_config: {cert_file: cert.pem, key_file: cert.pem}\n");
        assert!(
            err.contains("key_file") && err.contains("no private key"),
            "{err}"
        );
        let err = scratch.error("tls_server_config: {cert_file: cert.pem}\n");
        assert!(err.contains("neither key_file nor key is set"), "{err}");
    }
}
