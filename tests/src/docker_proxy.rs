//! A unix socket between crossmon and the Docker engine that records every
//! request crossmon sends: the proof that it only reads.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::{UnixListener, UnixStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

/// A request as the engine received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
}

pub struct DockerProxy {
    pub socket: PathBuf,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl DockerProxy {
    /// Listens at `socket`, forwarding to the engine at `engine`.
    pub fn start(socket: &Path, engine: &Path) -> anyhow::Result<Self> {
        let listener = UnixListener::bind(socket)?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (engine, seen) = (engine.to_owned(), requests.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (engine, seen) = (engine.clone(), seen.clone());
                std::thread::spawn(move || {
                    if let Ok(server) = UnixStream::connect(&engine) {
                        relay(client, server, &seen);
                    }
                });
            }
        });
        Ok(Self {
            socket: socket.to_owned(),
            requests,
        })
    }

    /// `unix://...`, for `--docker-host`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("requests").clone()
    }
}

/// Answers go back byte for byte; requests are parsed one by one so each
/// is recorded, bodies forwarded after their head.
fn relay(client: UnixStream, mut server: UnixStream, seen: &Mutex<Vec<Request>>) {
    let (Ok(mut answers_to), Ok(mut answers_from)) = (client.try_clone(), server.try_clone())
    else {
        return;
    };
    std::thread::spawn(move || std::io::copy(&mut answers_from, &mut answers_to));
    let mut requests = BufReader::new(client);
    while let Some((request, head, body_len)) = read_head(&mut requests) {
        seen.lock().expect("requests").push(request);
        // A chunked body (crossmon sends none) is recorded, not relayed.
        let Some(body_len) = body_len else {
            return;
        };
        let mut body = vec![0; body_len];
        if server.write_all(&head).is_err()
            || requests.read_exact(&mut body).is_err()
            || server.write_all(&body).is_err()
        {
            return;
        }
    }
}

/// One request head: what it asks, its bytes, and its body's length
/// (`None` for a chunked body, recorded as such in the method).
fn read_head(stream: &mut BufReader<UnixStream>) -> Option<(Request, Vec<u8>, Option<usize>)> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read_until(b'\n', &mut head).ok()? == 0 {
            return None;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    parsed.parse(&head).ok()?;
    let header = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let body_len = header("content-length").and_then(|v| v.trim().parse().ok());
    let mut request = Request {
        method: parsed.method?.to_owned(),
        path: parsed.path?.to_owned(),
    };
    if chunked {
        request.method.push_str(" (chunked body)");
        return Some((request, head, None));
    }
    Some((request, head, Some(body_len.unwrap_or(0))))
}
