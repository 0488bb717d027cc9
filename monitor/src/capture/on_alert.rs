//! `--capture-on-alert DIR`: an alert of the chosen kinds starts a bounded
//! capture of the pair it names, written to DIR as pcapng and named in the
//! alert (`capture`). Captures on alert are capped in number, and DIR in
//! bytes (the oldest files are removed).

use std::{
    collections::{BTreeSet, HashSet},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::Context as _;
use tokio::io::AsyncWriteExt as _;

use super::{CaptureRequest, Captures, Target, DEFAULT_SNAPLEN};
use crate::{
    alert::{Alert, AlertEvidence},
    docker::{EndKind, FlowEnd, Snapshot},
    sync::{lock, Published},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnAlertConfig {
    pub dir: PathBuf,
    /// Alert kinds that start a capture.
    pub kinds: BTreeSet<String>,
    pub duration: Duration,
    pub count: u64,
    /// Captures on alert running at once; more alerts meanwhile get none.
    pub max_running: usize,
    /// Bytes of pcapng files kept in `dir`; the oldest go first.
    pub max_bytes: u64,
}

impl OnAlertConfig {
    /// The kinds that name an attacker and a victim: what a responder
    /// wants the packets of.
    pub const DEFAULT_KINDS: &'static str =
        "port_scan,host_sweep,syn_flood,ip_spoof,arp_spoof,isolation_violation";
    /// Every alert kind crossmon raises (docs/alerts.md).
    pub const KNOWN_KINDS: &'static [&'static str] = &[
        "arp_spoof",
        "cleartext",
        "host_access",
        "host_sweep",
        "ip_spoof",
        "isolation_violation",
        "new_connection",
        "policy_violation",
        "port_scan",
        "syn_flood",
        "traffic_spike",
    ];

    /// `--capture-on-alert-kinds`: comma-separated, each one crossmon raises.
    pub fn parse_kinds(list: &str) -> anyhow::Result<BTreeSet<String>> {
        let kinds: BTreeSet<String> = list
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(unknown) = kinds
            .iter()
            .find(|k| !Self::KNOWN_KINDS.contains(&k.as_str()))
        {
            anyhow::bail!(
                "--capture-on-alert-kinds: no alert kind {unknown:?} (known: {})",
                Self::KNOWN_KINDS.join(", ")
            );
        }
        anyhow::ensure!(
            !kinds.is_empty(),
            "--capture-on-alert-kinds: name at least one kind"
        );
        Ok(kinds)
    }
    pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
    pub const DEFAULT_COUNT: u64 = 1000;
    pub const DEFAULT_MAX_RUNNING: usize = 4;
    pub const DEFAULT_MAX_MIB: u64 = 256;

    /// Makes DIR if needed and proves it writable, before the agent starts.
    pub fn check_dir(dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--capture-on-alert {}: cannot create it", dir.display()))?;
        let probe = dir.join(format!(".crossmon-probe-{}", std::process::id()));
        std::fs::write(&probe, b"")
            .with_context(|| format!("--capture-on-alert {}: not writable", dir.display()))?;
        let _ = std::fs::remove_file(&probe);
        Ok(())
    }
}

/// The alert sink's evidence: starts the captures.
pub struct CaptureOnAlert {
    pub config: OnAlertConfig,
    pub captures: Arc<Captures>,
    pub docker: Published<Snapshot>,
    /// The agent's runtime, which writes the files: alerts are raised on
    /// the poller's and the event consumer's threads.
    pub runtime: tokio::runtime::Handle,
    running: Arc<AtomicUsize>,
    /// Files being written, never removed to make room.
    writing: Arc<Mutex<HashSet<PathBuf>>>,
}

impl CaptureOnAlert {
    pub fn new(
        config: OnAlertConfig,
        captures: Arc<Captures>,
        docker: Published<Snapshot>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            config,
            captures,
            docker,
            runtime,
            running: Arc::new(AtomicUsize::new(0)),
            writing: Arc::new(Mutex::new(HashSet::new())),
        }
    }
}

/// The container to capture and the peer to filter on: the source when it
/// is a container (the attacker), else the destination.
fn pair(alert: &Alert) -> Option<(String, Option<String>)> {
    let container = |end: &FlowEnd| {
        (end.kind == EndKind::Container)
            .then(|| end.name.clone())
            .flatten()
    };
    let address = |end: &FlowEnd| end.ip.map(|ip| ip.to_string());
    let destination = alert.destination.as_ref();
    if let Some(name) = container(&alert.source) {
        return Some((name, destination.and_then(address)));
    }
    let destination = destination?;
    Some((container(destination)?, address(&alert.source)))
}

