//! `basic_auth_users`: `Authorization: Basic` checked against bcrypt
//! hashes, with a cache of the credentials that passed.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Mutex,
};

use anyhow::{bail, ensure, Context as _};
use axum::http::HeaderValue;
use base64::{
    alphabet,
    engine::{
        general_purpose::{GeneralPurpose, NO_PAD, STANDARD},
        Engine as _,
    },
};
use tokio::sync::Semaphore;

use super::credential_tags::CredentialTags;
use crate::sync::lock;

/// A bcrypt hash of a password no user has: unknown users are checked
/// against it, so that the time an answer takes does not tell which user
/// names exist. Cost 10, the cost exporter-toolkit's documentation suggests.
pub(super) const DECOY_HASH: &str = "$2b$10$UcgNHprW2h1mUA05XBZK/uZNhx47Fc1mnxi2pqdeZ.c9YPb.nOPXG";

/// bcrypt's own base64: its alphabet, no padding.
const BCRYPT_BASE64: GeneralPurpose = GeneralPurpose::new(&alphabet::BCRYPT, NO_PAD);

/// Verified credentials kept at most; only successful checks enter, so only
/// holders of a password can fill it, and a full cache is simply emptied.
const MAX_VERIFIED: usize = 256;

/// bcrypt checks running at once. bcrypt is slow on purpose (tens of ms at
/// cost 10); this bounds the CPU that wrong passwords can take from the
/// agent, whose own work comes first.
const BCRYPT_SLOTS: usize = 2;

/// `basic_auth_users`: `Authorization: Basic` checked against bcrypt hashes.
pub(super) struct BasicAuth {
    /// User names and their bcrypt hashes.
    users: Vec<(String, String)>,
    /// Credentials that passed bcrypt, as tags from `tags`.
    verified: Mutex<HashSet<Vec<u8>>>,
    tags: CredentialTags,
    bcrypt_slots: Semaphore,
}

impl BasicAuth {
    pub(super) fn new(users: BTreeMap<String, String>) -> anyhow::Result<Option<BasicAuth>> {
        if users.is_empty() {
            return Ok(None);
        }
        for (user, hash) in &users {
            check_bcrypt_hash(hash)
                .with_context(|| format!("the password of {user:?} is not a bcrypt hash"))?;
        }
        Ok(Some(BasicAuth {
            users: users.into_iter().collect(),
            verified: Mutex::default(),
            tags: CredentialTags::new()?,
            bcrypt_slots: Semaphore::new(BCRYPT_SLOTS),
        }))
    }

    pub(super) async fn allows(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some((user, password)) = authorization.and_then(basic_credentials) else {
            return false;
        };
        let hash = self.hash_of(&user);
        let tag = self.tags.of(&user, &password);
        if hash.is_some() && self.was_verified(&tag) {
            return true;
        }
        let Ok(_slot) = self.bcrypt_slots.acquire().await else {
            return false;
        };
        // Concurrent first requests with the same credentials (parallel
        // scrapes) verify them once.
        if hash.is_some() && self.was_verified(&tag) {
            return true;
        }
        let against = hash.unwrap_or(DECOY_HASH).to_owned();
        match tokio::task::spawn_blocking(move || bcrypt::verify(password, &against)).await {
            Ok(Ok(true)) if hash.is_some() => {
                let mut verified = lock(&self.verified);
                if verified.len() >= MAX_VERIFIED {
                    verified.clear();
                }
                verified.insert(tag);
                true
            }
            Ok(Ok(_)) => false,
            Ok(Err(err)) => {
                tracing::warn!("basic auth: a configured bcrypt hash cannot be checked: {err}");
                false
            }
            Err(join) => {
                tracing::warn!("basic auth: the bcrypt check failed: {join}");
                false
            }
        }
    }

    /// How many users the config names, for the log.
    pub(super) fn user_count(&self) -> usize {
        self.users.len()
    }

