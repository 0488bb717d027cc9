//! The running agent: wires the datapath, link discovery, flow polling,
//! event consumption and the HTTP API together, and tears them down.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
    time::Duration,
};

use anyhow::Context as _;
use futures::StreamExt as _;
use monitor_common::FlowStats;
use tokio::{signal::unix::SignalKind, sync::watch, task::JoinSet};

use crate::sync::{lock, read, write};
use crate::{
    alert::{AlertLog, AlertSink},
    api::{self, FlowJson},
    clock,
    datapath::{
        self, preflight, Counters, DatapathConfig, EventRing, FlowMap, KernelCounters,
        ProgramRunStats, Programs,
    },
    detect::{config::DetectConfig, Detectors},
    docker::{self, directory::host_addresses, Directory, Inventory},
    event_log::EventLog,
    flow_log::{FlowLog, FlowLogConfig},
    flows::{FlowTable, PollOutcome, PollView},
    links,
    metrics::{AgentSnapshot, Metrics, MetricsConfig},
    policy::{self, in_force, Learner, PolicyConfig, PolicyInForce},
    web_config::{self, WebConfig},
};

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    pub datapath: DatapathConfig,
    /// How often the flow map is read.
    pub poll_interval: Duration,
    /// Flows without packets for this long are removed from the kernel map
    /// and from the API.
    pub idle_timeout: Duration,
    /// Where the Docker engine is (`None`: `$DOCKER_HOST` or the local
    /// socket); no engine at all with `use_docker` off.
    pub use_docker: bool,
    pub docker_host: Option<String>,
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
    pub const DEFAULT_ALERT_COOLDOWN: Duration = Duration::from_secs(5 * 60);
    pub const DEFAULT_STATE_DIR: &'static str = "/var/lib/crossmon";
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
            use_docker: true,
            docker_host: None,
            web_config: None,
            metrics: MetricsConfig::default(),
            alert_log: Some(PathBuf::from(Self::DEFAULT_ALERT_LOG)),
            alert_cooldown: Self::DEFAULT_ALERT_COOLDOWN,
            detect: DetectConfig::default(),
            state_dir: PathBuf::from(Self::DEFAULT_STATE_DIR),
            flow_log: None,
            policy: None,
            learn: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LearnConfig {
    pub duration: Duration,
    pub output: PathBuf,
}

/// What the API serves, updated by the background tasks.
pub struct AgentState {
    flows: RwLock<FlowTable>,
    /// Kernel map entries at the latest read, and entries it evicted.
    flow_map_entries: AtomicUsize,
    flows_evicted: AtomicU64,
    flow_map_capacity: u32,
    /// The programs' run statistics, when the kernel keeps them.
    programs: RwLock<Option<Vec<ProgramRunStats>>>,
    pub metrics: Metrics,
    pub detectors: Detectors,
    flow_log: Option<Mutex<FlowLog>>,
    interfaces: RwLock<BTreeMap<u32, String>>,
    kernel: RwLock<KernelCounters>,
    pub events: EventLog,
    inventory: RwLock<Option<Arc<Inventory>>>,
    directory: RwLock<Arc<Directory>>,
    /// Whether the Docker engine answers right now.
    pub docker_up: Arc<AtomicBool>,
    /// False with `--no-docker`: no engine to be up or down.
    use_docker: bool,
    /// Present while learning a policy.
    learner: Option<Mutex<Learner>>,
}

impl AgentState {
    pub fn new(config: &AgentConfig) -> anyhow::Result<Self> {
        Ok(Self {
            flows: RwLock::default(),
            flow_map_entries: AtomicUsize::new(0),
            flows_evicted: AtomicU64::new(0),
            flow_map_capacity: config.datapath.flow_capacity,
            programs: RwLock::default(),
            metrics: Metrics::new(config.metrics)?,
            detectors: Detectors::new(
                config.detect.clone(),
                AlertSink::new(
                    config
                        .alert_log
                        .as_deref()
                        .map(AlertLog::open)
                        .transpose()?,
                    u64::try_from(config.alert_cooldown.as_nanos()).unwrap_or(u64::MAX),
                ),
                &config.state_dir,
                config.metrics.max_series,
            )?,
            flow_log: config
                .flow_log
                .as_ref()
                .map(|flow_log| FlowLog::open(flow_log).map(Mutex::new))
                .transpose()
                .context("the flow log")?,
            interfaces: RwLock::default(),
            kernel: RwLock::default(),
            events: EventLog::default(),
            inventory: RwLock::default(),
            directory: RwLock::new(Arc::new(Directory::new(None, host_addresses()))),
            docker_up: Arc::default(),
            use_docker: config.use_docker,
            learner: config.learn.as_ref().map(|_| Mutex::default()),
        })
    }

