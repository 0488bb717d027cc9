//! The parser fuzzed in the kernel: both classifiers, loaded and verified,
//! run through BPF_PROG_TEST_RUN on frames generated and mutated by
//! `integration_tests::corpus`. Every run must pass the frame on unchanged
//! with TC_ACT_UNSPEC, and what the programs recorded must read back through
//! the agent's own readers (flow map, ring buffer, counters) and agree with
//! the frames it came from.
//!
//! Each run draws a new generator seed and prints it;
//! `CROSSMON_FUZZ_SEED=<u64>` replays one. `--nocapture` shows the counts.
//! `CROSSMON_FUZZ_SCALE=<0..1>` runs a sample of that share of the frames
//! (every seed still runs, and the minimum of runs shrinks with it): the
//! VM tier of `cargo xtask test` runs a short fuzz under emulation.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "an integration test: a broken assumption is the test failing, with its message"
)]

use std::{
    collections::{BTreeMap, HashMap},
    time::Instant,
};

use fastrand::Rng;
use integration_tests::{
    corpus::{self, Family, Seed, ETH_P_8021AD, MAX_VLAN_TAGS},
    frames::{v4_mapped, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6},
    require_root,
};
use monitor::datapath::{
    self, events::ArpPacket, Datapath, DatapathConfig, Event, KernelCounters,
    PROGRAM_FROM_CONTAINER, PROGRAM_TO_CONTAINER,
};
use monitor_common::{Direction, FlowKey, FlowStats, ARP_LEN, DNS_PORT, MAX_CAPTURE};

const TC_ACT_UNSPEC: i32 = -1;
const ETH_HLEN: usize = 14;
/// Bytes of a packet-head sample (`PACKET_HEAD_BYTES` in monitor-ebpf).
const PACKET_HEAD_BYTES: usize = 128;
const PAYLOAD_BYTES: u32 = 128;
/// Frames run on both programs between two reads of what they recorded.
/// The ring holds every record of a batch: per run at most a sample, a new
/// flow and a payload or ARP record, each under 600 bytes.
const BATCH: usize = 1024;
const RING_BYTES: u32 = 4 << 20;
/// At scale 1; scaled with [`Scale`].
const MIN_RUNS_PER_PROGRAM: u64 = 100_000;
/// Random frames of each kind beyond the systematic ones, at scale 1.
const BIT_FLIPS: u64 = 40_000;
const SPLICES: u64 = 25_000;
const GARBAGE: u64 = 20_000;
const MIXED: u64 = 40_000;

/// Every frame goes through both. (A run towards a container on a flow
/// an earlier run counted from a container is a duplicate, not counted; no
/// check below depends on it.)
const PROGRAMS: [(&str, Direction); 2] = [
    (PROGRAM_TO_CONTAINER, Direction::ToContainer),
    (PROGRAM_FROM_CONTAINER, Direction::FromContainer),
];

/// The share of the frames run: 1 (all) unless `CROSSMON_FUZZ_SCALE` says
/// less. Systematic frames (truncations, field mutations) are sampled and
/// random ones fewer; the seeds always run.
#[derive(Clone, Copy, Debug)]
struct Scale(f64);

impl Scale {
    fn from_env() -> Self {
        match std::env::var("CROSSMON_FUZZ_SCALE") {
            Ok(text) => match text.parse::<f64>() {
                Ok(share) if share > 0.0 && share <= 1.0 => Self(share),
                _ => panic!("CROSSMON_FUZZ_SCALE={text:?}: want a number in (0, 1]"),
            },
            Err(_) => Self(1.0),
        }
    }

    /// Whether to run one systematic frame. At scale 1 it draws nothing,
    /// so a seed replays the same frames as before the knob existed.
    fn keep(self, rng: &mut Rng) -> bool {
        self.0 >= 1.0 || rng.f64() < self.0
    }