    /// The hash of `user`, comparing every configured name in full, so that
    /// the time taken does not depend on which name (or how much of one)
    /// matched.
    fn hash_of(&self, user: &[u8]) -> Option<&str> {
        let mut found = None;
        for (name, hash) in &self.users {
            if constant_time_eq(name.as_bytes(), user) {
                found = Some(hash.as_str());
            }
        }
        found
    }

    fn was_verified(&self, tag: &[u8]) -> bool {
        lock(&self.verified).contains(tag)
    }
}

/// Checks the form of a bcrypt hash without echoing it: a plaintext
/// password put there by mistake must not reach the log.
fn check_bcrypt_hash(hash: &str) -> anyhow::Result<()> {
    const FORM: &str =
        "expected $2y$<cost>$<53 characters>, as `htpasswd -nBC 10 \"\" | tr -d ':\\n'` prints";
    let parts: Vec<&str> = hash.split('$').collect();
    let ["", version, cost, rest] = parts.as_slice() else {
        bail!("{FORM}");
    };
    ensure!(
        ["2a", "2b", "2x", "2y"].contains(version),
        "unknown bcrypt version; {FORM}"
    );
    ensure!(
        cost.len() == 2
            && cost
                .parse::<u32>()
                .is_ok_and(|cost| (4..=31).contains(&cost)),
        "the cost is not a number from 04 to 31"
    );
    // 22 characters of salt and 31 of hash, each in bcrypt's base64 with
    // the unused bits of its last character zero: bcrypt refuses others
    // when a password is checked, which would fail every login.
    let decodes = |part: Option<&str>| part.is_some_and(|part| BCRYPT_BASE64.decode(part).is_ok());
    ensure!(
        rest.len() == 53 && decodes(rest.get(..22)) && decodes(rest.get(22..)),
        "salt and hash are not 53 characters of bcrypt's base64; {FORM}"
    );
    Ok(())
}

/// User and password of an `Authorization: Basic` header (RFC 7617).
fn basic_credentials(value: &HeaderValue) -> Option<(Vec<u8>, Vec<u8>)> {
    let (scheme, encoded) = value.to_str().ok()?.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let mut user = STANDARD.decode(encoded.trim()).ok()?;
    let colon = user.iter().position(|&b| b == b':')?;
    let password = user.split_off(colon + 1);
    user.truncate(colon);
    Some((user, password))
}

