//! The DNS messages of `Event::Dns` in the wire format (RFC 1035),
//! parsed from bytes an attacker chooses:
//! every read is bounds-checked, a compression pointer must point before
//! the name that uses it (so no loop), names stop at 255 bytes, and at
//! most [`MAX_RECORDS`] records of each section are read. Never panics.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Records of each section kept (the rest are counted, not read).
pub const MAX_RECORDS: usize = 16;
/// Longest name on the wire (RFC 1035 §3.1), dots and lengths included.
const MAX_NAME: usize = 255;
/// A compression pointer's two top bits.
const POINTER: u8 = 0xc0;

/// A DNS message's header, questions and answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub id: u16,
    /// A response (QR set), not a query.
    pub response: bool,
    pub opcode: u8,
    pub rcode: u8,
    /// TC: the answer was cut to fit (the client retries over TCP).
    pub truncated: bool,
    pub questions: Vec<Question>,
    /// The answer section's count in the header.
    pub answer_count: u16,
    /// The answer records read (at most [`MAX_RECORDS`]); `answers_cut`
    /// when the bytes ended before `answer_count` of them.
    pub answers: Vec<Record>,
    pub answers_cut: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Question {
    /// Dotted, without the root's final dot; bytes outside printable
    /// ASCII and dots inside labels escaped as `\DDD` (as `dig` does).
    pub name: String,
    pub qtype: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub rtype: u16,
    pub ttl: u32,
    pub data: RecordData,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// CNAME, NS, PTR: a name.
    Name(String),
    /// Anything else (or a record whose data does not parse): its length.
    Other(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("shorter than a DNS header")]
    Short,
    #[error("a question is cut short or malformed")]
    Question,
}

/// The DNS message in a packet's payload: over TCP behind its two-byte
/// length (a segment that starts no message reads as garbage and fails).
pub fn message_bytes(protocol: u8, data: &[u8]) -> &[u8] {
    if protocol == monitor_common::ip_proto::TCP {
        data.get(2..).unwrap_or_default()
    } else {
        data
    }
}

/// Parses one message. The header and every question must parse; answers
/// are read while they do (a capture cut at 512 bytes keeps those before).
pub fn parse(bytes: &[u8]) -> Result<Message, WireError> {
    let header = bytes.get(..12).ok_or(WireError::Short)?;
    let be16 = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
    let flags = be16(2);
    let (question_count, answer_count) = (be16(4), be16(6));
    let mut at = 12;
    let mut questions = Vec::new();
    for _ in 0..question_count {
        let (name, next) = name(bytes, at).ok_or(WireError::Question)?;
        let qtype = read16(bytes, next).ok_or(WireError::Question)?;
        read16(bytes, next + 2).ok_or(WireError::Question)?;
        at = next + 4;
        if questions.len() < MAX_RECORDS {
            questions.push(Question { name, qtype });
        }
    }
    let mut answers = Vec::new();
    let mut answers_cut = false;
    for _ in 0..answer_count.min(MAX_RECORDS as u16) {
        match record(bytes, at) {
            Some((record, next)) => {
                answers.push(record);
                at = next;
            }
            None => {
                answers_cut = true;
                break;
            }
        }
    }
    Ok(Message {
        id: be16(0),
        response: flags & 0x8000 != 0,
        opcode: ((flags >> 11) & 0xf) as u8,
        rcode: (flags & 0xf) as u8,
        truncated: flags & 0x0200 != 0,
        questions,
        answer_count,
        answers,
        answers_cut,
    })
}

fn read16(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

fn record(bytes: &[u8], at: usize) -> Option<(Record, usize)> {
    let (owner, next) = name(bytes, at)?;
    let fixed = bytes.get(next..next.checked_add(10)?)?;
    let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
    let len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    let start = next + 10;
    let rdata = bytes.get(start..start.checked_add(len)?)?;
    let data = match (rtype, rdata.len()) {
        (rtype::A, 4) => RecordData::A(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3])),
        (rtype::AAAA, 16) => {
            let mut octets = [0; 16];
            octets.copy_from_slice(rdata);
            RecordData::Aaaa(Ipv6Addr::from(octets))
        }
        (rtype::CNAME | rtype::NS | rtype::PTR, _) => match name(bytes, start) {
            Some((target, end)) if end <= start + len => RecordData::Name(target),
            _ => RecordData::Other(len),
        },
        _ => RecordData::Other(len),
    };
    Some((
        Record {
            name: owner,
            rtype,
            ttl,
            data,
        },
        start + len,
    ))
}