    fn of(self, count: u64) -> u64 {
        (count as f64 * self.0).ceil() as u64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Category {
    Seed(Family),
    /// Every seed cut at every offset.
    Truncation,
    /// Every length, offset, count and type field of every seed set to
    /// each of its telling values.
    FieldMutation,
    BitFlip,
    Splice,
    /// Random bytes of random length up to a full frame.
    Garbage,
    /// Seeds put through several mutations.
    Mixed,
}

#[derive(Default)]
struct Tally {
    frames: u64,
    /// Runs that passed the frame unchanged with TC_ACT_UNSPEC.
    runs: u64,
    /// Runs the kernel refused before running the program (see
    /// [`refused_by_test_run`]).
    refused: u64,
}

/// The kernel parser's first step, as a reference: where the frame's L3
/// header is once the VLAN tags the parser follows are skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Ipv4(usize),
    Ipv6(usize),
    Arp(usize),
    Other,
    /// Cut inside the Ethernet header or a VLAN tag.
    Cut,
}

fn link(frame: &[u8]) -> Link {
    let be16 = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let Some(mut ethertype) = be16(12) else {
        return Link::Cut;
    };
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !matches!(ethertype, ETH_P_8021Q | ETH_P_8021AD) {
            break;
        }
        let Some(inner) = be16(offset + 2) else {
            return Link::Cut;
        };
        ethertype = inner;
        offset += 4;
    }
    match ethertype {
        ETH_P_IP => Link::Ipv4(offset),
        ETH_P_IPV6 => Link::Ipv6(offset),
        ETH_P_ARP => Link::Arp(offset),
        _ => Link::Other,
    }
}

struct Fuzz {
    dp: Datapath,
    tallies: BTreeMap<Category, Tally>,
    /// Frames of the current batch, and the runs the kernel accepted, in order.
    batch: Vec<Vec<u8>>,
    runs: Vec<(usize, Direction)>,
    counters: KernelCounters,
    checked: Checked,
}

/// What the batches' checks went through.
#[derive(Default, Debug)]
struct Checked {
    samples: u64,
    new_flows: u64,
    payloads: u64,
    dns: u64,
    arps: u64,
    flows_taken: u64,
}

impl Fuzz {
    fn new(dp: Datapath) -> Self {
        let counters = dp.counters.read().expect("reading the counters");
        Self {
            dp,
            tallies: BTreeMap::new(),
            batch: Vec::with_capacity(BATCH),
            runs: Vec::with_capacity(2 * BATCH),
            counters,
            checked: Checked::default(),
        }
    }

    fn frame(&mut self, category: Category, frame: &[u8]) {
        let tally = self.tallies.entry(category).or_default();
        tally.frames += 1;
        for (program, direction) in PROGRAMS {
            match self.dp.programs.test_run(program, frame) {
                Ok((verdict, out)) => {
                    assert_eq!(
                        verdict, TC_ACT_UNSPEC,
                        "{program} verdict on {category:?} {frame:02x?}"
                    );
                    assert!(
                        out == frame,
                        "{program} changed {category:?} {frame:02x?} into {out:02x?}"
                    );
                    tally.runs += 1;
                    self.runs.push((self.batch.len(), direction));
                }
                Err(err) if refused_by_test_run(frame) && is_einval(&err) => tally.refused += 1,
                Err(err) => panic!("{program} on {category:?} {frame:02x?}: {err:#}"),
            }
        }
        self.batch.push(frame.to_vec());
        if self.batch.len() == BATCH {
            self.check_batch();
        }
    }