    /// The Prometheus text exposition of everything the agent knows.
    pub fn render_metrics(&self) -> anyhow::Result<String> {
        self.metrics.render(|traffic| AgentSnapshot {
            attached_interfaces: read(&self.interfaces).len(),
            flows: read(&self.flows).len(),
            flow_map_entries: self.flow_map_entries.load(Ordering::Relaxed),
            flow_map_capacity: self.flow_map_capacity,
            flows_evicted: self.flows_evicted.load(Ordering::Relaxed),
            kernel: self.kernel_counters(),
            events: self.events.totals(),
            docker_up: self
                .use_docker
                .then(|| self.docker_up.load(Ordering::Relaxed)),
            engine: self.inventory().map(|i| i.engine.clone()),
            programs: read(&self.programs).clone(),
            containers: traffic.known_containers().cloned().collect(),
            series: traffic.series_counts(),
            protocols: self.detectors.protocol_counts(),
            alerts: self
                .detectors
                .sink()
                .counts()
                .map(|((kind, severity, source), n)| (*kind, *severity, source.clone(), *n))
                .collect(),
        })
    }

    pub fn flows_json(&self) -> Vec<FlowJson> {
        let interfaces = read(&self.interfaces).clone();
        let directory = read(&self.directory).clone();
        read(&self.flows)
            .records()
            .map(|record| {
                let interface = interfaces.get(&record.stats.ifindex).cloned();
                FlowJson::new(
                    &record,
                    interface,
                    directory.ends(&record.key, &record.stats),
                )
            })
            .collect()
    }

    /// The latest inventory, if the engine was ever reached.
    pub fn inventory(&self) -> Option<Arc<Inventory>> {
        read(&self.inventory).clone()
    }

    /// Interfaces with crossmon attached, by ifindex.
    pub fn attached_interfaces(&self) -> BTreeMap<u32, String> {
        read(&self.interfaces).clone()
    }

    fn set_inventory(&self, inventory: Option<Arc<Inventory>>) {
        *write(&self.directory) = Arc::new(Directory::new(inventory.as_deref(), host_addresses()));
        *write(&self.inventory) = inventory;
    }

    /// Feeds one poll's result to the metrics.
    fn record_poll(&self, outcome: &PollOutcome, now_ns: u64) {
        self.flow_map_entries
            .store(outcome.entries, Ordering::Relaxed);
        self.flows_evicted
            .fetch_add(outcome.evicted as u64, Ordering::Relaxed);
        let directory = read(&self.directory).clone();
        let inventory = self.inventory();
        let table = read(&self.flows);
        // One view for every consumer: each reads the same live and ended
        // flows, and the index of the ended ones is built once.
        let flows = PollView::new(&table, &outcome.expired);
        self.metrics
            .traffic()
            .update(&flows, &directory, inventory.as_deref(), now_ns);
        self.detectors.on_poll(&flows, &directory, now_ns);
        if let Some(learner) = &self.learner {
            lock(learner).on_poll(&flows, &directory, now_ns);
        }
        if let Some(flow_log) = &self.flow_log {
            lock(flow_log).on_poll(
                &flows,
                &directory,
                &|key| self.detectors.payload_verdict(key),
                now_ns,
            );
        }
    }

    /// Alerts for the flows that broke the policy since the last poll.
    fn record_policy_violations(&self, policy: &Mutex<PolicyInForce>, now_ns: u64) {
        let directory = read(&self.directory).clone();
        let (denied, names, mode) = {
            let mut policy = lock(policy);
            let denied = policy.drain_denied();
            let names: Vec<String> = denied
                .iter()
                .map(|(_, stats)| policy.slot_name(stats.slot))
                .collect();
            (denied, names, policy.config.mode_name())
        };
        for ((key, stats), rule) in denied.iter().zip(names) {
            if stats.slot == monitor_common::POLICY_SLOT_SPOOFED_SOURCE {
                // Dropped, it never reached the flow map `ip_spoof`
                // reads; passed, it did too (the cooldown keeps it one).
                let record = crate::model::FlowRecord {
                    key: *key,
                    stats: FlowStats {
                        packets: stats.packets,
                        first_seen_ns: stats.first_seen_ns,
                        last_seen_ns: stats.last_seen_ns,
                        ifindex: stats.ifindex,
                        direction: monitor_common::Direction::FromContainer as u8,
                        ..FlowStats::default()
                    },
                };
                self.detectors.on_spoofed_drop(&record, &directory, now_ns);
            } else if let Some(alert) =
                policy::alerts::violation(key, stats, &rule, mode, &directory)
            {
                self.detectors.sink().raise(alert, now_ns);
            }
        }
    }

