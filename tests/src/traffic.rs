//! Traffic with exactly known content between the hosts of a [`TestNet`].
//!
//! [`TestNet`]: crate::TestNet

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};

use crate::{mib, Host};

/// Sends one UDP datagram per payload from `from` to `to:port`, where a
/// socket bound beforehand receives them all; returns the source port.
pub fn udp_send(
    from: &Host,
    to: &Host,
    to_ip: IpAddr,
    port: u16,
    payloads: &[&[u8]],
) -> anyhow::Result<u16> {
    let unspecified = unspecified(to_ip);
    let sink = to.run(|| Ok(UdpSocket::bind(SocketAddr::new(unspecified, port))?))?;
    sink.set_read_timeout(Some(Duration::from_secs(2)))?;
    let source_port = from.run(|| {
        let socket = UdpSocket::bind(SocketAddr::new(unspecified, 0))?;
        for payload in payloads {
            socket.send_to(payload, SocketAddr::new(to_ip, port))?;
        }
        Ok(socket.local_addr()?.port())
    })?;
    let mut buffer = [0u8; 65_536];
    for (i, payload) in payloads.iter().enumerate() {
        let (len, _) = sink
            .recv_from(&mut buffer)
            .with_context(|| format!("datagram {i} of {} not received", payloads.len()))?;
        ensure!(&buffer[..len] == *payload, "datagram {i} arrived altered");
    }
    Ok(source_port)
}

/// What one side of a TCP exchange sent, from its namespace's counters.
#[derive(Debug)]
pub struct TcpSide {
    pub port: u16,
    /// Segments sent (`Tcp: OutSegs`), a GSO super-packet as the segments
    /// it carries. Retransmissions are left out (`retransmitted` counts
    /// them); the byte formula of [`TcpSide::ip_bytes`] needs none.
    pub segments: u64,
    pub retransmitted: u64,
    /// Connections opened (`ActiveOpens` on the client, `PassiveOpens` on
    /// the server): the SYN or SYN-ACK this side sent, 1 unless the
    /// handshake was retransmitted.
    pub opens: u64,
    /// Payload bytes this side wrote.
    pub payload: u64,
}

impl TcpSide {
    /// The IP bytes this side sent (IP header included), given the IP
    /// header's size: 20 for IPv4, 40 for IPv6. With the test net's TCP
    /// settings every segment has a 20-byte TCP header and only SYN and
    /// SYN-ACK add an option, the 4-byte MSS. Exact when `retransmitted`
    /// is 0.
    pub fn ip_bytes(&self, ip_header: u64) -> u64 {
        (ip_header + 20) * self.segments + 4 * self.opens + self.payload
    }
}

#[derive(Debug)]
pub struct TcpExchange {
    pub client: TcpSide,
    pub server: TcpSide,
}

/// How a connection of [`tcp_connection`] ends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The client closes its side after the request, the server after
    /// the response: a FIN each way.
    Fin,
    /// The client aborts once it has the response: an RST (`SO_LINGER`
    /// of zero), no FIN.
    Reset,
}

/// One connection: the client sends `request` and closes its side, the
/// server reads it all, answers `response` and closes. Returns the segment
/// counts once both namespaces have gone quiet.
pub fn tcp_exchange(
    client: &Host,
    server: &Host,
    server_ip: IpAddr,
    port: u16,
    request: &[u8],
    response: &[u8],
) -> anyhow::Result<TcpExchange> {
    tcp_connection(
        client,
        server,
        (server_ip, port),
        (request, response),
        Close::Fin,
        None,
    )
}

