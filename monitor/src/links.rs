//! Which interfaces to watch: veths whose master is a Linux bridge (the
//! host side of a container on a Docker bridge network), found and followed
//! through rtnetlink.

use std::{collections::HashMap, time::Instant};

use anyhow::Context as _;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{AsyncSocket as _, SocketAddr};
use rtnetlink::Handle;

/// A veth enslaved to a bridge.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BridgePort {
    pub ifindex: u32,
    pub name: String,
    pub bridge_ifindex: u32,
    pub bridge_name: String,
    /// Where its peer is: the peer's namespace id in ours and its ifindex
    /// there, once the peer left our namespace (a container's `eth0`).
    pub peer: Option<(i32, u32)>,
}

/// One link as rtnetlink describes it.
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    pub kind: Option<InfoKind>,
    pub master: Option<u32>,
    /// `IFLA_LINK`: a veth's peer ifindex (in the peer's namespace).
    pub link: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the namespace of that peer, when not ours.
    pub link_netnsid: Option<i32>,
    /// Packets the interface received and sent (`IFLA_STATS64`).
    pub packets: u64,
}

impl Link {
    pub fn peer(&self) -> Option<(i32, u32)> {
        Some((self.link_netnsid?, self.link?))
    }
}

/// A link notification, as the kernel sent it.
pub enum LinkEvent {
    /// Created or changed (`RTM_NEWLINK`).
    New(Link),
    /// Removed (`RTM_DELLINK`).
    Removed(u32),
    /// Addresses, routes, or a message crossmon does not read.
    Other,
}

/// Lists the bridge-enslaved veths right now.
pub async fn bridge_veths(handle: &Handle) -> anyhow::Result<Vec<BridgePort>> {
    Ok(bridge_ports(&all_links(handle).await?))
}

/// The veths of `links` enslaved to a bridge of `links`, by ifindex.
pub fn bridge_ports(links: &HashMap<u32, Link>) -> Vec<BridgePort> {
    let mut ports: Vec<BridgePort> = links
        .values()
        .filter_map(|link| {
            let bridge = links.get(&link.master?)?;
            (bridge.kind == Some(InfoKind::Bridge))
                .then(|| port(link, bridge))
                .flatten()
        })
        .collect();
    ports.sort();
    ports
}

/// `veth` as a port of `bridge`, if it is a veth enslaved to it.
pub fn port(veth: &Link, bridge: &Link) -> Option<BridgePort> {
    (veth.kind == Some(InfoKind::Veth) && veth.master == Some(bridge.ifindex)).then(|| BridgePort {
        ifindex: veth.ifindex,
        name: veth.name.clone(),
        bridge_ifindex: bridge.ifindex,
        bridge_name: bridge.name.clone(),
        peer: veth.peer(),
    })
}

/// Lists every link right now (veths, bridges and the rest), by ifindex.
pub async fn all_links(handle: &Handle) -> anyhow::Result<HashMap<u32, Link>> {
    let mut links = HashMap::new();
    let mut dump = handle.link().get().execute();
    while let Some(message) = dump
        .try_next()
        .await
        .context("listing links over rtnetlink")?
    {
        let link = describe(message);
        links.insert(link.ifindex, link);
    }
    Ok(links)
}

/// One link by ifindex right now (its counters, after attaching).
pub async fn link(handle: &Handle, ifindex: u32) -> anyhow::Result<Option<Link>> {
    let mut dump = handle.link().get().match_index(ifindex).execute();
    match dump.try_next().await {
        Ok(found) => Ok(found.map(describe)),
        // ENODEV: gone meanwhile.
        Err(rtnetlink::Error::NetlinkError(err))
            if err.code.is_some_and(|code| code.get() == -libc::ENODEV) =>
        {
            Ok(None)
        }
        Err(err) => Err(err).with_context(|| format!("reading link {ifindex} over rtnetlink")),
    }
}

fn describe(message: LinkMessage) -> Link {
    let mut link = Link {
        ifindex: message.header.index,
        name: String::new(),
        kind: None,
        master: None,
        link: None,
        link_netnsid: None,
        packets: 0,
    };
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Controller(master) => link.master = Some(master),
            LinkAttribute::Link(peer) => link.link = Some(peer),
            LinkAttribute::NetnsId(nsid) => link.link_netnsid = Some(nsid),
            LinkAttribute::Stats64(stats) => {
                link.packets = stats.rx_packets.saturating_add(stats.tx_packets);
            }
            LinkAttribute::LinkInfo(infos) => {
                link.kind = infos.into_iter().find_map(|info| match info {
                    LinkInfo::Kind(kind) => Some(kind),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    link
}

/// A netlink connection for one-off queries.
pub fn connect() -> anyhow::Result<Handle> {
    let (connection, handle, _) =
        rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    tokio::spawn(connection);
    Ok(handle)
}

/// A netlink connection for queries, and the stream of link notifications
/// (created, removed, moved to a bridge...), each with when crossmon took
/// it off the socket's queue.
pub fn watch() -> anyhow::Result<(Handle, impl Stream<Item = (Instant, LinkEvent)>)> {
    let (mut connection, handle, messages) =
        rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, rtnetlink::constants::RTMGRP_LINK))
        .context("subscribing to link notifications")?;
    tokio::spawn(connection);
    Ok((
        handle,
        messages.map(|(message, _)| (Instant::now(), event(message))),
    ))
}

fn event(message: NetlinkMessage<RouteNetlinkMessage>) -> LinkEvent {
    match message.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
            LinkEvent::New(describe(link))
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
            LinkEvent::Removed(link.header.index)
        }
        _ => LinkEvent::Other,
    }
}