/// Reads the name at `at`; returns it and the offset after it where it
/// sits (after its first pointer, if any).
fn name(bytes: &[u8], at: usize) -> Option<(String, usize)> {
    let mut text = String::new();
    let mut wire_len = 0;
    let mut cursor = at;
    // Where the name continues in place; set at the first pointer.
    let mut after: Option<usize> = None;
    // A pointer must go strictly before the label run it ends, so each
    // jump lowers `floor`: no loop, at most one pass per byte.
    let mut floor = at;
    loop {
        let len = *bytes.get(cursor)?;
        if len & POINTER == POINTER {
            let low = *bytes.get(cursor + 1)?;
            let target = usize::from(u16::from_be_bytes([len & !POINTER, low]));
            if target >= floor {
                return None;
            }
            after.get_or_insert(cursor + 2);
            floor = target;
            cursor = target;
            continue;
        }
        if len & POINTER != 0 {
            // 0x40 and 0x80: extended label types, obsolete.
            return None;
        }
        if len == 0 {
            break;
        }
        let label = bytes.get(cursor + 1..cursor + 1 + usize::from(len))?;
        wire_len += 1 + label.len();
        if wire_len + 1 > MAX_NAME {
            return None;
        }
        if !text.is_empty() {
            text.push('.');
        }
        escape_label(label, &mut text);
        cursor += 1 + label.len();
    }
    Some((text, after.unwrap_or(cursor + 1)))
}

/// Appends a label as `dig` prints it: printable ASCII as is, a dot or a
/// backslash behind a backslash, anything else as `\DDD`.
fn escape_label(label: &[u8], out: &mut String) {
    for &byte in label {
        match byte {
            b'.' | b'\\' => {
                out.push('\\');
                out.push(char::from(byte));
            }
            0x21..=0x7e => out.push(char::from(byte)),
            _ => out.push_str(&format!("\\{byte:03}")),
        }
    }
}

/// Record types by number.
pub mod rtype {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const CNAME: u16 = 5;
    pub const PTR: u16 = 12;
    pub const AAAA: u16 = 28;
}

/// A record type's mnemonic, or `TYPEnnn` (RFC 3597).
pub fn type_name(rtype: u16) -> String {
    let known = match rtype {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        41 => "OPT",
        64 => "SVCB",
        65 => "HTTPS",
        255 => "ANY",
        _ => return format!("TYPE{rtype}"),
    };
    known.to_owned()
}

/// A response code's name (RFC 1035, 2136), or `RCODEnn`. The header's
/// four bits only: the extended code of EDNS is not read.
pub fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        _ => "other",
    }
}

impl RecordData {
    /// As the API shows an answer: an address, a name, or `N bytes`.
    pub fn text(&self) -> String {
        match self {
            Self::A(ip) => ip.to_string(),
            Self::Aaaa(ip) => ip.to_string(),
            Self::Name(name) => name.clone(),
            Self::Other(len) => format!("{len} bytes"),
        }
    }
}