    /// Reads what the batch left in the maps and the ring, through the
    /// agent's readers, checks it against the frames, and empties the
    /// flow map for the next batch.
    fn check_batch(&mut self) {
        let counters = self.dp.counters.read().expect("reading the counters");
        let delta = difference(&counters, &self.counters);
        self.counters = counters;
        let runs = self.runs.len() as u64;
        let links: Vec<Link> = self.batch.iter().map(|frame| link(frame)).collect();
        let count_runs = |wanted: fn(Link, Direction) -> bool| {
            self.runs
                .iter()
                .filter(|&&(i, direction)| wanted(links[i], direction))
                .count() as u64
        };
        assert_eq!(
            (
                delta.lost_new_flow,
                delta.lost_payload,
                delta.lost_arp,
                delta.lost_packet_sample,
                delta.lost_dns,
                delta.flow_update_failed
            ),
            (0, 0, 0, 0, 0, 0),
            "the ring and the flow map are sized for a batch"
        );
        assert_eq!(
            delta.non_ip,
            count_runs(|link, _| link == Link::Other),
            "one non-IP count per run on a frame neither IP nor ARP"
        );
        assert!(
            delta.packets + delta.non_ip <= runs,
            "{delta:?} of {runs} runs"
        );
        assert!(delta.malformed <= runs, "{delta:?} of {runs} runs");
        assert!(
            delta.malformed >= count_runs(|link, _| link == Link::Cut),
            "every frame cut in a VLAN tag is malformed: {delta:?}"
        );

        let arp_runs = count_runs(|link, direction| {
            matches!(link, Link::Arp(_)) && direction == Direction::FromContainer
        });

        let mut events = Vec::new();
        let undecodable = self.dp.events.drain(&mut events);
        assert_eq!(undecodable, 0, "every ring record decodes");
        let (new_flows, arps) = self.check_events(&events, &links);
        assert_eq!(
            arps, arp_runs,
            "one ARP event per ARP frame from a container"
        );

        let mut flows: HashMap<FlowKey, FlowStats> = HashMap::new();
        self.dp
            .flows
            .for_each(|key, stats| {
                assert!(flows.insert(*key, *stats).is_none(), "{key:?} read twice");
            })
            .expect("reading the flow map");
        let mut announced = new_flows.clone();
        announced.sort_unstable();
        announced.dedup();
        assert_eq!(announced.len(), new_flows.len(), "a flow announced twice");
        let mut in_map: Vec<FlowKey> = flows.keys().copied().collect();
        in_map.sort_unstable();
        assert_eq!(
            in_map, announced,
            "the flows in the map are the ones announced"
        );
        assert_eq!(
            flows.values().map(|stats| stats.packets).sum::<u64>(),
            delta.packets,
            "the flows hold every packet counted"
        );
        for (key, stats) in &flows {
            let taken = self.dp.flows.take(key).expect("taking a flow");
            assert_eq!(taken.as_ref(), Some(stats), "taken as read: {key:?}");
        }
        self.checked.flows_taken += flows.len() as u64;
        self.dp
            .flows
            .for_each(|key, _| panic!("{key:?} left after taking every flow"))
            .expect("reading the emptied flow map");
        self.batch.clear();
        self.runs.clear();
    }

    /// Walks the records in ring order: each run's packet-head sample comes
    /// first (the programs sample before parsing), then what the run
    /// recorded. Returns the keys of the new flows announced and how many
    /// ARP events came.
    fn check_events(&mut self, events: &[Event], links: &[Link]) -> (Vec<FlowKey>, u64) {
        let mut arps = 0;
        let mut runs = self.runs.iter();
        let mut current: Option<(usize, Direction)> = None;
        let mut new_flows = Vec::new();
        for event in events {
            if let Event::PacketSample {
                seen,
                frame_len,
                data,
            } = event
            {
                let &(i, direction) = runs.next().expect("a sample for each run and no more");
                let frame = &self.batch[i];
                assert_eq!(seen.direction, direction);
                assert_eq!(*frame_len as usize, frame.len());
                assert_eq!(data[..], frame[..frame.len().min(PACKET_HEAD_BYTES)]);
                self.checked.samples += 1;
                current = Some((i, direction));
                continue;
            }
            let (i, direction) = current.expect("a record before any sample");
            let (frame, link) = (&self.batch[i], links[i]);
            match event {
                Event::NewFlow { seen, key } => {
                    assert_eq!(seen.direction, direction);
                    assert_key_from(key, frame, link);
                    new_flows.push(*key);
                    self.checked.new_flows += 1;
                }
                Event::Payload {
                    seen,
                    key,
                    payload_len,
                    data,
                }
                | Event::Dns {
                    seen,
                    key,
                    payload_len,
                    data,
                } => {
                    assert_eq!(seen.direction, direction);
                    assert_key_from(key, frame, link);
                    // A DNS packet comes whole (to 512 bytes), every other
                    // payload as a sample of the configured size.
                    let dns = matches!(event, Event::Dns { .. });
                    assert_eq!(dns, key.src_port == DNS_PORT || key.dst_port == DNS_PORT);
                    let limit = if dns {
                        MAX_CAPTURE
                    } else {
                        PAYLOAD_BYTES as usize
                    };
                    assert!(data.len() <= limit && data.len() <= *payload_len as usize);
                    assert!(
                        data.is_empty() || frame.windows(data.len()).any(|w| w == data),
                        "payload {data:02x?} is not part of {frame:02x?}"
                    );
                    if dns {
                        self.checked.dns += 1;
                    } else {
                        self.checked.payloads += 1;
                    }
                }
                Event::Arp {
                    seen,
                    eth_src,
                    eth_dst,
                    arp,
                } => {
                    assert_eq!(seen.direction, Direction::FromContainer);
                    assert_eq!(direction, Direction::FromContainer);
                    let Link::Arp(offset) = link else {
                        panic!("ARP event for {link:?} frame {frame:02x?}");
                    };
                    assert_eq!((&eth_dst[..], &eth_src[..]), (&frame[..6], &frame[6..12]));
                    let body = &frame[offset.min(frame.len())..];
                    assert_eq!(*arp, ArpPacket::parse(&body[..body.len().min(ARP_LEN)]));
                    arps += 1;
                }
                Event::PacketSample { .. } => unreachable!("handled above"),
            }
        }
        assert!(runs.next().is_none(), "a run without its sample");
        self.checked.arps += arps;
        (new_flows, arps)
    }

