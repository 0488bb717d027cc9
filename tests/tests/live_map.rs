//! The live map end to end: real containers talk and one scans, the real
//! agent serves `/` and `/api/v1/graph`, headless Chromium draws the page,
//! and its DOM shows the nodes, the client -> server edge, the alert marks
//! and hostile compose labels as text only; the page keeps its last graph
//! and shows the error when the API fails. Needs root, Docker and Debian's
//! `chromium`: without them it fails, saying which.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use integration_tests::{
    agent::{get_json, wait_within, Agent},
    docker::{self, Container, DockerNetwork},
    scratch::Scratch,
};

const HOSTILE_PROJECT: &str = "<img src=x onerror=alert(1)>";
const HOSTILE_SERVICE: &str = "</script><script>alert(2)</script>";

/// Fails at once, in one line, when something the test needs is missing:
/// a test that passes without running proves nothing.
fn preconditions() {
    // Root, then a Docker engine and the test image.
    docker::docker_ready();
    let chromium = Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        chromium.is_ok_and(|s| s.success()),
        "needs Debian's chromium package (`cargo xtask setup` installs it)"
    );
}

/// What headless Chromium made of `url` after `budget_ms` of virtual time:
/// the DOM (`--dump-dom`) or, with `screenshot`, a PNG written there.
fn chromium(url: &str, budget_ms: u32, screenshot: Option<&Path>) -> String {
    let profile = Scratch::new("chromium");
    let mut command = Command::new("chromium");
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--hide-scrollbars",
        &format!("--virtual-time-budget={budget_ms}"),
        &format!("--user-data-dir={}", profile.dir().display()),
    ]);
    match screenshot {
        Some(path) => command.args([
            &format!("--screenshot={}", path.display()),
            "--window-size=1400,900",
        ]),
        None => command.arg("--dump-dom"),
    };
    let output = command
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("running chromium");
    assert!(
        output.status.success(),
        "chromium {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The start tags named `tag` in a serialized DOM, as their attributes
/// (entities decoded).
fn tags(dom: &str, tag: &str) -> Vec<BTreeMap<String, String>> {
    let open = format!("<{tag} ");
    let mut found = Vec::new();
    let mut rest = dom;
    while let Some(at) = rest.find(&open) {
        rest = &rest[at + open.len()..];
        let end = rest.find('>').unwrap_or(rest.len());
        found.push(attributes(&rest[..end]));
    }
    found
}

fn attributes(text: &str) -> BTreeMap<String, String> {
    let mut attributes = BTreeMap::new();
    let mut rest = text.trim();
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim().to_owned();
        let value_start = eq + 2;
        let value_end = rest[value_start..]
            .find('"')
            .map_or(rest.len(), |n| value_start + n);
        attributes.insert(name, unescape(&rest[value_start..value_end]));
        rest = rest.get(value_end + 1..).unwrap_or_default().trim();
    }
    attributes
}

fn unescape(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

fn body_state(dom: &str) -> Option<String> {
    tags(dom, "body")
        .into_iter()
        .next()
        .and_then(|body| body.get("data-state").cloned())
}

/// A stand-in for the agent that serves the real page and the agent's
/// first graph, then fails every later graph request with `FAILURE`.
const FAILURE: &str = "injected failure for the test";

fn failing_after_first_graph(agent: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let addr = listener.local_addr().expect("address");
    let graphs = AtomicUsize::new(0);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let _ = answer(stream, agent, &graphs);
        }
    });
    addr
}

fn answer(mut stream: TcpStream, agent: SocketAddr, graphs: &AtomicUsize) -> std::io::Result<()> {
    let mut request_line = String::new();
    BufReader::new(stream.try_clone()?).read_line(&mut request_line)?;
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let (status, content_type, body) =
        if path.starts_with("/api/v1/graph") && graphs.fetch_add(1, Ordering::SeqCst) > 0 {
            (
                "500 Internal Server Error",
                "text/plain".to_owned(),
                FAILURE.as_bytes().to_vec(),
            )
        } else {
            let (head, body) = raw_get(agent, &path);
            let content_type = header(&head, "content-type").unwrap_or_default();
            ("200 OK", content_type, body.into_bytes())
        };
    write!(
        stream,
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body)
}

/// GET `path`: the response head and body.
fn raw_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: crossmon\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head");
    (head.to_owned(), body.to_owned())
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

fn screenshot_path() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/live-map.png"
    ))
}

