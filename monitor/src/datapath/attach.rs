//! Attaching both classifiers to the host-side veths of containers.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use aya::{
    programs::{
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions, TcAttachType},
        LinkOrder, SchedClassifier, TestRun as _, TestRunOptions,
    },
    Ebpf,
};
use serde::Serialize;

use monitor_common::{veth_id, veth_id_parts};

use super::{
    counted::CountedIfaces,
    sandbox::{self, InstanceLoader},
    PROGRAM_FROM_CONTAINER, PROGRAM_TO_CONTAINER,
};

/// One veth with both programs attached.
#[derive(Debug, Serialize)]
pub struct VethAttachment {
    pub ifindex: u32,
    pub name: String,
    /// The bridge the veth is a port of.
    pub bridge_ifindex: u32,
    /// `tcx` or `clsact` (netlink, kernels before 6.6).
    pub mode: &'static str,
    /// The namespace of an interface outside the agent's (an overlay
    /// network's sandbox, a container's own); its ifindex field is then
    /// its tagged id.
    pub netns: Option<PathBuf>,
    pub side: Side,
    #[serde(skip)]
    links: [SchedClassifierLinkId; 2],
}

/// Which end of a container's link an interface is: which of its hooks
/// sees what the container sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// A veth's end outside the container (on a bridge, in an overlay's
    /// sandbox): what the container sends enters it (TC ingress).
    #[default]
    Host,
    /// The container's own interface, inside its namespace (macvlan,
    /// ipvlan, which have no end outside): what it sends leaves it (TC
    /// egress).
    Container,
}

impl Side {
    /// The hooks of `from_container` and `to_container`, in that order.
    fn hooks(self) -> [TcAttachType; 2] {
        match self {
            Side::Host => [TcAttachType::Ingress, TcAttachType::Egress],
            Side::Container => [TcAttachType::Egress, TcAttachType::Ingress],
        }
    }
}

/// How the classifiers are hooked to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttachMode {
    /// TCX links where the kernel has them (6.6+), `clsact` filters before.
    #[default]
    Auto,
    /// Netlink `clsact` filters even where TCX exists, next to tools that
    /// manage tc filters and expect to see everyone's there.
    Clsact,
}

/// The kernel's run statistics of one program.
#[derive(Clone, Debug)]
pub struct ProgramRunStats {
    pub name: &'static str,
    pub run_time: std::time::Duration,
    pub run_count: u64,
    /// Instructions the verifier processed to accept it (kernels 5.16+
    /// report it).
    pub verified_instructions: Option<u32>,
    /// Instructions of the program as the kernel runs it, after the
    /// verifier's rewrites (`bpftool prog`'s xlated length / 8).
    pub translated_instructions: Option<u32>,
    /// Bytes of its JIT-compiled code (`None` without the JIT).
    pub jited_bytes: Option<u32>,
}

/// The loaded programs and where they are attached.
pub struct Programs {
    ebpf: Ebpf,
    counted_ifaces: CountedIfaces,
    /// By id (`veth_id`): ifindexes in the agent's namespace, tagged ones
    /// in others.
    attached: BTreeMap<u32, VethAttachment>,
    tcx: bool,
    instances: InstanceLoader,
    /// The instances for other namespaces, by tag.
    sandboxes: BTreeMap<u8, Ebpf>,
}

impl Programs {
    pub(super) fn new(
        ebpf: Ebpf,
        counted_ifaces: CountedIfaces,
        mode: AttachMode,
        instances: InstanceLoader,
    ) -> Self {
        Self {
            ebpf,
            counted_ifaces,
            attached: BTreeMap::new(),
            tcx: mode == AttachMode::Auto && super::preflight::has_tcx(),
            instances,
            sandboxes: BTreeMap::new(),
        }
    }

    /// Attaches to both directions of `name` (ifindex `ifindex`), a port of
    /// bridge `bridge_ifindex`. Attaching twice to one interface is a no-op.
    pub fn attach(&mut self, name: &str, ifindex: u32, bridge_ifindex: u32) -> anyhow::Result<()> {
        if self.attached.contains_key(&ifindex) {
            return Ok(());
        }
        self.mark(ifindex)?;
        let links = match hook(&mut self.ebpf, self.tcx, name, Side::Host) {
            Ok(links) => links,
            Err(err) => {
                self.unmark(ifindex);
                return Err(err);
            }
        };
        self.attached.insert(
            ifindex,
            VethAttachment {
                ifindex,
                name: name.to_owned(),
                bridge_ifindex,
                mode: self.mode(),
                netns: None,
                side: Side::Host,
                links,
            },
        );
        Ok(())
    }