    fn run_all(&mut self, seeds: &[Seed], rng: &mut Rng, scale: Scale) {
        for seed in seeds {
            self.frame(Category::Seed(seed.family), &seed.frame);
        }
        for seed in seeds {
            for cut in seed.truncations() {
                if scale.keep(rng) {
                    self.frame(Category::Truncation, cut);
                }
            }
        }
        for seed in seeds {
            for mutant in seed.field_mutations(rng) {
                if scale.keep(rng) {
                    self.frame(Category::FieldMutation, &mutant);
                }
            }
        }
        let pick = |rng: &mut Rng| &seeds[rng.usize(..seeds.len())].frame;
        for _ in 0..scale.of(BIT_FLIPS) {
            let frame = corpus::bit_flips(pick(rng), rng);
            self.frame(Category::BitFlip, &frame);
        }
        for _ in 0..scale.of(SPLICES) {
            let (a, b) = (pick(rng), pick(rng));
            let frame = corpus::splice(a, b, rng);
            self.frame(Category::Splice, &frame);
        }
        for _ in 0..scale.of(GARBAGE) {
            let frame = corpus::garbage(rng);
            self.frame(Category::Garbage, &frame);
        }
        for _ in 0..scale.of(MIXED) {
            let frame = corpus::mixed(seeds, rng);
            self.frame(Category::Mixed, &frame);
        }
        if !self.batch.is_empty() {
            self.check_batch();
        }
    }
}

/// The flow key names the frame's own addresses and IP version (and for
/// IPv4 its protocol), read where the reference walk found the IP header.
fn assert_key_from(key: &FlowKey, frame: &[u8], link: Link) {
    match link {
        Link::Ipv4(at) => {
            let header = &frame[at..at + 20];
            assert_eq!(key.ip_version, 4, "{frame:02x?}");
            assert_eq!(key.protocol, header[9]);
            assert_eq!(key.src_addr, v4_mapped(header[12..16].try_into().unwrap()));
            assert_eq!(key.dst_addr, v4_mapped(header[16..20].try_into().unwrap()));
        }
        Link::Ipv6(at) => {
            let header = &frame[at..at + 40];
            assert_eq!(key.ip_version, 6, "{frame:02x?}");
            assert_eq!(key.src_addr[..], header[8..24]);
            assert_eq!(key.dst_addr[..], header[24..40]);
        }
        other => panic!("a flow from a {other:?} frame: {frame:02x?}"),
    }
}

