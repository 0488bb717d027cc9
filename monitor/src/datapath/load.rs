//! Loading the embedded object with the operator's settings.

use anyhow::{bail, Context as _};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::SchedClassifier,
    EbpfLoader,
};
use aya_log::EbpfLogger;
use monitor_common::{
    TickClock, CAPTURE_ACTIVE_MAP, CAPTURE_FILTERS_MAP, CAPTURE_LOST_MAP, CAPTURE_RING_MAP,
    COUNTED_IFACES_MAP, COUNTED_SLOTS_MAP, COUNTERS_MAP, DROPS_MAP, EVENTS_MAP, FLOWS_MAP,
    FLOWS_V4_MAP, GLOBAL_DNS_EVENTS, GLOBAL_NEW_FLOW_EVENTS, GLOBAL_PAYLOAD_BYTES,
    GLOBAL_PAYLOAD_PACKETS, GLOBAL_RING_BYTES, GLOBAL_SAMPLE_RATE, MAX_CAPTURE, POLICY_COUNTS_MAP,
    POLICY_DENIED_MAP, POLICY_IFACES_MAP, POLICY_RULES_MAP, POLICY_STATE_MAP, RETRANSMITS_MAP,
};

use super::{
    counted::CountedIfaces, sandbox::InstanceLoader, tick_clock, tracepoints, AttachMode,
    CaptureMaps, Counters, DropMap, EventRing, FlowMap, PolicyMaps, Programs, RetransmitMap,
    PROGRAM_FROM_CONTAINER, PROGRAM_SKB_DROP, PROGRAM_TCP_RETRANSMIT, PROGRAM_TO_CONTAINER,
};

/// The object built by `build.rs` from `monitor-ebpf`.
pub(super) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/crossmon"));

/// Settings fixed when the programs are loaded.
#[derive(Clone, Debug)]
pub struct DatapathConfig {
    /// Flows the kernel map holds before the least recently used is evicted.
    pub flow_capacity: u32,
    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    pub ring_bytes: u32,
    /// The capture ring's size in bytes (as `ring_bytes`).
    pub capture_ring_bytes: u32,
    /// Payload bytes captured from the first payload packets of a flow (0 = off).
    pub payload_bytes: u32,
    /// How many payload-carrying packets of each flow are captured.
    pub payload_packets: u32,
    /// 1-in-N random packet-head samples (0 = off).
    pub sample_rate: u32,
    /// An event for each new flow (the detectors' fastest signal; the flow
    /// map holds every flow either way).
    pub new_flow_events: bool,
    /// Every DNS message (TCP or UDP port 53) sent up whole.
    pub dns_events: bool,
    /// Level of the programs' aya-log output; `None` keeps them silent.
    pub ebpf_log: Option<log::LevelFilter>,
    pub attach_mode: AttachMode,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self {
            flow_capacity: monitor_common::DEFAULT_FLOW_CAPACITY,
            ring_bytes: monitor_common::DEFAULT_RING_BYTES,
            capture_ring_bytes: monitor_common::DEFAULT_CAPTURE_RING_BYTES,
            payload_bytes: monitor_common::DEFAULT_PAYLOAD_BYTES,
            payload_packets: monitor_common::DEFAULT_PAYLOAD_PACKETS,
            sample_rate: monitor_common::DEFAULT_SAMPLE_RATE,
            new_flow_events: monitor_common::DEFAULT_NEW_FLOW_EVENTS != 0,
            dns_events: monitor_common::DEFAULT_DNS_EVENTS != 0,
            ebpf_log: None,
            attach_mode: AttachMode::Auto,
        }
    }
}

impl DatapathConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.flow_capacity == 0 {
            bail!("the flow map capacity must be at least 1");
        }
        let page = page_size();
        if !self.ring_bytes.is_power_of_two() || self.ring_bytes < page {
            bail!(
                "--ring-bytes {}: the ring buffer size must be a power of two of at least one page ({page} bytes)",
                self.ring_bytes
            );
        }
        if !self.capture_ring_bytes.is_power_of_two() || self.capture_ring_bytes < page {
            bail!(
                "the capture ring's size must be a power of two of at least one page ({page} bytes), got {}",
                self.capture_ring_bytes
            );
        }
        if self.payload_bytes as usize > MAX_CAPTURE {
            bail!(
                "payload capture is at most {MAX_CAPTURE} bytes, got {}",
                self.payload_bytes
            );
        }
        if self.payload_packets > u32::from(u8::MAX) {
            bail!(
                "at most {} payload packets per flow can be sampled",
                u8::MAX
            );
        }
        Ok(())
    }
}