/// A file name from the alert's time, kind and container: sortable, no
/// characters a shell or a file system minds.
fn file_name(alert: &Alert, container: &str) -> String {
    let clean = |text: &str| -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    format!(
        "{}-{}-{}.pcapng",
        clean(&alert.time),
        alert.kind,
        clean(container)
    )
}

impl AlertEvidence for CaptureOnAlert {
    fn collect(&mut self, alert: &Alert) -> Option<String> {
        if !self.config.kinds.contains(alert.kind) {
            return None;
        }
        let (container, peer) = pair(alert)?;
        if self.running.load(Ordering::Relaxed) >= self.config.max_running {
            tracing::info!(
                kind = alert.kind,
                "no capture for this alert: {} captures on alert run already",
                self.config.max_running
            );
            return None;
        }
        let request = CaptureRequest {
            container: container.clone(),
            peer,
            port: None,
            protocol: None,
            duration: Some(self.config.duration),
            count: Some(self.config.count),
            snaplen: DEFAULT_SNAPLEN,
        };
        let started = Target::resolve(&self.docker.load(), &request)
            .and_then(|target| self.captures.start(target));
        let capture = match started {
            Ok(capture) => capture,
            Err(err) => {
                tracing::info!(kind = alert.kind, "no capture for this alert: {err}");
                return None;
            }
        };
        let name = file_name(alert, &container);
        let path = self.config.dir.join(&name);
        self.running.fetch_add(1, Ordering::Relaxed);
        lock(&self.writing).insert(path.clone());
        let running = self.running.clone();
        let writing = self.writing.clone();
        let dir = self.config.dir.clone();
        let max_bytes = self.config.max_bytes;
        self.runtime.spawn(async move {
            if let Err(err) = write_capture(capture, &path).await {
                tracing::warn!("capture on alert {}: {err:#}", path.display());
            }
            lock(&writing).remove(&path);
            running.fetch_sub(1, Ordering::Relaxed);
            let keep = lock(&writing).clone();
            if let Err(err) = trim(&dir, max_bytes, &keep) {
                tracing::warn!("keeping {} under its size cap: {err:#}", dir.display());
            }
        });
        Some(name)
    }
}

async fn write_capture(capture: super::Capture, path: &Path) -> anyhow::Result<()> {
    let mut file = tokio::fs::File::create(path)
        .await
        .with_context(|| format!("creating {}", path.display()))?;
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let streaming = tokio::spawn(capture.stream(sender));
    while let Some(chunk) = receiver.recv().await {
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    streaming.await?;
    Ok(())
}

/// Removes the oldest `*.pcapng` files of `dir` (but those in `keep`) until
/// the rest take at most `max_bytes`.
pub fn trim(dir: &Path, max_bytes: u64, keep: &HashSet<PathBuf>) -> anyhow::Result<()> {
    let mut files: Vec<(std::time::SystemTime, PathBuf, u64)> = std::fs::read_dir(dir)?
        .flatten()
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "pcapng"))
        .filter_map(|entry| {
            let meta = entry.metadata().ok()?;
            Some((meta.modified().ok()?, entry.path(), meta.len()))
        })
        .collect();
    files.sort();
    let mut total: u64 = files.iter().map(|(_, _, len)| len).sum();
    for (_, path, len) in files {
        if total <= max_bytes {
            break;
        }
        if keep.contains(&path) {
            continue;
        }
        std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        total = total.saturating_sub(len);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_files_go_first_and_those_being_written_stay() {
        let dir = std::env::temp_dir().join(format!("crossmon-trim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let names = ["a.pcapng", "b.pcapng", "c.pcapng", "d.pcapng"];
        for name in names {
            std::fs::write(dir.join(name), [0u8; 100]).unwrap();
            // Distinct modification times, in this order.
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::write(dir.join("notes.txt"), [0u8; 1000]).unwrap();
        let keep: HashSet<PathBuf> = [dir.join("a.pcapng")].into();
        trim(&dir, 250, &keep).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        // a (being written) still counts: b and c go, other files stay.
        assert_eq!(left, ["a.pcapng", "d.pcapng", "notes.txt"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
