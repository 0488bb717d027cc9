//! The running agent: builds every stage of the pipeline, each with one
//! owner, wires them together, and tears them down.
//!
//! ```text
//! kernel FLOWS map ──> poller thread ──> traffic series, detectors,
//!                      (flow table)      learner, flow log, policy alerts
//! kernel EVENTS ring ─> ring reader ───> event consumer thread: detectors,
//!                                          event log
//! rtnetlink + Docker ─> link follower ─> attachments, policy, Docker snapshot
//! ```
//! The API reads what each stage publishes (see `api::ReadModel`);
//! ARCHITECTURE.md draws the whole flow.

mod links;
mod poller;
mod ring;

pub use poller::{poll_once, Cutoffs};

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::AtomicBool, mpsc, Arc, Mutex, RwLock},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{signal::unix::SignalKind, sync::watch, task::JoinSet};

use crate::{
    alert::{AlertLog, AlertSink},
    api::{self, ReadModel},
    capture::{
        on_alert::{CaptureOnAlert, OnAlertConfig},
        Captures, RingReader,
    },
    datapath::{self, preflight, AttachStats, DatapathConfig},
    detect::{config::DetectConfig, Detectors},
    dns::{DnsLog, DnsTracker},
    docker::{self, Snapshot},
    event_log::{EventConsumer, EventLog},
    flow_log::{FlowLog, FlowLogConfig, FlowLogging},
    flows::{FlowTable, PollConsumer, PollStatus},
    metrics::{self, Metrics, MetricsConfig},
    policy::{in_force, Learner, Learning, PolicyConfig, PolicyInForce, ViolationAlerts},
    series::{DropCounts, TcpHealth, TrafficSeries},
    sync::{lock, published},
    web_config::{self, WebConfig},
};
use poller::Poller;
use ring::{EventConsumers, EventReader};

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    pub datapath: DatapathConfig,
    /// How often the flow map is read.
    pub poll_interval: Duration,
    /// Flows without packets for this long are removed from the kernel map
    /// and from the API.
    pub idle_timeout: Duration,
    /// A closed TCP connection (an RST either way, or a FIN both ways)
    /// leaves the kernel map and the API once its last packet is this old,
    /// rather than after `idle_timeout`.
    pub close_linger: Duration,
    /// Where the Docker engine is (`None`: `$DOCKER_HOST` or the local
    /// socket); no engine at all with `use_docker` off.
    pub use_docker: bool,
    pub docker_host: Option<String>,
    /// The engine's exec root: its overlay sandboxes are in `netns/` there.
    pub docker_exec_root: PathBuf,
    /// `--web-config`: TLS and basic auth of the HTTP endpoint.
    pub web_config: Option<WebConfig>,
    pub metrics: MetricsConfig,
    /// `--alert-log`: `-` for standard output, `None` for no log.
    pub alert_log: Option<PathBuf>,
    /// The same kind of alert for the same pair is not repeated sooner.
    pub alert_cooldown: Duration,
    pub detect: DetectConfig,
    /// What outlives the process: the new-connection baseline.
    pub state_dir: PathBuf,
    pub flow_log: Option<FlowLogConfig>,
    /// `--policy FILE [--enforce]`.
    pub policy: Option<PolicyConfig>,
    /// `crossmon policy learn`: run this long, then write the policy.
    pub learn: Option<LearnConfig>,
    /// `--capture-on-alert DIR`.
    pub capture_on_alert: Option<OnAlertConfig>,
}

impl AgentConfig {
    /// `--listen`: loopback only, since flows reveal who talks to whom;
    /// publish it deliberately.
    pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::LOCALHOST,
        9810,
    ));
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
    /// Long enough for a last retransmitted FIN or ACK to reach the flow
    /// still counted, and for a short connection to be seen judged (its
    /// payload verdict waits 2 s, 2.5 when read late) in the API and the
    /// live map before it leaves; short enough that a churn of connections
    /// does not hold the map for the idle timeout.
    pub const DEFAULT_CLOSE_LINGER: Duration = Duration::from_secs(5);
    pub const DEFAULT_ALERT_COOLDOWN: Duration = Duration::from_secs(5 * 60);
    pub const DEFAULT_STATE_DIR: &'static str = "/var/lib/crossmon";
    /// Docker's default `--exec-root`.
    pub const DEFAULT_DOCKER_EXEC_ROOT: &'static str = "/var/run/docker";
    /// `--alert-log`: standard output.
    pub const DEFAULT_ALERT_LOG: &'static str = "-";
}