/// Everything the agent holds of the loaded object, split by job so each
/// task owns what it uses.
pub struct Datapath {
    pub programs: Programs,
    pub flows: FlowMap,
    pub events: EventRing,
    pub counters: Counters,
    /// The capture filters and ring (no capture until one is set).
    pub capture: CaptureMaps,
    /// The flow policy's maps (mode `off` until a policy is written).
    pub policy: PolicyMaps,
    /// Retransmissions by flow, counted when `retransmits` is `Ok`.
    pub retransmits: RetransmitMap,
    /// Whether `tcp:tcp_retransmit_skb` is attached, or why not.
    pub retransmits_status: Result<(), String>,
    /// Packets dropped, by addresses and reason, counted when
    /// `drop_reasons` is `Ok`: the names of the kernel's reasons (none
    /// before 5.17), or why drops are not counted.
    pub drops: DropMap,
    pub drop_reasons: Result<std::collections::HashMap<u32, String>, String>,
    /// The programs' tick clock as measured at the load, or why the
    /// programs read the exact clock instead.
    pub tick_clock: Result<TickClock, String>,
    /// Present when `ebpf_log` is set: drain it with [`EbpfLogger::flush`]
    /// when its fd is readable.
    pub ebpf_logger: Option<EbpfLogger<&'static dyn log::Log>>,
}

/// Loads and verifies both classifiers; attaches nothing.
pub fn load(config: &DatapathConfig) -> anyhow::Result<Datapath> {
    config.validate()?;
    super::preflight::raise_memlock_limit();
    let globals = Globals::of(config);
    // The tracepoints' record layouts, from tracefs (and BTF), before the
    // load: the programs read their offsets from globals fixed then.
    let tracefs = tracepoints::tracefs();
    let tracefs = || {
        tracefs
            .as_deref()
            .context("tracefs is not mounted and could not be mounted")
    };
    let layout = tracefs().and_then(tracepoints::retransmit_layout);
    let drop_layout = tracefs().and_then(tracepoints::drop_layout);
    let mut loader = loader(&globals);
    let offsets = layout
        .iter()
        .flatten()
        .chain(drop_layout.iter().flat_map(|drops| &drops.globals));
    for (global, offset) in offsets {
        loader.override_global(global, offset, true);
    }
    let mut ebpf = loader
        .load(OBJECT)
        .map_err(super::preflight::explain_load_error)?;

    // Before the maps move to their owners (the logger takes its own):
    // instances for other namespaces share them.
    let instances = InstanceLoader::of(&ebpf, config)?;
    let ebpf_logger = if globals.log_level == 0 {
        None
    } else {
        // Forwards the programs' records to the `log` facade (and so to tracing).
        Some(aya_log::EbpfLogger::init(&mut ebpf).context("reading the programs' logs")?)
    };
    load_classifiers(&mut ebpf)?;
    let tick_clock = tick_clock::set(&mut ebpf).map_err(|err| format!("{err:#}"));
    match &tick_clock {
        Ok(clock) => tracing::debug!(clock.tick_ns, "timer tick measured"),
        Err(reason) => {
            tracing::warn!("{reason}: the programs read the exact clock at every packet");
        }
    }

    let retransmits_status = layout
        .and_then(|_| {
            let event = monitor_common::TRACEPOINT_TCP_RETRANSMIT;
            tracepoints::attach(&mut ebpf, PROGRAM_TCP_RETRANSMIT, event)
        })
        .map_err(|err| format!("{err:#}"));
    if let Err(reason) = &retransmits_status {
        tracing::warn!("TCP retransmissions are not counted: {reason}");
    }
    let drop_reasons = drop_layout
        .and_then(|layout| {
            let event = monitor_common::TRACEPOINT_KFREE_SKB;
            tracepoints::attach(&mut ebpf, PROGRAM_SKB_DROP, event)?;
            Ok(layout.reasons)
        })
        .map_err(|err| format!("{err:#}"));
    if let Err(reason) = &drop_reasons {
        tracing::warn!("dropped packets are not counted: {reason}");
    }
    let drops = DropMap::new(PerCpuHashMap::try_from(take_map(&mut ebpf, DROPS_MAP)?)?);
    let retransmits = RetransmitMap::new(PerCpuHashMap::try_from(take_map(
        &mut ebpf,
        RETRANSMITS_MAP,
    )?)?);
    let flows = FlowMap::new(
        take_map(&mut ebpf, FLOWS_MAP)?,
        take_map(&mut ebpf, FLOWS_V4_MAP)?,
    )?;
    let events = EventRing::new(RingBuf::try_from(take_map(&mut ebpf, EVENTS_MAP)?)?);
    let counters = Counters::new(PerCpuArray::try_from(take_map(&mut ebpf, COUNTERS_MAP)?)?);
    let counted = CountedIfaces::new(
        HashMap::try_from(take_map(&mut ebpf, COUNTED_IFACES_MAP)?)?,
        Array::try_from(take_map(&mut ebpf, COUNTED_SLOTS_MAP)?)?,
    );
    let policy = PolicyMaps::new(
        Array::try_from(take_map(&mut ebpf, POLICY_STATE_MAP)?)?,
        HashMap::try_from(take_map(&mut ebpf, POLICY_IFACES_MAP)?)?,
        HashMap::try_from(take_map(&mut ebpf, POLICY_RULES_MAP)?)?,
        PerCpuArray::try_from(take_map(&mut ebpf, POLICY_COUNTS_MAP)?)?,
        PerCpuHashMap::try_from(take_map(&mut ebpf, POLICY_DENIED_MAP)?)?,
    );
    let capture = CaptureMaps::new(
        Array::try_from(take_map(&mut ebpf, CAPTURE_ACTIVE_MAP)?)?,
        HashMap::try_from(take_map(&mut ebpf, CAPTURE_FILTERS_MAP)?)?,
        capture_ring(take_map(&mut ebpf, CAPTURE_RING_MAP)?)?,
        PerCpuArray::try_from(take_map(&mut ebpf, CAPTURE_LOST_MAP)?)?,
    );
    Ok(Datapath {
        programs: Programs::new(ebpf, counted, config.attach_mode, instances),
        capture,
        flows,
        events,
        counters,
        policy,
        retransmits,
        retransmits_status,
        drops,
        drop_reasons,
        tick_clock,
        ebpf_logger,
    })
}

