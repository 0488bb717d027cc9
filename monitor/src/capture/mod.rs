//! Packet capture of a container's veths, as pcapng: the evidence behind an
//! alert. A capture is asked for by name (`CaptureRequest`), resolved to the
//! container's host-side veths and a kernel filter (`Target`), started in
//! the programs' filter map (`Captures::start`), fed by the one reader of
//! the capture ring (`RingReader`), and written out as pcapng blocks
//! (`Capture::stream`) to an HTTP body or a file.
//!
//! One capture per veth at a time: the filter map holds one filter per
//! ifindex.

pub mod client;
pub mod on_alert;
pub mod pcapng;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        mpsc as std_mpsc, Arc, Mutex,
    },
    time::Duration,
};

use monitor_common::{ip_proto, CaptureFilter, Direction, CAPTURE_MATCH_PEER, MAX_SNAPLEN};
use tokio::sync::mpsc;

use crate::{
    clock,
    datapath::{capture::CaptureMapError, CaptureFilters, CaptureRing, CapturedPacket},
    docker::Snapshot,
    sync::lock,
};

/// Default bytes kept of each packet: all of it, up to the programs' most.
pub const DEFAULT_SNAPLEN: u32 = MAX_SNAPLEN as u32;
/// Packets waiting for a slow reader (an HTTP client, a disk) before more
/// are dropped and counted; the kernel side never waits.
const QUEUE_PACKETS: usize = 4096;
/// How often the ring is drained: the programs never wake the reader.
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// What to capture, as the API and the command line say it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptureRequest {
    /// A container name (or id prefix).
    pub container: String,
    /// A container name or an IP address: only packets to or from it.
    pub peer: Option<String>,
    /// Only packets with this source or destination port.
    pub port: Option<u16>,
    /// Only packets of this IP protocol.
    pub protocol: Option<u8>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    /// Stop after this many packets.
    pub count: Option<u64>,
    /// Bytes kept of each packet, 1..=1600.
    pub snaplen: u32,
}

impl CaptureRequest {
    /// From a query string: `container=NAME[&peer=NAME|IP][&port=N]
    /// [&protocol=tcp|udp|icmp|icmpv6|N][&duration=10s][&count=N][&snaplen=N]`.
    /// The error is one line for the requester.
    pub fn from_query(query: &str) -> Result<Self, String> {
        let mut request = CaptureRequest {
            snaplen: DEFAULT_SNAPLEN,
            ..CaptureRequest::default()
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value =
                percent_decode(value).ok_or_else(|| format!("{key}: bad percent-encoding"))?;
            request.set(key, &value)?;
        }
        request.check()?;
        Ok(request)
    }

    /// Sets one parameter by its name in the query (the CLI's long option).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "container" => self.container = value.to_owned(),
            "peer" => self.peer = Some(value.to_owned()),
            "port" => {
                self.port = Some(
                    value
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| format!("port {value:?}: expected 1 to 65535"))?,
                );
            }
            "protocol" => self.protocol = Some(protocol_number(value)?),
            "duration" => {
                self.duration = Some(
                    humantime::parse_duration(value)
                        .ok()
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| format!("duration {value:?}: expected e.g. 10s, 2m"))?,
                );
            }
            "count" => {
                self.count = Some(
                    value
                        .parse::<u64>()
                        .ok()
                        .filter(|n| *n != 0)
                        .ok_or_else(|| format!("count {value:?}: expected a positive number"))?,
                );
            }
            "snaplen" => {
                self.snaplen = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=DEFAULT_SNAPLEN).contains(n))
                    .ok_or_else(|| format!("snaplen {value:?}: expected 1 to {DEFAULT_SNAPLEN}"))?;
            }
            other => return Err(format!("unknown capture parameter {other:?}")),
        }
        Ok(())
    }

    pub fn check(&self) -> Result<(), String> {
        if self.container.is_empty() {
            return Err("container: a container name is required".to_owned());
        }
        if self.port.is_some()
            && self
                .protocol
                .is_some_and(|p| p != ip_proto::TCP && p != ip_proto::UDP)
        {
            return Err("port: only TCP and UDP have ports".to_owned());
        }
        Ok(())
    }

    /// The query string `from_query` reads back.
    pub fn to_query(&self) -> String {
        let mut pairs = vec![format!("container={}", percent_encode(&self.container))];
        if let Some(peer) = &self.peer {
            pairs.push(format!("peer={}", percent_encode(peer)));
        }
        if let Some(port) = self.port {
            pairs.push(format!("port={port}"));
        }
        if let Some(protocol) = self.protocol {
            pairs.push(format!("protocol={protocol}"));
        }
        if let Some(duration) = self.duration {
            pairs.push(format!("duration={}ms", duration.as_millis()));
        }
        if let Some(count) = self.count {
            pairs.push(format!("count={count}"));
        }
        pairs.push(format!("snaplen={}", self.snaplen));
        pairs.join("&")
    }
}

