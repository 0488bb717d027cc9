//! The protocol a connection speaks, told from the first payload bytes each
//! side sends (the kernel captures the head of the first payload packets of
//! every TCP and UDP flow, per direction), for the `cleartext` detector.
//!
//! Decisions rest on the bytes wherever they are distinctive. The
//! destination port only breaks ties between openings that several
//! protocols share (a `220 ` banner is SMTP or FTP, `USER ` is FTP or POP3)
//! and guards the one-byte answers of a PostgreSQL server.
//!
//! A whole connection is encrypted when any of its samples is
//! ([`Protocol::is_encrypted`]): several protocols greet in cleartext before
//! the two sides switch to TLS (a MySQL greeting, a NATS `INFO`, an SMTP
//! banner and `EHLO` before `STARTTLS`). Requests to encrypt that a client
//! sends blindly and a server may refuse (PostgreSQL's `SSLRequest`, FTP's
//! `AUTH TLS`) are therefore cleartext of their protocol; only the server's
//! acceptance counts as [`Protocol::StartTls`]. Otherwise the common case of
//! `sslmode=prefer` against a PostgreSQL server without TLS would pass as
//! encrypted.
//!
//! DNS is not classified: it is cleartext by design and every container
//! speaks it.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// A TLS or DTLS handshake: a ClientHello from the client, a ServerHello
    /// (or a DTLS HelloVerifyRequest) from the server.
    Tls,
    /// A QUIC long-header packet; its handshake is TLS 1.3.
    Quic,
    /// An SSH identification string.
    Ssh,
    /// The rest of the connection is about to be encrypted: a command a
    /// client sends only after the server offered it (SMTP and IMAP
    /// `STARTTLS`, POP3 `STLS`, MySQL's SSL request), a request clients
    /// give up on when refused (LDAP StartTLS, AMQP 1.0's TLS header), or a
    /// server accepting (PostgreSQL `S` or `G`, FTP `234`).
    StartTls,
    Http,
    /// HTTP/2 without TLS ("h2c", also plain gRPC), told by its preface.
    #[serde(rename = "h2c")]
    Http2Cleartext,
    Redis,
    Postgres,
    Mysql,
    MongoDb,
    Smtp,
    Ftp,
    Pop3,
    Imap,
    Ldap,
    Mqtt,
    Amqp,
    Kafka,
    Nats,
    Memcached,
    Unknown,
}

impl Protocol {
    /// The name in alerts and metric labels, the same as the JSON form.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tls => "tls",
            Protocol::Quic => "quic",
            Protocol::Ssh => "ssh",
            Protocol::StartTls => "starttls",
            Protocol::Http => "http",
            Protocol::Http2Cleartext => "h2c",
            Protocol::Redis => "redis",
            Protocol::Postgres => "postgres",
            Protocol::Mysql => "mysql",
            Protocol::MongoDb => "mongodb",
            Protocol::Smtp => "smtp",
            Protocol::Ftp => "ftp",
            Protocol::Pop3 => "pop3",
            Protocol::Imap => "imap",
            Protocol::Ldap => "ldap",
            Protocol::Mqtt => "mqtt",
            Protocol::Amqp => "amqp",
            Protocol::Kafka => "kafka",
            Protocol::Nats => "nats",
            Protocol::Memcached => "memcached",
            Protocol::Unknown => "unknown",
        }
    }

    /// Whether a sample shows the connection encrypted or about to be;
    /// one such sample makes the whole connection encrypted (see the
    /// module documentation). `Unknown` is neither encrypted nor a known
    /// cleartext protocol.
    pub fn is_encrypted(self) -> bool {
        matches!(
            self,
            Protocol::Tls | Protocol::Quic | Protocol::Ssh | Protocol::StartTls
        )
    }
}

/// Ports whose clients are expected to open with TLS: HTTPS (443, 8443),
/// SMTPS (465), LDAPS (636), IMAPS (993), POP3S (995), AMQPS (5671), the
/// Kubernetes API (6443), MQTT over TLS (8883) and the Docker daemon's TLS
/// socket (2376). Kafka's 9093 is left out: Kafka's own KRaft examples and
/// images put the plaintext controller listener there.
pub const TLS_PORTS: [u16; 10] = [443, 465, 636, 993, 995, 2376, 5671, 6443, 8443, 8883];

/// Whether a connection to `dst_port` should open with a TLS ClientHello:
/// one of [`TLS_PORTS`] or of the configured `extra` ports.
pub fn tls_expected(dst_port: u16, extra: &[u16]) -> bool {
    TLS_PORTS.contains(&dst_port) || extra.contains(&dst_port)
}

/// What the first bytes one side of a connection sent show. `from_client`
/// tells the side: the client opened the connection to `dst_port`.
pub fn classify(payload: &[u8], from_client: bool, dst_port: u16) -> Protocol {
    let recognizers = if from_client { CLIENT } else { SERVER };
    recognizers
        .iter()
        .find_map(|recognize| recognize(payload, dst_port))
        .unwrap_or(Protocol::Unknown)
}

type Recognizer = fn(&[u8], u16) -> Option<Protocol>;

/// Binary signatures first: the text ones are looser.
const CLIENT: &[Recognizer] = &[
    tls_client_hello,
    ssh,
    quic,
    http_request,
    redis_request,
    postgres_request,
    mysql_handshake_response,
    mongodb_request,
    kafka_request,
    ldap,
    mqtt_connect,
    amqp_header,
    nats_connect,
    mail_or_ftp_command,
    memcached_command,
    imap_command,
    redis_inline_command,
];

const SERVER: &[Recognizer] = &[
    tls_server_hello,
    ssh,
    quic,
    http_response,
    mysql_greeting,
    postgres_reply,
    mongodb_reply,
    ldap,
    amqp_header,
    amqp_connection_start,
    nats_info,
    mail_or_ftp_reply,
    redis_reply,
];

const POSTGRES_PORTS: [u16; 2] = [5432, 6432];
const SMTP_PORTS: [u16; 5] = [25, 465, 587, 1025, 2525];
const FTP_PORTS: [u16; 2] = [21, 990];
const POP3_PORTS: [u16; 2] = [110, 995];
const REDIS_PORT: u16 = 6379;

fn tls_client_hello(p: &[u8], _: u16) -> Option<Protocol> {
    tls_handshake(p, &[1]).then_some(Protocol::Tls)
}

fn tls_server_hello(p: &[u8], _: u16) -> Option<Protocol> {
    // 3 is DTLS's HelloVerifyRequest, the cookie exchange before its
    // ServerHello.
    tls_handshake(p, &[2, 3]).then_some(Protocol::Tls)
}