/// Every setting at its default: what `crossmon run` does without flags
/// (the command line takes its defaults from here and from the
/// `DEFAULT_*` constants of each part).
impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen: Self::DEFAULT_LISTEN,
            datapath: DatapathConfig::default(),
            poll_interval: Self::DEFAULT_POLL_INTERVAL,
            idle_timeout: Self::DEFAULT_IDLE_TIMEOUT,
            close_linger: Self::DEFAULT_CLOSE_LINGER,
            use_docker: true,
            docker_host: None,
            docker_exec_root: PathBuf::from(Self::DEFAULT_DOCKER_EXEC_ROOT),
            web_config: None,
            metrics: MetricsConfig::default(),
            alert_log: Some(PathBuf::from(Self::DEFAULT_ALERT_LOG)),
            alert_cooldown: Self::DEFAULT_ALERT_COOLDOWN,
            detect: DetectConfig::default(),
            state_dir: PathBuf::from(Self::DEFAULT_STATE_DIR),
            flow_log: None,
            policy: None,
            learn: None,
            capture_on_alert: None,
        }
    }
}

/// Captures running at once (on demand and on alert): each holds a queue
/// of up to 4096 packets.
const MAX_RUNNING_CAPTURES: usize = 16;

#[derive(Clone, Debug)]
pub struct LearnConfig {
    pub duration: Duration,
    pub output: PathBuf,
}