    /// Attaches to both directions of interface `ifindex` of the network
    /// namespace at `netns` (an overlay network's sandbox, `Side::Host`; a
    /// container's own, `Side::Container`), tagged `tag` (1 and up, one per
    /// namespace): its id is `veth_id(tag, ifindex)`. The namespace's
    /// instance of the programs is loaded at its first interface.
    pub fn attach_in(
        &mut self,
        netns: &Path,
        tag: u8,
        ifindex: u32,
        side: Side,
    ) -> anyhow::Result<()> {
        let id = veth_id(tag, ifindex);
        if tag == 0 || ifindex >= veth_id(1, 0) {
            bail!(
                "interface {ifindex} of {} cannot be tagged {tag}",
                netns.display()
            );
        }
        if self.attached.contains_key(&id) {
            return Ok(());
        }
        if !self.sandboxes.contains_key(&tag) {
            // Entered first: without CAP_SYS_ADMIN (not in the default
            // set) this fails, and it must not cost a load and a
            // verification of the programs at every listing.
            sandbox::within(netns, || sandbox::interface_name(ifindex))?;
            let ebpf = self
                .instances
                .load(tag)
                .with_context(|| format!("loading the programs for {}", netns.display()))?;
            self.sandboxes.insert(tag, ebpf);
        }
        // At the ingress hook of a container's own interface, a packet has
        // come in through that interface itself: marked, `to_container`
        // would take everything delivered to the container for counted
        // already. Unmarked, what a watched sibling sent it (a macvlan's,
        // switched in the driver, on the sender's CPU) is known by its
        // flow, as routed traffic is.
        if side == Side::Host {
            self.mark(id)?;
        }
        let tcx = self.tcx;
        let attached = match self.sandboxes.get_mut(&tag) {
            Some(sandbox) => sandbox::within(netns, || {
                let name = sandbox::interface_name(ifindex)?;
                let links = hook(sandbox, tcx, &name, side)?;
                Ok((name, links))
            }),
            None => Err(anyhow::anyhow!("no programs for {}", netns.display())),
        };
        let (name, links) = match attached {
            Ok(attached) => attached,
            Err(err) => {
                self.unmark(id);
                self.drop_unused_sandboxes();
                return Err(err);
            }
        };
        self.attached.insert(
            id,
            VethAttachment {
                ifindex: id,
                name,
                bridge_ifindex: 0,
                mode: self.mode(),
                netns: Some(netns.to_owned()),
                side,
                links,
            },
        );
        Ok(())
    }

    /// Network namespaces other than the agent's with programs loaded.
    pub fn sandbox_count(&self) -> usize {
        self.sandboxes.len()
    }

    /// Detaches from `ifindex`. An interface that is already gone detached
    /// itself; that is not an error.
    pub fn detach(&mut self, ifindex: u32) -> anyhow::Result<()> {
        let Some(attachment) = self.attached.remove(&ifindex) else {
            return Ok(());
        };
        let result = match &attachment.netns {
            // A veth deleted meanwhile took its filters with it.
            None => match unhook(&mut self.ebpf, attachment.links) {
                Err(err)
                    if sandbox::interface_name(ifindex)
                        .is_ok_and(|name| name == attachment.name) =>
                {
                    Err(err)
                }
                _ => Ok(()),
            },
            Some(netns) => {
                let (tag, _) = veth_id_parts(ifindex);
                match self.sandboxes.get_mut(&tag) {
                    // A namespace already gone took the attachments with it.
                    Some(sandbox) => {
                        sandbox::within(netns, || unhook(sandbox, attachment.links)).or(Ok(()))
                    }
                    None => Ok(()),
                }
            }
        };
        self.unmark(ifindex);
        self.drop_unused_sandboxes();
        result.with_context(|| format!("detaching from {}", attachment.name))
    }

    /// Detaches from every interface; errors are logged, not returned, so
    /// one vanished interface does not keep the others attached.
    pub fn detach_all(&mut self) -> usize {
        let ifindexes: Vec<u32> = self.attached.keys().copied().collect();
        for ifindex in &ifindexes {
            if let Err(err) = self.detach(*ifindex) {
                // clsact filters outlive the agent.
                tracing::warn!("{err:#}: its classifiers may keep running");
            }
        }
        ifindexes.len()
    }