/// A handshake record (content type 22) opening with a message of one of
/// `kinds`.
fn tls_handshake(p: &[u8], kinds: &[u8]) -> bool {
    match *p {
        // Record versions 3.0 to 3.4: TLS 1.3 still writes 3.1 or 3.3 there.
        [0x16, 0x03, 0x00..=0x04, hi, lo, kind, ..] => {
            (4..=16_384).contains(&u16::from_be_bytes([hi, lo])) && kinds.contains(&kind)
        }
        // DTLS 1.0 (0xfeff) or 1.2 and 1.3 (0xfefd), epoch 0, 6-byte
        // sequence number, 2-byte length, then the message type.
        [0x16, 0xfe, 0xff | 0xfd, 0, 0, ..] => p.get(13).is_some_and(|kind| kinds.contains(kind)),
        _ => false,
    }
}

fn ssh(p: &[u8], _: u16) -> Option<Protocol> {
    (p.starts_with(b"SSH-2.0-") || p.starts_with(b"SSH-1.99-")).then_some(Protocol::Ssh)
}

fn quic(p: &[u8], _: u16) -> Option<Protocol> {
    let &[first, v0, v1, v2, v3, dcid_len, ..] = p else {
        return None;
    };
    // The Initial packet's type is 0 in QUIC v1 and 1 in v2 (RFC 9369).
    let initial = match u32::from_be_bytes([v0, v1, v2, v3]) {
        1 => 0,
        0x6b33_43cf => 1,
        _ => return None,
    };
    // Long header form and fixed bit set; connection ids are at most 20 bytes.
    (first & 0xc0 == 0xc0 && (first >> 4) & 0x03 == initial && dcid_len <= 20)
        .then_some(Protocol::Quic)
}

const HTTP_METHODS: [&[u8]; 9] = [
    b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE",
];

fn http_request(p: &[u8], _: u16) -> Option<Protocol> {
    if p.starts_with(b"PRI * HTTP/2.0\r\n") {
        return Some(Protocol::Http2Cleartext);
    }
    let (method, rest) = split_at_byte(p, b' ')?;
    if !HTTP_METHODS.contains(&method) {
        return None;
    }
    let request_line = match find(rest, b"\r\n") {
        Some(end) => {
            let line = rest.get(..end)?;
            line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0")
        }
        // A long target can fill the whole capture before the version.
        None => {
            (rest.starts_with(b"/") || rest.starts_with(b"http://"))
                && method != b"CONNECT"
                && rest.iter().all(u8::is_ascii_graphic)
        }
    };
    request_line.then_some(Protocol::Http)
}

fn http_response(p: &[u8], _: u16) -> Option<Protocol> {
    let rest = p
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| p.strip_prefix(b"HTTP/1.0 "))?;
    let status = rest.get(..3)?;
    status
        .iter()
        .all(u8::is_ascii_digit)
        .then_some(Protocol::Http)
}

/// RESP, as every client library sends it: an array of bulk strings,
/// `*<count>\r\n$<length>\r\n<command>\r\n`.
fn redis_request(p: &[u8], _: u16) -> Option<Protocol> {
    let (count, rest) = number_line(p.strip_prefix(b"*")?)?;
    let (_, rest) = number_line(rest.strip_prefix(b"$")?)?;
    (count > 0 && rest.first().is_none_or(u8::is_ascii_alphabetic)).then_some(Protocol::Redis)
}

/// Commands typed by hand or sent by health checks through `nc`.
fn redis_inline_command(p: &[u8], port: u16) -> Option<Protocol> {
    let (word, argument) = command_word(p)?;
    let inline = word.eq_ignore_ascii_case(b"PING")
        // HELLO takes the protocol version first.
        || (word.eq_ignore_ascii_case(b"HELLO") && argument.first().is_some_and(u8::is_ascii_digit))
        || (port == REDIS_PORT && word.eq_ignore_ascii_case(b"AUTH"));
    inline.then_some(Protocol::Redis)
}

fn redis_reply(p: &[u8], port: u16) -> Option<Protocol> {
    let distinctive = [
        b"+PONG\r\n".as_slice(),
        b"-NOAUTH ",
        b"-WRONGPASS ",
        b"-DENIED ",
    ];
    if distinctive.iter().any(|prefix| p.starts_with(prefix)) {
        return Some(Protocol::Redis);
    }
    // POP3 answers the same way; its banner always carries text after +OK.
    let shared = p == b"+OK\r\n" || p.starts_with(b"-ERR ");
    (shared && !POP3_PORTS.contains(&port)).then_some(Protocol::Redis)
}

const PG_CANCEL_REQUEST: u32 = 80_877_102;
const PG_SSL_REQUEST: u32 = 80_877_103;
const PG_GSSENC_REQUEST: u32 = 80_877_104;

fn postgres_request(p: &[u8], _: u16) -> Option<Protocol> {
    let length = be_u32(p, 0)?;
    let code = be_u32(p, 4)?;
    let known = match (length, code) {
        // Asking for TLS or GSSAPI encryption: the server may refuse and
        // the client go on in cleartext (`sslmode=prefer`), so only the
        // server's answer tells.
        (8, PG_SSL_REQUEST | PG_GSSENC_REQUEST) | (16, PG_CANCEL_REQUEST) => true,
        // StartupMessage, protocol 3.0 to 3.2, then `name\0value\0` pairs.
        (9..=10_000, 0x0003_0000..=0x0003_0002) => p
            .get(8)
            .is_none_or(|&b| b == 0 || b == b'_' || b.is_ascii_lowercase()),
        _ => false,
    };
    known.then_some(Protocol::Postgres)
}

fn postgres_reply(p: &[u8], port: u16) -> Option<Protocol> {
    match *p {
        // The answer to SSLRequest or GSSENCRequest: one byte tells nothing
        // by itself, so only on PostgreSQL's ports.
        [b'S' | b'G'] if POSTGRES_PORTS.contains(&port) => Some(Protocol::StartTls),
        [b'N'] if POSTGRES_PORTS.contains(&port) => Some(Protocol::Postgres),
        // AuthenticationRequest: length, then ok, cleartext password, MD5,
        // GSS, SSPI or SASL.
        [b'R', ..] => {
            let length = be_u32(p, 1)?;
            let kind = be_u32(p, 5)?;
            ((8..=1024).contains(&length) && matches!(kind, 0 | 2 | 3 | 5..=12))
                .then_some(Protocol::Postgres)
        }
        // ErrorResponse (a refused login), which opens with its severity.
        [b'E', ..] => {
            let length = be_u32(p, 1)?;
            let severity = p.get(5..)?.strip_prefix(b"S")?;
            let end = severity.iter().position(|&b| b == 0)?;
            ((8..=4096).contains(&length) && (4..=16).contains(&end)).then_some(Protocol::Postgres)
        }
        _ => None,
    }
}

/// The server's first packet: 3-byte length, sequence 0, protocol 10,
/// then the NUL-terminated server version (`8.0.36`, `5.5.5-10.11.6-MariaDB`).
fn mysql_greeting(p: &[u8], _: u16) -> Option<Protocol> {
    let &[l0, l1, l2, 0, 10, ref rest @ ..] = p else {
        return None;
    };
    let length = u32::from_le_bytes([l0, l1, l2, 0]);
    let version = rest.get(..rest.iter().position(|&b| b == 0)?)?;
    ((32..=1024).contains(&length)
        && (1..=64).contains(&version.len())
        && version.first().is_some_and(u8::is_ascii_digit)
        && version.iter().all(u8::is_ascii_graphic))
    .then_some(Protocol::Mysql)
}

