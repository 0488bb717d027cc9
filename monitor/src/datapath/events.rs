//! Ring-buffer records: decoding (pure, safe on any input) and reading.

use std::{mem::size_of, net::Ipv4Addr};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use monitor_common::{
    ArpEvent, CaptureEvent, Direction, EventHeader, EventKind, FlowKey, NewFlowEvent, ARP_LEN,
    EVENT_OPENS_FLOW, MAX_CAPTURE,
};
use std::os::fd::{AsRawFd, RawFd};
use tokio::io::unix::AsyncFd;

/// A decoded record. Times are `CLOCK_MONOTONIC` nanoseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    NewFlow {
        seen: Seen,
        key: FlowKey,
    },
    /// The first payload bytes of a TCP or UDP flow.
    Payload {
        seen: Seen,
        key: FlowKey,
        /// Payload length of the packet (what `data` is a prefix of).
        payload_len: u32,
        data: Vec<u8>,
    },
    Arp {
        seen: Seen,
        eth_src: [u8; 6],
        eth_dst: [u8; 6],
        arp: ArpPacket,
    },
    /// A TCP or UDP packet to or from port 53: a DNS message (with TCP's
    /// two-byte length first), every one sent up, not only a flow's first.
    /// Also the flow's payload sample when it is among its first.
    Dns {
        seen: Seen,
        key: FlowKey,
        /// Payload length of the packet (what `data` is a prefix of).
        payload_len: u32,
        data: Vec<u8>,
    },
    /// A 1-in-N random packet head, from the Ethernet header on.
    PacketSample {
        seen: Seen,
        frame_len: u32,
        data: Vec<u8>,
    },
}

/// Where and when the kernel saw the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub direction: Direction,
    pub ifindex: u32,
    pub timestamp_ns: u64,
}

/// An ARP packet as sent. Fields are `None` when the frame is not Ethernet/
/// IPv4 ARP or was cut short: spoofing checks need to know, not guess.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArpPacket {
    /// 1 = request, 2 = reply.
    pub operation: Option<u16>,
    pub sender_mac: Option<[u8; 6]>,
    pub sender_ip: Option<Ipv4Addr>,
    pub target_mac: Option<[u8; 6]>,
    pub target_ip: Option<Ipv4Addr>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u8),
    #[error("unknown direction {0}")]
    UnknownDirection(u8),
    #[error("{kind:?} record of {len} bytes, expected {expected}")]
    Size {
        kind: EventKind,
        len: usize,
        expected: usize,
    },
}

