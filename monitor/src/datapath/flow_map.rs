//! Reading the flow maps in batches: IPv4 flows in one (a 16-byte
//! key, `FlowKeyV4`), IPv6 flows in the other; both read as `FlowKey`s.
//!
//! aya 0.14 has no batch operations, so this module issues
//! `BPF_MAP_LOOKUP_BATCH` (kernel 5.6) and `BPF_MAP_LOOKUP_AND_DELETE_ELEM`
//! (hash maps: kernel 5.14) itself, on the fd aya opened. One batch call
//! replaces two syscalls per flow of a key-by-key walk. Before 5.14 an idle
//! flow is taken out by a lookup and a delete (see [`Expiry`]).

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::Context as _;
use aya::maps::{Map, MapData};
use aya_obj::generated::{bpf_attr, bpf_cmd};
use monitor_common::{FlowKey, FlowKeyV4, FlowStats};

/// Flows fetched per syscall.
const BATCH: usize = 4096;

/// How idle flows leave the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// `BPF_MAP_LOOKUP_AND_DELETE_ELEM`: read and deleted in one call.
    LookupAndDelete,
    /// Kernels before 5.14: a lookup, then a delete. A packet counted in
    /// between (microseconds, on a flow already idle for the idle timeout)
    /// is lost uncounted.
    LookupThenDelete,
}

impl Expiry {
    pub fn describe(self) -> &'static str {
        match self {
            Self::LookupAndDelete => "idle flows read and deleted in one call",
            Self::LookupThenDelete => {
                "idle flows read, then deleted (no lookup-and-delete on hash maps before 5.14): a packet in between is lost"
            }
        }
    }
}

pub struct FlowMap {
    /// IPv6 flows.
    map: MapData,
    /// IPv4 flows.
    map_v4: MapData,
    expiry: Expiry,
    keys: Vec<FlowKey>,
    keys_v4: Vec<FlowKeyV4>,
    values: Vec<FlowStats>,
    /// One batch, keys widened.
    batch: Vec<(FlowKey, FlowStats)>,
}

impl FlowMap {
    pub(super) fn new(map: Map, map_v4: Map) -> anyhow::Result<Self> {
        let (Map::LruHashMap(map), Map::LruHashMap(map_v4)) = (map, map_v4) else {
            anyhow::bail!("a flow map is not an LRU hash");
        };
        let mut flows = Self {
            map,
            map_v4,
            expiry: Expiry::LookupAndDelete,
            keys: vec![FlowKey::ZERO; BATCH],
            keys_v4: vec![FlowKeyV4::ZERO; BATCH],
            values: vec![FlowStats::default(); BATCH],
            batch: Vec::with_capacity(BATCH),
        };
        flows.expiry = flows.probe_expiry();
        Ok(flows)
    }