const MYSQL_CLIENT_PROTOCOL_41: u32 = 0x200;
const MYSQL_CLIENT_SSL: u32 = 0x800;

/// HandshakeResponse41, sequence 1: capabilities, max packet size,
/// character set, 23 zero bytes. Cut short after the zeros with the SSL
/// capability set, it is the SSL request, sent only to a server that
/// offered TLS in its greeting.
fn mysql_handshake_response(p: &[u8], _: u16) -> Option<Protocol> {
    let &[l0, l1, l2, 1, ..] = p else {
        return None;
    };
    let length = u32::from_le_bytes([l0, l1, l2, 0]);
    let capabilities = le_u32(p, 4)?;
    let filler = p.get(13..36)?;
    if length < 32 || capabilities & MYSQL_CLIENT_PROTOCOL_41 == 0 || filler.iter().any(|&b| b != 0)
    {
        return None;
    }
    Some(if capabilities & MYSQL_CLIENT_SSL != 0 {
        Protocol::StartTls
    } else {
        Protocol::Mysql
    })
}

const MONGO_OP_REPLY: u32 = 1;
const MONGO_OP_QUERY: u32 = 2004;
const MONGO_OP_COMPRESSED: u32 = 2012;
const MONGO_OP_MSG: u32 = 2013;

/// The wire header, all little endian: length, request id, the id answered
/// (0 in requests), opcode.
fn mongodb_header(p: &[u8]) -> Option<(u32, u32)> {
    let length = le_u32(p, 0)?;
    let response_to = le_u32(p, 8)?;
    let opcode = le_u32(p, 12)?;
    (16..=48_000_000)
        .contains(&length)
        .then_some((response_to, opcode))
}

fn mongodb_request(p: &[u8], _: u16) -> Option<Protocol> {
    let (0, opcode) = mongodb_header(p)? else {
        return None;
    };
    let known = match opcode {
        MONGO_OP_MSG => mongodb_op_msg(p),
        // Drivers still open with a legacy `isMaster` on `admin.$cmd`.
        MONGO_OP_QUERY => {
            let collection = p.get(20..)?;
            let name = collection.get(..collection.iter().position(|&b| b == 0)?)?;
            name.contains(&b'.') && name.iter().all(u8::is_ascii_graphic)
        }
        MONGO_OP_COMPRESSED => mongodb_op_compressed(p, &[MONGO_OP_MSG, MONGO_OP_QUERY]),
        _ => false,
    };
    known.then_some(Protocol::MongoDb)
}

fn mongodb_reply(p: &[u8], _: u16) -> Option<Protocol> {
    let (response_to, opcode) = mongodb_header(p)?;
    let known = response_to != 0
        && match opcode {
            MONGO_OP_MSG => mongodb_op_msg(p),
            // Only the four low response flags are defined.
            MONGO_OP_REPLY => le_u32(p, 16).is_some_and(|flags| flags & !0xf == 0),
            MONGO_OP_COMPRESSED => mongodb_op_compressed(p, &[MONGO_OP_MSG, MONGO_OP_REPLY]),
            _ => false,
        };
    known.then_some(Protocol::MongoDb)
}

/// Flag bits (only checksumPresent, moreToCome and exhaustAllowed are
/// defined), then a section of kind 0 (body) or 1 (document sequence).
fn mongodb_op_msg(p: &[u8]) -> bool {
    le_u32(p, 16).is_some_and(|flags| flags & !0x0001_0003 == 0)
        && p.get(20).is_none_or(|&kind| kind <= 1)
}

/// The original opcode, its length, then the compressor: none, snappy,
/// zlib or zstd.
fn mongodb_op_compressed(p: &[u8], originals: &[u32]) -> bool {
    le_u32(p, 16).is_some_and(|original| originals.contains(&original))
        && p.get(24).is_none_or(|&compressor| compressor <= 3)
}

const KAFKA_SASL_HANDSHAKE: u16 = 17;
const KAFKA_API_VERSIONS: u16 = 18;

/// What a client sends first: length, API key, API version, correlation
/// id, then the client id as a 2-byte length (-1 for none) and its bytes.
fn kafka_request(p: &[u8], _: u16) -> Option<Protocol> {
    let length = be_u32(p, 0)?;
    let api_key = be_u16(p, 4)?;
    let api_version = be_u16(p, 6)?;
    let client_id_length = be_u16(p, 12)?;
    let known_api = match api_key {
        KAFKA_API_VERSIONS => api_version <= 4,
        KAFKA_SASL_HANDSHAKE => api_version <= 1,
        _ => false,
    };
    let client_id = match client_id_length {
        u16::MAX => true,
        n => p
            .get(14..14 + usize::from(n))
            .is_some_and(|id| id.iter().all(u8::is_ascii_graphic)),
    };
    ((10..=(1 << 20)).contains(&length) && known_api && client_id).then_some(Protocol::Kafka)
}

const LDAP_START_TLS_OID: &[u8] = b"1.3.6.1.4.1.1466.20037";

/// An LDAPMessage in BER: SEQUENCE, message id INTEGER, then an
/// application-tagged operation.
fn ldap(p: &[u8], _: u16) -> Option<Protocol> {
    let (length, rest) = ber_length(p.strip_prefix(&[0x30])?)?;
    let &[0x02, id_length @ 1..=4, ref rest @ ..] = rest else {
        return None;
    };
    let (&operation, rest) = rest.get(usize::from(id_length)..)?.split_first()?;
    let known = match operation {
        // bindRequest: version 2 or 3 first.
        0x60 => {
            let (_, body) = ber_length(rest)?;
            body.starts_with(&[0x02, 0x01, 0x03]) || body.starts_with(&[0x02, 0x01, 0x02])
        }
        // extendedRequest and extendedResponse: StartTLS names its OID.
        0x77 | 0x78 if find(rest, LDAP_START_TLS_OID).is_some() => {
            return Some(Protocol::StartTls);
        }
        // The other operations of RFC 4511, requests and responses.
        0x42 | 0x4a | 0x50 | 0x61 | 0x63..=0x69 | 0x6b..=0x6f | 0x73 | 0x77..=0x79 => true,
        _ => false,
    };
    ((5..=(1 << 24)).contains(&length) && known).then_some(Protocol::Ldap)
}

/// CONNECT: packet type 1, the remaining length in 1 to 4 bytes of 7 bits,
/// then the protocol name and level: `MQTT` 4 (3.1.1) or 5, `MQIsdp` 3.
fn mqtt_connect(p: &[u8], _: u16) -> Option<Protocol> {
    let rest = p.strip_prefix(&[0x10])?;
    let length_bytes = rest.iter().take(4).position(|&b| b & 0x80 == 0)? + 1;
    let rest = rest.get(length_bytes..)?;
    let known = match rest {
        [0, 4, b'M', b'Q', b'T', b'T', level, ..] => matches!(level, 4 | 5),
        [0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, ..] => true,
        _ => false,
    };
    known.then_some(Protocol::Mqtt)
}

