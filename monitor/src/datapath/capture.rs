//! The capture maps: which veths the programs capture (and what of their
//! packets), the ring the packets come back through, and what it lost.

use std::os::fd::{AsFd as _, AsRawFd as _};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf};
use monitor_common::{CaptureFilter, CaptureRecord, Direction, MAX_SNAPLEN};

/// One packet the programs captured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedPacket {
    pub capture_id: u32,
    pub ifindex: u32,
    pub direction: Direction,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
    /// The frame's length on the veth; `data` may be shorter (snaplen).
    pub original_len: u32,
    pub data: Vec<u8>,
}

/// Why the filter map refused a change.
#[derive(Debug, thiserror::Error)]
pub enum CaptureMapError {
    #[error("writing the capture filter of ifindex {ifindex}: {source}")]
    Write {
        ifindex: u32,
        source: aya::maps::MapError,
    },
}

/// The capture maps, split by who uses them: whoever starts and stops
/// captures owns the filters, one reader thread the ring.
pub struct CaptureMaps {
    pub filters: CaptureFilters,
    pub ring: CaptureRing,
}

impl CaptureMaps {
    pub(super) fn new(
        active: Array<MapData, u32>,
        filters: HashMap<MapData, u32, CaptureFilter>,
        ring: MapData,
        lost: PerCpuArray<MapData, u64>,
    ) -> Self {
        Self {
            filters: CaptureFilters { active, filters },
            ring: CaptureRing {
                map: ring,
                mapped: None,
                lost,
            },
        }
    }
}

/// Which veths the programs capture, and what of their packets.
pub struct CaptureFilters {
    active: Array<MapData, u32>,
    filters: HashMap<MapData, u32, CaptureFilter>,
}

impl CaptureFilters {
    /// Starts (or changes) the capture of one veth.
    pub fn set(&mut self, ifindex: u32, filter: &CaptureFilter) -> Result<(), CaptureMapError> {
        let write = |source| CaptureMapError::Write { ifindex, source };
        self.filters.insert(ifindex, filter, 0).map_err(write)?;
        self.sync_active().map_err(write)
    }

    /// Stops the capture of one veth (nothing if none runs there).
    pub fn clear(&mut self, ifindex: u32) -> Result<(), CaptureMapError> {
        let write = |source| CaptureMapError::Write { ifindex, source };
        match self.filters.remove(&ifindex) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(source) => return Err(write(source)),
        }
        self.sync_active().map_err(write)
    }

    /// The programs look at the filter map only while this is not zero.
    fn sync_active(&mut self) -> Result<(), aya::maps::MapError> {
        let n = self.filters.keys().filter(Result::is_ok).count();
        self.active.set(0, u32::try_from(n).unwrap_or(u32::MAX), 0)
    }
}

/// The `CAPTURE_RING` ring buffer and its loss counter. The ring is
/// mapped only while it is needed ([`CaptureRing::map`]): the kernel maps
/// a ring's data pages twice (so that a record can wrap around) and all at
/// once, 8 MiB of the agent's resident memory for the default 4 MiB ring,
/// which is idle but for captures. The ring's memory is the kernel's
/// either way.
pub struct CaptureRing {
    map: MapData,
    mapped: Option<RingBuf<MapData>>,
    lost: PerCpuArray<MapData, u64>,
}

impl CaptureRing {
    /// Maps the ring, if it is not.
    pub fn open(&mut self) -> anyhow::Result<()> {
        if self.mapped.is_none() {
            // A second descriptor of the same map: the mapping's own,
            // closed with it.
            let fd = self
                .map
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .context("duplicating the capture ring's descriptor")?;
            let data = MapData::from_fd(fd).context("the capture ring's descriptor")?;
            let ring = RingBuf::try_from(Map::RingBuf(data)).context("mapping the capture ring")?;
            self.mapped = Some(ring);
        }
        Ok(())
    }

    /// Unmaps the ring. Records left in it stay in the kernel's ring until
    /// it is mapped again.
    pub fn close(&mut self) {
        self.mapped = None;
    }

    /// Drains the ring into `out`, when mapped; returns how many records
    /// did not decode.
    pub fn drain(&mut self, out: &mut Vec<CapturedPacket>) -> usize {
        let Some(ring) = &mut self.mapped else {
            return 0;
        };
        let mut undecodable = 0;
        while let Some(record) = ring.next() {
            match decode(&record) {
                Some(packet) => out.push(packet),
                None => undecodable += 1,
            }
        }
        undecodable
    }

    /// Waits until the ring is readable or `timeout` passes; unmapped,
    /// `timeout` (records left from an earlier capture would make it
    /// readable at once).
    pub fn wait(&self, timeout: std::time::Duration) {
        if self.mapped.is_none() {
            std::thread::sleep(timeout);
            return;
        }
        let mut fd = libc::pollfd {
            fd: self.map.fd().as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd, for the duration of the call; an error
        // or interruption only shortens the wait.
        unsafe { libc::poll(&mut fd, 1, millis) };
    }

    /// Capture records lost to a full ring since the programs were loaded.
    pub fn lost(&self) -> anyhow::Result<u64> {
        Ok(self.lost.get(&0, 0)?.iter().sum())
    }
}

/// A record as the programs wrote it; `None` when it is not one.
pub fn decode(bytes: &[u8]) -> Option<CapturedPacket> {
    if bytes.len() != size_of::<CaptureRecord>() {
        return None;
    }
    // SAFETY: length checked; the record is integers and bytes, valid for
    // any bit pattern; read_unaligned has no alignment needs.
    let record: CaptureRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let captured = (record.captured_len as usize).min(MAX_SNAPLEN);
    Some(CapturedPacket {
        capture_id: record.capture_id,
        ifindex: record.ifindex,
        direction: Direction::from_u8(record.direction)?,
        timestamp_ns: record.timestamp_ns,
        original_len: record.original_len.max(record.captured_len),
        data: record.data[..captured].to_vec(),
    })
}