/// Decodes one record; never panics, whatever the bytes.
pub fn decode(record: &[u8]) -> Result<Event, DecodeError> {
    let header: EventHeader = read(record).ok_or(DecodeError::Short(record.len()))?;
    let kind = EventKind::from_u8(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    let seen = Seen {
        direction: Direction::from_u8(header.direction)
            .ok_or(DecodeError::UnknownDirection(header.direction))?,
        ifindex: header.ifindex,
        timestamp_ns: header.timestamp_ns,
    };
    let sized = |expected: usize| {
        if record.len() == expected {
            Ok(())
        } else {
            Err(DecodeError::Size {
                kind,
                len: record.len(),
                expected,
            })
        }
    };
    match kind {
        EventKind::NewFlow => {
            sized(size_of::<NewFlowEvent>())?;
            let event: NewFlowEvent = read(record).ok_or(DecodeError::Short(record.len()))?;
            Ok(Event::NewFlow {
                seen,
                key: event.key,
            })
        }
        EventKind::Payload | EventKind::Dns | EventKind::PacketSample => {
            sized(size_of::<CaptureEvent>())?;
            let event: CaptureEvent = read(record).ok_or(DecodeError::Short(record.len()))?;
            let captured = (event.captured_len as usize).min(MAX_CAPTURE);
            let data = event.data[..captured].to_vec();
            Ok(match kind {
                EventKind::Payload => Event::Payload {
                    seen,
                    key: event.key,
                    payload_len: event.original_len,
                    data,
                },
                EventKind::Dns => Event::Dns {
                    seen,
                    key: event.key,
                    payload_len: event.original_len,
                    data,
                },
                _ => Event::PacketSample {
                    seen,
                    frame_len: event.original_len,
                    data,
                },
            })
        }
        EventKind::Arp => {
            sized(size_of::<ArpEvent>())?;
            let event: ArpEvent = read(record).ok_or(DecodeError::Short(record.len()))?;
            let captured = (event.captured_len as usize).min(ARP_LEN);
            Ok(Event::Arp {
                seen,
                eth_src: event.eth_src,
                eth_dst: event.eth_dst,
                arp: ArpPacket::parse(&event.arp[..captured]),
            })
        }
    }
}

/// The new-flow event a payload or DNS record also is, when its packet
/// opened the flow (`EVENT_OPENS_FLOW`): it comes first, as the two
/// records it replaces came.
pub fn opened_flow(record: &[u8], event: &Event) -> Option<Event> {
    let header: EventHeader = read(record)?;
    if header.flags & EVENT_OPENS_FLOW == 0 {
        return None;
    }
    match event {
        Event::Payload { seen, key, .. } | Event::Dns { seen, key, .. } => Some(Event::NewFlow {
            seen: *seen,
            key: *key,
        }),
        _ => None,
    }
}

impl ArpPacket {
    /// Decodes the fixed Ethernet/IPv4 ARP layout (RFC 826 with htype 1,
    /// ptype 0x0800, hlen 6, plen 4); anything else keeps only the operation.
    pub fn parse(bytes: &[u8]) -> Self {
        let field = |range: std::ops::Range<usize>| bytes.get(range);
        let operation = field(6..8).map(|b| u16::from_be_bytes([b[0], b[1]]));
        let ethernet_ipv4 = field(0..6) == Some(&[0, 1, 8, 0, 6, 4]);
        let mac = |at: usize| {
            field(at..at + 6)
                .filter(|_| ethernet_ipv4)
                .and_then(|b| b.try_into().ok())
        };
        let ip = |at: usize| {
            field(at..at + 4)
                .filter(|_| ethernet_ipv4)
                .map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        };
        Self {
            operation,
            sender_mac: mac(8),
            sender_ip: ip(14),
            target_mac: mac(18),
            target_ip: ip(24),
        }
    }
}

/// Reads a `T` from the start of `bytes` if it is long enough.
fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: length checked; the shared types are plain integers and byte
    // arrays, valid for any bit pattern; read_unaligned has no alignment needs.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// The `EVENTS` ring buffer.
pub struct EventRing {
    ring: RingBuf<MapData>,
}

impl EventRing {
    pub(super) fn new(ring: RingBuf<MapData>) -> Self {
        Self { ring }
    }

    /// Drains what is available now into `out`; returns how many records
    /// did not decode (counted, never fatal).
    pub fn drain(&mut self, out: &mut Vec<Event>) -> usize {
        let mut undecodable = 0;
        while let Some(record) = self.ring.next() {
            match decode(&record) {
                Ok(event) => {
                    out.extend(opened_flow(&record, &event));
                    out.push(event);
                }
                Err(err) => {
                    undecodable += 1;
                    tracing::debug!("dropping ring record: {err}");
                }
            }
        }
        undecodable
    }

    /// Waits until the programs wake the agent or `timeout` passes. The
    /// programs wake it only when the
    /// ring fills up (see `wakeup` in monitor-ebpf): between wakeups, the
    /// consumer drains every [`DRAIN_INTERVAL`].
    pub fn wait(&self, timeout: std::time::Duration) {
        let mut fd = libc::pollfd {
            fd: self.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd, for the duration of the call; an error
        // or interruption only shortens the wait.
        unsafe { libc::poll(&mut fd, 1, millis) };
    }
}

impl AsRawFd for EventRing {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

/// How often the ring is drained when the programs did not wake the agent.
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

/// Registers a map or logger fd with the tokio reactor.
pub fn readable<T: AsRawFd>(inner: T) -> anyhow::Result<AsyncFd<T>> {
    // SAFETY: the fd belongs to `inner`, which the AsyncFd owns from here
    // on, so it stays open and the same for the AsyncFd's whole life.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(|err| err.into_parts().1)
        .context("registering a BPF map fd with the async runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: EventKind) -> EventHeader {
        EventHeader {
            kind: kind as u8,
            direction: Direction::FromContainer as u8,
            flags: 0,
            _pad: 0,
            ifindex: 7,
            timestamp_ns: 42,
        }
    }

    fn bytes_of<T>(value: &T) -> Vec<u8> {
        // SAFETY: the shared types have no implicit padding.
        unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(value).cast::<u8>(), size_of::<T>())
        }
        .to_vec()
    }

    #[test]
    fn arp_reply_decodes_every_field() {
        let mut arp = [0u8; ARP_LEN];
        arp[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        arp[8..14].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        arp[14..18].copy_from_slice(&[10, 0, 0, 1]);
        arp[18..24].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        arp[24..28].copy_from_slice(&[10, 0, 0, 2]);
        let event = ArpEvent {
            header: header(EventKind::Arp),
            eth_dst: [0xff; 6],
            eth_src: [2, 0, 0, 0, 0, 1],
            captured_len: ARP_LEN as u32,
            arp,
            _pad: [0; 4],
        };
        let Ok(Event::Arp { arp, eth_src, .. }) = decode(&bytes_of(&event)) else {
            panic!("not an ARP event");
        };
        assert_eq!(eth_src, [2, 0, 0, 0, 0, 1]);
        assert_eq!(arp.operation, Some(2));
        assert_eq!(arp.sender_mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(arp.sender_ip, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(arp.target_mac, Some([2, 0, 0, 0, 0, 2]));
        assert_eq!(arp.target_ip, Some(Ipv4Addr::new(10, 0, 0, 2)));
    }

    #[test]
    fn truncated_arp_keeps_only_what_was_captured() {
        let arp = ArpPacket::parse(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0]);
        assert_eq!(arp.operation, Some(1));
        assert_eq!(arp.sender_mac, None);
        assert_eq!(arp.sender_ip, None);
    }

    #[test]
    fn capture_length_is_clamped_to_the_buffer() {
        let event = CaptureEvent {
            header: header(EventKind::Payload),
            key: FlowKey {
                src_port: 1,
                dst_port: 2,
                protocol: 6,
                ip_version: 4,
                ..FlowKey::ZERO
            },
            original_len: 10_000,
            captured_len: u32::MAX,
            data: [7; MAX_CAPTURE],
        };
        let Ok(Event::Payload {
            data, payload_len, ..
        }) = decode(&bytes_of(&event))
        else {
            panic!("not a payload event");
        };
        assert_eq!(data.len(), MAX_CAPTURE);
        assert_eq!(payload_len, 10_000);
    }

    #[test]
    fn a_record_that_opened_its_flow_is_its_new_flow_event_too() {
        let key = FlowKey::ipv4([10, 0, 0, 1], 40_000, [10, 0, 0, 2], 80, 6);
        for (kind, flags, announced) in [
            (EventKind::Payload, EVENT_OPENS_FLOW, true),
            (EventKind::Dns, EVENT_OPENS_FLOW, true),
            (EventKind::Payload, 0, false),
            (EventKind::PacketSample, EVENT_OPENS_FLOW, false),
        ] {
            let record = bytes_of(&CaptureEvent {
                header: EventHeader {
                    flags,
                    ..header(kind)
                },
                key,
                original_len: 3,
                captured_len: 3,
                data: [7; MAX_CAPTURE],
            });
            let event = decode(&record).expect("a well-formed record");
            let expected = announced.then_some(Event::NewFlow {
                seen: Seen {
                    direction: Direction::FromContainer,
                    ifindex: 7,
                    timestamp_ns: 42,
                },
                key,
            });
            assert_eq!(opened_flow(&record, &event), expected, "{kind:?}");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(decode(&[]), Err(DecodeError::Short(0)));
        assert_eq!(decode(&[99; 16]), Err(DecodeError::UnknownKind(99)));
        let mut record = bytes_of(&header(EventKind::NewFlow));
        assert!(matches!(decode(&record), Err(DecodeError::Size { .. })));
        record[1] = 9;
        assert_eq!(decode(&record), Err(DecodeError::UnknownDirection(9)));
        for len in 0..700 {
            let _ = decode(&vec![1u8; len]);
            let _ = decode(&vec![2u8; len]);
            let _ = decode(&vec![3u8; len]);
        }
    }

    mod properties {
        use proptest::{collection::vec, prelude::*};

        use super::{bytes_of, *};
        use crate::model::key_addrs;

        const SIZES: [usize; 3] = [
            size_of::<NewFlowEvent>(),
            size_of::<CaptureEvent>(),
            size_of::<ArpEvent>(),
        ];

        fn direction() -> impl Strategy<Value = Direction> {
            prop_oneof![Just(Direction::FromContainer), Just(Direction::ToContainer)]
        }

        fn header(kind: EventKind) -> impl Strategy<Value = EventHeader> {
            (direction(), any::<u32>(), any::<u64>()).prop_map(
                move |(direction, ifindex, timestamp_ns)| EventHeader {
                    kind: kind as u8,
                    direction: direction as u8,
                    flags: 0,
                    _pad: 0,
                    ifindex,
                    timestamp_ns,
                },
            )
        }

        fn key() -> impl Strategy<Value = FlowKey> {
            (
                any::<[u8; 16]>(),
                any::<[u8; 16]>(),
                any::<(u16, u16, u8, u8)>(),
            )
                .prop_map(
                    |(src_addr, dst_addr, (src_port, dst_port, protocol, ip_version))| FlowKey {
                        src_addr,
                        dst_addr,
                        src_port,
                        dst_port,
                        protocol,
                        ip_version,
                        _pad: [0; 2],
                    },
                )
        }

        /// A captured length: mostly within the buffer, sometimes any value.
        fn captured_len(max: usize) -> impl Strategy<Value = u32> {
            prop_oneof![0..=max as u32, any::<u32>()]
        }

        fn seen(header: &EventHeader) -> Seen {
            Seen {
                direction: Direction::from_u8(header.direction).expect("a valid direction"),
                ifindex: header.ifindex,
                timestamp_ns: header.timestamp_ns,
            }
        }

        /// Noise, and noise of a record's exact size that starts like one.
        fn records_or_noise() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                vec(any::<u8>(), 0..1200),
                (prop::sample::select(SIZES.to_vec()), 0u8..6, 0u8..3).prop_flat_map(
                    |(size, kind, direction)| {
                        vec(any::<u8>(), size).prop_map(move |mut record| {
                            record[0] = kind;
                            record[1] = direction;
                            record
                        })
                    }
                ),
            ]
        }

        /// Every length from empty to one byte past the record, but its own.
        fn assert_other_lengths_refused(record: &[u8]) -> Result<(), TestCaseError> {
            let mut longer = record.to_vec();
            longer.push(0);
            prop_assert!(decode(&longer).is_err());
            for len in 0..record.len() {
                prop_assert!(decode(&record[..len]).is_err(), "{len} bytes decoded");
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn any_bytes_decode_or_fail_cleanly(bytes in records_or_noise()) {
                if decode(&bytes).is_ok() {
                    prop_assert!(SIZES.contains(&bytes.len()));
                    prop_assert!(EventKind::from_u8(bytes[0]).is_some());
                    prop_assert!(Direction::from_u8(bytes[1]).is_some());
                }
            }

            #[test]
            fn new_flow_records_round_trip(header in header(EventKind::NewFlow), key in key()) {
                let record = bytes_of(&NewFlowEvent { header, key });
                prop_assert_eq!(
                    decode(&record),
                    Ok(Event::NewFlow { seen: seen(&header), key })
                );
                assert_other_lengths_refused(&record)?;
            }

            #[test]
            fn capture_records_round_trip(
                kind in prop_oneof![Just(EventKind::Payload), Just(EventKind::PacketSample)],
                direction in direction(),
                key in key(),
                original_len in any::<u32>(),
                captured_len in captured_len(MAX_CAPTURE),
                data in vec(any::<u8>(), MAX_CAPTURE),
            ) {
                let header = EventHeader {
                    direction: direction as u8,
                    ..super::header(kind)
                };
                let event = CaptureEvent {
                    header,
                    key,
                    original_len,
                    captured_len,
                    data: data.clone().try_into().expect("MAX_CAPTURE bytes"),
                };
                let record = bytes_of(&event);
                let captured = data[..(captured_len as usize).min(MAX_CAPTURE)].to_vec();
                let expected = if kind == EventKind::Payload {
                    Event::Payload {
                        seen: seen(&header),
                        key,
                        payload_len: original_len,
                        data: captured,
                    }
                } else {
                    Event::PacketSample {
                        seen: seen(&header),
                        frame_len: original_len,
                        data: captured,
                    }
                };
                prop_assert_eq!(decode(&record), Ok(expected));
                assert_other_lengths_refused(&record)?;
            }

            #[test]
            fn arp_records_round_trip(
                header in header(EventKind::Arp),
                eth_dst in any::<[u8; 6]>(),
                eth_src in any::<[u8; 6]>(),
                captured_len in captured_len(ARP_LEN),
                arp in any::<[u8; ARP_LEN]>(),
                ethernet_ipv4 in any::<bool>(),
            ) {
                let mut arp = arp;
                if ethernet_ipv4 {
                    arp[..6].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
                }
                let event = ArpEvent {
                    header,
                    eth_dst,
                    eth_src,
                    captured_len,
                    arp,
                    _pad: [0; 4],
                };
                let record = bytes_of(&event);
                let captured = &arp[..(captured_len as usize).min(ARP_LEN)];
                prop_assert_eq!(
                    decode(&record),
                    Ok(Event::Arp {
                        seen: seen(&header),
                        eth_src,
                        eth_dst,
                        arp: ArpPacket::parse(captured),
                    })
                );
                assert_other_lengths_refused(&record)?;
            }

            #[test]
            fn arp_fields_are_read_only_when_present_and_ethernet_ipv4(
                bytes in vec(any::<u8>(), 0..40),
                ethernet_ipv4 in any::<bool>(),
            ) {
                let mut bytes = bytes;
                if ethernet_ipv4 && bytes.len() >= 6 {
                    bytes[..6].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
                }
                let arp = ArpPacket::parse(&bytes);
                let is_ethernet_ipv4 = bytes.get(..6) == Some(&[0, 1, 8, 0, 6, 4][..]);
                prop_assert_eq!(
                    arp.operation,
                    bytes.get(6..8).map(|b| u16::from_be_bytes([b[0], b[1]]))
                );
                prop_assert_eq!(
                    arp.sender_mac.is_some(),
                    is_ethernet_ipv4 && bytes.len() >= 14
                );
                prop_assert_eq!(
                    arp.target_ip.is_some(),
                    is_ethernet_ipv4 && bytes.len() >= 28
                );
                if let Some(ip) = arp.target_ip {
                    prop_assert_eq!(&ip.octets()[..], &bytes[24..28]);
                }
            }

            #[test]
            fn key_addresses_are_ipv4_only_when_mapped_and_version_4(key in key()) {
                let (src, dst) = key_addrs(&key);
                let mapped = |raw: [u8; 16]| std::net::Ipv6Addr::from(raw).to_ipv4_mapped();
                prop_assert_eq!(
                    src.is_ipv4(),
                    key.ip_version == 4 && mapped(key.src_addr).is_some()
                );
                prop_assert_eq!(
                    dst.is_ipv4(),
                    key.ip_version == 4 && mapped(key.dst_addr).is_some()
                );
            }
        }
    }
}