/// The protocol header both sides send: `AMQP`, a protocol id (0 for
/// 0-9-1, 0, 1 or 3 for 1.0) and the version. Id 2 is AMQP 1.0's TLS
/// layer, which the server echoes or the connection closes.
fn amqp_header(p: &[u8], _: u16) -> Option<Protocol> {
    match p.strip_prefix(b"AMQP")?.first()? {
        2 => Some(Protocol::StartTls),
        0 | 1 | 3 => Some(Protocol::Amqp),
        _ => None,
    }
}

/// The server's first frame in 0-9-1: a method frame on channel 0 carrying
/// Connection.Start (class 10, method 10) for version 0-9.
fn amqp_connection_start(p: &[u8], _: u16) -> Option<Protocol> {
    matches!(p, [1, 0, 0, _, _, _, _, 0, 10, 0, 10, 0, 9, ..]).then_some(Protocol::Amqp)
}

fn nats_connect(p: &[u8], _: u16) -> Option<Protocol> {
    p.starts_with(b"CONNECT {").then_some(Protocol::Nats)
}

/// NATS servers send `INFO` first even when TLS follows; the client's
/// ClientHello then tells.
fn nats_info(p: &[u8], _: u16) -> Option<Protocol> {
    p.starts_with(b"INFO {").then_some(Protocol::Nats)
}

/// The first commands of SMTP, FTP and POP3 clients; they are case
/// insensitive.
fn mail_or_ftp_command(p: &[u8], port: u16) -> Option<Protocol> {
    let (word, argument) = command_word(p)?;
    let upper = word.to_ascii_uppercase();
    let ftp_or_pop3 = if POP3_PORTS.contains(&port) {
        Protocol::Pop3
    } else {
        Protocol::Ftp
    };
    match upper.as_slice() {
        b"EHLO" | b"HELO" | b"LHLO" => Some(Protocol::Smtp),
        b"MAIL" if starts_with_ignore_case(argument, b"FROM:") => Some(Protocol::Smtp),
        b"STARTTLS" | b"STLS" => Some(Protocol::StartTls),
        b"CAPA" | b"APOP" => Some(Protocol::Pop3),
        b"FEAT" | b"SYST" | b"OPTS" => Some(Protocol::Ftp),
        b"USER" | b"PASS" => Some(ftp_or_pop3),
        b"AUTH" => {
            // FTP's request for TLS, which servers may refuse: only their
            // `234` answer counts as encrypted.
            let tls = [b"TLS".as_slice(), b"SSL", b"TLS-C", b"TLS-P"];
            let (mechanism, _) = command_word(argument).unwrap_or((argument, &[]));
            if tls.iter().any(|t| mechanism.eq_ignore_ascii_case(t)) {
                Some(Protocol::Ftp)
            } else if is_sasl_mechanism(mechanism) && port != REDIS_PORT {
                Some(if POP3_PORTS.contains(&port) {
                    Protocol::Pop3
                } else {
                    Protocol::Smtp
                })
            } else {
                None
            }
        }
        _ => None,
    }
}

/// A SASL mechanism name (`PLAIN`, `CRAM-MD5`, `XOAUTH2`): upper case,
/// digits, `-` and `_`.
fn is_sasl_mechanism(word: &[u8]) -> bool {
    (1..=20).contains(&word.len())
        && word
            .iter()
            .all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Server greetings of SMTP, FTP, POP3 and IMAP, and FTP's acceptance of
/// `AUTH TLS`.
fn mail_or_ftp_reply(p: &[u8], port: u16) -> Option<Protocol> {
    if p.starts_with(b"* OK") || p.starts_with(b"* PREAUTH") || p.starts_with(b"* BYE") {
        return Some(Protocol::Imap);
    }
    if p.starts_with(b"+OK ") || (p.starts_with(b"+OK\r\n") && POP3_PORTS.contains(&port)) {
        return Some(Protocol::Pop3);
    }
    let text = p.strip_prefix(b"220 ").or_else(|| p.strip_prefix(b"220-"));
    let Some(banner) = text else {
        // RFC 2228: security data exchange may begin.
        let accepted = p.starts_with(b"234 ") && p.iter().all(|&b| b != 0);
        return accepted.then_some(Protocol::StartTls);
    };
    let first_line = find(banner, b"\r\n").and_then(|end| banner.get(..end));
    let first_line = first_line.unwrap_or(banner);
    if contains_ignore_case(first_line, b"SMTP") {
        Some(Protocol::Smtp)
    } else if contains_ignore_case(first_line, b"FTP") {
        Some(Protocol::Ftp)
    } else if SMTP_PORTS.contains(&port) {
        Some(Protocol::Smtp)
    } else if FTP_PORTS.contains(&port) {
        Some(Protocol::Ftp)
    } else {
        None
    }
}

const IMAP_COMMANDS: [&[u8]; 10] = [
    b"CAPABILITY",
    b"LOGIN",
    b"AUTHENTICATE",
    b"ID",
    b"NOOP",
    b"STARTTLS",
    b"LOGOUT",
    b"SELECT",
    b"EXAMINE",
    b"LIST",
];

/// A tagged command: `a001 LOGIN user secret`.
fn imap_command(p: &[u8], _: u16) -> Option<Protocol> {
    let (tag, rest) = split_at_byte(p, b' ')?;
    let tag_ok = (1..=16).contains(&tag.len())
        && tag.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'.');
    let (command, _) = command_word(rest)?;
    if !tag_ok
        || !IMAP_COMMANDS
            .iter()
            .any(|c| command.eq_ignore_ascii_case(c))
    {
        return None;
    }
    Some(if command.eq_ignore_ascii_case(b"STARTTLS") {
        Protocol::StartTls
    } else {
        Protocol::Imap
    })
}

/// The text protocol, whose commands are lower case (HTTP's `GET` is not).
/// Redis takes the names it shares on its own port.
fn memcached_command(p: &[u8], port: u16) -> Option<Protocol> {
    let (word, argument) = command_word(p)?;
    let known = match word {
        b"get" | b"gets" | b"gat" | b"gats" | b"delete" | b"incr" | b"decr" | b"touch"
        | b"stats" | b"version" | b"flush_all" | b"verbosity" | b"mg" | b"ms" | b"md" | b"ma"
        | b"mn" => true,
        // Storage commands: key, flags, expiry, length.
        b"set" | b"add" | b"replace" | b"append" | b"prepend" | b"cas" => {
            let mut fields = argument.split(|&b| b == b' ').skip(1);
            fields
                .next()
                .is_some_and(|flags| !flags.is_empty() && flags.iter().all(u8::is_ascii_digit))
        }
        _ => false,
    };
    match known {
        true if port == REDIS_PORT => Some(Protocol::Redis),
        true => Some(Protocol::Memcached),
        false => None,
    }
}