/// One connection as [`tcp_exchange`] makes it, ended as `close` says,
/// from the client's port `from_port` or any.
pub fn tcp_connection(
    client: &Host,
    server: &Host,
    (server_ip, port): (IpAddr, u16),
    (request, response): (&[u8], &[u8]),
    close: Close,
    from_port: Option<u16>,
) -> anyhow::Result<TcpExchange> {
    let listener = server.run(|| {
        Ok(TcpListener::bind(SocketAddr::new(
            unspecified(server_ip),
            port,
        ))?)
    })?;
    let before = (tcp_counters(client)?, tcp_counters(server)?);
    let client_port = std::thread::scope(|scope| -> anyhow::Result<u16> {
        let serving = scope.spawn(|| -> anyhow::Result<()> {
            let (mut stream, _) = listener.accept()?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let received = read_all(&mut stream, request.len(), close)?;
            ensure!(
                received == request,
                "server received {} bytes, not the request",
                received.len()
            );
            stream.write_all(response)?;
            if close == Close::Reset {
                // Until the client's RST arrives: the server sends nothing more.
                let mut rest = Vec::new();
                let reset = stream.read_to_end(&mut rest);
                ensure!(
                    reset
                        .as_ref()
                        .is_err_and(|e| e.kind() == ErrorKind::ConnectionReset),
                    "the server saw {reset:?}, not the client's RST"
                );
            }
            Ok(())
        });
        let port = client.run(|| {
            let mut stream = connect(SocketAddr::new(server_ip, port), from_port)?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(request)?;
            if close == Close::Fin {
                stream.shutdown(Shutdown::Write)?;
            }
            let received = read_all(&mut stream, response.len(), close)?;
            ensure!(
                received == response,
                "client received {} bytes, not the response",
                received.len()
            );
            let port = stream.local_addr()?.port();
            if close == Close::Reset {
                abort(&stream)?;
            }
            Ok(port)
        })?;
        serving
            .join()
            .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
        Ok(port)
    })?;
    let after = (settled_tcp_counters(client)?, settled_tcp_counters(server)?);
    Ok(TcpExchange {
        client: TcpSide {
            port: client_port,
            segments: after.0.out_segs - before.0.out_segs,
            retransmitted: after.0.retrans_segs - before.0.retrans_segs,
            opens: after.0.active_opens - before.0.active_opens,
            payload: request.len() as u64,
        },
        server: TcpSide {
            port,
            segments: after.1.out_segs - before.1.out_segs,
            retransmitted: after.1.retrans_segs - before.1.retrans_segs,
            opens: after.1.passive_opens - before.1.passive_opens,
            payload: response.len() as u64,
        },
    })
}

/// A connection to `server` from `from_port` of the unspecified address,
/// or from any port.
pub fn connect(server: SocketAddr, from_port: Option<u16>) -> std::io::Result<TcpStream> {
    let timeout = Duration::from_secs(2);
    let Some(from_port) = from_port else {
        return TcpStream::connect_timeout(&server, timeout);
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(server),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.bind(&SocketAddr::new(unspecified(server.ip()), from_port).into())?;
    socket.connect_timeout(&server.into(), timeout)?;
    Ok(socket.into())
}

/// What the peer sent: all of it up to its FIN, or with [`Close::Reset`],
/// where no FIN comes, exactly `len` bytes.
fn read_all(stream: &mut TcpStream, len: usize, close: Close) -> anyhow::Result<Vec<u8>> {
    let mut received = Vec::new();
    match close {
        Close::Fin => {
            stream.read_to_end(&mut received)?;
        }
        Close::Reset => {
            received.resize(len, 0);
            stream.read_exact(&mut received)?;
        }
    }
    Ok(received)
}

/// Has `stream` close with an RST rather than a FIN when dropped: a
/// linger of zero.
pub fn abort(stream: &TcpStream) -> anyhow::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a `linger` of the size passed, read only
    // during the call.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    ensure!(
        result == 0,
        "SO_LINGER: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct TcpCounters {
    out_segs: u64,
    retrans_segs: u64,
    active_opens: u64,
    passive_opens: u64,
}

fn tcp_counters(host: &Host) -> anyhow::Result<TcpCounters> {
    host.run(|| {
        Ok(TcpCounters {
            out_segs: mib::snmp("Tcp", "OutSegs")?,
            retrans_segs: mib::snmp("Tcp", "RetransSegs")?,
            active_opens: mib::snmp("Tcp", "ActiveOpens")?,
            passive_opens: mib::snmp("Tcp", "PassiveOpens")?,
        })
    })
}