/// Builds messages for the tests (here and the detector's).
#[cfg(test)]
pub mod build {
    /// A name in wire form, uncompressed.
    pub fn name(dotted: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in dotted.split('.').filter(|l| !l.is_empty()) {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    /// A query for `qname` of `qtype`.
    pub fn query(id: u16, qname: &str, qtype: u16) -> Vec<u8> {
        let mut out = id.to_be_bytes().to_vec();
        out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        out.extend(name(qname));
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&[0, 1]);
        out
    }

    /// The response to `query(id, qname, 1)` with `rcode` and one A record
    /// per address, each owner a pointer to the question's name.
    pub fn answer(id: u16, qname: &str, rcode: u8, addresses: &[[u8; 4]]) -> Vec<u8> {
        let mut out = query(id, qname, 1);
        out[2] = 0x81;
        out[3] = 0x80 | rcode;
        out[7] = addresses.len() as u8;
        for address in addresses {
            out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            out.extend_from_slice(address);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_query_and_its_answer_read_back_exactly() {
        let query = parse(&build::query(0x1234, "db.example.com", 1)).expect("parses");
        assert_eq!(query.id, 0x1234);
        assert!(!query.response);
        assert_eq!(
            query.questions,
            vec![Question {
                name: "db.example.com".into(),
                qtype: 1
            }]
        );
        let answer = parse(&build::answer(
            0x1234,
            "db.example.com",
            0,
            &[[10, 0, 0, 1], [10, 0, 0, 2]],
        ))
        .expect("parses");
        assert!(answer.response);
        assert_eq!((answer.rcode, answer.answer_count), (0, 2));
        let texts: Vec<String> = answer.answers.iter().map(|r| r.data.text()).collect();
        assert_eq!(texts, ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(answer.answers[0].name, "db.example.com");
        assert_eq!(answer.answers[0].ttl, 60);
        assert!(!answer.answers_cut);
    }

    #[test]
    fn a_cname_chain_and_an_aaaa_record() {
        let mut bytes = build::query(7, "www.a.io", 28);
        bytes[2] = 0x81;
        bytes[3] = 0x80;
        bytes[7] = 2;
        // www.a.io CNAME b.a.io (b + pointer to "a.io" at 16).
        bytes.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 5, 0, 4, 1, b'b', 0xc0, 16]);
        let cname_target = bytes.len() - 4;
        bytes.extend_from_slice(&[0xc0, cname_target as u8, 0, 28, 0, 1, 0, 0, 0, 5, 0, 16]);
        bytes.extend_from_slice(&[0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let message = parse(&bytes).expect("parses");
        let texts: Vec<String> = message.answers.iter().map(|r| r.data.text()).collect();
        assert_eq!(texts, ["b.a.io", "2001:db8::1"]);
        assert_eq!(message.answers[1].name, "b.a.io");
    }

    #[test]
    fn a_pointer_to_itself_or_forward_is_refused() {
        let mut bytes = build::query(1, "x", 1);
        // The question's name replaced by a pointer to itself.
        bytes.truncate(12);
        bytes.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(parse(&bytes), Err(WireError::Question));
        let mut forward = build::query(1, "x", 1);
        forward.truncate(12);
        forward.extend_from_slice(&[0xc0, 14, 1, b'y', 0, 0, 1, 0, 1]);
        assert_eq!(parse(&forward), Err(WireError::Question));
    }

    #[test]
    fn two_pointers_that_point_at_each_other_are_refused() {
        // A record whose owner points at 20, where a pointer goes back to
        // 18 (the owner): each jump must go lower, the second does not.
        let mut bytes = build::query(1, "a", 1);
        bytes[7] = 1;
        let at = bytes.len();
        bytes.extend_from_slice(&[
            0xc0,
            (at + 2) as u8,
            0xc0,
            at as u8,
            0,
            1,
            0,
            1,
            0,
            0,
            0,
            1,
            0,
            4,
            1,
            2,
            3,
            4,
        ]);
        let message = parse(&bytes).expect("the header and question parse");
        assert!(message.answers.is_empty() && message.answers_cut);
    }

    #[test]
    fn names_longer_than_255_bytes_and_odd_labels_are_refused() {
        let long = vec!["a".repeat(63); 4].join(".");
        assert_eq!(parse(&build::query(1, &long, 1)), Err(WireError::Question));
        let mut extended = build::query(1, "x", 1);
        extended[12] = 0x41;
        assert_eq!(parse(&extended), Err(WireError::Question));
    }

    #[test]
    fn labels_are_escaped_as_dig_prints_them() {
        let mut bytes = build::query(1, "ab", 1);
        bytes[13] = b'.';
        bytes[14] = 0;
        let message = parse(&bytes).expect("parses");
        assert_eq!(message.questions[0].name, "\\.\\000");
    }

    #[test]
    fn a_truncated_answer_keeps_the_records_before_the_cut() {
        let bytes = build::answer(9, "t.io", 0, &[[1, 2, 3, 4], [5, 6, 7, 8]]);
        let message = parse(&bytes[..bytes.len() - 1]).expect("parses");
        assert_eq!(message.answers.len(), 1);
        assert!(message.answers_cut);
        for cut in 0..bytes.len() {
            let _ = parse(&bytes[..cut]);
        }
        assert_eq!(parse(&bytes[..11]), Err(WireError::Short));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Any bytes: a result, never a panic, and a name never longer
        /// than its escaped maximum.
        #[test]
        fn any_bytes_parse_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(message) = parse(&bytes) {
                prop_assert!(message.questions.len() <= MAX_RECORDS);
                prop_assert!(message.answers.len() <= MAX_RECORDS);
                for q in &message.questions {
                    prop_assert!(q.name.len() <= 4 * MAX_NAME);
                }
            }
        }

        /// A real message with its bytes mutated: pointers anywhere,
        /// counts at any value, cuts anywhere.
        #[test]
        fn mutated_messages_parse_or_fail_cleanly(
            flips in proptest::collection::vec((0usize..64, any::<u8>()), 1..8),
            cut in 0usize..64,
        ) {
            let mut bytes = build::answer(3, "mail.corp.example", 0, &[[9, 9, 9, 9]]);
            for (at, value) in flips {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            let keep = bytes.len().saturating_sub(cut % bytes.len());
            let _ = parse(&bytes[..keep]);
        }
    }
}