/// The first word of a text command line, ended by a space or the line
/// end, and what follows the space.
fn command_word(p: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = p.iter().take(17).position(|&b| matches!(b, b' ' | b'\r'))?;
    let (word, rest) = p.split_at_checked(end)?;
    let rest = match rest {
        [b' ', argument @ ..] => argument,
        [b'\r', b'\n', ..] | [b'\r'] => &[],
        _ => return None,
    };
    (!word.is_empty() && word.iter().all(u8::is_ascii_graphic)).then_some((word, rest))
}

/// ASCII digits (at most 10) ended by CRLF, and what follows.
fn number_line(p: &[u8]) -> Option<(u64, &[u8])> {
    let end = p.iter().take(11).position(|b| !b.is_ascii_digit())?;
    let (digits, rest) = p.split_at_checked(end)?;
    let rest = rest.strip_prefix(b"\r\n")?;
    let number = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((number, rest))
}

/// A BER length, short or long form (up to 4 bytes), and the bytes after
/// it.
fn ber_length(p: &[u8]) -> Option<(usize, &[u8])> {
    let (&first, rest) = p.split_first()?;
    if first < 0x80 {
        return Some((usize::from(first), rest));
    }
    let count = usize::from(first & 0x7f);
    if !(1..=4).contains(&count) {
        return None;
    }
    let (bytes, rest) = rest.split_at_checked(count)?;
    let length = bytes
        .iter()
        .fold(0usize, |length, &b| (length << 8) | usize::from(b));
    Some((length, rest))
}

fn split_at_byte(p: &[u8], byte: u8) -> Option<(&[u8], &[u8])> {
    let at = p.iter().position(|&b| b == byte)?;
    let (head, tail) = p.split_at_checked(at)?;
    Some((head, tail.get(1..)?))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle))
}

fn starts_with_ignore_case(p: &[u8], prefix: &[u8]) -> bool {
    p.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

fn be_u16(p: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(p.get(at..at + 2)?.try_into().ok()?))
}

fn be_u32(p: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(at..at + 4)?.try_into().ok()?))
}

