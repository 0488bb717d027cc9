//! The host-side veth of a container's interface, read from the
//! container's network namespace: a veth's `IFLA_LINK` there is its peer's
//! ifindex in the root namespace. Exact, unlike guessing from names or
//! creation order.
//!
//! The namespace is read from outside, over the agent's own rtnetlink
//! socket: its id in the root namespace (`RTM_GETNSID` by pid) and a link
//! dump aimed at that id (`IFLA_TARGET_NETNSID`, Linux 4.20). Entering it
//! with `setns` would need CAP_SYS_ADMIN, and opening `/proc/PID/ns/net` of
//! a process with other capabilities CAP_SYS_PTRACE; this way needs only
//! the CAP_NET_ADMIN that attaching needs anyway.
//!
//! An agent without the host's PID namespace (a Swarm service cannot have
//! it) cannot name a namespace by the pid Docker reports: it names it by
//! a descriptor of the file Docker keeps it under (the container's
//! `SandboxKey`, an nsfs bind mount the agent can open when that
//! directory is mounted into it), the same request with `NETNSA_FD`.

use std::{collections::HashMap, os::fd::AsRawFd as _, path::Path};

use anyhow::{bail, Context as _};
use futures::{StreamExt as _, TryStreamExt as _};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_route::{
    link::{InfoKind, LinkAttribute, LinkInfo},
    nsid::{NsidAttribute, NsidMessage},
    RouteNetlinkMessage,
};
use rtnetlink::Handle;

/// An Ethernet interface inside a container: a veth with its peer
/// outside, or one with no peer (macvlan, ipvlan), watched from inside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerLink {
    pub name: String,
    pub mac: Option<[u8; 6]>,
    /// Its ifindex in the container's namespace.
    pub ifindex: u32,
    /// The host-side veth's ifindex; `None` for an interface that is no
    /// veth (a macvlan or ipvlan one, whose traffic crosses no host veth).
    pub peer_ifindex: Option<u32>,
}

/// `NETNSA_NSID_NOT_ASSIGNED`: the namespace has no id in ours yet.
const NSID_NOT_ASSIGNED: i32 = -1;

/// Lists the Ethernet interfaces inside the network namespace of process `pid` (a pid
/// of the agent's PID namespace: the host's, for Docker's `State.Pid`).
pub async fn container_links(pid: u32) -> anyhow::Result<Vec<ContainerLink>> {
    links_of(Namespace::Pid(pid)).await
}

/// Lists the Ethernet interfaces inside the network namespace bound at `path` (a
/// container's `SandboxKey`, `<exec-root>/netns/<id>`).
pub async fn sandbox_links(path: &Path) -> anyhow::Result<Vec<ContainerLink>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("opening the network namespace {}", path.display()))?;
    let fd = u32::try_from(file.as_raw_fd()).context("descriptor")?;
    links_of(Namespace::Fd(fd, path)).await
}

/// A network namespace named by a process in it, or by an open descriptor
/// of it (and the file it was opened from, for messages).
#[derive(Clone, Copy)]
enum Namespace<'a> {
    Pid(u32),
    Fd(u32, &'a Path),
}

impl Namespace<'_> {
    fn attribute(self) -> NsidAttribute {
        match self {
            Namespace::Pid(pid) => NsidAttribute::Pid(pid),
            Namespace::Fd(fd, _) => NsidAttribute::Fd(fd),
        }
    }
}

impl std::fmt::Display for Namespace<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Namespace::Pid(pid) => write!(f, "pid {pid}'s network namespace"),
            Namespace::Fd(_, path) => write!(f, "network namespace {}", path.display()),
        }
    }
}

async fn links_of(namespace: Namespace<'_>) -> anyhow::Result<Vec<ContainerLink>> {
    let handle = crate::links::connect()?;
    let nsid = namespace_id(&handle, namespace).await?;
    let links = namespace_links(&handle, nsid)
        .await
        .with_context(|| format!("listing the links of {namespace}"))?;
    Ok(links.into_iter().map(|(_, link)| link).collect())
}

/// The peers of the host's bridge-enslaved veths, read in their own
/// namespaces, each with its host veth as `peer_ifindex`: how a container
/// whose process already exited is still matched to its veths.
pub async fn host_veth_peers() -> anyhow::Result<Vec<ContainerLink>> {
    let handle = crate::links::connect()?;
    let mut by_namespace: HashMap<i32, Vec<(u32, u32)>> = HashMap::new();
    for port in crate::links::bridge_veths(&handle).await? {
        if let Some((nsid, peer)) = port.peer {
            by_namespace
                .entry(nsid)
                .or_default()
                .push((peer, port.ifindex));
        }
    }
    let mut peers = Vec::new();
    for (nsid, wanted) in by_namespace {
        // A namespace torn down meanwhile: its veths are gone too.
        let Ok(links) = namespace_links(&handle, nsid).await else {
            continue;
        };
        for (index, mut link) in links {
            if link.peer_ifindex.is_none() {
                continue;
            }
            if let Some((_, host)) = wanted.iter().find(|(peer, _)| *peer == index) {
                link.peer_ifindex = Some(*host);
                peers.push(link);
            }
        }
    }
    Ok(peers)
}

