//! The host-side veth of a container's interface, read from inside the
//! container's network namespace: a veth's `IFLA_LINK` there is its peer's
//! ifindex in the root namespace. Exact, unlike guessing from names or
//! creation order.

use std::{fs::File, os::fd::AsRawFd as _};

use anyhow::Context as _;
use futures::TryStreamExt as _;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo};

/// An interface inside a container with a peer outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerLink {
    pub name: String,
    pub mac: Option<[u8; 6]>,
    /// The host-side veth's ifindex.
    pub peer_ifindex: u32,
}

/// Lists the veths inside the network namespace of process `pid`.
pub fn container_links(pid: u32) -> anyhow::Result<Vec<ContainerLink>> {
    let path = format!("/proc/{pid}/ns/net");
    let netns = File::open(&path).with_context(|| format!("opening {path}"))?;
    // setns affects only the calling thread, so it gets a thread (and a
    // small runtime for the netlink socket created there) of its own.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: a valid namespace fd; changes this thread only.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("entering the network namespace of pid {pid}"));
                }
                tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .context("starting a netlink runtime")?
                    .block_on(list_veths())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the namespace probe of pid {pid} panicked"))?
    })
}

async fn list_veths() -> anyhow::Result<Vec<ContainerLink>> {
    let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(connection);
    let mut dump = handle.link().get().execute();
    let mut links = Vec::new();
    while let Some(message) = dump.try_next().await.context("listing links")? {
        let mut link = ContainerLink {
            name: String::new(),
            mac: None,
            peer_ifindex: 0,
        };
        let mut is_veth = false;
        for attribute in message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => link.name = name,
                LinkAttribute::Address(mac) => link.mac = mac.try_into().ok(),
                LinkAttribute::Link(peer) => link.peer_ifindex = peer,
                LinkAttribute::LinkInfo(infos) => {
                    is_veth = infos
                        .iter()
                        .any(|info| matches!(info, LinkInfo::Kind(InfoKind::Veth)));
                }
                _ => {}
            }
        }
        if is_veth && link.peer_ifindex != 0 {
            links.push(link);
        }
    }
    Ok(links)
}
