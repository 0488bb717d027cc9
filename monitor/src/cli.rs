//! Command-line interface. Every setting has an embedded default: `crossmon
//! run` needs no flag and no file.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use monitor_common::MAX_CAPTURE;

use crate::{
    agent::{AgentConfig, LearnConfig},
    capture::{client::ApiClient, on_alert::OnAlertConfig, CaptureRequest},
    datapath::{AttachMode, DatapathConfig},
    detect::config::DetectConfig,
    flow_log::FlowLogConfig,
    metrics::MetricsConfig,
    policy::{Policy, PolicyConfig},
    web_config::WebConfig,
};

#[derive(Debug, Parser)]
#[command(
    name = "crossmon",
    version,
    about = "eBPF monitor of the traffic between the containers of a Docker host"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to every container veth on a Linux bridge and serve the API.
    Run(Box<RunArgs>),
    /// Check the kernel, privileges and the Docker engine, one line each;
    /// exit status 0 only when all is well.
    Doctor {
        /// The Docker engine (default: `$DOCKER_HOST`, else the local socket).
        #[arg(long, value_parser = parse_docker_host)]
        docker_host: Option<String>,
    },
    /// Least-privilege flow policies: learn one, check one.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Capture a container's packets through a running agent's API and
    /// write them as pcapng; exit status 2 when the capture cannot be had.
    Capture(Box<CaptureArgs>),
}

#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// The container (name or id prefix) whose veths are captured.
    #[arg(long)]
    pub container: String,
    /// Only packets to or from this container (name) or IP address.
    #[arg(long, value_name = "NAME|IP")]
    pub peer: Option<String>,
    /// Only packets with this source or destination port.
    #[arg(long)]
    pub port: Option<String>,
    /// Only packets of this protocol: tcp, udp, icmp, icmpv6 or a number.
    #[arg(long)]
    pub protocol: Option<String>,
    /// Stop after this long, e.g. `10s` (default: when interrupted).
    #[arg(long)]
    pub duration: Option<String>,
    /// Stop after this many packets.
    #[arg(long)]
    pub count: Option<String>,
    /// Bytes kept of each packet (1 to 1600).
    #[arg(long, default_value_t = crate::capture::DEFAULT_SNAPLEN)]
    pub snaplen: u32,
    /// Where to write the pcapng file; `-` for standard output
    /// (e.g. `| wireshark -k -i -`).
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub write: PathBuf,
    /// The agent's API.
    #[arg(long, default_value_t = format!("http://{}", AgentConfig::DEFAULT_LISTEN), env = "CROSSMON_URL")]
    pub url: String,
    /// Basic auth of the agent's --web-config, `USER:PASSWORD`.
    #[arg(long, env = "CROSSMON_API_USER", value_name = "USER:PASSWORD")]
    pub user: Option<String>,
    /// CA certificate (PEM) that signed the agent's TLS certificate.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM), when the agent asks for one.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