/// Runs until SIGINT or SIGTERM, then detaches from every interface.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let report = preflight::check()?;
    let datapath = datapath::load(&config.datapath)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    tracing::info!(
        listen = %config.listen,
        attach = if report.tcx { "tcx" } else { "clsact" },
        "crossmon running"
    );
    std::fs::create_dir_all(&config.state_dir).with_context(|| {
        format!(
            "creating the state directory {}",
            config.state_dir.display()
        )
    })?;

    // What more than one stage shares: the alerts, the detectors (fed by
    // polls and events, read by /metrics), the traffic series (fed by
    // polls, read by /metrics), and what the stages publish.
    let sink = Arc::new(Mutex::new(AlertSink::new(
        config
            .alert_log
            .as_deref()
            .map(AlertLog::open)
            .transpose()?,
        u64::try_from(config.alert_cooldown.as_nanos()).unwrap_or(u64::MAX),
    )));
    let detectors = Arc::new(Mutex::new(Detectors::new(
        &config.detect,
        sink.clone(),
        &config.state_dir,
        config.metrics.max_series,
    )?));
    let traffic = Arc::new(Mutex::new(TrafficSeries::new(config.metrics)));
    let tcp = Arc::new(Mutex::new(TcpHealth::new(
        config.metrics.max_series,
        config.metrics.grace_ns,
        datapath
            .retransmits_status
            .is_ok()
            .then_some(datapath.retransmits),
    )));
    let drops = datapath.drop_reasons.ok().map(|reasons| {
        Arc::new(Mutex::new(DropCounts::new(
            datapath.drops,
            reasons,
            config.metrics.max_series,
            config.metrics.grace_ns,
        )))
    });
    let flow_log = config
        .flow_log
        .as_ref()
        .map(FlowLog::open)
        .transpose()
        .context("the flow log")?;
    let docker_snapshot = published(Snapshot::default());
    let status = published(PollStatus {
        flow_map_capacity: config.datapath.flow_capacity,
        ..PollStatus::default()
    });
    let events = Arc::new(EventLog::default());
    let dns = DnsLog::new(config.metrics.max_series);
    let table = Arc::new(RwLock::new(FlowTable::new()));
    let docker_up = Arc::new(AtomicBool::new(false));
    let programs = Arc::new(Mutex::new(datapath.programs));

    let mut tasks = JoinSet::new();
    let policy = match config.policy.clone() {
        Some(policy_config) => {
            tracing::info!(
                file = %policy_config.path.display(),
                mode = policy_config.mode_name(),
                rules = policy_config.policy.rules.len(),
                "flow policy in force"
            );
            let policy = Arc::new(Mutex::new(PolicyInForce::start(
                policy_config,
                datapath.policy,
            )?));
            tasks.spawn(in_force::follow_file(policy.clone()));
            Some(policy)
        }
        None => None,
    };
    let inventory = if config.use_docker {
        let (sender, receiver) = watch::channel(None);
        tasks.spawn(docker::follow(
            config.docker_host.clone(),
            sender,
            docker_up.clone(),
            Duration::from_nanos(config.metrics.grace_ns),
        ));
        Some(receiver)
    } else {
        None
    };
    let attach_stats = Arc::new(AttachStats::default());
    tasks.spawn(
        links::LinkFollower {
            programs: programs.clone(),
            docker: docker_snapshot.clone(),
            inventory,
            policy: policy.clone(),
            stats: attach_stats.clone(),
            sandboxes: config.docker_exec_root.join("netns"),
            grace: Duration::from_nanos(config.metrics.grace_ns),
        }
        .run(),
    );

    // The poller's consumers, in the order they see each poll.
    let mut consumers: Vec<Box<dyn PollConsumer>> = vec![
        Box::new(traffic.clone()),
        Box::new(tcp.clone()),
        Box::new(detectors.clone()),
    ];
    if let Some(drops) = &drops {
        consumers.push(Box::new(drops.clone()));
    }
    if let Some(learn) = &config.learn {
        consumers.push(Box::new(Learning {
            learner: Learner::default(),
            output: learn.output.clone(),
            duration: learn.duration,
        }));
    }
    if let Some(log) = flow_log {
        let detectors = detectors.clone();
        consumers.push(Box::new(FlowLogging {
            log,
            payload: Box::new(move |key| lock(&detectors).payload_verdict(key)),
            dns: dns.clone(),
            drops: drops.clone(),
            retransmits: lock(&tcp).by_flow(),
        }));
    }
    if let Some(policy) = &policy {
        consumers.push(Box::new(ViolationAlerts {
            policy: policy.clone(),
            sink: sink.clone(),
        }));
    }
    let poller = Poller {
        flows: datapath.flows,
        capacity: config.datapath.flow_capacity,
        table: table.clone(),
        counters: datapath.counters,
        programs: programs.clone(),
        policy: policy.clone(),
        docker: docker_snapshot.clone(),
        consumers,
        status: status.clone(),
        interval: config.poll_interval,
        idle_timeout: config.idle_timeout,
        close_linger: config.close_linger,
    };
    let event_consumers: Vec<Box<dyn EventConsumer>> = vec![
        Box::new(detectors.clone()),
        Box::new(DnsTracker::new(dns.clone())),
    ];
    let (batches, drained) = mpsc::sync_channel(ring::QUEUED_BATCHES);
    let reader = EventReader {
        ring: datapath.events,
        batches,
    };
    let event_consumers = EventConsumers {
        consumers: event_consumers,
        log: events.clone(),
        docker: docker_snapshot.clone(),
    };
    let (poller, stop_poller) = spawn_stage("poller", &mut tasks, move |stop| poller.run(&stop))?;
    let (ring, stop_ring) = spawn_stage("ring reader", &mut tasks, move |stop| reader.run(&stop))?;
    // Stopped by the reader: it ends once the reader's batches are consumed.
    let (event_consumers, _) = spawn_stage("event consumer", &mut tasks, move |_| {
        event_consumers.run(&drained)
    })?;
    lock(&sink).set_node_source(docker_snapshot.clone());
    let captures = Captures::new(datapath.capture.filters, MAX_RUNNING_CAPTURES);
    if let Some(on_alert) = &config.capture_on_alert {
        lock(&sink).set_evidence(Box::new(CaptureOnAlert::new(
            on_alert.clone(),
            captures.clone(),
            docker_snapshot.clone(),
            tokio::runtime::Handle::current(),
        )));
    }
    let capture_reader = RingReader {
        ring: datapath.capture.ring,
        captures: captures.clone(),
    };
    let (capture_reader, stop_capture_reader) =
        spawn_stage("capture reader", &mut tasks, move |stop| {
            capture_reader.run(&stop)
        })?;
    if let Some(logger) = datapath.ebpf_logger {
        tasks.spawn(forward_ebpf_logs(logger));
    }

    // /metrics: one collector per subsystem.
    let mut metrics = Metrics::new();
    metrics.register(metrics::AgentCollector {
        poll: status.clone(),
        docker: docker_snapshot.clone(),
        attach: attach_stats,
    });
    metrics.register(metrics::DatapathCollector {
        poll: status.clone(),
    });
    metrics.register(metrics::EventsCollector {
        events: events.clone(),
    });
    metrics.register(metrics::DockerCollector {
        up: config.use_docker.then(|| docker_up.clone()),
        docker: docker_snapshot.clone(),
    });
    metrics.register(metrics::TrafficCollector { traffic });
    let retransmits = lock(&tcp).by_flow();
    metrics.register(metrics::TcpCollector { tcp });
    if let Some(drops) = drops {
        metrics.register(metrics::DropsCollector { drops });
    }
    metrics.register(metrics::ProtocolsCollector {
        detectors: detectors.clone(),
    });
    metrics.register(metrics::AlertsCollector { sink: sink.clone() });
    metrics.register(metrics::DnsCollector { dns: dns.clone() });
    if let Some(policy) = &policy {
        metrics.register(metrics::PolicyCollector {
            policy: policy.clone(),
        });
    }
    metrics.register(metrics::CaptureCollector {
        captures: captures.clone(),
    });
    metrics.register(metrics::ProcessCollector);

    let app = api::router(ReadModel {
        poll: status,
        docker: docker_snapshot,
        docker_up,
        flows: table.into(),
        events,
        dns,
        alerts: sink,
        verdicts: lock(&detectors).verdicts(),
        retransmits,
        metrics: Arc::new(metrics),
        captures,
    });
    tasks.spawn(web_config::serve(listener, app, config.web_config.clone()));

    let mut terminate = tokio::signal::unix::signal(SignalKind::terminate())?;
    let learnt = async {
        match &config.learn {
            Some(learn) => tokio::time::sleep(learn.duration).await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = terminate.recv() => Ok(()),
        () = learnt => Ok(()),
        Some(done) = tasks.join_next() => match done {
            Ok(Ok(())) => Err(anyhow::anyhow!("a background task ended unexpectedly")),
            Ok(Err(err)) => Err(err),
            Err(join) => Err(anyhow::anyhow!("a background task panicked: {join}")),
        },
    };
    tasks.shutdown().await;
    drop((stop_poller, stop_ring, stop_capture_reader));
    let capture_reader = join_stage("capture reader", capture_reader).await;
    let ring = join_stage("ring reader", ring).await;
    let event_consumers = join_stage("event consumer", event_consumers).await;
    let poller = join_stage("poller", poller).await;
    let detached = lock(&programs).detach_all();
    tracing::info!("detached from {detached} interfaces, exiting");
    outcome?;
    capture_reader?;
    ring?;
    event_consumers?;
    poller?.finish()
}