    pub fn attached(&self) -> impl Iterator<Item = &VethAttachment> {
        self.attached.values()
    }

    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.attached.contains_key(&ifindex)
    }

    /// What the kernel measured of each program (zero unless
    /// `kernel.bpf_stats_enabled` is on).
    pub fn run_stats(&self) -> anyhow::Result<Vec<ProgramRunStats>> {
        [PROGRAM_FROM_CONTAINER, PROGRAM_TO_CONTAINER]
            .into_iter()
            .map(|name| {
                let program: &SchedClassifier = self
                    .ebpf
                    .program(name)
                    .with_context(|| format!("program {name} missing"))?
                    .try_into()?;
                let info = program
                    .info()
                    .with_context(|| format!("BPF_OBJ_GET_INFO_BY_FD of {name}"))?;
                Ok(ProgramRunStats {
                    name,
                    run_time: info.run_time(),
                    run_count: info.run_count(),
                    verified_instructions: info.verified_instruction_count(),
                    translated_instructions: info.size_translated().map(|bytes| bytes / 8),
                    jited_bytes: Some(info.size_jitted()).filter(|&bytes| bytes != 0),
                })
            })
            .collect()
    }

    /// Runs one program on a synthetic frame through `BPF_PROG_TEST_RUN`, no
    /// interface needed: returns the verdict and the frame as the program
    /// left it. Used by the parser tests and the fuzzer.
    pub fn test_run(&mut self, name: &str, frame: &[u8]) -> anyhow::Result<(i32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len()];
        let result = self
            .program(name)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .with_context(|| {
                format!(
                    "BPF_PROG_TEST_RUN of {name} on a {}-byte frame",
                    frame.len()
                )
            })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value as i32, out))
    }

    /// Runs program `name` on `frame` `repeat` times in the kernel
    /// (BPF_PROG_TEST_RUN): its verdict and the mean time of one run, as
    /// the kernel measures it around the program alone.
    pub fn time_runs(
        &mut self,
        name: &str,
        frame: &[u8],
        repeat: u32,
    ) -> anyhow::Result<(i32, std::time::Duration)> {
        self.time_runs_from(name, frame, 0, repeat)
    }

    /// [`Self::time_runs`] on a frame that came into the host through
    /// interface `ingress_ifindex` (0: none), as a bridged one did. 5.10's
    /// BPF_PROG_TEST_RUN refuses an ingress ifindex (EINVAL).
    pub fn time_runs_from(
        &mut self,
        name: &str,
        frame: &[u8],
        ingress_ifindex: u32,
        repeat: u32,
    ) -> anyhow::Result<(i32, std::time::Duration)> {
        // `offsetof(struct __sk_buff, ingress_ifindex)`, UAPI.
        const INGRESS_IFINDEX: usize = 36;
        // The context up to that field, the one set: the kernel takes a
        // shorter context and requires the fields it does not accept to
        // be zero.
        let mut ctx = [0u8; INGRESS_IFINDEX + 4];
        ctx[INGRESS_IFINDEX..].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        let result = self
            .program(name)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: (ingress_ifindex != 0).then_some(&ctx[..]),
                repeat,
                ..TestRunOptions::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {name}, {repeat} times"))?;
        Ok((result.return_value as i32, result.duration))
    }

    /// Runs program `name` on `frame` `repeat` times on `cpus` CPUs at the
    /// same time (the first this thread may run on), one thread pinned to
    /// each: the mean time of one run on each. What counting costs, and
    /// whether its counts stay exact, when several CPUs count one flow at
    /// once.
    pub fn time_runs_on_cpus(
        &mut self,
        name: &str,
        frame: &[u8],
        repeat: u32,
        cpus: usize,
    ) -> anyhow::Result<Vec<std::time::Duration>> {
        let allowed = allowed_cpus()?;
        anyhow::ensure!(
            allowed.len() >= cpus,
            "needs {cpus} CPUs to run on at once; this thread may run on {}",
            allowed.len()
        );
        // Shared by the threads: a test run needs no more than `&`.
        let program: &SchedClassifier = self.program(name)?;
        let start = std::sync::Barrier::new(cpus);
        std::thread::scope(|scope| {
            let runs: Vec<_> = allowed[..cpus]
                .iter()
                .map(|&cpu| {
                    let start = &start;
                    scope.spawn(move || {
                        let pinned = pin_to_cpu(cpu);
                        // Every thread reaches the barrier, pinned or not,
                        // so none waits for one that gave up.
                        start.wait();
                        pinned?;
                        let result = program
                            .test_run(TestRunOptions {
                                data_in: Some(frame),
                                repeat,
                                ..TestRunOptions::default()
                            })
                            .with_context(|| {
                                format!("BPF_PROG_TEST_RUN of {name} on CPU {cpu}, {repeat} times")
                            })?;
                        Ok(result.duration)
                    })
                })
                .collect();
            runs.into_iter()
                .map(|run| {
                    run.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a test-run thread panicked")))
                })
                .collect()
        })
    }

    fn program(&mut self, name: &str) -> anyhow::Result<&mut SchedClassifier> {
        program(&mut self.ebpf, name)
    }

    fn mode(&self) -> &'static str {
        if self.tcx {
            "tcx"
        } else {
            "clsact"
        }
    }

    /// Mark before attaching, so the first packet leaving through another
    /// veth already knows this one's traffic is counted on the way in.
    fn mark(&mut self, ifindex: u32) -> anyhow::Result<()> {
        self.counted_ifaces.insert(ifindex)
    }

    /// A namespace's instance goes with its last attachment.
    fn drop_unused_sandboxes(&mut self) {
        let used: std::collections::BTreeSet<u8> = self
            .attached
            .values()
            .filter(|a| a.netns.is_some())
            .map(|a| veth_id_parts(a.ifindex).0)
            .collect();
        self.sandboxes.retain(|tag, _| used.contains(tag));
    }

    fn unmark(&mut self, ifindex: u32) {
        self.counted_ifaces.remove(ifindex);
    }
}