    /// Checks a batch of kernel events, then keeps it for the API.
    fn record_events(&self, events: &mut Vec<datapath::Event>, undecodable: usize) {
        let directory = read(&self.directory).clone();
        self.detectors
            .on_events(events, &directory, clock::monotonic_ns());
        self.events.record(events.drain(..), undecodable);
    }

    /// Attached interfaces and known flows.
    pub fn sizes(&self) -> (usize, usize) {
        (read(&self.interfaces).len(), read(&self.flows).len())
    }

    pub fn kernel_counters(&self) -> KernelCounters {
        *read(&self.kernel)
    }
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
    let state = Arc::new(AgentState::new(&config)?);
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
            state
                .metrics
                .register(Box::new(crate::metrics::PolicyCollector::new(
                    policy.clone(),
                )?))?;
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
            state.docker_up.clone(),
        ));
        Some(receiver)
    } else {
        None
    };
    tasks.spawn(follow_links(
        programs.clone(),
        state.clone(),
        inventory,
        policy.clone(),
    ));
    tasks.spawn(poll_flows(
        datapath.flows,
        datapath.counters,
        programs.clone(),
        state.clone(),
        config.clone(),
        policy,
    ));
    tasks.spawn(consume_events(datapath.events, state.clone()));
    if let Some(logger) = datapath.ebpf_logger {
        tasks.spawn(forward_ebpf_logs(logger));
    }
    let app = api::router(state.clone());
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
    let detached = lock(&programs).detach_all();
    tracing::info!("detached from {detached} interfaces, exiting");
    if let (Ok(()), Some(learn), Some(learner)) = (&outcome, &config.learn, &state.learner) {
        let learner = lock(learner);
        learner.write(&learn.output, learn.duration)?;
        tracing::info!("policy written to {}", learn.output.display());
    }
    outcome
}

/// Attaches to the bridge-enslaved veths that are container endpoints (to
/// every bridge-enslaved veth with `--no-docker`) and follows link and
/// container changes.
async fn follow_links(
    programs: Arc<Mutex<Programs>>,
    state: Arc<AgentState>,
    mut inventory: Option<watch::Receiver<Option<Arc<Inventory>>>>,
    policy: Option<Arc<Mutex<PolicyInForce>>>,
) -> anyhow::Result<()> {
    let (handle, changes) = links::watch()?;
    let mut changes = std::pin::pin!(changes);
    loop {
        let mut ports = links::bridge_veths(&handle).await?;
        let known = inventory.as_mut().and_then(|receiver| {
            // Only container endpoints, and none before the engine first
            // answers: a veth crossmon cannot name is not its to watch.
            let known = receiver.borrow_and_update().clone();
            let endpoints: HashSet<u32> = known.iter().flat_map(|k| k.container_veths()).collect();
            ports.retain(|port| endpoints.contains(&port.ifindex));
            known
        });
        // A container's policy is in force before its veth is attached.
        if let Some(policy) = &policy {
            lock(policy).on_inventory(known.clone());
        }
        // Also without Docker: a new bridge brings a new host address.
        state.set_inventory(known);
        {
            let mut programs = lock(&programs);
            sync_attachments(&mut programs, &ports);
            *write(&state.interfaces) = programs
                .attached()
                .map(|a| (a.ifindex, a.name.clone()))
                .collect();
        }
        let inventory_changed = async {
            match inventory.as_mut() {
                Some(receiver) => receiver.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            change = changes.next() => if change.is_none() {
                anyhow::bail!("the rtnetlink notification stream ended");
            },
            open = inventory_changed => if !open {
                anyhow::bail!("the Docker follower stopped");
            },
        }
        // Containers come up in bursts of link changes: one listing for all.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while futures::FutureExt::now_or_never(changes.next())
            .flatten()
            .is_some()
        {}
    }
}

fn sync_attachments(programs: &mut Programs, ports: &[links::BridgePort]) {
    let wanted: BTreeMap<u32, &links::BridgePort> = ports.iter().map(|p| (p.ifindex, p)).collect();
    let stale: Vec<u32> = programs
        .attached()
        .filter(|a| {
            wanted
                .get(&a.ifindex)
                .is_none_or(|p| p.bridge_ifindex != a.bridge_ifindex)
        })
        .map(|a| a.ifindex)
        .collect();
    for ifindex in stale {
        match programs.detach(ifindex) {
            Ok(()) => tracing::info!(ifindex, "interface gone or left its bridge: detached"),
            // A deleted veth takes its links with it; nothing left to undo.
            Err(err) => tracing::debug!("{err:#}"),
        }
    }
    for port in ports {
        if programs.is_attached(port.ifindex) {
            continue;
        }
        match programs.attach(&port.name, port.ifindex, port.bridge_ifindex) {
            Ok(()) => {
                tracing::info!(interface = %port.name, bridge = %port.bridge_name, "attached")
            }
            // Often a veth deleted between listing and attaching.
            Err(err) => tracing::warn!(interface = %port.name, "not attached: {err:#}"),
        }
    }
}

/// Reads the flow map every `poll_interval` into the cumulative table and
/// the metrics, and removes flows idle for `idle_timeout`.
async fn poll_flows(
    mut flows: FlowMap,
    counters: Counters,
    programs: Arc<Mutex<Programs>>,
    state: Arc<AgentState>,
    config: AgentConfig,
    policy: Option<Arc<Mutex<PolicyInForce>>>,
) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(config.poll_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let idle_ns = u64::try_from(config.idle_timeout.as_nanos()).unwrap_or(u64::MAX);
        let now = clock::monotonic_ns();
        match poll_once(&mut flows, &state.flows, now.saturating_sub(idle_ns)) {
            Ok(outcome) => {
                if outcome.evicted > 0 {
                    tracing::warn!(
                        evicted = outcome.evicted,
                        "flow map full: the kernel evicted flows; raise --flow-capacity"
                    );
                }
                state.record_poll(&outcome, now);
            }
            // A failed read loses no traffic: the kernel keeps counting and
            // the next poll reads it. Evictions noticed in the part read
            // before the failure go unreported.
            Err(err) => tracing::warn!("reading the flow map: {err:#}"),
        }
        if let Some(policy) = &policy {
            state.record_policy_violations(policy, now);
        }
        match counters.read() {
            Ok(kernel) => *write(&state.kernel) = kernel,
            Err(err) => tracing::warn!("reading kernel counters: {err:#}"),
        }
        *write(&state.programs) = program_stats(&programs);
        release_freed_memory();
    }
}

