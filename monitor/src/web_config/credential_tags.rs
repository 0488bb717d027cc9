//! Keys for the cache of verified basic-auth credentials.

use anyhow::Context as _;
use rustls::crypto::{ring as ring_provider, tls13::Hkdf, tls13::OkmBlock};

/// Keys of the cache of verified credentials: HMAC-SHA256 of user and
/// password under a key drawn at start (ring's, through rustls). A cache
/// hit lets a request in, so the key must resist chosen inputs (std's
/// 64-bit hasher does not); and the cache holds no password, nor anything
/// that can be checked against guesses outside this process.
pub(super) struct CredentialTags {
    hmac: &'static dyn Hkdf,
    key: OkmBlock,
}

impl CredentialTags {
    pub(super) fn new() -> anyhow::Result<Self> {
        let suite = ring_provider::cipher_suite::TLS13_AES_128_GCM_SHA256
            .tls13()
            .context("rustls lacks TLS13_AES_128_GCM_SHA256")?;
        let mut key = [0; 32];
        ring_provider::default_provider()
            .secure_random
            .fill(&mut key)
            .map_err(|_| anyhow::anyhow!("the system gave no random bytes for a key"))?;
        Ok(Self {
            hmac: suite.hkdf_provider,
            key: OkmBlock::new(&key),
        })
    }

    pub(super) fn of(&self, user: &[u8], password: &[u8]) -> Vec<u8> {
        // Length-prefixed, so that no two (user, password) pairs share a message.
        let mut message = Vec::with_capacity(8 + user.len() + password.len());
        message.extend_from_slice(&(user.len() as u64).to_be_bytes());
        message.extend_from_slice(user);
        message.extend_from_slice(password);
        self.hmac.hmac_sign(&self.key, &message).as_ref().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::CredentialTags;

    #[test]
    fn user_and_password_do_not_run_together() {
        let tags = CredentialTags::new().expect("tags");
        assert_ne!(tags.of(b"al", b"ice:x"), tags.of(b"alice", b"x"));
    }
}