/// Counters once they stopped moving for 300 ms (the last ACKs are out).
fn settled_tcp_counters(host: &Host) -> anyhow::Result<TcpCounters> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = tcp_counters(host)?;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = tcp_counters(host)?;
        if now == last {
            return Ok(now);
        }
        ensure!(
            Instant::now() < deadline,
            "TCP counters of {} never settled",
            host.netns_name()
        );
        last = now;
    }
}

/// `ping -c count -s payload_size` from `from`, requiring every reply.
pub fn ping(from: &Host, to: IpAddr, count: u32, payload_size: u32) -> anyhow::Result<()> {
    let (count, size, to) = (count.to_string(), payload_size.to_string(), to.to_string());
    from.exec(
        "ping",
        &["-q", "-c", &count, "-s", &size, "-i", "0.2", "-W", "1", &to],
    )
    .map(drop)
    .with_context(|| format!("ping {to} from {}", from.netns_name()))
}

fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::from([0u8; 4]),
        IpAddr::V6(_) => IpAddr::from([0u16; 8]),
    }
}

/// An `AF_PACKET` socket on a host's `eth0`, for raw frames in and out.
pub struct RawSocket {
    fd: OwnedFd,
}

impl RawSocket {
    /// Opens the socket inside `host`'s namespace; it receives every frame
    /// arriving on `eth0` from the moment it is open.
    pub fn open(host: &Host) -> anyhow::Result<RawSocket> {
        Self::open_in(&format!("/var/run/netns/{}", host.netns_name()))
    }

    /// The same inside the network namespace at `netns` (a container's
    /// `/proc/PID/ns/net`, say).
    pub fn open_in(netns: &str) -> anyhow::Result<RawSocket> {
        crate::net::in_netns(netns, || {
            let protocol = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket creation.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
            }
            // SAFETY: `fd` was just created and is owned here only.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: a NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = protocol;
            addr.sll_ifindex = ifindex as i32;
            // SAFETY: `addr` is a valid sockaddr_ll of the given size.
            let bound = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    std::ptr::from_ref(&addr).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if bound != 0 {
                return Err(std::io::Error::last_os_error()).context("binding to eth0");
            }
            Ok(RawSocket { fd })
        })
    }

    pub fn send(&self, frame: &[u8]) -> anyhow::Result<()> {
        // SAFETY: the buffer is valid for its length.
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if sent != frame.len() as isize {
            return Err(std::io::Error::last_os_error()).context("sending a raw frame");
        }
        Ok(())
    }

    /// Frames received (not sent) on `eth0` until none arrives for `quiet`.
    pub fn received(&self, quiet: Duration) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut frames = Vec::new();
        let mut buffer = vec![0u8; 65_536];
        loop {
            let mut poll = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut poll, 1, quiet.as_millis() as i32) };
            if ready == 0 {
                return Ok(frames);
            }
            if ready < 0 {
                bail!("poll: {}", std::io::Error::last_os_error());
            }
            // SAFETY: sockaddr_ll is plain data.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: buffers valid for their lengths.
            let len = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                    std::ptr::from_mut(&mut from).cast(),
                    &mut from_len,
                )
            };
            if len < 0 {
                bail!("recvfrom: {}", std::io::Error::last_os_error());
            }
            if from.sll_pkttype != libc::PACKET_OUTGOING {
                frames.push(buffer[..len as usize].to_vec());
            }
        }
    }
}

/// Sends `frames` as they are out of `from`'s `eth0`.
pub fn send_frames(from: &Host, frames: &[Vec<u8>]) -> anyhow::Result<()> {
    let socket = RawSocket::open(from)?;
    for (i, frame) in frames.iter().enumerate() {
        socket
            .send(frame)
            .with_context(|| format!("frame {i} from {}", from.netns_name()))?;
    }
    Ok(())
}

/// The frames arriving on `on`'s `eth0` while `during` runs and until none
/// arrived for `quiet` after it. Capture starts before `during`, so nothing
/// it causes is missed.
pub fn capture_frames(
    on: &Host,
    quiet: Duration,
    during: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Vec<u8>>> {
    let capture = RawSocket::open(on)?;
    during()?;
    capture.received(quiet)
}
