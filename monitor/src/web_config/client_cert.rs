//! `client_auth_type`: which client certificates the TLS server asks for,
//! and how it checks them.

use std::sync::Arc;

use anyhow::{bail, Context as _};
use rustls::{
    client::danger::HandshakeSignatureValid,
    crypto::{CryptoProvider, WebPkiSupportedAlgorithms},
    pki_types::{CertificateDer, UnixTime},
    server::{
        danger::{ClientCertVerified, ClientCertVerifier},
        WebPkiClientVerifier,
    },
    DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};

use super::{file::ClientAuth, pem::Pem};

/// The verifier `client_auth_type` calls for; `None` when the server asks
/// for no certificate.
pub(super) fn client_verifier(
    auth: ClientAuth,
    client_ca: Option<Pem>,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<Option<Arc<dyn ClientCertVerifier>>> {
    let roots = client_ca
        .map(|ca| {
            let mut roots = RootCertStore::empty();
            for cert in ca.certificates()? {
                roots
                    .add(cert)
                    .with_context(|| format!("{}: not a usable CA certificate", ca.origin))?;
            }
            anyhow::Ok(roots)
        })
        .transpose()?;
    let verified = |roots: RootCertStore, optional: bool| {
        let builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        let builder = if optional {
            builder.allow_unauthenticated()
        } else {
            builder
        };
        builder.build().context("client_ca_file")
    };
    let verifier: Arc<dyn ClientCertVerifier> = match (auth, roots) {
        (ClientAuth::NoClientCert, None) => return Ok(None),
        (ClientAuth::NoClientCert, Some(_)) => bail!(
            "client_ca_file is set but client_auth_type is NoClientCert; \
             set client_auth_type: RequireAndVerifyClientCert to check client certificates"
        ),
        (ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert, roots) => {
            tracing::warn!(
                "--web-config: client_auth_type {auth:?} accepts client certificates from any issuer; \
                 RequireAndVerifyClientCert checks them against client_ca_file"
            );
            Arc::new(UncheckedClientCert {
                mandatory: auth == ClientAuth::RequireAnyClientCert,
                hints: roots.map(|roots| roots.subjects()).unwrap_or_default(),
                algorithms: provider.signature_verification_algorithms,
            })
        }
        (ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert, None) => {
            bail!("client_auth_type {auth:?} needs client_ca_file (or client_ca) to check client certificates against")
        }
        (ClientAuth::VerifyClientCertIfGiven, Some(roots)) => verified(roots, true)?,
        (ClientAuth::RequireAndVerifyClientCert, Some(roots)) => verified(roots, false)?,
    };
    Ok(Some(verifier))
}

/// `RequestClientCert` and `RequireAnyClientCert`: like Go's modes of these
/// names, asks for a certificate but does not check its issuer, only that
/// the client holds its key.
#[derive(Debug)]
struct UncheckedClientCert {
    mandatory: bool,
    /// Sent to the client to help it choose: the subjects of client_ca_file.
    hints: Vec<DistinguishedName>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for UncheckedClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{Scratch, TLS};

    #[test]
    fn client_certificates_need_a_ca_and_a_ca_needs_an_auth_type() {
        let scratch = Scratch::new();
        let err = scratch.error(&format!(
            "{TLS}  client_auth_type: RequireAndVerifyClientCert\n"
        ));
        assert!(err.contains("needs client_ca_file"), "{err}");
        let err = scratch.error(&format!("{TLS}  client_ca_file: cert.pem\n"));
        assert!(err.contains("client_auth_type is NoClientCert"), "{err}");
        let err = scratch.error(&format!("{TLS}  client_auth_type: Sometimes\n"));
        assert!(err.contains("unknown variant `Sometimes`"), "{err}");
        for auth in [
            "RequestClientCert",
            "RequireAnyClientCert",
            "RequireClientCert",
            "VerifyClientCertIfGiven",
            "RequireAndVerifyClientCert",
        ] {
            let yaml = format!("{TLS}  client_auth_type: {auth}\n  client_ca_file: cert.pem\n");
            assert!(scratch.load(&yaml).is_ok(), "{auth}");
        }
    }
}