/// The globals of one load, kept while the loader borrows them.
pub(super) struct Globals {
    payload_bytes: u32,
    payload_packets: u32,
    sample_rate: u32,
    new_flow_events: u32,
    dns_events: u32,
    log_level: u8,
    flow_capacity: u32,
    ring_bytes: u32,
    capture_ring_bytes: u32,
}

impl Globals {
    pub(super) fn of(config: &DatapathConfig) -> Self {
        Self {
            payload_bytes: config.payload_bytes,
            payload_packets: config.payload_packets,
            sample_rate: config.sample_rate,
            new_flow_events: u32::from(config.new_flow_events),
            dns_events: u32::from(config.dns_events),
            // aya-log's level 0 disables every log statement in the programs.
            log_level: match config.ebpf_log {
                None | Some(log::LevelFilter::Off) => 0,
                Some(level) => level as u8,
            },
            flow_capacity: config.flow_capacity,
            ring_bytes: config.ring_bytes,
            capture_ring_bytes: config.capture_ring_bytes,
        }
    }
}

/// A loader with the operator's settings: the agent's instance and those
/// for other namespaces are loaded alike.
pub(super) fn loader(globals: &Globals) -> EbpfLoader<'_> {
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(FLOWS_MAP, globals.flow_capacity)
        .map_max_entries(FLOWS_V4_MAP, globals.flow_capacity)
        .map_max_entries(EVENTS_MAP, globals.ring_bytes)
        .map_max_entries(CAPTURE_RING_MAP, globals.capture_ring_bytes)
        .override_global(GLOBAL_PAYLOAD_BYTES, &globals.payload_bytes, true)
        .override_global(GLOBAL_PAYLOAD_PACKETS, &globals.payload_packets, true)
        .override_global(GLOBAL_SAMPLE_RATE, &globals.sample_rate, true)
        .override_global(GLOBAL_NEW_FLOW_EVENTS, &globals.new_flow_events, true)
        .override_global(GLOBAL_DNS_EVENTS, &globals.dns_events, true)
        .override_global(GLOBAL_RING_BYTES, &globals.ring_bytes, true)
        .override_global("AYA_LOG_LEVEL", &globals.log_level, true);
    loader
}

/// Loads (verifies) both classifiers of a loaded object.
pub(super) fn load_classifiers(ebpf: &mut aya::Ebpf) -> anyhow::Result<()> {
    for name in [PROGRAM_FROM_CONTAINER, PROGRAM_TO_CONTAINER] {
        load_classifier(ebpf, name)?;
    }
    Ok(())
}

/// Loads (verifies) the classifier `name` of a loaded object.
pub(super) fn load_classifier<'a>(
    ebpf: &'a mut aya::Ebpf,
    name: &str,
) -> anyhow::Result<&'a mut SchedClassifier> {
    let program = super::attach::program(ebpf, name)?;
    program
        .load()
        .map_err(|err| super::preflight::explain_program_error(name, err))?;
    Ok(program)
}

fn take_map(ebpf: &mut aya::Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .with_context(|| format!("map {name} missing from the object"))
}

/// The capture ring's map, not mapped into memory until a capture needs it
/// ([`super::CaptureRing`]).
fn capture_ring(map: aya::maps::Map) -> anyhow::Result<MapData> {
    match map {
        aya::maps::Map::RingBuf(data) => Ok(data),
        _ => bail!("map {CAPTURE_RING_MAP} is not a ring buffer"),
    }
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(size).unwrap_or(4096)
}
