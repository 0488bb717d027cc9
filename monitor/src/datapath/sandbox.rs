//! The classifiers for another network namespace: an overlay network's
//! sandbox, where Docker puts the host side of its containers' veths, or
//! a container's own, where its macvlan or ipvlan interface is.
//!
//! Its ifindexes may equal the host's, and the maps key interfaces by
//! ifindex, so each namespace gets an instance of its own, loaded with
//! `NETNS_TAG` set (the programs fold it into every ifindex they read),
//! sharing every map of the agent's instance: the maps are pinned for the
//! time of the load, the loader reuses pinned maps by path, the pins are
//! removed again. The instance is attached from a thread that entered the
//! namespace (`setns`: CAP_SYS_ADMIN, only for overlay, macvlan and ipvlan
//! networks).

use std::{
    fs::File,
    os::fd::{AsFd as _, AsRawFd as _},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use aya::{
    maps::{Map, MapData},
    Ebpf,
};
use monitor_common::{veth_id, GLOBAL_NETNS_TAG};

use super::load::{loader, DatapathConfig, Globals, OBJECT};

/// `BPF_FS_MAGIC`: the file system type of a bpffs.
const BPF_FS_MAGIC: libc::__fsword_t = 0xcafe_4a11;
/// Where bpffs usually is; a private one is mounted when it is not.
const BPFFS: &str = "/sys/fs/bpf";

/// Handles on every map of the agent's instance, to load more instances
/// that share them.
pub struct InstanceLoader {
    maps: Vec<(String, MapData)>,
    config: DatapathConfig,
}

impl InstanceLoader {
    /// Duplicates the handles of `ebpf`'s maps (all but the globals'
    /// sections, which each instance has its own of).
    pub(super) fn of(ebpf: &Ebpf, config: &DatapathConfig) -> anyhow::Result<Self> {
        let mut maps = Vec::new();
        for (name, map) in ebpf.maps() {
            if name.starts_with('.') {
                continue;
            }
            let data = map_data(map).with_context(|| format!("map {name}: unexpected type"))?;
            let fd = data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .with_context(|| format!("duplicating map {name}"))?;
            maps.push((
                name.to_owned(),
                MapData::from_fd(fd).with_context(|| format!("reopening map {name}"))?,
            ));
        }
        Ok(Self {
            maps,
            config: config.clone(),
        })
    }

    /// Loads and verifies the classifiers for the namespace tagged `tag`,
    /// on the agent's maps.
    pub fn load(&self, tag: u8) -> anyhow::Result<Ebpf> {
        let pins = PinDir::new(tag)?;
        for (name, map) in &self.maps {
            map.pin(pins.path.join(name))
                .with_context(|| format!("pinning map {name} in {}", pins.path.display()))?;
        }
        let paths: Vec<(&str, PathBuf)> = self
            .maps
            .iter()
            .map(|(name, _)| (name.as_str(), pins.path.join(name)))
            .collect();
        let tag_bits = veth_id(tag, 0);
        let globals = Globals::of(&self.config);
        let mut loader = loader(&globals);
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .override_global(GLOBAL_NETNS_TAG, &tag_bits, true)
            .load(OBJECT)
            .map_err(super::preflight::explain_load_error)?;
        drop(pins);
        for (name, ours) in &self.maps {
            let theirs = ebpf.map(name).and_then(map_data);
            let same = match theirs {
                Some(theirs) => ours.info()?.id() == theirs.info()?.id(),
                None => false,
            };
            if !same {
                bail!("the instance for namespace {tag} did not reuse map {name}");
            }
        }
        super::load::load_classifiers(&mut ebpf)?;
        Ok(ebpf)
    }
}

/// The `MapData` of the map kinds the object declares.
fn map_data(map: &Map) -> Option<&MapData> {
    match map {
        Map::Array(data)
        | Map::HashMap(data)
        | Map::LruHashMap(data)
        | Map::PerCpuArray(data)
        | Map::PerCpuHashMap(data)
        | Map::PerCpuLruHashMap(data)
        | Map::PerfEventArray(data)
        | Map::ProgramArray(data)
        | Map::RingBuf(data)
        | Map::LpmTrie(data)
        | Map::Stack(data)
        | Map::Queue(data) => Some(data),
        _ => None,
    }
}

/// A directory on a bpffs for the pins of one load, removed (and the
/// bpffs unmounted, if it was mounted for it) on drop.
struct PinDir {
    path: PathBuf,
    mounted: Option<PathBuf>,
}

impl PinDir {
    fn new(tag: u8) -> anyhow::Result<Self> {
        let pid = std::process::id();
        if is_bpffs(Path::new(BPFFS)) {
            let path = Path::new(BPFFS).join(format!("crossmon-{pid}-{tag}"));
            std::fs::create_dir_all(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            return Ok(Self {
                path,
                mounted: None,
            });
        }
        let point = std::env::temp_dir().join(format!("crossmon-{pid}-bpffs"));
        std::fs::create_dir_all(&point).with_context(|| format!("creating {}", point.display()))?;
        let target = std::ffi::CString::new(point.as_os_str().as_encoded_bytes())?;
        // SAFETY: NUL-terminated strings that outlive the call.
        let mounted = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if mounted != 0 {
            let err = std::io::Error::last_os_error();
            let _ = std::fs::remove_dir(&point);
            return Err(err).with_context(|| {
                format!(
                    "{BPFFS} is no bpffs and mounting one on {} failed",
                    point.display()
                )
            });
        }
        Ok(Self {
            path: point.clone(),
            mounted: Some(point),
        })
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        if let Some(point) = &self.mounted {
            if let Ok(target) = std::ffi::CString::new(point.as_os_str().as_encoded_bytes()) {
                // SAFETY: a NUL-terminated path of our own mount.
                unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(target) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(target.as_ptr(), &mut stat) == 0 && stat.f_type == BPF_FS_MAGIC
    }
}

/// Runs `work` on a thread that entered the network namespace at `netns`
/// (a file such as Docker's `<exec-root>/netns/1-<network id>`): interface
/// names, netlink and TCX attachments there are that namespace's.
pub fn within<T: Send>(
    netns: &Path,
    work: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    let file = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: a namespace file we hold open; setns changes only
                // this thread, which ends with the scope.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error()).with_context(|| {
                        format!("entering {} (setns needs CAP_SYS_ADMIN)", netns.display())
                    });
                }
                work()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the thread in {} panicked", netns.display()))?
    })
}

/// The name of interface `ifindex` of the calling thread's namespace.
pub fn interface_name(ifindex: u32) -> anyhow::Result<String> {
    let mut buffer = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname needs.
    let name = unsafe { libc::if_indextoname(ifindex, buffer.as_mut_ptr()) };
    if name.is_null() {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("no interface {ifindex}"));
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into the buffer.
    let name = unsafe { std::ffi::CStr::from_ptr(buffer.as_ptr()) };
    Ok(name.to_string_lossy().into_owned())
}