    /// Asks the kernel for a flow no packet has: ENOENT where it knows the
    /// command on hash maps, ENOTSUPP (524) or EINVAL where it does not.
    fn probe_expiry(&mut self) -> Expiry {
        match self.lookup_and_delete(&FlowKey::ZERO) {
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(524 | libc::EINVAL | libc::EOPNOTSUPP)
                ) =>
            {
                Expiry::LookupThenDelete
            }
            _ => Expiry::LookupAndDelete,
        }
    }

    /// How this kernel lets idle flows be taken out.
    pub fn expiry(&self) -> Expiry {
        self.expiry
    }

    /// Capacity the kernel allocated, for each family.
    pub fn capacity(&self) -> anyhow::Result<u32> {
        Ok(self
            .map
            .info()
            .context("reading flow map info")?
            .max_entries())
    }

    /// Calls `each` with every flow and its statistics.
    pub fn for_each(&mut self, mut each: impl FnMut(&FlowKey, &FlowStats)) -> anyhow::Result<()> {
        self.for_each_batch(|batch| {
            for (key, stats) in batch {
                each(key, stats);
            }
        })
    }

    /// Calls `each` with the flows of every syscall's batch (up to 4096): a
    /// consumer can lock what it updates per batch, and nothing holds the
    /// whole map's contents at once. IPv4 flows first, then IPv6 ones.
    pub fn for_each_batch(
        &mut self,
        mut each: impl FnMut(&[(FlowKey, FlowStats)]),
    ) -> anyhow::Result<()> {
        let mut batch = std::mem::take(&mut self.batch);
        let mut emit = |keys: &mut dyn Iterator<Item = FlowKey>, values: &[FlowStats]| {
            batch.clear();
            batch.extend(keys.zip(values.iter().copied()));
            each(&batch);
        };
        lookup_batches(
            &self.map_v4,
            &mut self.keys_v4,
            &mut self.values,
            |keys, values| emit(&mut keys.iter().map(FlowKeyV4::widen), values),
        )?;
        lookup_batches(
            &self.map,
            &mut self.keys,
            &mut self.values,
            |keys, values| emit(&mut keys.iter().copied(), values),
        )?;
        self.batch = batch;
        Ok(())
    }

    /// Removes a flow and returns its statistics, read and deleted in one
    /// call where the kernel can (see [`Expiry`]): no packet counted before
    /// the call is lost. A program that looked the entry up just before may
    /// still add one packet to the freed element; it is not seen.
    pub fn take(&mut self, key: &FlowKey) -> anyhow::Result<Option<FlowStats>> {
        let taken = match self.expiry {
            Expiry::LookupAndDelete => self.lookup_and_delete(key),
            Expiry::LookupThenDelete => self.lookup_then_delete(key),
        };
        match taken {
            Ok(()) => Ok(Some(self.values[0])),
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(err) => Err(err).with_context(|| format!("taking a flow out ({:?})", self.expiry)),
        }
    }

    /// One element command on `key`, its value read into `values[0]`.
    fn element(&mut self, cmd: bpf_cmd, key: &FlowKey) -> io::Result<()> {
        let values = &mut self.values[..1];
        // SAFETY: as above.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing the union member the command reads.
        let elem = unsafe { &mut attr.__bindgen_anon_2 };
        // Alive until the call returns: the kernel reads the key there.
        let key_v4 = FlowKeyV4::narrow(key);
        match &key_v4 {
            Some(key_v4) => {
                elem.map_fd = self.map_v4.fd().as_fd().as_raw_fd() as u32;
                elem.key = std::ptr::from_ref(key_v4) as u64;
            }
            None => {
                elem.map_fd = self.map.fd().as_fd().as_raw_fd() as u32;
                elem.key = std::ptr::from_ref(key) as u64;
            }
        }
        // The kernel refuses (EINVAL) a delete whose attr has anything set
        // past the key.
        if cmd != bpf_cmd::BPF_MAP_DELETE_ELEM {
            elem.__bindgen_anon_1.value = values.as_mut_ptr() as u64;
        }
        sys_bpf(cmd, &mut attr)
    }

    fn lookup_and_delete(&mut self, key: &FlowKey) -> io::Result<()> {
        self.element(bpf_cmd::BPF_MAP_LOOKUP_AND_DELETE_ELEM, key)
    }

    fn lookup_then_delete(&mut self, key: &FlowKey) -> io::Result<()> {
        self.element(bpf_cmd::BPF_MAP_LOOKUP_ELEM, key)?;
        match self.element(bpf_cmd::BPF_MAP_DELETE_ELEM, key) {
            // Gone in between (evicted): what was read is still its last count.
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            other => other,
        }
    }
}

/// `BPF_MAP_LOOKUP_BATCH` over `map` to its end, `keys.len()` entries at
/// a time: `each` gets the keys of every batch and their values.
fn lookup_batches<K>(
    map: &MapData,
    keys: &mut [K],
    values: &mut [FlowStats],
    mut each: impl FnMut(&[K], &[FlowStats]),
) -> anyhow::Result<()> {
    // The kernel's batch cursor for hash maps is a bucket index (u32).
    let mut cursor = 0u64;
    let mut first = true;
    loop {
        // SAFETY: an all-zero bpf_attr is valid for every command.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        // SAFETY: writing the union member the command reads.
        let batch = unsafe { &mut attr.batch };
        batch.in_batch = if first { 0 } else { &raw const cursor as u64 };
        batch.out_batch = &raw mut cursor as u64;
        batch.keys = keys.as_mut_ptr() as u64;
        batch.values = values.as_mut_ptr() as u64;
        batch.count = keys.len() as u32;
        batch.map_fd = map.fd().as_fd().as_raw_fd() as u32;
        let result = sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
        // SAFETY: the kernel wrote back how many entries it filled.
        let filled = (unsafe { attr.batch.count } as usize).min(keys.len());
        each(&keys[..filled], &values[..filled]);
        match result {
            Ok(()) => first = false,
            // ENOENT: the walk reached the end (possibly with a last chunk).
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(err) => return Err(err).context("BPF_MAP_LOOKUP_BATCH on a flow map"),
        }
    }
}

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<()> {
    // SAFETY: `attr` is a valid bpf_attr whose pointers reference buffers
    // sized for the map (BATCH keys of the map's key and BATCH values, each
    // FlowStats as the kernel lays it out).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