/// BPF_PROG_TEST_RUN builds its skb with `eth_type_trans` and refuses, with
/// EINVAL, a frame shorter than an Ethernet header and, from kernel 7.0 (and
/// stable kernels since), an IPv4 or IPv6 frame whose Ethernet header is not
/// followed by a whole fixed IP header. Such frames still cross real
/// interfaces (the namespace tests send them); here the VLAN-tagged seeds'
/// truncations cut the IP headers instead.
fn refused_by_test_run(frame: &[u8]) -> bool {
    let ip_bytes = frame.len().saturating_sub(ETH_HLEN);
    match frame.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]])) {
        None => true,
        Some(ETH_P_IP) => ip_bytes < 20,
        Some(ETH_P_IPV6) => ip_bytes < 40,
        Some(_) => false,
    }
}

fn is_einval(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EINVAL))
    })
}

fn difference(now: &KernelCounters, before: &KernelCounters) -> KernelCounters {
    KernelCounters {
        packets: now.packets - before.packets,
        non_ip: now.non_ip - before.non_ip,
        malformed: now.malformed - before.malformed,
        flow_update_failed: now.flow_update_failed - before.flow_update_failed,
        lost_new_flow: now.lost_new_flow - before.lost_new_flow,
        lost_payload: now.lost_payload - before.lost_payload,
        lost_arp: now.lost_arp - before.lost_arp,
        lost_packet_sample: now.lost_packet_sample - before.lost_packet_sample,
        lost_dns: now.lost_dns - before.lost_dns,
    }
}

fn generator_seed() -> u64 {
    match std::env::var("CROSSMON_FUZZ_SEED") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|err| panic!("CROSSMON_FUZZ_SEED={text:?}: {err}")),
        Err(_) => Rng::new().u64(..),
    }
}

#[test]
fn every_frame_passes_unchanged_and_reads_back() {
    require_root();
    let generator = generator_seed();
    let scale = Scale::from_env();
    println!(
        "fuzz seed {generator} (replay: CROSSMON_FUZZ_SEED={generator}), scale {}",
        scale.0
    );
    let config = DatapathConfig {
        ring_bytes: RING_BYTES,
        payload_bytes: PAYLOAD_BYTES,
        // A head sample per run: the ring then holds a record of every run.
        sample_rate: 1,
        ..DatapathConfig::default()
    };
    let dp = datapath::load(&config).expect("the programs load and verify");
    let mut rng = Rng::with_seed(generator);
    let seeds = corpus::seeds(&mut rng);
    let mut fuzz = Fuzz::new(dp);
    let started = Instant::now();
    fuzz.run_all(&seeds, &mut rng, scale);
    let elapsed = started.elapsed();

    println!(
        "{:<28} {:>9} {:>9} {:>9}",
        "category", "frames", "runs", "refused"
    );
    let mut total = Tally::default();
    for (category, tally) in &fuzz.tallies {
        println!(
            "{:<28} {:>9} {:>9} {:>9}",
            format!("{category:?}"),
            tally.frames,
            tally.runs,
            tally.refused
        );
        total.frames += tally.frames;
        total.runs += tally.runs;
        total.refused += tally.refused;
    }
    println!(
        "{:<28} {:>9} {:>9} {:>9}",
        "total", total.frames, total.runs, total.refused
    );
    println!(
        "{} seeds; {:.1} s, {:.1} us per run; read back: {:?}",
        seeds.len(),
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / total.runs as f64,
        fuzz.checked
    );
    let per_program = total.runs / PROGRAMS.len() as u64;
    let min_runs = scale.of(MIN_RUNS_PER_PROGRAM);
    assert!(
        per_program >= min_runs,
        "{per_program} runs per program, fewer than {min_runs}"
    );
    assert_eq!(
        fuzz.checked.samples, total.runs,
        "a packet-head sample of every run read back"
    );
    let kernel = fuzz.dp.counters.read().expect("reading the counters");
    println!("kernel counters: {kernel:?}");
    assert!(kernel.packets + kernel.non_ip <= total.runs && kernel.malformed <= total.runs);
    assert!(
        fuzz.checked.new_flows > 0
            && fuzz.checked.payloads > 0
            && fuzz.checked.dns > 0
            && fuzz.checked.arps > 0
    );
}
