//! What of a payload may appear in an alert. By default only the
//! protocol's opening word (`GET`, `USER`, `EHLO`) and how many bytes were
//! withheld: the path, credentials and data stay on the host. An operator
//! who wants more sets `cleartext.alert_payload_bytes`.

/// Opening words are upper-case protocol verbs; a lower-case or mixed word
/// could as well be a password sent first.
const MAX_VERB: usize = 8;

/// The excerpt of `payload` for an alert: the first `cap` bytes, escaped,
/// or with `cap == 0` the redacted form.
pub fn excerpt(payload: &[u8], cap: usize) -> String {
    if cap == 0 {
        let verb = verb(payload);
        let withheld = payload.len() - verb.len();
        return match (verb.is_empty(), withheld) {
            (_, 0) => verb.to_owned(),
            (true, n) => format!("[{n} bytes redacted]"),
            (false, n) => format!("{verb} [{n} bytes redacted]"),
        };
    }
    let shown = &payload[..payload.len().min(cap)];
    let mut text: String = shown.escape_ascii().to_string();
    if payload.len() > shown.len() {
        text.push_str(&format!(" [{} more bytes]", payload.len() - shown.len()));
    }
    text
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