impl CaptureArgs {
    /// The request and the client, checked before anything is sent.
    pub fn request(&self) -> Result<(CaptureRequest, ApiClient), String> {
        let mut request = CaptureRequest::default();
        request.set("container", &self.container)?;
        request.set("snaplen", &self.snaplen.to_string())?;
        for (key, value) in [
            ("peer", &self.peer),
            ("port", &self.port),
            ("protocol", &self.protocol),
            ("duration", &self.duration),
            ("count", &self.count),
        ] {
            if let Some(value) = value {
                request.set(key, value).map_err(|err| format!("--{err}"))?;
            }
        }
        request.check().map_err(|err| format!("--{err}"))?;
        let client = ApiClient {
            url: self.url.clone(),
            user: self.user.clone(),
            cacert: self.cacert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        };
        Ok((request, client))
    }
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Watch the host's containers for a while (no agent needed) and write
    /// a policy allowing what they did.
    Learn {
        /// How long to watch, e.g. `10m`, `1h`.
        #[arg(long, value_parser = parse_duration)]
        duration: Duration,
        /// Where to write the policy (YAML).
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
        /// The Docker engine (default: `$DOCKER_HOST`, else the local socket).
        #[arg(long, value_parser = parse_docker_host)]
        docker_host: Option<String>,
    },
    /// Validate a policy file and print what it would allow and deny
    /// between the containers running now; exit status 2 when invalid.
    Check {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The Docker engine (default: `$DOCKER_HOST`, else the local socket).
        #[arg(long, value_parser = parse_docker_host)]
        docker_host: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address of the HTTP API (`/api/v1/flows`, `/healthz`).
    #[arg(long, default_value_t = AgentConfig::DEFAULT_LISTEN, env = "CROSSMON_LISTEN")]
    pub listen: SocketAddr,

    /// TLS and basic auth for the HTTP endpoint, in the Prometheus
    /// exporter-toolkit format (`tls_server_config`, `basic_auth_users`).
    #[arg(long, value_name = "FILE")]
    pub web_config: Option<PathBuf>,

    /// Do not talk to the Docker engine: attach to every veth on a bridge,
    /// and flows carry addresses only.
    #[arg(long, conflicts_with = "docker_host")]
    pub no_docker: bool,

    /// The Docker engine: `unix:///path/docker.sock` or `tcp://host:port`
    /// (default: `$DOCKER_HOST`, else the local socket).
    #[arg(long, value_parser = parse_docker_host)]
    pub docker_host: Option<String>,

    /// The engine's `--exec-root`, where its overlay networks' sandbox
    /// namespaces are (`netns/1-<network id>`): their containers' veths
    /// are watched there (needs CAP_SYS_ADMIN, to enter them).
    #[arg(long, value_name = "DIR", default_value = AgentConfig::DEFAULT_DOCKER_EXEC_ROOT, env = "CROSSMON_DOCKER_EXEC_ROOT", value_parser = parse_exec_root)]
    pub docker_exec_root: PathBuf,

    /// Flows the kernel map holds; the least recently used is evicted beyond.
    /// Memory: about 136 bytes per IPv4 flow and 160 per IPv6 flow, in each
    /// family's map.
    #[arg(long, default_value_t = monitor_common::DEFAULT_FLOW_CAPACITY, value_parser = clap::value_parser!(u32).range(1..))]
    pub flow_capacity: u32,

    /// Payload bytes captured from the first payload packets of each flow
    /// (0 turns payload sampling off).
    #[arg(long, default_value_t = monitor_common::DEFAULT_PAYLOAD_BYTES, value_parser = clap::value_parser!(u32).range(0..=MAX_CAPTURE as i64))]
    pub payload_bytes: u32,

    /// Payload-carrying packets sampled per flow.
    #[arg(long, default_value_t = monitor_common::DEFAULT_PAYLOAD_PACKETS, value_parser = clap::value_parser!(u32).range(0..=255))]
    pub payload_packets: u32,

    /// Send 1 in N packets' heads to user space (0 = off).
    #[arg(long, default_value_t = monitor_common::DEFAULT_SAMPLE_RATE)]
    pub sample_rate: u32,

    /// `off`: no event per new flow, for counting only (with
    /// `--payload-bytes 0`); flows still appear at the next poll.
    #[arg(long, value_enum, default_value_t = Switch::of(monitor_common::DEFAULT_NEW_FLOW_EVENTS != 0))]
    pub new_flow_events: Switch,

    /// `off`: no DNS event (every TCP or UDP packet of port 53 sent up
    /// whole): no /api/v1/dns, DNS metrics or DNS detector.
    #[arg(long, value_enum, default_value_t = Switch::of(monitor_common::DEFAULT_DNS_EVENTS != 0))]
    pub dns: Switch,

    /// Ring buffer size in bytes (a power of two, at least one page).
    #[arg(long, default_value_t = monitor_common::DEFAULT_RING_BYTES)]
    pub ring_bytes: u32,

    /// How often the flow map is read, e.g. `1s`, `500ms`.
    #[arg(long, default_value_t = AgentConfig::DEFAULT_POLL_INTERVAL.into(), value_parser = duration_arg)]
    pub poll_interval: humantime::Duration,

    /// Flows idle this long are dropped from the kernel map and the API.
    #[arg(long, default_value_t = AgentConfig::DEFAULT_IDLE_TIMEOUT.into(), value_parser = duration_arg)]
    pub idle_timeout: humantime::Duration,

    /// A closed TCP connection (an RST either way, or a FIN both ways)
    /// leaves the kernel map and the API once its last packet is this old.
    #[arg(long, default_value_t = AgentConfig::DEFAULT_CLOSE_LINGER.into(), value_parser = duration_arg)]
    pub close_linger: humantime::Duration,

    /// Series per traffic metric family (flows, connections); label
    /// combinations beyond it are counted in an `other` series.
    #[arg(long, default_value_t = MetricsConfig::DEFAULT_MAX_SERIES, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_series: u32,

    /// How long the series of a removed container stay in `/metrics`.
    #[arg(long, default_value_t = MetricsConfig::DEFAULT_GRACE.into(), value_parser = duration_arg)]
    pub series_grace: humantime::Duration,

    /// Detector settings (TOML); every key has a default, see docs/alerts.md.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Where crossmon keeps what must survive a restart (the baseline of
    /// known connections).
    #[arg(long, default_value = AgentConfig::DEFAULT_STATE_DIR, value_name = "DIR")]
    pub state_dir: PathBuf,

    /// A JSON line per connection when it ends (and at `--flow-log-interval`
    /// while it lasts) in this file, rotated by size.
    #[arg(long, value_name = "PATH")]
    pub flow_log: Option<PathBuf>,

    /// How often a connection still active is logged again.
    #[arg(long, default_value_t = FlowLogConfig::DEFAULT_INTERVAL.into(), value_parser = duration_arg)]
    pub flow_log_interval: humantime::Duration,

    /// The flow log rotates at this size (MiB)...
    #[arg(long, default_value_t = FlowLogConfig::DEFAULT_MAX_MIB, value_parser = clap::value_parser!(u64).range(1..))]
    pub flow_log_max_mib: u64,

    /// ...keeping this many older files.
    #[arg(long, default_value_t = FlowLogConfig::DEFAULT_KEEP)]
    pub flow_log_keep: u32,

    /// An alert of `--capture-on-alert-kinds` starts a packet capture of
    /// the pair it names, written to this directory as pcapng and named in
    /// the alert (`capture`).
    #[arg(long, value_name = "DIR")]
    pub capture_on_alert: Option<PathBuf>,

    /// The alert kinds that start a capture, comma-separated.
    #[arg(long, default_value = OnAlertConfig::DEFAULT_KINDS, value_name = "KINDS")]
    pub capture_on_alert_kinds: String,

    /// A capture on alert stops after this long...
    #[arg(long, default_value_t = OnAlertConfig::DEFAULT_DURATION.into(), value_parser = duration_arg)]
    pub capture_on_alert_duration: humantime::Duration,

    /// ...or this many packets.
    #[arg(long, default_value_t = OnAlertConfig::DEFAULT_COUNT, value_parser = clap::value_parser!(u64).range(1..))]
    pub capture_on_alert_count: u64,

    /// The capture directory's files take at most this many MiB; the
    /// oldest are removed.
    #[arg(long, default_value_t = OnAlertConfig::DEFAULT_MAX_MIB, value_parser = clap::value_parser!(u64).range(1..))]
    pub capture_on_alert_max_mib: u64,

    /// Where alerts go, one JSON line each: a file appended to, or `-` for
    /// standard output.
    #[arg(long, default_value = AgentConfig::DEFAULT_ALERT_LOG, value_name = "PATH")]
    pub alert_log: PathBuf,

    /// The same kind of alert for the same pair of ends is not repeated
    /// within this time.
    #[arg(long, default_value_t = AgentConfig::DEFAULT_ALERT_COOLDOWN.into(), value_parser = duration_arg)]
    pub alert_cooldown: humantime::Duration,

    /// `auto`: TCX links where the kernel has them (6.6+), clsact before;
    /// `clsact`: netlink clsact filters always.
    #[arg(long, value_enum, default_value_t = AttachModeArg::Auto)]
    pub attach_mode: AttachModeArg,

    /// A flow policy (YAML, see docs/policy.md) judged at each container's
    /// veth; violations are counted and alerted (observe mode). Reloaded
    /// on SIGHUP and when the file changes.
    #[arg(long, value_name = "FILE", conflicts_with = "no_docker")]
    pub policy: Option<PathBuf>,

    /// Drop what the policy denies (enforce mode).
    #[arg(long, requires = "policy")]
    pub enforce: bool,

    /// Forward the programs' aya-log output at this level (off by default).
    #[arg(long, value_enum, default_value_t = EbpfLog::Off)]
    pub ebpf_log: EbpfLog,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

impl Switch {
    const fn of(on: bool) -> Switch {
        if on {
            Switch::On
        } else {
            Switch::Off
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum AttachModeArg {
    Auto,
    Clsact,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum EbpfLog {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|err| err.to_string())?;
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(duration)
}

/// [`parse_duration`] in the type clap shows defaults with (`5m`, `1s`).
fn duration_arg(text: &str) -> Result<humantime::Duration, String> {
    parse_duration(text).map(Into::into)
}

/// An absolute path that is a directory, or nothing yet (an engine not
/// started, or none: no overlay is watched then).
fn parse_exec_root(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if !path.is_absolute() {
        return Err(format!("{text:?} is not an absolute path"));
    }
    if path.exists() && !path.is_dir() {
        return Err(format!("{text} is not a directory"));
    }
    Ok(path)
}

/// What bollard connects to: a unix socket path or an HTTP endpoint.
fn parse_docker_host(text: &str) -> Result<String, String> {
    let valid = match text.split_once("://") {
        Some(("unix", path)) => path.starts_with('/'),
        Some(("tcp" | "http", address)) => address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()),
        _ => false,
    };
    if valid {
        Ok(text.to_owned())
    } else {
        Err("expected unix:///path/to/docker.sock or tcp://host:port".into())
    }
}

/// A file crossmon writes must have a directory to live in.
fn writable_path(flag: &str, path: &Path) -> anyhow::Result<()> {
    if path == Path::new("-") {
        return Ok(());
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    anyhow::ensure!(
        dir.is_dir(),
        "{flag} {}: no directory {}",
        path.display(),
        dir.display()
    );
    anyhow::ensure!(
        !path.is_dir(),
        "{flag} {}: is a directory, not a file",
        path.display()
    );
    Ok(())
}

/// `$DOCKER_HOST`, when the engine is found through it, must be one.
fn check_docker_host_env() -> anyhow::Result<()> {
    if let Some(env) = std::env::var_os("DOCKER_HOST") {
        let env = env.to_string_lossy();
        parse_docker_host(&env).map_err(|err| anyhow::anyhow!("DOCKER_HOST={env}: {err}"))?;
    }
    Ok(())
}

impl RunArgs {
    /// The agent's configuration, every value checked: an invalid one
    /// (a bad `--config` or `--web-config` file, `$DOCKER_HOST`, a log in a
    /// missing directory) is an error naming it.
    pub fn agent_config(&self) -> anyhow::Result<AgentConfig> {
        let detect = match &self.config {
            Some(path) => DetectConfig::load(path)?,
            None => DetectConfig::default(),
        };
        let web_config = self
            .web_config
            .as_deref()
            .map(WebConfig::load)
            .transpose()?;
        if !self.no_docker && self.docker_host.is_none() {
            check_docker_host_env()?;
        }
        writable_path("--alert-log", &self.alert_log)?;
        if let Some(path) = &self.flow_log {
            writable_path("--flow-log", path)?;
        }
        let policy = match &self.policy {
            Some(path) => Some(PolicyConfig {
                path: path.clone(),
                enforce: self.enforce,
                policy: Policy::load(path).context("--policy")?,
            }),
            None => None,
        };
        anyhow::ensure!(
            !self.state_dir.exists() || self.state_dir.is_dir(),
            "--state-dir {}: not a directory",
            self.state_dir.display()
        );
        // Checked with or without the directory: a typo is an error either way.
        let capture_kinds = OnAlertConfig::parse_kinds(&self.capture_on_alert_kinds)?;
        let capture_on_alert = match &self.capture_on_alert {
            Some(dir) => {
                OnAlertConfig::check_dir(dir)?;
                Some(OnAlertConfig {
                    dir: dir.clone(),
                    kinds: capture_kinds,
                    duration: self.capture_on_alert_duration.into(),
                    count: self.capture_on_alert_count,
                    max_running: OnAlertConfig::DEFAULT_MAX_RUNNING,
                    max_bytes: self.capture_on_alert_max_mib.saturating_mul(1024 * 1024),
                })
            }
            None => None,
        };
        let config = AgentConfig {
            listen: self.listen,
            datapath: DatapathConfig {
                flow_capacity: self.flow_capacity,
                ring_bytes: self.ring_bytes,
                capture_ring_bytes: monitor_common::DEFAULT_CAPTURE_RING_BYTES,
                payload_bytes: self.payload_bytes,
                payload_packets: self.payload_packets,
                sample_rate: self.sample_rate,
                new_flow_events: self.new_flow_events == Switch::On,
                dns_events: self.dns == Switch::On,
                ebpf_log: match self.ebpf_log {
                    EbpfLog::Off => None,
                    EbpfLog::Error => Some(log::LevelFilter::Error),
                    EbpfLog::Warn => Some(log::LevelFilter::Warn),
                    EbpfLog::Info => Some(log::LevelFilter::Info),
                    EbpfLog::Debug => Some(log::LevelFilter::Debug),
                    EbpfLog::Trace => Some(log::LevelFilter::Trace),
                },
                attach_mode: match self.attach_mode {
                    AttachModeArg::Auto => AttachMode::Auto,
                    AttachModeArg::Clsact => AttachMode::Clsact,
                },
            },
            poll_interval: self.poll_interval.into(),
            idle_timeout: self.idle_timeout.into(),
            close_linger: self.close_linger.into(),
            use_docker: !self.no_docker,
            docker_host: self.docker_host.clone(),
            docker_exec_root: self.docker_exec_root.clone(),
            web_config,
            detect,
            state_dir: self.state_dir.clone(),
            flow_log: self.flow_log.as_ref().map(|path| FlowLogConfig {
                path: path.clone(),
                interval: self.flow_log_interval.into(),
                max_bytes: self.flow_log_max_mib.saturating_mul(1024 * 1024),
                keep: self.flow_log_keep,
            }),
            alert_log: Some(self.alert_log.clone()),
            policy,
            learn: None,
            capture_on_alert,
            alert_cooldown: self.alert_cooldown.into(),
            metrics: MetricsConfig {
                max_series: self.max_series as usize,
                grace_ns: u64::try_from(Duration::from(self.series_grace).as_nanos())
                    .unwrap_or(u64::MAX),
            },
        };
        config.datapath.validate()?;
        Ok(config)
    }
}

/// The agent `crossmon policy learn` runs: every default, no API beyond an
/// ephemeral loopback port, no alert log, nothing kept on disk but the
/// policy it writes.
pub fn learn_config(
    duration: Duration,
    output: &Path,
    docker_host: Option<&str>,
) -> anyhow::Result<AgentConfig> {
    writable_path("--output", output)?;
    if docker_host.is_none() {
        check_docker_host_env()?;
    }
    let mut config = AgentConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        poll_interval: Duration::from_millis(250),
        docker_host: docker_host.map(str::to_owned),
        alert_log: None,
        state_dir: std::env::temp_dir(),
        learn: Some(LearnConfig {
            duration,
            output: output.to_owned(),
        }),
        ..AgentConfig::default()
    };
    config.detect.new_connection.enabled = false;
    config.datapath.validate()?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("crossmon").chain(args.iter().copied()))
    }

    #[test]
    fn run_needs_no_flags() {
        let Ok(Cli {
            command: Command::Run(args),
        }) = parse(&["run"])
        else {
            panic!("`crossmon run` must parse");
        };
        let config = args.agent_config().expect("defaults are valid");
        assert_eq!(config.listen, AgentConfig::DEFAULT_LISTEN);
        assert!(config.datapath.validate().is_ok());
        // The command line's defaults are the agent's, not a copy of them.
        assert_eq!(
            format!("{config:?}"),
            format!("{:?}", AgentConfig::default())
        );
    }

    #[test]
    fn enforce_needs_a_policy_and_works_in_both_attach_modes() {
        assert!(parse(&["run", "--enforce"]).is_err());
        assert!(parse(&["run", "--policy", "p.yaml", "--no-docker"]).is_err());
        let path = std::env::temp_dir().join(format!("crossmon-cli-{}.yaml", std::process::id()));
        std::fs::write(&path, "version: 1\n").expect("write");
        let file = path.to_str().expect("UTF-8");
        // clsact filters outlive the agent, but its enforce lease does not
        // (datapath::ENFORCE_LEASE): enforcement is accepted there too.
        for mode in ["auto", "clsact"] {
            let Ok(Cli {
                command: Command::Run(args),
            }) = parse(&["run", "--policy", file, "--enforce", "--attach-mode", mode])
            else {
                panic!("parses");
            };
            let config = args.agent_config().expect("valid");
            assert!(config.policy.is_some_and(|p| p.enforce), "{mode}");
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn out_of_range_values_are_refused() {
        assert!(parse(&["run", "--payload-bytes", "513"]).is_err());
        assert!(parse(&["run", "--flow-capacity", "0"]).is_err());
        assert!(parse(&["run", "--poll-interval", "0s"]).is_err());
        assert!(parse(&["run", "--listen", "nowhere"]).is_err());
        assert!(parse(&["run", "--bogus"]).is_err());
    }

    mod properties {
        use proptest::{collection, prelude::*, sample::select};

        use super::{parse, parse_docker_host, parse_duration, Duration};

        /// Flags and values, right or not, as an operator might type them.
        fn argument() -> impl Strategy<Value = String> {
            prop_oneof![
                select(
                    &[
                        "--poll-interval",
                        "--idle-timeout",
                        "--payload-bytes",
                        "--flow-capacity",
                        "--ring-bytes",
                        "--docker-host",
                        "--no-docker",
                        "--listen",
                        "--attach-mode",
                        "--ebpf-log",
                        "1s",
                        "0s",
                        "-1",
                        "513",
                        "4294967296",
                        "unix:///run/docker.sock",
                        "tcp://:1",
                        "[::1]:9810",
                    ][..]
                )
                .prop_map(str::to_owned),
                any::<String>(),
            ]
        }

        proptest! {
            #[test]
            fn durations_are_positive_or_refused(text in any::<String>()) {
                if let Ok(duration) = parse_duration(&text) {
                    prop_assert!(!duration.is_zero());
                }
            }

            #[test]
            fn durations_read_as_written(
                n in 1u64..1_000_000,
                (unit, seconds) in select(&[("s", 1u64), ("m", 60), ("h", 3600), ("d", 86_400)][..]),
            ) {
                prop_assert_eq!(
                    parse_duration(&format!("{n}{unit}")),
                    Ok(Duration::from_secs(n * seconds))
                );
                prop_assert_eq!(
                    parse_duration(&format!("{n}ms")),
                    Ok(Duration::from_millis(n))
                );
            }

            #[test]
            fn docker_hosts_are_kept_as_given_or_refused(
                text in any::<String>(),
                path in "/[a-z./]{0,20}",
                host in "[a-z0-9.-]{1,20}",
                port in any::<u16>(),
            ) {
                if let Ok(kept) = parse_docker_host(&text) {
                    prop_assert_eq!(kept, text);
                }
                let unix = format!("unix://{path}");
                prop_assert_eq!(parse_docker_host(&unix), Ok(unix.clone()));
                for scheme in ["tcp", "http"] {
                    let address = format!("{scheme}://{host}:{port}");
                    prop_assert_eq!(parse_docker_host(&address), Ok(address.clone()));
                }
                let without_port = format!("tcp://{host}");
                let relative = format!("unix://{}", path.trim_start_matches('/'));
                prop_assert!(parse_docker_host(&without_port).is_err());
                prop_assert!(parse_docker_host(&relative).is_err());
            }

            #[test]
            fn any_command_line_parses_or_is_refused(
                arguments in collection::vec(argument(), 0..6),
            ) {
                let mut line = vec!["run"];
                line.extend(arguments.iter().map(String::as_str));
                let _ = parse(&line);
            }
        }
    }
}