/// Namespace ids of containers' processes, by (container id, pid): an id
/// lives as long as its namespace, and a container restarted has a new
/// pid.
#[derive(Default)]
pub struct NamespaceIds(HashMap<(String, u32), i32>);

/// The container whose processes live in network namespace `nsid` (an id
/// in ours: a host veth's `IFLA_LINK_NETNSID`), found through the cgroups
/// of the processes running now; `None` if no container process is in it
/// (gone already, or not a container's). Namespaces shared by several
/// containers (`--network container:`) name the one with the lowest pid,
/// mostly the one that made it.
pub async fn owner_of_namespace(
    handle: &Handle,
    nsid: i32,
    known: &mut NamespaceIds,
) -> Option<String> {
    let running = super::cgroup::container_pids();
    known.0.retain(|(id, pid), _| running.get(id) == Some(pid));
    let mut candidates: Vec<(u32, String)> = Vec::new();
    for (id, pid) in running {
        let key = (id, pid);
        let found = match known.0.get(&key) {
            Some(found) => *found,
            None => match query_nsid(handle, Namespace::Pid(pid)).await {
                // Not assigned yet: it may get one when a veth moves in.
                Ok(NSID_NOT_ASSIGNED) | Err(_) => continue,
                Ok(found) => {
                    known.0.insert(key.clone(), found);
                    found
                }
            },
        };
        if found == nsid {
            candidates.push((key.1, key.0));
        }
    }
    candidates.into_iter().min().map(|(_, id)| id)
}

/// The Ethernet interfaces of namespace `nsid` (an id in ours), with
/// their ifindex there: veths with a peer, and any other with a MAC
/// (macvlan, ipvlan; not the loopback, whose address is all zeros).
async fn namespace_links(handle: &Handle, nsid: i32) -> anyhow::Result<Vec<(u32, ContainerLink)>> {
    let mut request = handle.link().get();
    request
        .message_mut()
        .attributes
        .push(LinkAttribute::IfNetnsId(nsid));
    let mut dump = request.execute();
    let mut links = Vec::new();
    while let Some(message) = dump
        .try_next()
        .await
        .with_context(|| format!("listing the links of network namespace {nsid}"))?
    {
        let index = message.header.index;
        let mut link = ContainerLink {
            name: String::new(),
            mac: None,
            ifindex: index,
            peer_ifindex: None,
        };
        let mut is_veth = false;
        let mut peer = 0;
        for attribute in message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Address(mac) => link.mac = mac.try_into().ok(),
                LinkAttribute::Link(index) => peer = index,
                LinkAttribute::LinkInfo(infos) => {
                    is_veth = infos
                        .iter()
                        .any(|info| matches!(info, LinkInfo::Kind(InfoKind::Veth)));
                }
                _ => {}
            }
        }
        if is_veth {
            if peer != 0 {
                link.peer_ifindex = Some(peer);
                links.push((index, link));
            }
        } else if link.mac.is_some_and(|mac| mac != [0; 6]) {
            links.push((index, link));
        }
    }
    Ok(links)
}

/// The id of a network namespace in ours. Moving a veth end into a
/// namespace usually gives it one; if not, the kernel is asked to pick one
/// (ids live as long as the namespace, as `ip netns set` ones do).
async fn namespace_id(handle: &Handle, namespace: Namespace<'_>) -> anyhow::Result<i32> {
    let assigned = query_nsid(handle, namespace).await?;
    if assigned != NSID_NOT_ASSIGNED {
        return Ok(assigned);
    }
    let assign = nsid_message(vec![
        namespace.attribute(),
        NsidAttribute::Id(NSID_NOT_ASSIGNED),
    ]);
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::NewNsId(assign));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut answers = handle
        .clone()
        .request(request)
        .context("asking for a network namespace id")?;
    while let Some(answer) = answers.next().await {
        if let NetlinkPayload::Error(err) = answer.payload {
            if let Some(code) = err.code {
                // EEXIST: another process assigned one meanwhile.
                if code.get() != -libc::EEXIST {
                    return Err(err.to_io())
                        .with_context(|| format!("assigning an id to {namespace}"));
                }
            }
        }
    }
    match query_nsid(handle, namespace).await? {
        NSID_NOT_ASSIGNED => bail!("{namespace} got no id"),
        nsid => Ok(nsid),
    }
}

