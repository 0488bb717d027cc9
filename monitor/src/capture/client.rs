//! `crossmon capture`: asks a running agent's API for a capture and writes
//! the pcapng it streams. A small blocking HTTP/1.1 client over a TCP
//! stream, with rustls for `https://` (the agent's `--web-config` TLS):
//! one GET, a chunked body, nothing more, so no HTTP client crate.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use base64::Engine as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::CaptureRequest;

/// How to reach the agent.
#[derive(Clone, Debug)]
pub struct ApiClient {
    /// `http://HOST:PORT` or `https://HOST:PORT`.
    pub url: String,
    /// Basic auth, `USER:PASSWORD`.
    pub user: Option<String>,
    /// CA certificate(s) that signed the agent's (PEM), for `https://`.
    pub cacert: Option<PathBuf>,
    /// A client certificate and its key (PEM), when the agent asks for one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Why a capture could not be fetched: each a line for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--url {0}: expected http://HOST:PORT or https://HOST:PORT")]
    Url(String),
    #[error("no crossmon agent answers at {url} ({source}); is `crossmon run` running there? --url points elsewhere")]
    Unreachable { url: String, source: std::io::Error },
    #[error("TLS to {url}: {message}")]
    Tls { url: String, message: String },
    #[error("the agent refused the capture: {0}")]
    Refused(String),
    #[error("the agent's answer is not HTTP: {0}")]
    Protocol(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

struct Url<'a> {
    tls: bool,
    host: &'a str,
    port: u16,
}

fn parse_url(url: &str) -> Result<Url<'_>, ClientError> {
    let bad = || ClientError::Url(url.to_owned());
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(bad());
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') || host.starts_with('[') => {
            (host, port.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (rest, if tls { 443 } else { 80 }),
    };
    if host.is_empty() || rest.contains('/') {
        return Err(bad());
    }
    Ok(Url { tls, host, port })
}

impl ApiClient {
    /// Streams the capture into `out`, flushing after every chunk (so a
    /// reader of a pipe sees packets as they come); returns the bytes written.
    pub fn capture(
        &self,
        request: &CaptureRequest,
        out: &mut dyn Write,
    ) -> Result<u64, ClientError> {
        let url = parse_url(&self.url)?;
        let host = url.host.trim_start_matches('[').trim_end_matches(']');
        let tcp =
            TcpStream::connect((host, url.port)).map_err(|source| ClientError::Unreachable {
                url: self.url.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let _ = tcp.set_write_timeout(Some(Duration::from_secs(10)));
        let mut stream: Box<dyn Stream> = if url.tls {
            Box::new(self.tls(host, tcp)?)
        } else {
            Box::new(tcp)
        };
        let mut head = format!(
            "GET /api/v1/capture?{} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: crossmon/{}\r\nConnection: close\r\n",
            request.to_query(),
            url.host,
            url.port,
            env!("CARGO_PKG_VERSION"),
        );
        if let Some(user) = &self.user {
            let token = base64::engine::general_purpose::STANDARD.encode(user);
            head.push_str(&format!("Authorization: Basic {token}\r\n"));
        }
        head.push_str("\r\n");
        let io = |what: &str| {
            let what = what.to_owned();
            move |source| ClientError::Io { what, source }
        };
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.flush())
            .map_err(|source| self.connection_error(source))?;
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader
            .read_line(&mut status_line)
            .map_err(|source| self.connection_error(source))?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClientError::Protocol(status_line.trim().to_owned()))?;
        let mut chunked = false;
        loop {
            let mut line = String::new();
            reader
                .read_line(&mut line)
                .map_err(io("reading the answer"))?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("transfer-encoding")
                    && value.trim().eq_ignore_ascii_case("chunked")
                {
                    chunked = true;
                }
            }
        }
        if status != 200 {
            let mut body = Vec::new();
            let _ = copy_body(&mut reader, chunked, &mut body, 4096);
            let text = String::from_utf8_lossy(&body);
            let first = text.lines().next().unwrap_or_default().trim();
            let reason = match status {
                401 => "unauthorised: give --user USER:PASSWORD (the agent's --web-config basic_auth_users)".to_owned(),
                _ if first.is_empty() => format!("HTTP {status}"),
                _ => first.to_owned(),
            };
            return Err(ClientError::Refused(reason));
        }
        copy_body(&mut reader, chunked, out, u64::MAX).map_err(io("writing the capture"))
    }

    fn connection_error(&self, source: std::io::Error) -> ClientError {
        // rustls reports a failed handshake through the first read or write.
        if source.get_ref().is_some_and(|e| e.is::<rustls::Error>()) {
            ClientError::Tls {
                url: self.url.clone(),
                message: source.to_string(),
            }
        } else {
            ClientError::Unreachable {
                url: self.url.clone(),
                source,
            }
        }
    }

