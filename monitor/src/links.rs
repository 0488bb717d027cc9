//! Which interfaces to watch: veths whose master is a Linux bridge (the
//! host side of a container on a Docker bridge network), found and followed
//! through rtnetlink.

use std::collections::HashMap;

use anyhow::Context as _;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_sys::{AsyncSocket as _, SocketAddr};
use rtnetlink::Handle;

/// A veth enslaved to a bridge.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BridgePort {
    pub ifindex: u32,
    pub name: String,
    pub bridge_ifindex: u32,
    pub bridge_name: String,
}

struct Link {
    name: String,
    kind: Option<InfoKind>,
    master: Option<u32>,
}

/// Lists the bridge-enslaved veths right now.
pub async fn bridge_veths(handle: &Handle) -> anyhow::Result<Vec<BridgePort>> {
    let mut links = HashMap::new();
    let mut dump = handle.link().get().execute();
    while let Some(message) = dump
        .try_next()
        .await
        .context("listing links over rtnetlink")?
    {
        links.insert(message.header.index, describe(message));
    }
    let mut ports: Vec<BridgePort> = links
        .iter()
        .filter(|(_, link)| link.kind == Some(InfoKind::Veth))
        .filter_map(|(&ifindex, link)| {
            let bridge_ifindex = link.master?;
            let bridge = links.get(&bridge_ifindex)?;
            (bridge.kind == Some(InfoKind::Bridge)).then(|| BridgePort {
                ifindex,
                name: link.name.clone(),
                bridge_ifindex,
                bridge_name: bridge.name.clone(),
            })
        })
        .collect();
    ports.sort();
    Ok(ports)
}

fn describe(message: LinkMessage) -> Link {
    let mut link = Link {
        name: String::new(),
        kind: None,
        master: None,
    };
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Controller(master) => link.master = Some(master),
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

/// A netlink connection for queries, and a stream that yields `()` whenever
/// any link changes (created, removed, moved to a bridge...).
pub fn watch() -> anyhow::Result<(Handle, impl Stream<Item = ()>)> {
    let (mut connection, handle, messages) =
        rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, rtnetlink::constants::RTMGRP_LINK))
        .context("subscribing to link notifications")?;
    tokio::spawn(connection);
    Ok((handle, messages.map(|_| ())))
}