/// `tcp`, `udp`, `icmp`, `icmpv6` or a protocol number.
pub fn protocol_number(value: &str) -> Result<u8, String> {
    match value.to_ascii_lowercase().as_str() {
        "tcp" => Ok(ip_proto::TCP),
        "udp" => Ok(ip_proto::UDP),
        "icmp" => Ok(ip_proto::ICMP),
        "icmpv6" => Ok(ip_proto::ICMPV6),
        other => {
            other.parse::<u8>().ok().filter(|n| *n != 0).ok_or_else(|| {
                format!("protocol {value:?}: expected tcp, udp, icmp, icmpv6 or 1-255")
            })
        }
    }
}

fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// Why a capture cannot start; each is the requester's to fix.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("no container named {0:?}")]
    UnknownContainer(String),
    #[error("container {0:?} has no veth crossmon watches (not on a bridge network yet?)")]
    NotAttached(String),
    #[error("peer {0:?} is neither a container nor an IP address")]
    UnknownPeer(String),
    #[error("{0} is already being captured (one capture per veth at a time)")]
    Busy(String),
    #[error("{0} captures are running, the most at once")]
    TooMany(usize),
    #[error(transparent)]
    Map(#[from] CaptureMapError),
}

impl CaptureError {
    /// Whether the requester asked for something that cannot be (as
    /// opposed to something that cannot be now).
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            Self::UnknownContainer(_) | Self::NotAttached(_) | Self::UnknownPeer(_)
        )
    }
}

/// One veth of a capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedVeth {
    pub ifindex: u32,
    pub veth: String,
    pub network: String,
}

/// A request resolved against the containers of the moment.
#[derive(Clone, Debug)]
pub struct Target {
    pub container: String,
    pub veths: Vec<CapturedVeth>,
    /// Without its capture id (set at start).
    pub filter: CaptureFilter,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
}

impl Target {
    pub fn resolve(snapshot: &Snapshot, request: &CaptureRequest) -> Result<Target, CaptureError> {
        let unknown = || CaptureError::UnknownContainer(request.container.clone());
        let inventory = snapshot.inventory.as_ref().ok_or_else(unknown)?;
        let wanted = request.container.trim_start_matches('/');
        let container = inventory
            .containers
            .values()
            .find(|c| c.name == wanted)
            .or_else(|| {
                let mut by_id = inventory
                    .containers
                    .values()
                    .filter(|c| wanted.len() >= 4 && c.id.starts_with(wanted));
                // An id prefix must name one container.
                match (by_id.next(), by_id.next()) {
                    (Some(c), None) => Some(c),
                    _ => None,
                }
            })
            .ok_or_else(unknown)?;
        let veths: Vec<CapturedVeth> = container
            .endpoints
            .iter()
            .filter_map(|endpoint| {
                let ifindex = endpoint.host_ifindex?;
                let veth = snapshot.interfaces.get(&ifindex)?;
                Some(CapturedVeth {
                    ifindex,
                    veth: veth.clone(),
                    network: endpoint.network.clone(),
                })
            })
            .collect();
        if veths.is_empty() {
            return Err(CaptureError::NotAttached(container.name.clone()));
        }
        let peer = match &request.peer {
            None => None,
            Some(peer) => Some(match peer.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => {
                    let peer_name = peer.trim_start_matches('/');
                    let other = inventory
                        .containers
                        .values()
                        .find(|c| c.name == peer_name)
                        .ok_or_else(|| CaptureError::UnknownPeer(peer.clone()))?;
                    // Its address on a network the two share, else its first.
                    let shared = other.endpoints.iter().find(|e| {
                        container
                            .endpoints
                            .iter()
                            .any(|mine| mine.network_id == e.network_id)
                    });
                    shared
                        .into_iter()
                        .chain(other.endpoints.iter())
                        .find_map(|e| e.ip.or(e.ipv6))
                        .ok_or_else(|| CaptureError::UnknownPeer(peer.clone()))?
                }
            }),
        };
        Ok(Target {
            container: container.name.clone(),
            veths,
            filter: CaptureFilter {
                capture_id: 0,
                snaplen: request.snaplen.clamp(1, DEFAULT_SNAPLEN),
                peer: peer.map_or([0; 16], wire_address),
                port: request.port.unwrap_or(0),
                protocol: request.protocol.unwrap_or(0),
                flags: if peer.is_some() {
                    CAPTURE_MATCH_PEER
                } else {
                    0
                },
            },
            duration: request.duration,
            count: request.count,
        })
    }
}