    fn tls(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, ClientError> {
        let tls_error = |message: String| ClientError::Tls {
            url: self.url.clone(),
            message,
        };
        let mut roots = rustls::RootCertStore::empty();
        let cacert = self.cacert.as_ref().ok_or_else(|| {
            tls_error(
                "give the CA that signed the agent's certificate with --cacert FILE".to_owned(),
            )
        })?;
        for cert in read_certs(cacert).map_err(tls_error)? {
            roots
                .add(cert)
                .map_err(|err| tls_error(format!("{}: {err}", cacert.display())))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|err| tls_error(err.to_string()))?
        .with_root_certificates(roots);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let certs = read_certs(cert).map_err(tls_error)?;
                let key = read_key(key).map_err(tls_error)?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|err| tls_error(err.to_string()))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(tls_error("--cert and --key go together".to_owned())),
        };
        let name = ServerName::try_from(host.to_owned())
            .map_err(|err| tls_error(format!("server name {host}: {err}")))?;
        let connection = rustls::ClientConnection::new(Arc::new(config), name)
            .map_err(|err| tls_error(err.to_string()))?;
        Ok(rustls::StreamOwned::new(connection, tcp))
    }
}

/// A file created at the first write: a refused capture leaves none.
pub struct LazyFile {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl LazyFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path, file: None }
    }

    fn file(&mut self) -> std::io::Result<&mut std::fs::File> {
        if self.file.is_none() {
            let file = std::fs::File::create(&self.path).map_err(|err| {
                std::io::Error::new(err.kind(), format!("{}: {err}", self.path.display()))
            })?;
            self.file = Some(file);
        }
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("the capture file was not opened"))
    }
}

impl Write for LazyFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file()?.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.file {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

fn read_certs(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path).map_err(|err| format!("reading {}: {err}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut text.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("{}: {err}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &PathBuf) -> Result<PrivateKeyDer<'static>, String> {
    let text = std::fs::read(path).map_err(|err| format!("reading {}: {err}", path.display()))?;
    rustls_pemfile::private_key(&mut text.as_slice())
        .map_err(|err| format!("{}: {err}", path.display()))?
        .ok_or_else(|| format!("{}: no PEM private key", path.display()))
}

/// Copies an HTTP body (chunked or up to EOF) to `out`, at most `limit`
/// bytes; returns the bytes copied.
fn copy_body(
    reader: &mut impl BufRead,
    chunked: bool,
    out: &mut dyn Write,
    limit: u64,
) -> std::io::Result<u64> {
    let mut copied = 0u64;
    if !chunked {
        let mut buf = [0u8; 16 * 1024];
        while copied < limit {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                // TLS peers that close without close_notify: the body ended.
                Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(err) => return Err(err),
            };
            out.write_all(&buf[..n])?;
            out.flush()?;
            copied += n as u64;
        }
        return Ok(copied);
    }
    loop {
        let mut size_line = String::new();
        if reader.read_line(&mut size_line)? == 0 {
            // The agent stopped mid-stream: what came is a valid file.
            return Ok(copied);
        }
        let size_text = size_line.trim().split(';').next().unwrap_or_default();
        let size = u64::from_str_radix(size_text, 16).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad chunk size {size_text:?}"),
            )
        })?;
        if size == 0 {
            return Ok(copied);
        }
        let mut chunk = reader.by_ref().take(size);
        let n = std::io::copy(&mut chunk, out)?;
        copied += n;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
        out.flush()?;
        if copied >= limit {
            return Ok(copied);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_with_default_ports() {
        for (url, tls, host, port) in [
            ("http://127.0.0.1:9810", false, "127.0.0.1", 9810),
            ("https://agent.example:8443/", true, "agent.example", 8443),
            ("https://[::1]:9810", true, "[::1]", 9810),
            ("http://agent", false, "agent", 80),
        ] {
            let parsed = parse_url(url).unwrap();
            assert_eq!(
                (parsed.tls, parsed.host, parsed.port),
                (tls, host, port),
                "{url}"
            );
        }
        for bad in [
            "127.0.0.1:9810",
            "ftp://x",
            "http://h:port",
            "http://h:1/path",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_chunked_body_is_decoded() {
        let body = b"3\r\nabc\r\n5;ext=1\r\ndefgh\r\n0\r\n\r\n";
        let mut out = Vec::new();
        let n = copy_body(&mut &body[..], true, &mut out, u64::MAX).unwrap();
        assert_eq!((n, out.as_slice()), (8, &b"abcdefgh"[..]));
    }
}