pub(super) fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> anyhow::Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing"))?
        .try_into()
        .with_context(|| format!("program {name} is not a TC classifier"))
}

/// The CPUs the calling thread may run on (its cpuset, `taskset`).
fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is the empty set, filled by the kernel.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a cpu_set_t of the size given; 0 is this thread.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return Err(std::io::Error::last_os_error()).context("reading this thread's CPUs");
    }
    // SAFETY: CPU_ISSET reads a bit below CPU_SETSIZE of a valid set.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Keeps the calling thread on `cpu`, one of [`allowed_cpus`].
fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; `cpu` is below
    // CPU_SETSIZE; the call only reads the set; 0 is this thread.
    let ret = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning a thread to CPU {cpu}"));
    }
    Ok(())
}

/// Attaches `ebpf`'s classifiers to both directions of `name`, an
/// interface of the calling thread's namespace, the container's `side`.
fn hook(
    ebpf: &mut Ebpf,
    tcx: bool,
    name: &str,
    side: Side,
) -> anyhow::Result<[SchedClassifierLinkId; 2]> {
    if !tcx {
        // Legacy TC needs the clsact qdisc. It may exist already (ours
        // from an earlier attachment, or another tool's): then adding
        // fails, harmlessly, and attaching below says if it is missing.
        if let Err(err) = tc::qdisc_add_clsact(name) {
            tracing::debug!("adding clsact to {name}: {err}");
        }
        remove_leftover_filters(name, side);
    }
    let options = || {
        if tcx {
            TcAttachOptions::TcxOrder(LinkOrder::default())
        } else {
            TcAttachOptions::Netlink(NlOptions::default())
        }
    };
    let [sent, delivered] = side.hooks();
    let from = program(ebpf, PROGRAM_FROM_CONTAINER)?
        .attach_with_options(name, sent, options())
        .with_context(|| format!("attaching to {sent:?} of {name}"))?;
    match program(ebpf, PROGRAM_TO_CONTAINER)?.attach_with_options(name, delivered, options()) {
        Ok(to) => Ok([from, to]),
        Err(err) => {
            let _ = program(ebpf, PROGRAM_FROM_CONTAINER)?.detach(from);
            Err(err).with_context(|| format!("attaching to {delivered:?} of {name}"))
        }
    }
}

/// Detaches what [`hook`] attached, in the namespace it attached in.
fn unhook(ebpf: &mut Ebpf, [from, to]: [SchedClassifierLinkId; 2]) -> anyhow::Result<()> {
    let from = program(ebpf, PROGRAM_FROM_CONTAINER)?.detach(from);
    let to = program(ebpf, PROGRAM_TO_CONTAINER)?.detach(to);
    from.and(to).map_err(anyhow::Error::new)
}

/// Netlink filters outlive the process that added them (TCX links do
/// not): a crossmon killed without detaching leaves its classifiers running
/// into maps nobody reads. They are known by their programs' names, and
/// removed before attaching so an interface never runs two copies. Two
/// agents in clsact mode on one host would remove each other's; the API
/// address they would share stops the second before it attaches.
fn remove_leftover_filters(interface: &str, side: Side) {
    let [sent, delivered] = side.hooks();
    for (direction, program) in [
        (sent, PROGRAM_FROM_CONTAINER),
        (delivered, PROGRAM_TO_CONTAINER),
    ] {
        match tc::qdisc_detach_program(interface, direction, program) {
            Ok(()) => tracing::warn!(
                interface,
                program,
                "removed the clsact filter a previous crossmon left (it stopped without detaching)"
            ),
            Err(tc::TcError::IoError(err)) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => tracing::warn!(
                interface,
                program,
                "looking for filters a previous crossmon left: {err}"
            ),
        }
    }
}

impl Drop for Programs {
    fn drop(&mut self) {
        // aya detaches links when the programs drop; doing it here first
        // keeps the counted-interface map consistent and logs failures.
        self.detach_all();
    }
}