async fn query_nsid(handle: &Handle, namespace: Namespace<'_>) -> anyhow::Result<i32> {
    let query = nsid_message(vec![namespace.attribute()]);
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(query));
    request.header.flags = NLM_F_REQUEST;
    let mut answers = handle
        .clone()
        .request(request)
        .context("asking for a network namespace id")?;
    while let Some(answer) = answers.next().await {
        match answer.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(message)) => {
                if let Some(nsid) = message.attributes.iter().find_map(|a| match a {
                    NsidAttribute::Id(id) => Some(*id),
                    _ => None,
                }) {
                    return Ok(nsid);
                }
            }
            NetlinkPayload::Error(err) => {
                return Err(err.to_io()).with_context(|| {
                    format!("reading the id of {namespace} (a pid of another PID namespace?)")
                });
            }
            _ => {}
        }
    }
    bail!("no answer for the id of {namespace}")
}

/// `NsidMessage` is `#[non_exhaustive]`: no struct literal.
fn nsid_message(attributes: Vec<NsidAttribute>) -> NsidMessage {
    let mut message = NsidMessage::default();
    message.attributes = attributes;
    message
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command};

    use super::*;

    /// A process in a network namespace of its own, killed on drop.
    struct Isolated(Child);

    impl Isolated {
        fn start() -> Self {
            let child = Command::new("unshare")
                .args(["--net", "sleep", "60"])
                .spawn()
                .expect("unshare (util-linux)");
            let ours = std::fs::read_link("/proc/self/ns/net").expect("our netns");
            let path = format!("/proc/{}/ns/net", child.id());
            // unshare switches namespaces before it execs sleep.
            while std::fs::read_link(&path).ok().as_ref() == Some(&ours) {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Self(child)
        }

        fn pid(&self) -> u32 {
            self.0.id()
        }
    }

    impl Drop for Isolated {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// These tests create namespaces and veths: one that cannot fails
    /// saying why rather than passing untried.
    fn require_root() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "needs root (creates namespaces and veths): run as root or by `cargo xtask test`"
        );
    }

    fn ip(args: &[&str]) {
        let status = Command::new("ip").args(args).status().expect("ip");
        assert!(status.success(), "ip {args:?}");
    }

    #[tokio::test]
    async fn a_namespace_without_an_id_gets_one_and_its_veth_names_its_peer() {
        require_root();
        let isolated = Isolated::start();
        let pid = isolated.pid();
        let handle = crate::links::connect().expect("rtnetlink");
        // A fresh namespace with no link to ours has no id in ours yet.
        assert_eq!(
            query_nsid(&handle, Namespace::Pid(pid)).await.ok(),
            Some(NSID_NOT_ASSIGNED)
        );
        assert_eq!(container_links(pid).await.expect("probe"), Vec::new());
        assert_ne!(
            query_nsid(&handle, Namespace::Pid(pid)).await.ok(),
            Some(NSID_NOT_ASSIGNED)
        );

        let (host, inside) = (format!("xmh{pid}"), format!("xmc{pid}"));
        let pid_arg = pid.to_string();
        ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", &inside, "netns", &pid_arg,
        ]);
        let ifindex = std::fs::read_to_string(format!("/sys/class/net/{host}/ifindex"));
        let links = container_links(pid).await;
        ip(&["link", "del", &host]);
        let links = links.expect("probe");
        assert_eq!(links.len(), 1, "{links:?}");
        assert_eq!(links[0].name, inside);
        assert_eq!(
            links[0].peer_ifindex,
            ifindex.ok().and_then(|i| i.trim().parse().ok())
        );
    }

    #[tokio::test]
    async fn a_namespace_named_by_its_file_lists_its_veth_and_peer() {
        require_root();
        // What Docker's SandboxKey is: the namespace bound on a file.
        let name = format!("xmsb{}", std::process::id());
        ip(&["netns", "add", &name]);
        let (host, inside) = (format!("{name}h"), format!("{name}c"));
        ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", &inside, "netns", &name,
        ]);
        let ifindex = std::fs::read_to_string(format!("/sys/class/net/{host}/ifindex"));
        let links = sandbox_links(Path::new(&format!("/run/netns/{name}"))).await;
        let missing = sandbox_links(Path::new("/run/netns/xm-no-such-namespace")).await;
        ip(&["link", "del", &host]);
        ip(&["netns", "del", &name]);
        let links = links.expect("probe by file");
        assert_eq!(links.len(), 1, "{links:?}");
        assert_eq!(links[0].name, inside);
        assert_eq!(
            links[0].peer_ifindex,
            ifindex.ok().and_then(|i| i.trim().parse().ok())
        );
        let err = format!("{:#}", missing.expect_err("no such file"));
        assert!(err.contains("xm-no-such-namespace"), "{err}");
    }
}