/// Runs a pipeline stage on its own thread: dropping the returned sender
/// stops it. Should the thread end on its own (a panic), a task in `tasks`
/// ends with an error, which stops the agent.
fn spawn_stage<T: Send + 'static>(
    name: &'static str,
    tasks: &mut JoinSet<anyhow::Result<()>>,
    body: impl FnOnce(mpsc::Receiver<()>) -> T + Send + 'static,
) -> anyhow::Result<(std::thread::JoinHandle<T>, mpsc::Sender<()>)> {
    let (stop, stopped) = mpsc::channel();
    let (ended, watch_end) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ended = ended;
            body(stopped)
        })
        .with_context(|| format!("starting the {name} thread"))?;
    tasks.spawn(async move {
        let _ = watch_end.await;
        Err(anyhow::anyhow!("the {name} stopped"))
    });
    Ok((thread, stop))
}

/// Waits for a stopped stage's thread, off the async workers.
async fn join_stage<T: Send + 'static>(
    name: &'static str,
    thread: std::thread::JoinHandle<T>,
) -> anyhow::Result<T> {
    match tokio::task::spawn_blocking(move || thread.join()).await {
        Ok(Ok(stage)) => Ok(stage),
        Ok(Err(_)) => Err(anyhow::anyhow!("the {name} panicked")),
        Err(join) => Err(anyhow::anyhow!("waiting for the {name}: {join}")),
    }
}

async fn forward_ebpf_logs(
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
) -> anyhow::Result<()> {
    let mut logger = datapath::events::readable(logger)?;
    loop {
        let mut guard = logger.readable_mut().await?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
