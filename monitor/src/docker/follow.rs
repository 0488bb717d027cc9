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
use bollard::query_parameters::EventsOptionsBuilder;
use futures::StreamExt as _;
use tokio::sync::watch;

use super::{connect, inventory::ProbeCache, EngineInfo, Inventory};

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Containers start in bursts (compose up): one sync per burst.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Publishes a fresh inventory after every change, forever. The last
/// inventory stays published while the engine is away: the containers it
/// names are still there, and counting goes on.
pub async fn follow(
    host: Option<String>,
    inventory: watch::Sender<Option<Arc<Inventory>>>,
    up: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut cache = ProbeCache::default();
    let mut backoff = Duration::from_secs(1);
    // One warning per outage (also when the engine is absent at start),
    // then quiet retries until it answers again.
    let mut outage_reported = false;
    loop {
        let err = match session(host.as_deref(), &inventory, &mut cache, &up, &mut backoff).await {
            Ok(never) => match never {},
            Err(err) => err,
        };
        if up.swap(false, Ordering::Relaxed) {
            outage_reported = false;
        }
        if outage_reported {
            tracing::debug!("Docker engine unreachable: {err:#}; retry in {backoff:?}");
        } else {
            tracing::warn!(
                "Docker engine unreachable: {err:#}; counting goes on, reconnecting with backoff"
            );
            outage_reported = true;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn session(
    host: Option<&str>,
    inventory: &watch::Sender<Option<Arc<Inventory>>>,
    cache: &mut ProbeCache,
    up: &AtomicBool,
    backoff: &mut Duration,
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
    tracing::info!(
        version = %synced.engine.version,
        api = %synced.engine.api_version,
        containers = synced.containers.len(),
        "Docker engine connected"
    );
    inventory.send_replace(Some(Arc::new(synced)));
    up.store(true, Ordering::Relaxed);
    *backoff = Duration::from_secs(1);
    loop {
        match events.next().await {
            None => anyhow::bail!("the event stream ended"),
            Some(event) => {
                event.context("reading the event stream")?;
            }
        }
        let quiet = tokio::time::sleep(DEBOUNCE);
        tokio::pin!(quiet);
        loop {
            tokio::select! {
                () = &mut quiet => break,
                event = events.next() => match event {
                    None => anyhow::bail!("the event stream ended"),
                    Some(event) => { event.context("reading the event stream")?; }
                },
            }
        }
        let synced = Inventory::sync(&docker, &engine, cache).await?;
        inventory.send_replace(Some(Arc::new(synced)));
    }
}
