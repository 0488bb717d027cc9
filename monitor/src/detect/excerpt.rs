//! What of a payload may appear in an alert. By default only the
//! protocol's opening word (`GET`, `USER`, `EHLO`) and how many bytes were
//! withheld: the path, credentials and data stay on the host. An operator
//! who wants more sets `cleartext.alert_payload_bytes`.

/// Opening words are upper-case protocol verbs; a lower-case or mixed word
/// could as well be a password sent first.
const MAX_VERB: usize = 8;

/// What an alert's excerpt needs of a payload, kept in place of it: a
/// connection's first sample waits for its verdict among tens of thousands
/// at a burst of new flows.
pub enum Head {
    /// By default (`cap == 0`): the opening verb, if any, and the length.
    Redacted {
        verb: [u8; MAX_VERB],
        verb_len: u8,
        len: u32,
    },
    /// The first `cap` bytes an operator asked for, and the length.
    Shown { bytes: Box<[u8]>, len: u32 },
}

impl Head {
    /// What the excerpt of `payload` under `cap` needs.
    pub fn of(payload: &[u8], cap: usize) -> Self {
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        if cap == 0 {
            let word = verb(payload).as_bytes();
            let mut verb = [0; MAX_VERB];
            verb[..word.len()].copy_from_slice(word);
            return Head::Redacted {
                verb,
                // At most MAX_VERB.
                verb_len: word.len() as u8,
                len,
            };
        }
        Head::Shown {
            bytes: payload[..payload.len().min(cap)].into(),
            len,
        }
    }

    /// The excerpt for an alert: the bytes kept, escaped, and how many
    /// were withheld or not shown.
    pub fn excerpt(&self) -> String {
        match self {
            Head::Redacted {
                verb,
                verb_len,
                len,
            } => {
                // Upper-case ASCII letters are valid UTF-8.
                let verb = std::str::from_utf8(&verb[..usize::from(*verb_len)]).unwrap_or_default();
                let withheld = *len as usize - verb.len();
                match (verb.is_empty(), withheld) {
                    (_, 0) => verb.to_owned(),
                    (true, n) => format!("[{n} bytes redacted]"),
                    (false, n) => format!("{verb} [{n} bytes redacted]"),
                }
            }
            Head::Shown { bytes, len } => {
                let mut text: String = bytes.escape_ascii().to_string();
                let more = *len as usize - bytes.len();
                if more > 0 {
                    text.push_str(&format!(" [{more} more bytes]"));
                }
                text
            }
        }
    }
}

/// The opening upper-case word, when it stands alone (followed by a space,
/// a dash, a line end or nothing).
fn verb(payload: &[u8]) -> &str {
    let len = payload
        .iter()
        .take(MAX_VERB + 1)
        .take_while(|b| b.is_ascii_uppercase())
        .count();
    let stands_alone = match payload.get(len) {
        None => true,
        Some(next) => matches!(next, b' ' | b'-' | b'\r' | b'\n' | b'/'),
    };
    if (2..=MAX_VERB).contains(&len) && stands_alone {
        // Upper-case ASCII letters are valid UTF-8.
        std::str::from_utf8(&payload[..len]).unwrap_or_default()
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The excerpt of `payload` under `cap`, as kept.
    fn excerpt(payload: &[u8], cap: usize) -> String {
        Head::of(payload, cap).excerpt()
    }

    #[test]
    fn by_default_only_the_verb_and_the_count_remain() {
        let request = b"GET /admin?token=s3cret HTTP/1.1\r\n\r\n";
        let text = excerpt(request, 0);
        assert_eq!(text, format!("GET [{} bytes redacted]", request.len() - 3));
        assert_eq!(
            excerpt(b"SSH-2.0-OpenSSH_9.2\r\n", 0),
            "SSH [18 bytes redacted]"
        );
        assert_eq!(excerpt(b"QUIT", 0), "QUIT");
    }

    #[test]
    fn words_that_could_be_secrets_are_withheld() {
        // Lower case, mixed case, too long, or glued to more text.
        for payload in [
            &b"hunter2 please"[..],
            b"Password1",
            b"ABCDEFGHIJ rest",
            b"ABC123",
            b"\x16\x03\x01\x02\x00",
        ] {
            assert_eq!(
                excerpt(payload, 0),
                format!("[{} bytes redacted]", payload.len())
            );
        }
    }

    #[test]
    fn an_operator_cap_shows_that_many_bytes_escaped() {
        assert_eq!(
            excerpt(b"GET /admin HTTP/1.1\r\n", 12),
            "GET /admin H [9 more bytes]"
        );
        assert_eq!(excerpt(b"\x16\x03\x01", 16), "\\x16\\x03\\x01");
        assert_eq!(excerpt(b"a\"b\n", 16), "a\\\"b\\n");
    }
}