/// Hands the pages a poll freed back to the system. Each poll builds and
/// drops per-flow buffers; glibc keeps freed heap for reuse, so without
/// this the agent's RSS held every poll's high-water mark (108 MiB instead
/// of 72 at 100k flows in `cargo xtask bench`), for no measurable CPU.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free pages; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The programs' run statistics if the kernel keeps them
/// (`kernel.bpf_stats_enabled`, off by default for its small cost).
fn program_stats(programs: &Mutex<Programs>) -> Option<Vec<ProgramRunStats>> {
    let enabled = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .is_ok_and(|text| text.trim() == "1");
    if !enabled {
        return None;
    }
    lock(programs)
        .run_stats()
        .inspect_err(|err| tracing::debug!("program statistics: {err:#}"))
        .ok()
}

/// One read of the kernel map into `table`; exported for tests. The table
/// is locked per batch of the read, never across a syscall, so the API
/// stays responsive with a full map. A read that fails half-way leaves the
/// table with newer counts for part of the flows, which is all it is.
pub fn poll_once(
    flows: &mut FlowMap,
    table: &RwLock<FlowTable>,
    idle_cutoff_ns: u64,
) -> anyhow::Result<PollOutcome> {
    let mut outcome = PollOutcome::default();
    let mut read = 0;
    let mut idle = Vec::new();
    write(table).begin_poll();
    flows.for_each_batch(|batch| {
        let mut table = write(table);
        // An entry created but not yet stamped by its first packet reads
        // all zero: it is brand new, neither a flow to show nor an idle one.
        for (key, stats) in batch.iter().filter(|(_, s)| s.first_seen_ns != 0) {
            read += 1;
            table.observe(key, stats, &mut outcome);
            if stats.last_seen_ns < idle_cutoff_ns {
                idle.push(*key);
            }
        }
    })?;
    write(table).end_poll(&mut outcome);
    let mut retired = Vec::new();
    let mut failed = None;
    for key in &idle {
        match flows.take(key) {
            Ok(Some(last)) => retired.push((*key, last)),
            Ok(None) => {}
            // What was taken so far is out of the kernel map: it must
            // reach the table before the error is reported.
            Err(err) => {
                failed = Some(err);
                break;
            }
        }
    }
    let mut table = write(table);
    for (key, last) in &retired {
        table.retire(key, last);
    }
    if let Some(err) = failed {
        return Err(err);
    }
    outcome.entries = read - retired.len();
    outcome.expired = table.expire(idle_cutoff_ns);
    Ok(outcome)
}

async fn consume_events(ring: EventRing, state: Arc<AgentState>) -> anyhow::Result<()> {
    ring.follow(|batch, undecodable| state.record_events(batch, undecodable))
        .await
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