/// Equality whose time depends on the lengths only, not on where the
/// contents differ. ring has one, but reaches us only through rustls,
/// which does not export it.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{basic, Scratch};
    use super::*;

    #[test]
    fn passwords_must_be_bcrypt_hashes_and_are_not_echoed() {
        let scratch = Scratch::new();
        let err = scratch.error("basic_auth_users:\n  alice: hunter2\n");
        assert!(err.contains("\"alice\" is not a bcrypt hash"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let wrong_cost = DECOY_HASH.replace("$10$", "$03$");
        let err = scratch.error(&format!("basic_auth_users:\n  alice: '{wrong_cost}'\n"));
        assert!(err.contains("cost"), "{err}");
        // Bits past the hash's 23 bytes set: bcrypt could never check it.
        let unusable = DECOY_HASH.replace("nOPXG", "nOPXH");
        assert!(bcrypt::verify("x", &unusable).is_err());
        let err = scratch.error(&format!("basic_auth_users:\n  alice: '{unusable}'\n"));
        assert!(err.contains("bcrypt's base64"), "{err}");
        let config = scratch
            .load(&format!("basic_auth_users:\n  alice: '{DECOY_HASH}'\n"))
            .expect("a bcrypt hash");
        assert!(config.tls.is_none() && config.policy.is_some());
    }

    #[test]
    fn basic_credentials_are_decoded() {
        let header = |value: &str| HeaderValue::from_str(value).expect("header");
        // "alice:open sesame" and "bob:" (empty password).
        assert_eq!(
            basic_credentials(&header("Basic YWxpY2U6b3BlbiBzZXNhbWU=")),
            Some((b"alice".to_vec(), b"open sesame".to_vec()))
        );
        assert_eq!(
            basic_credentials(&header("basic Ym9iOg==")),
            Some((b"bob".to_vec(), Vec::new()))
        );
        // Padding is required, as in Go's net/http, which exporter-toolkit uses.
        assert_eq!(basic_credentials(&header("basic Ym9iOg")), None);
        assert_eq!(basic_credentials(&header("Bearer YWxpY2U6eA==")), None);
        assert_eq!(
            basic_credentials(&header("Basic bm9jb2xvbg==")),
            None,
            "no colon"
        );
        assert_eq!(
            basic_credentials(&header("Basic YWxp!2U6eA==")),
            None,
            "not base64"
        );
    }

    #[tokio::test]
    async fn successful_checks_are_cached_and_failures_are_not() {
        let hash = bcrypt::hash("right", 4).expect("hash");
        let auth = BasicAuth::new(BTreeMap::from([("alice".to_owned(), hash)]))
            .expect("config")
            .expect("basic auth");
        assert!(!auth.allows(None).await);
        assert!(!auth.allows(Some(&basic("alice", "wrong"))).await);
        assert!(!auth.allows(Some(&basic("mallory", "right"))).await);
        assert!(lock(&auth.verified).is_empty());
        assert!(auth.allows(Some(&basic("alice", "right"))).await);
        assert_eq!(lock(&auth.verified).len(), 1);
        assert!(auth.allows(Some(&basic("alice", "right"))).await);
        assert!(!auth.allows(Some(&basic("alice", "righ"))).await);
        assert_eq!(lock(&auth.verified).len(), 1);
    }

    mod properties {
        use proptest::{collection, prelude::*, sample::select};

        use super::{basic, basic_credentials, check_bcrypt_hash, HeaderValue};

        const BCRYPT_ALPHABET: &str =
            "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

        /// `$version$cost$salt-and-hash`, each part right or nearly so.
        fn hash_like() -> impl Strategy<Value = String> {
            let version = select(&["2a", "2b", "2x", "2y", "2", "2c", "3a", ""][..]);
            let cost = select(&["04", "05", "4", "+5", "00", "03", "31", "32", "1O", ""][..]);
            let alphabet: Vec<char> = BCRYPT_ALPHABET.chars().collect();
            let rest = prop_oneof![
                4 => collection::vec(select(alphabet), 53).prop_map(String::from_iter),
                1 => "[./A-Za-z0-9]{50,56}",
                1 => any::<String>(),
            ];
            (version, cost, rest)
                .prop_map(|(version, cost, rest)| format!("${version}${cost}${rest}"))
        }

        proptest! {
            #[test]
            fn accepted_hashes_work_and_refused_ones_are_not_echoed(
                hash in prop_oneof![3 => hash_like(), 1 => any::<String>()],
            ) {
                match check_bcrypt_hash(&hash) {
                    Ok(()) => {
                        // Cheap costs only: bcrypt at cost 31 takes days.
                        let cost: u32 = hash[4..6].parse().expect("a checked cost");
                        if cost <= 5 {
                            let verified = bcrypt::verify("password", &hash);
                            prop_assert!(verified.is_ok(), "{hash} accepted, then {verified:?}");
                        }
                    }
                    Err(error) => {
                        let error = format!("{error:#}");
                        prop_assert!(hash.len() < 8 || !error.contains(&hash), "{error}");
                    }
                }
            }

            #[test]
            fn basic_credentials_round_trip(user in "[^:]*", password in any::<String>()) {
                prop_assert_eq!(
                    basic_credentials(&basic(&user, &password)),
                    Some((user.into_bytes(), password.into_bytes()))
                );
            }

            #[test]
            fn any_authorization_header_is_read_or_refused(value in any::<Vec<u8>>()) {
                if let Ok(header) = HeaderValue::from_bytes(&value) {
                    let _ = basic_credentials(&header);
                }
            }
        }
    }
}