fn le_u32(p: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(p.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the agent captures by default (`--payload-bytes`).
    const CAPTURE: usize = 128;

    const ALL: [Protocol; 21] = [
        Protocol::Tls,
        Protocol::Quic,
        Protocol::Ssh,
        Protocol::StartTls,
        Protocol::Http,
        Protocol::Http2Cleartext,
        Protocol::Redis,
        Protocol::Postgres,
        Protocol::Mysql,
        Protocol::MongoDb,
        Protocol::Smtp,
        Protocol::Ftp,
        Protocol::Pop3,
        Protocol::Imap,
        Protocol::Ldap,
        Protocol::Mqtt,
        Protocol::Amqp,
        Protocol::Kafka,
        Protocol::Nats,
        Protocol::Memcached,
        Protocol::Unknown,
    ];

    const CLIENT: bool = true;
    const SERVER: bool = false;

    struct Sample {
        what: &'static str,
        bytes: Vec<u8>,
        from_client: bool,
        port: u16,
        expected: Protocol,
    }

    fn sample(
        what: &'static str,
        bytes: impl Into<Vec<u8>>,
        from_client: bool,
        port: u16,
        expected: Protocol,
    ) -> Sample {
        Sample {
            what,
            bytes: bytes.into(),
            from_client,
            port,
            expected,
        }
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// A TLS 1.3 ClientHello as OpenSSL sends it, cut after the cipher
    /// suites (the capture seldom holds more).
    fn client_hello() -> Vec<u8> {
        cat(&[
            &[0x16, 0x03, 0x01, 0x01, 0x3c],
            &[0x01, 0x00, 0x01, 0x38, 0x03, 0x03],
            &[0x5a; 32],
            &[0x20],
            &[0xa5; 32],
            &[0x00, 0x08, 0x13, 0x02, 0x13, 0x03, 0x13, 0x01, 0x00, 0xff],
            &[0x01, 0x00],
        ])
    }

    fn server_hello() -> Vec<u8> {
        cat(&[
            &[0x16, 0x03, 0x03, 0x00, 0x7a],
            &[0x02, 0x00, 0x00, 0x76, 0x03, 0x03],
            &[0x3c; 32],
            &[0x20],
            &[0xa5; 32],
            &[0x13, 0x02, 0x00],
        ])
    }

    fn postgres_startup() -> Vec<u8> {
        let params = b"user\0app\0database\0orders\0application_name\0psql\0\0";
        let length = u32::try_from(8 + params.len()).unwrap();
        cat(&[&length.to_be_bytes(), &0x0003_0000u32.to_be_bytes(), params])
    }

    fn mysql_packet(sequence: u8, body: &[u8]) -> Vec<u8> {
        let length = u32::try_from(body.len()).unwrap().to_le_bytes();
        cat(&[&length[..3], &[sequence], body])
    }

    fn mysql_greeting(version: &str) -> Vec<u8> {
        mysql_packet(
            0,
            &cat(&[
                &[10],
                version.as_bytes(),
                &[0],
                &[0x0b, 0, 0, 0],                    // connection id
                b"\x1b\x2c\x3d\x4e\x5f\x60\x71\x02", // auth data, part 1
                &[0],
                &[0xff, 0xff, 0xff, 0x02, 0xff, 0xdf], // capabilities, charset, status
                &[0xff, 0x15],                         // capabilities, upper half
                &[0; 10],
                b"\x11\x22\x33\x44\x55\x66\x77\x08\x19\x2a\x3b\x4c\0",
                b"caching_sha2_password\0",
            ]),
        )
    }

    fn mysql_response(capabilities: u32, rest: &[u8]) -> Vec<u8> {
        mysql_packet(
            1,
            &cat(&[
                &capabilities.to_le_bytes(),
                &0x0100_0000u32.to_le_bytes(),
                &[0xff],
                &[0; 23],
                rest,
            ]),
        )
    }

    fn mongodb_message(response_to: u32, opcode: u32, body: &[u8]) -> Vec<u8> {
        let length = u32::try_from(16 + body.len()).unwrap();
        cat(&[
            &length.to_le_bytes(),
            &7u32.to_le_bytes(),
            &response_to.to_le_bytes(),
            &opcode.to_le_bytes(),
            body,
        ])
    }

    /// `{hello: 1, $db: "admin"}`
    fn hello_document() -> Vec<u8> {
        let elements = cat(&[
            b"\x10hello\0",
            &1i32.to_le_bytes(),
            b"\x02$db\0",
            &6i32.to_le_bytes(),
            b"admin\0",
        ]);
        let length = u32::try_from(4 + elements.len() + 1).unwrap();
        cat(&[&length.to_le_bytes(), &elements, &[0]])
    }

    fn ldap_message(operation: u8, body: &[u8]) -> Vec<u8> {
        let op = cat(&[&[operation, u8::try_from(body.len()).unwrap()], body]);
        let message = cat(&[&[0x02, 0x01, 0x01], &op]);
        cat(&[&[0x30, u8::try_from(message.len()).unwrap()], &message])
    }

    fn ldap_bind(dn: &[u8], password: &[u8]) -> Vec<u8> {
        let body = cat(&[
            &[0x02, 0x01, 0x03],
            &[0x04, u8::try_from(dn.len()).unwrap()],
            dn,
            &[0x80, u8::try_from(password.len()).unwrap()],
            password,
        ]);
        ldap_message(0x60, &body)
    }

    fn mqtt_connect(protocol: &[u8], level: u8) -> Vec<u8> {
        let variable = cat(&[
            &[0, u8::try_from(protocol.len()).unwrap()],
            protocol,
            &[level, 0xc2, 0x00, 0x3c], // flags: user name, password, clean session
            &[0, 6],
            b"sensor",
            &[0, 5],
            b"admin",
            &[0, 6],
            b"secret",
        ]);
        cat(&[&[0x10, u8::try_from(variable.len()).unwrap()], &variable])
    }

    fn kafka_api_versions() -> Vec<u8> {
        let body = cat(&[
            &18u16.to_be_bytes(),
            &3u16.to_be_bytes(),
            &1u32.to_be_bytes(),
            &13u16.to_be_bytes(),
            b"adminclient-1",
            &[0x00], // tagged fields
            &[0x12],
            b"apache-kafka-java",
            &[0x06],
            b"3.7.0",
            &[0x00],
        ]);
        cat(&[&u32::try_from(body.len()).unwrap().to_be_bytes(), &body])
    }

    fn samples() -> Vec<Sample> {
        use Protocol::*;
        let mut long_get = b"GET /search?q=".to_vec();
        long_get.extend(std::iter::repeat_n(b'a', 200));
        long_get.extend(b" HTTP/1.1\r\nHost: api\r\n\r\n");
        let amqp_start = cat(&[
            &[1, 0, 0, 0, 0, 1, 0xf4, 0, 10, 0, 10, 0, 9],
            &[0, 0, 1, 0xd0, 0x0c],
            b"capabilities",
        ]);
        vec![
            sample("TLS ClientHello", client_hello(), CLIENT, 443, Tls),
            sample("TLS ClientHello, any port", client_hello(), CLIENT, 5432, Tls),
            sample("TLS ServerHello", server_hello(), SERVER, 443, Tls),
            sample(
                "DTLS 1.2 ClientHello",
                cat(&[
                    &[0x16, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x9c],
                    &[0x01, 0, 0, 0x90, 0, 0, 0, 0, 0, 0, 0, 0x90, 0xfe, 0xfd],
                ]),
                CLIENT,
                4433,
                Tls,
            ),
            sample(
                "QUIC v1 Initial",
                cat(&[&[0xc3, 0, 0, 0, 1, 8], &[0x83; 8], &[0, 0x44, 0xd0]]),
                CLIENT,
                443,
                Quic,
            ),
            sample("SSH client", "SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n", CLIENT, 22, Ssh),
            sample("SSH server", "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n", SERVER, 2222, Ssh),
            sample("HTTP GET", "GET / HTTP/1.1\r\nHost: x\r\n\r\n", CLIENT, 80, Http),
            sample(
                "HTTP POST",
                "POST /api/v1/login HTTP/1.1\r\nHost: api:8080\r\nContent-Type: application/json\r\n",
                CLIENT,
                8080,
                Http,
            ),
            sample("HTTP GET, long target", long_get, CLIENT, 8080, Http),
            sample("HTTP proxy CONNECT", "CONNECT db:5432 HTTP/1.1\r\n\r\n", CLIENT, 3128, Http),
            sample("HTTP on a TLS port", "HEAD /health HTTP/1.0\r\n\r\n", CLIENT, 443, Http),
            sample("HTTP response", "HTTP/1.1 200 OK\r\nServer: nginx\r\n", SERVER, 80, Http),
            sample(
                "HTTP/2 preface",
                "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\x12\x04\0\0\0\0\0",
                CLIENT,
                50051,
                Http2Cleartext,
            ),
            sample("Redis PING", "*1\r\n$4\r\nPING\r\n", CLIENT, 6379, Redis),
            sample("Redis AUTH", "*2\r\n$4\r\nAUTH\r\n$6\r\nsecret\r\n", CLIENT, 7000, Redis),
            sample("Redis inline PING", "PING\r\n", CLIENT, 16379, Redis),
            sample("Redis inline HELLO", "HELLO 3 AUTH default secret\r\n", CLIENT, 16379, Redis),
            sample("Redis inline AUTH", "AUTH secret\r\n", CLIENT, 6379, Redis),
            sample("Redis inline GET", "get session:42\r\n", CLIENT, 6379, Redis),
            sample("Redis PONG", "+PONG\r\n", SERVER, 6379, Redis),
            sample("Redis NOAUTH", "-NOAUTH Authentication required.\r\n", SERVER, 6379, Redis),
            sample("PostgreSQL StartupMessage", postgres_startup(), CLIENT, 5432, Postgres),
            sample(
                "PostgreSQL SSLRequest",
                cat(&[&8u32.to_be_bytes(), &PG_SSL_REQUEST.to_be_bytes()]),
                CLIENT,
                5432,
                Postgres,
            ),
            sample(
                "PostgreSQL GSSENCRequest",
                cat(&[&8u32.to_be_bytes(), &PG_GSSENC_REQUEST.to_be_bytes()]),
                CLIENT,
                5432,
                Postgres,
            ),
            sample(
                "PostgreSQL CancelRequest",
                cat(&[&16u32.to_be_bytes(), &PG_CANCEL_REQUEST.to_be_bytes(), &[9; 8]]),
                CLIENT,
                5432,
                Postgres,
            ),
            sample("PostgreSQL accepts TLS", "S", SERVER, 5432, StartTls),
            sample("PostgreSQL refuses TLS", "N", SERVER, 6432, Postgres),
            sample("one byte elsewhere", "S", SERVER, 8080, Unknown),
            sample("PostgreSQL MD5 challenge", b"R\0\0\0\x0c\0\0\0\x05\x8a\x1b\x2c\x3d", SERVER, 5432, Postgres),
            sample(
                "PostgreSQL SASL challenge",
                "R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0",
                SERVER,
                5432,
                Postgres,
            ),
            sample(
                "PostgreSQL login refused",
                "E\0\0\0\x67SFATAL\0VFATAL\0C28000\0Mno pg_hba.conf entry for host\0\0",
                SERVER,
                15432,
                Postgres,
            ),
            sample("MySQL 8 greeting", mysql_greeting("8.0.36"), SERVER, 3306, Mysql),
            sample("MySQL 5.7 greeting", mysql_greeting("5.7.44-log"), SERVER, 3306, Mysql),
            sample(
                "MariaDB greeting",
                mysql_greeting("5.5.5-10.11.6-MariaDB-1:10.11.6+maria~ubu2204"),
                SERVER,
                3307,
                Mysql,
            ),
            sample(
                "MySQL login",
                mysql_response(0x00af_a68d, b"root\0\x20\x9a\x17caching_sha2_password\0"),
                CLIENT,
                3306,
                Mysql,
            ),
            sample("MySQL SSL request", mysql_response(0x01af_ae8d, &[]), CLIENT, 3306, StartTls),
            sample(
                "MongoDB OP_MSG hello",
                mongodb_message(0, MONGO_OP_MSG, &cat(&[&[0; 4], &[0], &hello_document()])),
                CLIENT,
                27017,
                MongoDb,
            ),
            sample(
                "MongoDB OP_QUERY isMaster",
                mongodb_message(
                    0,
                    MONGO_OP_QUERY,
                    &cat(&[&[0; 4], b"admin.$cmd\0", &[0; 4], &[0xff; 4], &hello_document()]),
                ),
                CLIENT,
                27017,
                MongoDb,
            ),
            sample(
                "MongoDB OP_MSG reply",
                mongodb_message(7, MONGO_OP_MSG, &cat(&[&[0; 4], &[0], &hello_document()])),
                SERVER,
                27017,
                MongoDb,
            ),
            sample("Kafka ApiVersions", kafka_api_versions(), CLIENT, 9092, Kafka),
            sample(
                "LDAP simple bind",
                ldap_bind(b"cn=admin,dc=example,dc=org", b"secret"),
                CLIENT,
                389,
                Ldap,
            ),
            sample("LDAP anonymous bind", ldap_bind(b"", b""), CLIENT, 389, Ldap),
            sample(
                "LDAP bind response",
                ldap_message(0x61, &[0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00]),
                SERVER,
                389,
                Ldap,
            ),
            sample(
                "LDAP StartTLS",
                ldap_message(0x77, &cat(&[&[0x80, 22], LDAP_START_TLS_OID])),
                CLIENT,
                389,
                StartTls,
            ),
            sample("MQTT 3.1.1 CONNECT", mqtt_connect(b"MQTT", 4), CLIENT, 1883, Mqtt),
            sample("MQTT 5 CONNECT", mqtt_connect(b"MQTT", 5), CLIENT, 1883, Mqtt),
            sample("MQTT 3.1 CONNECT", mqtt_connect(b"MQIsdp", 3), CLIENT, 1883, Mqtt),
            sample("AMQP 0-9-1 header", "AMQP\0\0\x09\x01", CLIENT, 5672, Amqp),
            sample("AMQP 1.0 SASL header", "AMQP\x03\x01\0\0", CLIENT, 5672, Amqp),
            sample("AMQP 1.0 TLS header", "AMQP\x02\x01\0\0", CLIENT, 5672, StartTls),
            sample("AMQP Connection.Start", amqp_start, SERVER, 5672, Amqp),
            sample(
                "NATS CONNECT",
                r#"CONNECT {"verbose":false,"user":"app","pass":"secret"}"#.to_owned() + "\r\n",
                CLIENT,
                4222,
                Nats,
            ),
            sample("NATS INFO", r#"INFO {"server_id":"NB","version":"2.10.14"}"#, SERVER, 4222, Nats),
            sample("SMTP EHLO", "EHLO web.example\r\n", CLIENT, 25, Smtp),
            sample("SMTP MAIL", "MAIL FROM:<app@example.org>\r\n", CLIENT, 2525, Smtp),
            sample("SMTP AUTH", "AUTH PLAIN AGFwcABzZWNyZXQ=\r\n", CLIENT, 587, Smtp),
            sample("SMTP STARTTLS", "STARTTLS\r\n", CLIENT, 587, StartTls),
            sample(
                "Postfix banner",
                "220 mail.example.org ESMTP Postfix (Debian/GNU)\r\n",
                SERVER,
                25,
                Smtp,
            ),
            sample("Mailpit banner", "220 mail Mailpit ESMTP Service ready\r\n", SERVER, 1025, Smtp),
            sample("bare 220 on an SMTP port", "220 mx1 ready\r\n", SERVER, 587, Smtp),
            sample("vsftpd banner", "220 (vsFTPd 3.0.5)\r\n", SERVER, 21, Ftp),
            sample("FileZilla banner", "220-FileZilla Server 1.8.0\r\n", SERVER, 21, Ftp),
            sample("Pure-FTPd banner, any port", "220-Welcome to Pure-FTPd [privsep]\r\n", SERVER, 2121, Ftp),
            sample("bare 220 elsewhere", "220 ready\r\n", SERVER, 8025, Unknown),
            sample("FTP USER", "USER anonymous\r\n", CLIENT, 21, Ftp),
            sample("FTP AUTH TLS", "AUTH TLS\r\n", CLIENT, 21, Ftp),
            sample("FTP accepts TLS", "234 Proceed with negotiation.\r\n", SERVER, 21, StartTls),
            sample("FTP FEAT", "FEAT\r\n", CLIENT, 2121, Ftp),
            sample("POP3 banner", "+OK Dovecot ready.\r\n", SERVER, 110, Pop3),
            sample("POP3 USER", "USER bob\r\n", CLIENT, 110, Pop3),
            sample("POP3 CAPA", "CAPA\r\n", CLIENT, 1110, Pop3),
            sample("POP3 STLS", "STLS\r\n", CLIENT, 110, StartTls),
            sample(
                "IMAP banner",
                "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE STARTTLS] Dovecot ready.\r\n",
                SERVER,
                143,
                Imap,
            ),
            sample("IMAP LOGIN", "a001 LOGIN bob secret\r\n", CLIENT, 143, Imap),
            sample("IMAP CAPABILITY", "A1 capability\r\n", CLIENT, 143, Imap),
            sample("IMAP STARTTLS", "a002 STARTTLS\r\n", CLIENT, 143, StartTls),
            sample("memcached get", "get user:42\r\n", CLIENT, 11211, Memcached),
            sample("memcached set", "set user:42 0 300 5\r\nalice\r\n", CLIENT, 11211, Memcached),
            sample("memcached stats", "stats\r\n", CLIENT, 11211, Memcached),
            sample("memcached meta get", "mg user:42 v t\r\n", CLIENT, 11211, Memcached),
            // Negatives.
            sample(
                "TLS 1.3 application data",
                cat(&[&[0x17, 0x03, 0x03, 0x00, 0x45], &[0x9e; 0x45]]),
                CLIENT,
                443,
                Unknown,
            ),
            sample("TLS alert", [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28], CLIENT, 443, Unknown),
            sample("ClientHello from the server", client_hello(), SERVER, 443, Unknown),
            sample("ServerHello from the client", server_hello(), CLIENT, 443, Unknown),
            sample("HTTP request from the server", "GET / HTTP/1.1\r\n\r\n", SERVER, 80, Unknown),
            sample("HTTP verb, other version", "GET / RTSP/1.0\r\n\r\n", CLIENT, 554, Unknown),
            sample("lower-case SET with text", "set the mood\r\n", CLIENT, 11211, Unknown),
            sample(
                "SNMP get",
                cat(&[
                    &[0x30, 0x26, 0x02, 0x01, 0x01, 0x04, 0x06],
                    b"public",
                    &[0xa0, 0x19, 0x02, 0x04, 0x12, 0x34, 0x56, 0x78, 0x02, 0x01, 0x00],
                ]),
                CLIENT,
                161,
                Unknown,
            ),
            sample(
                "DNS query",
                cat(&[&[0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0], b"\x02db\0\0\x01\0\x01"]),
                CLIENT,
                53,
                Unknown,
            ),
            sample("text", "hello there\n", CLIENT, 9000, Unknown),
            sample("binary", [0x00, 0xff, 0x13, 0x37, 0x42, 0x99, 0x07, 0x80], CLIENT, 9000, Unknown),
            sample("empty", [], CLIENT, 443, Unknown),
            sample("empty from the server", [], SERVER, 5432, Unknown),
        ]
    }

    #[test]
    fn classifies_every_sample_as_captured() {
        let mut wrong = Vec::new();
        for s in samples() {
            let captured = &s.bytes[..s.bytes.len().min(CAPTURE)];
            let got = classify(captured, s.from_client, s.port);
            if got != s.expected {
                wrong.push(format!("{}: {got:?}, expected {:?}", s.what, s.expected));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn cleartext_bytes_win_over_a_tls_port() {
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(classify(get, CLIENT, 443), Protocol::Http);
        assert!(tls_expected(443, &[]));
        assert!(!classify(get, CLIENT, 443).is_encrypted());
    }

    /// Samples of both directions of a connection, in the order sent; the
    /// connection is encrypted when one of them is.
    fn connection_encrypted(port: u16, exchange: &[(bool, &[u8])]) -> bool {
        exchange
            .iter()
            .any(|&(from_client, bytes)| classify(bytes, from_client, port).is_encrypted())
    }

    #[test]
    fn a_postgres_server_refusing_tls_leaves_the_connection_in_cleartext() {
        let ssl_request = cat(&[&8u32.to_be_bytes(), &PG_SSL_REQUEST.to_be_bytes()]);
        let startup = postgres_startup();
        let refused: [(bool, &[u8]); 3] =
            [(CLIENT, &ssl_request), (SERVER, b"N"), (CLIENT, &startup)];
        assert!(!connection_encrypted(5432, &refused));
        let hello = client_hello();
        let accepted: [(bool, &[u8]); 3] =
            [(CLIENT, &ssl_request), (SERVER, b"S"), (CLIENT, &hello)];
        assert!(connection_encrypted(5432, &accepted));
    }

    #[test]
    fn greetings_before_starttls_do_not_make_a_connection_cleartext() {
        let smtp: [(bool, &[u8]); 4] = [
            (SERVER, b"220 mx ESMTP Postfix\r\n"),
            (CLIENT, b"EHLO app\r\n"),
            (SERVER, b"250-mx\r\n250-STARTTLS\r\n250 8BITMIME\r\n"),
            (CLIENT, b"STARTTLS\r\n"),
        ];
        assert!(connection_encrypted(587, &smtp));
        let greeting = mysql_greeting("8.0.36");
        let ssl_request = mysql_response(0x01af_ae8d, &[]);
        let mysql: [(bool, &[u8]); 2] = [(SERVER, &greeting), (CLIENT, &ssl_request)];
        assert!(connection_encrypted(3306, &mysql));
        let ftp_refused: [(bool, &[u8]); 4] = [
            (SERVER, b"220 (vsFTPd 3.0.5)\r\n"),
            (CLIENT, b"AUTH TLS\r\n"),
            (SERVER, b"530 Please login with USER and PASS.\r\n"),
            (CLIENT, b"USER app\r\n"),
        ];
        assert!(!connection_encrypted(21, &ftp_refused));
    }

    #[test]
    fn names_match_the_json_form() {
        for protocol in ALL {
            let json = serde_json::to_string(&protocol).unwrap();
            assert_eq!(json, format!("\"{}\"", protocol.name()));
        }
        let names: std::collections::HashSet<_> = ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), ALL.len());
    }

    #[test]
    fn only_handshakes_count_as_encrypted() {
        let encrypted: Vec<_> = ALL.into_iter().filter(|p| p.is_encrypted()).collect();
        assert_eq!(
            encrypted,
            [
                Protocol::Tls,
                Protocol::Quic,
                Protocol::Ssh,
                Protocol::StartTls
            ]
        );
    }

    #[test]
    fn tls_ports_and_extra_ports_expect_tls() {
        for port in [443, 8443, 993, 995, 465, 636, 5671, 8883, 6443, 2376] {
            assert!(tls_expected(port, &[]), "{port}");
        }
        for port in [80, 25, 5432, 6379, 9092, 9093] {
            assert!(!tls_expected(port, &[]), "{port}");
        }
        assert!(tls_expected(9093, &[9093, 10443]));
        assert!(tls_expected(10443, &[9093, 10443]));
    }

    const PORTS: [u16; 9] = [0, 21, 25, 110, 443, 3306, 5432, 6379, 65535];

    fn classify_everywhere(bytes: &[u8]) {
        for port in PORTS {
            for from_client in [CLIENT, SERVER] {
                classify(bytes, from_client, port);
            }
        }
    }

    #[test]
    fn never_panics_on_truncated_samples() {
        for s in samples() {
            for end in 0..=s.bytes.len() {
                classify_everywhere(&s.bytes[..end]);
                classify_everywhere(&s.bytes[end..]);
            }
        }
    }

    #[test]
    fn never_panics_on_noise() {
        // Seeded: reproducible noise.
        let mut rng = fastrand::Rng::with_seed(0x2545_f491_4f6c_dd1d);
        let samples = samples();
        for _ in 0..20_000 {
            let noise_len = rng.usize(..CAPTURE + 33);
            let mut bytes: Vec<u8> = (0..noise_len).map(|_| rng.u8(..)).collect();
            // A real opening followed by noise reaches deeper into the parsers.
            if rng.bool() {
                let s = &samples[rng.usize(..samples.len())];
                let mut head = s.bytes[..rng.usize(..=s.bytes.len())].to_vec();
                head.append(&mut bytes);
                bytes = head;
            }
            classify_everywhere(&bytes);
        }
        // Lengths and counts at their extremes.
        for bytes in [
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x02, 0x04][..],
            &[0x30, 0x80],
            &[0x10, 0xff, 0xff, 0xff, 0xff, 0xff],
            b"*99999999999999999999\r\n$",
            &[0xff, 0xff, 0xff, 0xff, 0, 18, 0, 0, 0, 0, 0, 0, 0x7f, 0xff],
            &[0xff, 0xff, 0xff, 1, 0xff, 0xff, 0xff, 0xff],
        ] {
            classify_everywhere(bytes);
        }
    }
}