#[test]
fn the_live_map_draws_who_talks_to_whom_with_alerts_and_names_as_text() {
    preconditions();
    let net = DockerNetwork::create("map", &[]).expect("network");
    let server = net.run("server");
    let client = net.run("client");
    let scanner = net.run("scanner");
    let target = net.run("target");
    let hostile = Container::run(
        "hostile",
        &[
            "--network",
            &net.name,
            "--label",
            &format!("com.docker.compose.project={HOSTILE_PROJECT}"),
            "--label",
            &format!("com.docker.compose.service={HOSTILE_SERVICE}"),
        ],
    )
    .expect("the container with hostile labels");
    let agent = Agent::start(&[]);
    let all = [&server, &client, &scanner, &target, &hostile];
    agent.wait_attached(&all.map(|c| c.name.as_str()));

    // The client fetches a file from the server's httpd, again and again.
    let server_ip = server.ip(&net.name).expect("ip");
    server
        .exec(&["httpd", "-p", "8080", "-h", "/"])
        .expect("httpd in the server");
    docker::docker(&[
        "exec",
        "-d",
        &client.name,
        "sh",
        "-c",
        &format!(
            "while true; do wget -q -O /dev/null http://{server_ip}:8080/etc/hostname; sleep 0.3; done"
        ),
    ])
    .expect("the client's loop");
    // The scanner tries 30 closed ports of the target: a port_scan.
    scanner.connect_refused(&target.ip(&net.name).expect("ip"), 30_000..30_030);
    agent.wait_for_alert("port_scan", |a| {
        a["source"]["name"] == scanner.name.as_str()
    });

    let id = |c: &Container| format!("container:{}", &c.id().expect("id")[..12]);
    let (client_id, server_id, scanner_id, target_id, hostile_id) = (
        id(&client),
        id(&server),
        id(&scanner),
        id(&target),
        id(&hostile),
    );

    // The API first: the page draws what it says.
    let graph = get_json(agent.addr, "/api/v1/graph?window=60");
    assert_eq!(graph["window_seconds"], 60, "{graph}");
    let (head, _) = raw_get(agent.addr, "/api/v1/graph?window=0");
    assert!(
        head.starts_with("HTTP/1.0 400") || head.starts_with("HTTP/1.1 400"),
        "{head}"
    );

    // The page and its files: embedded, typed, under a strict policy.
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/app.css", "text/css; charset=utf-8"),
    ] {
        let (head, body) = raw_get(agent.addr, path);
        assert!(head.contains(" 200 "), "GET {path}: {head}");
        assert_eq!(header(&head, "content-type").as_deref(), Some(content_type));
        assert_eq!(
            header(&head, "x-content-type-options").as_deref(),
            Some("nosniff")
        );
        let policy = header(&head, "content-security-policy").unwrap_or_default();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "img-src 'self'",
        ] {
            assert!(policy.contains(directive), "{path}: {policy}");
        }
        // The SVG namespace is a name, not a place anything is fetched from.
        let body = body.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !body.contains("http://") && !body.contains("https://") && !body.contains("//cdn"),
            "{path} fetches nothing from elsewhere"
        );
    }

    // The page in a real browser, until it drew the graph we expect.
    let url = format!("http://{}/", agent.addr);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut dom;
    loop {
        dom = chromium(&url, 5_000, None);
        let nodes = tags(&dom, "g");
        let has = |id: &str| {
            nodes
                .iter()
                .any(|g| g.get("data-id").map(String::as_str) == Some(id))
        };
        let edge = nodes.iter().any(|g| {
            g.get("data-source") == Some(&client_id)
                && g.get("data-target") == Some(&server_id)
                && g.get("data-outcome").map(String::as_str) == Some("established")
        });
        let alerted = nodes.iter().any(|g| {
            g.get("data-id") == Some(&scanner_id)
                && g.get("data-alerts").and_then(|n| n.parse::<u64>().ok()) > Some(0)
        });
        if body_state(&dom).as_deref() == Some("ready")
            && [&client_id, &server_id, &scanner_id, &target_id, &hostile_id]
                .iter()
                .all(|id| has(id))
            && edge
            && alerted
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed the expected graph; last DOM:\n{dom}\nAPI: {}",
            get_json(agent.addr, "/api/v1/graph?window=300")
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    let groups = tags(&dom, "g");
    let node = |id: &str| {
        groups
            .iter()
            .find(|g| g.get("data-id").map(String::as_str) == Some(id))
            .unwrap_or_else(|| panic!("no node {id}"))
    };
    let alerts = |attrs: &BTreeMap<String, String>| -> u64 {
        attrs
            .get("data-alerts")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    for (c, node_id) in [
        (&client, &client_id),
        (&server, &server_id),
        (&scanner, &scanner_id),
    ] {
        assert_eq!(node(node_id).get("data-name"), Some(&c.name));
        assert_eq!(
            node(node_id).get("data-kind").map(String::as_str),
            Some("container")
        );
    }
    let web = groups
        .iter()
        .find(|g| {
            g.get("data-source") == Some(&client_id) && g.get("data-target") == Some(&server_id)
        })
        .expect("the client -> server edge");
    let web_bytes: u64 = web["data-bytes"].parse().expect("bytes");
    assert!(web_bytes > 0, "{web:?}");
    assert_eq!(web["data-outcome"], "established");
    assert_eq!(alerts(web), 0, "no alert between client and server");
    assert!(alerts(node(&scanner_id)) > 0, "the scanner is marked");
    assert!(alerts(node(&target_id)) > 0, "the scanned target is marked");
    assert_eq!(alerts(node(&client_id)), 0, "the client is not");
    let scan = groups
        .iter()
        .find(|g| {
            g.get("data-source") == Some(&scanner_id) && g.get("data-target") == Some(&target_id)
        })
        .expect("the scanner -> target edge");
    assert_eq!(scan["data-outcome"], "refused");
    assert!(alerts(scan) > 0);

    // Hostile labels: present as text, never as markup.
    let escaped = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    assert!(
        dom.contains(&escaped(HOSTILE_PROJECT)),
        "the project label shows as text"
    );
    assert!(
        dom.contains(&escaped(HOSTILE_SERVICE)),
        "the service label shows as text"
    );
    assert!(!dom.contains("<img"), "no element came from a label");
    assert_eq!(
        dom.matches("<script").count(),
        1,
        "only the page's own script"
    );
    assert!(
        !dom.contains("alert(2)</script>"),
        "no script came from a label"
    );
    // No payload bytes: the flows listed are counts and names.
    assert!(
        !dom.contains("/etc/hostname"),
        "no request line on the page"
    );

    // Encryption: the cleartext detector's verdict on the HTTP requests
    // (settled a few seconds after each connection) reaches the edge.
    let edge_of = |graph: &serde_json::Value| {
        graph["edges"]
            .as_array()
            .and_then(|edges| {
                edges
                    .iter()
                    .find(|e| {
                        e["source"] == client_id.as_str() && e["target"] == server_id.as_str()
                    })
                    .cloned()
            })
            .unwrap_or_default()
    };
    wait_within(
        "the client -> server edge judged cleartext HTTP",
        Duration::from_secs(30),
        || {
            let edge = edge_of(&get_json(agent.addr, "/api/v1/graph?window=300"));
            edge["cleartext"] == true
                && edge["app_protocols"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p == "http"))
        },
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !tags(&chromium(&url, 3_000, None), "g").iter().any(|g| {
        g.get("data-source") == Some(&client_id)
            && g.get("data-target") == Some(&server_id)
            && g.get("data-cleartext").map(String::as_str) == Some("true")
    }) {
        assert!(
            Instant::now() < deadline,
            "the page never marked the client -> server edge cleartext"
        );
    }

    // The picture, with the scanner's details open.
    let screenshot = screenshot_path();
    let _ = std::fs::remove_file(&screenshot);
    chromium(
        &format!("{url}#select={scanner_id}"),
        5_000,
        Some(&screenshot),
    );
    let size = std::fs::metadata(&screenshot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot {} has {size} bytes",
        screenshot.display()
    );
    println!("live map screenshot: {}", screenshot.display());

    // Fail-safe: once the API fails, the page says why and keeps the graph.
    let failing = failing_after_first_graph(agent.addr);
    let dom = chromium(&format!("http://{failing}/"), 7_000, None);
    assert_eq!(body_state(&dom).as_deref(), Some("ready"), "{dom}");
    assert!(
        tags(&dom, "body")[0]
            .get("data-error")
            .is_some_and(|e| e.contains(FAILURE)),
        "the error is on the page: {dom}"
    );
    assert!(dom.contains(FAILURE), "and shown as text");
    assert!(
        tags(&dom, "g")
            .iter()
            .any(|g| g.get("data-id") == Some(&client_id)),
        "the last graph stays drawn"
    );
}
