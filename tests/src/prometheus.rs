//! A real Prometheus server scraping one target, and promtool: what an
//! operator would run against crossmon, so the tests see what they see.

use std::{
    collections::BTreeMap,
    fs::File,
    io::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{
    agent::{free_port, get},
    scratch::Scratch,
};

pub const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";
/// Like `agent::wait_until`, which cannot say what it last saw.
const PATIENCE: Duration = Duration::from_secs(20);

/// Fails the test with one line saying why unless Prometheus and promtool
/// are installed (`cargo xtask setup` installs them).
pub fn prometheus_installed() {
    assert!(
        Path::new(PROMETHEUS).exists() && Path::new(PROMTOOL).exists(),
        "needs {PROMETHEUS} and {PROMTOOL}: run `cargo xtask setup`"
    );
}

/// The one target a [`Prometheus`] scrapes, and how.
#[derive(Clone, Debug)]
pub struct Scrape {
    pub target: SocketAddr,
    /// Also the scrape timeout and the rule evaluation interval.
    pub interval: Duration,
    pub job: String,
    pub https: Option<Tls>,
    pub basic_auth: Option<(String, String)>,
    pub rule_files: Vec<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct Tls {
    pub ca_file: PathBuf,
    /// The name the certificate must carry, when not the target's address.
    pub server_name: Option<String>,
}

impl Scrape {
    /// Plain HTTP every second, as job `crossmon`.
    pub fn new(target: SocketAddr) -> Self {
        Scrape {
            target,
            interval: Duration::from_secs(1),
            job: "crossmon".to_owned(),
            https: None,
            basic_auth: None,
            rule_files: Vec::new(),
        }
    }

    /// The configuration file. YAML is a superset of JSON, and JSON quoting
    /// leaves no path, password or name to escape by hand.
    fn config(&self) -> Value {
        let interval = format!("{}ms", self.interval.as_millis());
        let mut job = json!({
            "job_name": self.job,
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "static_configs": [{ "targets": [self.target.to_string()] }],
        });
        if let Some(tls) = &self.https {
            job["scheme"] = json!("https");
            job["tls_config"] = json!({ "ca_file": tls.ca_file });
            if let Some(name) = &tls.server_name {
                job["tls_config"]["server_name"] = json!(name);
            }
        }
        if let Some((username, password)) = &self.basic_auth {
            job["basic_auth"] = json!({ "username": username, "password": password });
        }
        json!({
            "global": { "scrape_interval": interval, "evaluation_interval": interval },
            "rule_files": self.rule_files,
            "scrape_configs": [job],
        })
    }
}

/// One instant-query result: a vector element, or a scalar without labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A Prometheus server in a directory of its own; both go on drop. Its
/// HTTP API is its [`PrometheusApi`].
pub struct Prometheus {
    child: Child,
    /// Configuration, data and log; removed after the process is gone.
    dir: Scratch,
    api: PrometheusApi,
}

/// The HTTP API of a Prometheus server, wherever it runs.
pub struct PrometheusApi {
    pub addr: SocketAddr,
    /// How long a wait for a target or a value lasts.
    patience: Duration,
}

impl std::ops::Deref for Prometheus {
    type Target = PrometheusApi;

    fn deref(&self) -> &PrometheusApi {
        &self.api
    }
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port and returns once it is
    /// ready; panics with its log if it exits first.
    pub fn start(scrape: &Scrape) -> Prometheus {
        let dir = Scratch::new("prometheus");
        let config = dir.write("prometheus.yml", &scrape.config().to_string());
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            // A file, not a pipe: nobody reads the log until the end, and a
            // full pipe would block Prometheus.
            .stderr(File::create(dir.path("prometheus.log")).expect("Prometheus log"))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {PROMETHEUS} (`cargo xtask setup`): {e}"));
        let mut prometheus = Prometheus {
            child,
            dir,
            api: PrometheusApi::at(addr, PATIENCE),
        };
        let deadline = Instant::now() + PATIENCE;
        while get(addr, "/-/ready").is_none_or(|(status, _)| status != 200) {
            if let Some(status) = prometheus.child.try_wait().expect("wait") {
                panic!(
                    "Prometheus exited ({status}): {}",
                    std::fs::read_to_string(prometheus.dir.path("prometheus.log"))
                        .unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "Prometheus was not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        prometheus
    }
}

impl PrometheusApi {
    /// The server at `addr`, waited for up to `patience` for a target or
    /// a value (a few of its scrape intervals).
    pub fn at(addr: SocketAddr, patience: Duration) -> Self {
        Self { addr, patience }
    }

    /// `(health, last error)` of the target: `up`, `down`, or `unknown`
    /// before the first scrape.
    pub fn target_health(&self) -> (String, String) {
        let targets = self
            .api("/api/v1/targets")
            .unwrap_or_else(|error| panic!("targets: {error}"));
        // Prometheus lists no target at all until its scrape manager's first
        // reload, about 5 s after the start.
        let target = &targets["activeTargets"][0];
        let text = |field: &str| target[field].as_str().map(str::to_owned);
        (
            text("health").unwrap_or_else(|| "unknown".to_owned()),
            text("lastError").unwrap_or_default(),
        )
    }

    /// Takes some 5 s after [`Prometheus::start`]: see `target_health`.
    pub fn wait_for_target_up(&self) {
        poll(self.patience, || match self.target_health() {
            (health, _) if health == "up" => Ok(()),
            (health, error) => Err(format!("target {health}: {error}")),
        })
        .unwrap_or_else(|last| panic!("timed out waiting for the target: {last}"));
    }

    /// An instant query; panics with Prometheus' message when it refuses it.
    pub fn query(&self, promql: &str) -> Vec<Sample> {
        self.try_query(promql)
            .unwrap_or_else(|error| panic!("{promql}: {error}"))
    }

    /// An instant query, or Prometheus' message when it refuses it: for a
    /// test that reports every refused expression at once.
    pub fn try_query(&self, promql: &str) -> Result<Vec<Sample>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", percent_encode(promql)))?;
        let result = &data["result"];
        match data["resultType"].as_str() {
            Some("vector") => Ok(result
                .as_array()
                .expect("vector result")
                .iter()
                .map(|element| Sample {
                    labels: element["metric"]
                        .as_object()
                        .expect("labels")
                        .iter()
                        .map(|(name, value)| {
                            (name.clone(), value.as_str().unwrap_or_default().to_owned())
                        })
                        .collect(),
                    value: sample_value(&element["value"]),
                })
                .collect()),
            Some("scalar") => Ok(vec![Sample {
                labels: BTreeMap::new(),
                value: sample_value(result),
            }]),
            other => Err(format!(
                "a {other:?} result, not an instant vector or scalar"
            )),
        }
    }

    /// Waits until `promql` yields exactly one sample, of value `expected`.
    pub fn wait_for_value(&self, promql: &str, expected: f64) {
        poll(self.patience, || match self.query(promql).as_slice() {
            [sample] if sample.value == expected => Ok(()),
            other => Err(format!("{other:?}")),
        })
        .unwrap_or_else(|last| panic!("timed out waiting for {promql} = {expected}: {last}"));
    }

    /// The `data` of an API answer, or Prometheus' error.
    fn api(&self, path: &str) -> Result<Value, String> {
        let (status, body) = get(self.addr, path).ok_or_else(|| format!("GET {path} failed"))?;
        let answer: Value = serde_json::from_str(&body)
            .map_err(|e| format!("GET {path}: {status}, not JSON ({e}): {body}"))?;
        match answer["status"].as_str() {
            Some("success") => Ok(answer["data"].clone()),
            _ => Err(format!("{status}: {}", answer["error"])),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Retries `attempt` until it succeeds or time is up; then its last error.
fn poll(patience: Duration, mut attempt: impl FnMut() -> Result<(), String>) -> Result<(), String> {
    let deadline = Instant::now() + patience;
    loop {
        let last = match attempt() {
            Ok(()) => return Ok(()),
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `[time, "value"]`: values are strings, as they may be `NaN` or `+Inf`.
fn sample_value(pair: &Value) -> f64 {
    pair[1]
        .as_str()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("sample value in {pair}"))
}

/// Everything but RFC 3986's unreserved characters, as `%XX` of its bytes.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// `promtool check metrics` on an exposition. It exits 1 on a parse error
/// and 3 on lint problems (missing HELP, a counter without `_total`), and
/// prints nothing when content, so any output counts as a complaint.
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {PROMTOOL} (`cargo xtask setup`): {e}"));
    // Written from a thread: promtool may answer before reading it all, and
    // a full stdout pipe would then deadlock a writer that waits.
    let mut stdin = child.stdin.take().expect("promtool stdin");
    let text = text.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let output = child.wait_with_output().expect("promtool check metrics");
    // promtool stops reading at the first parse error; its verdict is
    // what counts, not the broken pipe.
    let _ = writer.join().expect("writing to promtool");
    let complaints = complaints(&output);
    if output.status.success() && complaints.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {complaints}", output.status))
    }
}

/// `promtool check rules` with every lint fatal: syntax, expressions,
/// duplicate rules.
pub fn promtool_check_rules(path: &Path) -> Result<(), String> {
    promtool(&["check", "rules", "--lint=all", "--lint-fatal"], path)
}

/// `promtool test rules`: the rule unit tests in the file at `path`.
pub fn promtool_test_rules(path: &Path) -> Result<(), String> {
    promtool(&["test", "rules"], path)
}

fn promtool(args: &[&str], path: &Path) -> Result<(), String> {
    let output = Command::new(PROMTOOL)
        .args(args)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("starting {PROMTOOL} (`cargo xtask setup`): {e}"));
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", output.status, complaints(&output)))
    }
}

fn complaints(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}
