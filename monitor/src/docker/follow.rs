//! Keeping the inventory current: a full sync, then the engine's event
//! stream; on any failure, one log line, backoff, reconnect and resync.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context as _;
use bollard::{
    models::{EventMessage, EventMessageTypeEnum},
    query_parameters::EventsOptionsBuilder,
};
use futures::StreamExt as _;
use tokio::sync::watch;

use super::{
    client::{connect, endpoint},
    inventory::ProbeCache,
    Container, EngineInfo, Inventory,
};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often an engine in a swarm is asked who is on its overlays.
const SWARM_REFRESH: Duration = Duration::from_secs(3);
/// Containers start in bursts (compose up): one sync per burst.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Publishes a fresh inventory after every change, forever. The last
/// inventory stays published while the engine is away: the containers it
/// names are still there, and counting goes on. Departed containers are
/// kept in it for `grace` (`--series-grace`).
pub async fn follow(
    host: Option<String>,
    inventory: watch::Sender<Option<Arc<Inventory>>>,
    up: Arc<AtomicBool>,
    grace: Duration,
) -> anyhow::Result<()> {
    let endpoint = endpoint(host.as_deref());
    // Shared with the inspections of started containers, which run beside
    // the session.
    let inventory = Arc::new(inventory);
    let mut cache = ProbeCache::default();
    let mut backoff = FIRST_BACKOFF;
    // One warning per outage (also when the engine is absent at start),
    // then quiet retries until it answers again.
    let mut outage_reported = false;
    loop {
        let connection = session(
            host.as_deref(),
            &endpoint,
            outage_reported,
            &inventory,
            &mut cache,
            &up,
            grace,
        );
        let err = match connection.await {
            Ok(never) => match never {},
            Err(err) => err,
        };
        if up.swap(false, Ordering::Relaxed) {
            // It answered since the last failure: a new outage, from the
            // shortest wait.
            outage_reported = false;
            backoff = FIRST_BACKOFF;
        }
        if outage_reported {
            tracing::debug!("Docker engine unreachable: {err:#}; retry in {backoff:?}");
        } else {
            tracing::warn!(
                "Docker engine unreachable at {endpoint}: {err:#}; counting goes on, \
                 retrying in {backoff:?}, backing off to {MAX_BACKOFF:?}"
            );
            outage_reported = true;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection: sync, then follow events until something fails.
/// `after_outage`: the engine was unreachable before, this is it coming
/// back (which the log line says).
async fn session(
    host: Option<&str>,
    endpoint: &str,
    after_outage: bool,
    inventory: &Arc<watch::Sender<Option<Arc<Inventory>>>>,
    cache: &mut ProbeCache,
    up: &AtomicBool,
    grace: Duration,
) -> anyhow::Result<std::convert::Infallible> {
    let docker = connect(host).await?;
    // bollard opens the stream lazily, at the first poll, i.e. after the
    // sync: asking for events since just before the sync replays whatever
    // happened in between, so no container start is missed.
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |now| now.as_secs().saturating_sub(1));
    let filters = HashMap::from([
        ("type", vec!["container", "network"]),
        // Only what changes interfaces or names; healthchecks and execs
        // would otherwise trigger a resync every few seconds.
        (
            "event",
            vec![
                "start",
                "die",
                "destroy",
                "rename",
                "create",
                "connect",
                "disconnect",
                "remove",
            ],
        ),
    ]);
    let options = EventsOptionsBuilder::new()
        .since(&since.to_string())
        .filters(&filters)
        .build();
    let mut events = docker.events(Some(options));
    let engine = EngineInfo::of(&docker).await?;
    let synced = Inventory::sync(&docker, &engine, cache).await?;
    let containers = synced.containers.len();
    let (version, api) = (&synced.engine.version, &synced.engine.api_version);
    if after_outage {
        tracing::info!(
            "Docker engine back at {endpoint}: resynced {containers} containers \
             (engine {version}, API {api})"
        );
    } else {
        tracing::info!(
            "Docker engine connected at {endpoint}: {containers} containers \
             (engine {version}, API {api})"
        );
    }
    publish(inventory, synced, grace);
    up.store(true, Ordering::Relaxed);
    // Tasks come and go on other nodes without an event here: what the
    // overlays' gossip says is asked again on a timer.
    let mut refresh = tokio::time::interval(SWARM_REFRESH);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Events that came during the last listing: another one is due.
    let mut missed = false;
    loop {
        if !missed {
            let event = tokio::select! {
                event = events.next() => event,
                _ = refresh.tick() => {
                    let known = inventory.borrow().clone();
                    let Some(known) = known else {
                        continue;
                    };
                    let swarm = known.ask_swarm(&docker).await;
                    inventory.send_if_modified(|current| match current {
                        Some(now) if now.swarm != swarm => {
                            let mut next = (**now).clone();
                            next.swarm = swarm;
                            *current = Some(Arc::new(next));
                            true
                        }
                        _ => false,
                    });
                    continue;
                }
            };
            on_event(&docker, &received(event)?, inventory);
        }
        let quiet = tokio::time::sleep(DEBOUNCE);
        tokio::pin!(quiet);
        loop {
            tokio::select! {
                () = &mut quiet => break,
                event = events.next() => on_event(&docker, &received(event)?, inventory),
            }
        }
        // Events are read during the listing too (it takes seconds with
        // many containers on a loaded host): a container they announce is
        // named before its flows stop waiting for a name.
        missed = false;
        let sync = Inventory::sync(&docker, &engine, cache);
        tokio::pin!(sync);
        let synced = loop {
            tokio::select! {
                synced = &mut sync => break synced?,
                event = events.next() => {
                    on_event(&docker, &received(event)?, inventory);
                    missed = true;
                }
            }
        };
        publish(inventory, synced, grace);
    }
}

/// The next event of the stream, or why there is none.
fn received(
    event: Option<Result<EventMessage, bollard::errors::Error>>,
) -> anyhow::Result<EventMessage> {
    match event {
        None => anyhow::bail!("the event stream ended"),
        Some(event) => event.context("reading the event stream"),
    }
}

/// Publishes a full listing, with the containers that departed since the
/// inventory it replaces (including any a start inspection added
/// meanwhile).
fn publish(
    inventory: &watch::Sender<Option<Arc<Inventory>>>,
    mut synced: Inventory,
    grace: Duration,
) {
    inventory.send_modify(|current| {
        if let Some(previous) = current.as_deref() {
            synced.remember_departed(previous, grace);
        }
        tracing::debug!(
            running = synced.containers.len(),
            departed = synced.departed.len(),
            "inventory"
        );
        *current = Some(Arc::new(synced));
    });
}

/// Every container event names its container (announced at once, for a
/// container gone before any inspection); a start is inspected.
fn on_event(
    docker: &bollard::Docker,
    event: &EventMessage,
    inventory: &Arc<watch::Sender<Option<Arc<Inventory>>>>,
) {
    if let Some(container) = announced(event) {
        inventory.send_if_modified(|current| {
            let Some(next) = current.as_deref().and_then(|k| k.with_announced(container)) else {
                return false;
            };
            *current = Some(Arc::new(next));
            true
        });
    }
    on_start(docker, event, inventory);
}

/// The container a container event describes.
fn announced(event: &EventMessage) -> Option<Container> {
    if event.typ? != EventMessageTypeEnum::CONTAINER {
        return None;
    }
    let actor = event.actor.as_ref()?;
    Container::announced(actor.id.as_deref()?, actor.attributes.as_ref()?)
}

/// A container that starts is inspected at once, beside the session (not
/// after the listing in progress, nor at the end of the burst): one that
/// talks and exits at once would be gone by then, and its veth never
/// named.
fn on_start(
    docker: &bollard::Docker,
    event: &EventMessage,
    inventory: &Arc<watch::Sender<Option<Arc<Inventory>>>>,
) {
    let Some(id) = starting_container(event) else {
        return;
    };
    let Some(known) = inventory.borrow().clone() else {
        return;
    };
    let (docker, inventory) = (docker.clone(), inventory.clone());
    tokio::spawn(async move {
        let Some(container) = known.inspect_started(&docker, &id).await else {
            tracing::debug!(container = %id, "stopped before it was inspected");
            return;
        };
        tracing::debug!(container = %container.name, veths = ?container.endpoints.iter().map(|e| e.host_ifindex).collect::<Vec<_>>(), "inspected at its start");
        inventory.send_if_modified(|current| {
            let Some(known) = current.as_deref() else {
                return false;
            };
            *current = Some(Arc::new(known.with_started(container)));
            true
        });
    });
}

/// The container an event says is starting on a network: its endpoint's
/// `connect` (the engine answers an inspection of a starting container
/// the moment its start completes, so asking then saves the time the
/// `start` event takes to arrive), or its `start`.
fn starting_container(event: &EventMessage) -> Option<String> {
    let actor = event.actor.as_ref()?;
    match (event.typ?, event.action.as_deref()?) {
        (EventMessageTypeEnum::CONTAINER, "start") => actor.id.clone(),
        (EventMessageTypeEnum::NETWORK, "connect") => {
            actor.attributes.as_ref()?.get("container").cloned()
        }
        _ => None,
    }
}
