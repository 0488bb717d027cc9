//! Many distinct UDP flows from the client namespace to the server
//! namespace, at a set pace: flow `i` is a 5-tuple of its own, from one of a
//! few client sockets (each bound to its own source port) to one of
//! [`PORTS_PER_SOCKET`] destination ports. Nothing listens there: the
//! server drops them, answering with ICMP port-unreachable as far as its
//! rate limit lets it (see [`super::net::BenchNet::quiet_icmp`]).

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::{
    net::{self, BenchNet},
    workload::transient,
};

const FIRST_PORT: u16 = 10_000;
const PORTS_PER_SOCKET: u64 = 50_000;
const PAYLOAD: [u8; 16] = [0x5a; 16];

pub struct UdpFlows {
    netns: String,
    client: Ipv4Addr,
    server: Ipv4Addr,
    /// Created as flows need them, in the client namespace.
    sockets: Vec<UdpSocket>,
    /// The first flow no datagram was offered to yet.
    fresh: u64,
}

/// Which flow each datagram goes to.
#[derive(Clone, Copy)]
pub enum Pattern {
    /// Flows `0..n` in turn, over and over: `n` active flows.
    Cycle(u64),
    /// Each to a flow never used before: a new flow per datagram.
    Fresh,
}

/// What a paced run did.
pub struct Sent {
    pub datagrams: u64,
    pub elapsed: Duration,
}

impl Sent {
    pub fn rate(&self) -> f64 {
        self.datagrams as f64 / self.elapsed.as_secs_f64()
    }
}

/// The socket index and destination port of flow `flow`.
fn tuple(flow: u64) -> (usize, u16) {
    let socket = usize::try_from(flow / PORTS_PER_SOCKET).unwrap_or(usize::MAX);
    // Below PORTS_PER_SOCKET, so the sum stays a port.
    let port = FIRST_PORT + (flow % PORTS_PER_SOCKET) as u16;
    (socket, port)
}

impl UdpFlows {
    pub fn new(net: &BenchNet) -> Self {
        Self {
            netns: net.client().netns.clone(),
            client: net.client().addr,
            server: net.server().addr,
            sockets: Vec::new(),
            fresh: 0,
        }
    }

    /// Sends at `rate` datagrams per second (or as fast as it can, when
    /// that is slower), on a thread in the client namespace, while `during`
    /// runs on the calling thread.
    pub fn send_while<T>(
        &mut self,
        rate: f64,
        pattern: Pattern,
        during: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<(T, Sent)> {
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let sending = scope.spawn(|| {
                net::enter(&self.netns)?;
                self.send_paced(rate, pattern, &stop)
            });
            let result = during();
            stop.store(true, Ordering::Relaxed);
            let sent = sending
                .join()
                .unwrap_or_else(|_| bail!("the flow sender panicked"))?;
            Ok((result?, sent))
        })
    }

    fn send_paced(
        &mut self,
        rate: f64,
        pattern: Pattern,
        stop: &AtomicBool,
    ) -> anyhow::Result<Sent> {
        let started = Instant::now();
        let (mut offered, mut datagrams) = (0_u64, 0_u64);
        // In bursts of at most a millisecond's worth, so `stop` is seen.
        let burst = (rate / 1000.0) as u64 + 1;
        while !stop.load(Ordering::Relaxed) {
            let due = (started.elapsed().as_secs_f64() * rate) as u64;
            if offered >= due {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let end = due.min(offered + burst);
            while offered < end {
                let flow = match pattern {
                    Pattern::Cycle(n) => offered % n,
                    Pattern::Fresh => {
                        self.fresh += 1;
                        self.fresh - 1
                    }
                };
                datagrams += u64::from(self.send(flow)?);
                offered += 1;
            }
        }
        Ok(Sent {
            datagrams,
            elapsed: started.elapsed(),
        })
    }

    /// One datagram of flow `flow`; false if the kernel had no room for it
    /// (it was not sent).
    fn send(&mut self, flow: u64) -> anyhow::Result<bool> {
        let (socket, port) = tuple(flow);
        while self.sockets.len() <= socket {
            let bound = UdpSocket::bind((self.client, 0)).context("binding a flow socket")?;
            self.sockets.push(bound);
        }
        match self.sockets[socket].send_to(&PAYLOAD, SocketAddr::from((self.server, port))) {
            Ok(_) => Ok(true),
            Err(err) if transient(&err) => Ok(false),
            Err(err) => Err(err).context("sending a flow's datagram"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_have_distinct_tuples() {
        assert_eq!(tuple(0), (0, FIRST_PORT));
        assert_eq!(tuple(PORTS_PER_SOCKET - 1), (0, FIRST_PORT + 49_999));
        assert_eq!(tuple(PORTS_PER_SOCKET), (1, FIRST_PORT));
        let tuples: std::collections::BTreeSet<_> = (0..3 * PORTS_PER_SOCKET).map(tuple).collect();
        assert_eq!(tuples.len() as u64, 3 * PORTS_PER_SOCKET);
    }
}