/// As the programs keep addresses: IPv4-mapped for IPv4.
fn wire_address(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Totals of every capture since the agent started, for `/metrics`.
#[derive(Debug, Default)]
pub struct CaptureTotals {
    pub started: AtomicU64,
    pub packets: AtomicU64,
    /// Bytes of packets as captured (after snaplen).
    pub bytes: AtomicU64,
    /// Records the programs could not put in the full ring.
    pub lost_in_ring: AtomicU64,
    /// Packets dropped because a capture's reader fell behind.
    pub lost_in_queue: AtomicU64,
}

/// The running captures, and the programs' filter map that selects their
/// packets.
pub struct Captures {
    filters: Mutex<CaptureFilters>,
    sessions: Mutex<HashMap<u32, Session>>,
    next_id: AtomicU32,
    max_running: usize,
    pub totals: CaptureTotals,
}

struct Session {
    ifindexes: Vec<u32>,
    packets: mpsc::Sender<CapturedPacket>,
}

impl Captures {
    pub fn new(filters: CaptureFilters, max_running: usize) -> Arc<Self> {
        Arc::new(Captures {
            filters: Mutex::new(filters),
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            max_running,
            totals: CaptureTotals::default(),
        })
    }

    /// Starts capturing `target` in the kernel; the capture stops when the
    /// returned `Capture` is dropped.
    pub fn start(self: &Arc<Self>, target: Target) -> Result<Capture, CaptureError> {
        let mut sessions = lock(&self.sessions);
        if sessions.len() >= self.max_running {
            return Err(CaptureError::TooMany(sessions.len()));
        }
        for veth in &target.veths {
            if sessions
                .values()
                .any(|s| s.ifindexes.contains(&veth.ifindex))
            {
                return Err(CaptureError::Busy(format!(
                    "{} ({})",
                    target.container, veth.veth
                )));
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let filter = CaptureFilter {
            capture_id: id,
            ..target.filter
        };
        let (sender, receiver) = mpsc::channel(QUEUE_PACKETS);
        let ifindexes: Vec<u32> = target.veths.iter().map(|v| v.ifindex).collect();
        sessions.insert(
            id,
            Session {
                ifindexes: ifindexes.clone(),
                packets: sender,
            },
        );
        drop(sessions);
        // From here on, dropping the capture undoes what was set.
        let capture = Capture {
            id,
            target,
            receiver,
            owner: self.clone(),
        };
        {
            let mut filters = lock(&self.filters);
            for ifindex in &ifindexes {
                filters.set(*ifindex, &filter)?;
            }
        }
        self.totals.started.fetch_add(1, Ordering::Relaxed);
        Ok(capture)
    }

    fn stop(&self, id: u32) {
        let Some(session) = lock(&self.sessions).remove(&id) else {
            return;
        };
        let mut filters = lock(&self.filters);
        for ifindex in session.ifindexes {
            if let Err(err) = filters.clear(ifindex) {
                tracing::warn!("stopping capture {id}: {err}");
            }
        }
    }

    /// Hands each packet to its capture; a full queue drops and counts.
    fn deliver(&self, packets: impl Iterator<Item = CapturedPacket>) {
        let sessions = lock(&self.sessions);
        for packet in packets {
            // Records of a capture just stopped have no session: dropped.
            let Some(session) = sessions.get(&packet.capture_id) else {
                continue;
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = session.packets.try_send(packet) {
                self.totals.lost_in_queue.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn running(&self) -> usize {
        lock(&self.sessions).len()
    }
}

/// The one reader of the capture ring, on its own thread.
pub struct RingReader {
    pub ring: CaptureRing,
    pub captures: Arc<Captures>,
}

impl RingReader {
    /// Drains until `stop` is dropped.
    pub fn run(mut self, stop: &std_mpsc::Receiver<()>) {
        let mut packets = Vec::new();
        while let Err(std_mpsc::TryRecvError::Empty) = stop.try_recv() {
            self.ring.wait(DRAIN_INTERVAL);
            // Mapped while a capture runs; drained once more after the
            // last one stops, then unmapped.
            let running = self.captures.running() > 0;
            if running {
                if let Err(err) = self.ring.open() {
                    tracing::warn!("capture ring: {err:#}");
                }
            }
            let undecodable = self.ring.drain(&mut packets);
            if undecodable != 0 {
                tracing::debug!("{undecodable} capture records did not decode");
            }
            if !packets.is_empty() {
                self.captures.deliver(packets.drain(..));
            }
            if !running {
                self.ring.close();
            }
            if let Ok(lost) = self.ring.lost() {
                self.captures
                    .totals
                    .lost_in_ring
                    .store(lost, Ordering::Relaxed);
            }
        }
    }
}

/// A running capture: its packets, until dropped.
pub struct Capture {
    id: u32,
    target: Target,
    receiver: mpsc::Receiver<CapturedPacket>,
    owner: Arc<Captures>,
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.owner.stop(self.id);
    }
}

impl Capture {
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Sends the pcapng file, block by block, to `out` until the capture's
    /// bounds are reached or `out` is closed (the client went away);
    /// returns the packets written.
    pub async fn stream(mut self, out: mpsc::Sender<Vec<u8>>) -> u64 {
        let mut head = pcapng::section_header();
        for veth in &self.target.veths {
            head.extend(pcapng::interface(
                &self.target.container,
                &format!(
                    "host-side veth {} of container {} on network {}; in/out as the container sees them",
                    veth.veth, self.target.container, veth.network
                ),
                self.target.filter.snaplen,
            ));
        }
        if out.send(head).await.is_err() {
            return 0;
        }
        let deadline = self
            .target
            .duration
            .map(|d| tokio::time::Instant::now() + d);
        let until_deadline = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(until_deadline);
        let mut written = 0u64;
        let limit = self.target.count.unwrap_or(u64::MAX);
        while written < limit {
            let packet = tokio::select! {
                packet = self.receiver.recv() => packet,
                () = &mut until_deadline => None,
                () = out.closed() => None,
            };
            let Some(packet) = packet else { break };
            let Some(interface) = self
                .target
                .veths
                .iter()
                .position(|v| v.ifindex == packet.ifindex)
            else {
                continue;
            };
            let direction = match packet.direction {
                Direction::FromContainer => pcapng::PacketDirection::Outbound,
                Direction::ToContainer => pcapng::PacketDirection::Inbound,
            };
            let unix_ns = clock::to_utc(packet.timestamp_ns)
                .timestamp_nanos_opt()
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(0);
            let block = pcapng::packet(
                u32::try_from(interface).unwrap_or(0),
                unix_ns,
                &packet.data,
                packet.original_len,
                direction,
            );
            let totals = &self.owner.totals;
            totals.packets.fetch_add(1, Ordering::Relaxed);
            totals
                .bytes
                .fetch_add(packet.data.len() as u64, Ordering::Relaxed);
            if out.send(block).await.is_err() {
                break;
            }
            written += 1;
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_reads_every_parameter_and_round_trips() {
        let request = CaptureRequest::from_query(
            "container=web&peer=fd00%3A%3A2&port=53&protocol=udp&duration=10s&count=5&snaplen=96",
        )
        .unwrap();
        assert_eq!(
            request,
            CaptureRequest {
                container: "web".into(),
                peer: Some("fd00::2".into()),
                port: Some(53),
                protocol: Some(ip_proto::UDP),
                duration: Some(Duration::from_secs(10)),
                count: Some(5),
                snaplen: 96,
            }
        );
        assert_eq!(
            CaptureRequest::from_query(&request.to_query()).unwrap(),
            request
        );
    }

    #[test]
    fn bad_queries_say_what_is_wrong_in_one_line() {
        for (query, says) in [
            ("", "container"),
            ("container=web&port=0", "port"),
            ("container=web&port=http", "port"),
            ("container=web&protocol=sctp", "protocol"),
            ("container=web&protocol=icmp&port=80", "only TCP and UDP"),
            ("container=web&duration=soon", "duration"),
            ("container=web&count=0", "count"),
            ("container=web&snaplen=1601", "snaplen"),
            ("container=web&colour=red", "unknown"),
        ] {
            let err = CaptureRequest::from_query(query).unwrap_err();
            assert!(err.contains(says), "{query}: {err}");
            assert!(!err.contains('\n'));
        }
    }
}
