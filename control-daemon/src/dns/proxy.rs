//! The DNS proxy: UDP and TCP servers, client checks, forwarding with fresh message
//! ids, answer validation, and the allow-before-answer step.
//!
//! Per query: rate limit (per source address) -> parse and validate -> client check
//! -> unmatched policy -> forward to the upstreams in order (UDP over UDP, TCP over
//! TCP; a new socket and a random id per attempt; strays ignored until the timeout)
//! -> validate the answer -> for each name of the query and CNAME chain that matches
//! a rule, record and `allow` every A/AAAA address -> cap the TTLs of matched answers
//! at `max_ttl` -> restore the client's id -> answer.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hickory_proto::op::ResponseCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{Semaphore, watch},
    time::timeout,
};

use super::{
    config::Unmatched,
    service::Shared,
    stats::Stats,
    wire::{self, ParsedQuery, ParsedResponse},
};

/// One failed attempt at an upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("{0}: timeout")]
    Timeout(SocketAddr),
    #[error("{0}: {1}")]
    Io(SocketAddr, std::io::Error),
    #[error("{0}: bad answer: {1}")]
    Bad(SocketAddr, wire::ResponseError),
    #[error("{0}: answered {1}")]
    Rcode(SocketAddr, ResponseCode),
}

pub(crate) async fn udp_server(
    shared: Arc<Shared>,
    sock: Arc<UdpSocket>,
    inflight: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, src) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors of earlier replies surface here; never spin on them.
                    tracing::debug!("DNS proxy UDP receive: {e}");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        if !shared.limiter().allow(src.ip(), shared.clock.now()) {
            Stats::inc(&shared.stats.rate_limited);
            continue;
        }
        let Ok(permit) = inflight.clone().try_acquire_owned() else {
            Stats::inc(&shared.stats.busy);
            continue;
        };
        let data = buf[..n].to_vec();
        let (sh, sock) = (shared.clone(), sock.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(resp) = handle(&sh, &data, src.ip(), false).await
                && let Err(e) = sock.send_to(&resp, src).await
            {
                tracing::debug!(client = %src, "DNS proxy UDP send: {e}");
            }
        });
    }
}

pub(crate) async fn tcp_server(
    shared: Arc<Shared>,
    listener: TcpListener,
    conns: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!("DNS proxy TCP accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            Stats::inc(&shared.stats.busy);
            drop(stream);
            continue;
        };
        let (sh, rx) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            tcp_conn(&sh, stream, peer, rx).await;
        });
    }
}

/// Serve the length-prefixed messages of one connection, one at a time, until the
/// client closes, idles, or sends something that earns no answer.
async fn tcp_conn(
    shared: &Shared,
    mut stream: TcpStream,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let idle = shared.cfg.tuning.tcp_idle;
    loop {
        let len = tokio::select! {
            r = timeout(idle, stream.read_u16()) => match r {
                Ok(Ok(n)) => usize::from(n),
                _ => return,
            },
            _ = stop.changed() => return,
        };
        let mut buf = vec![0u8; len];
        match timeout(idle, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        if !shared.limiter().allow(peer.ip(), shared.clock.now()) {
            Stats::inc(&shared.stats.rate_limited);
            return;
        }
        Stats::inc(&shared.stats.tcp_queries);
        let Some(resp) = handle(shared, &buf, peer.ip(), true).await else {
            return;
        };
        let Ok(n) = u16::try_from(resp.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(resp.len() + 2);
        out.extend_from_slice(&n.to_be_bytes());
        out.extend_from_slice(&resp);
        if !matches!(timeout(idle, stream.write_all(&out)).await, Ok(Ok(()))) {
            return;
        }
    }
}

/// Answer one message from `client`; `None`: send nothing.
pub(crate) async fn handle(
    shared: &Shared,
    buf: &[u8],
    client: IpAddr,
    tcp: bool,
) -> Option<Vec<u8>> {
    let st = &shared.stats;
    Stats::inc(&st.queries);
    let is_client = shared.cfg.is_client(client);
    let q = match wire::parse_query(buf) {
        Ok(q) => q,
        Err(e) => {
            if e.is_malformed() {
                Stats::inc(&st.malformed);
            } else {
                Stats::inc(&st.refused_other);
            }
            tracing::debug!(%client, "DNS query not served: {e}");
            if !is_client {
                Stats::inc(&st.refused_client);
                return None;
            }
            return wire::reply_for(buf, &e);
        }
    };
    if !is_client {
        Stats::inc(&st.refused_client);
        tracing::debug!(%client, "DNS query from a source outside `clients`: REFUSED");
        return Some(wire::error_reply(&q, ResponseCode::Refused));
    }
    let rules = q
        .key
        .as_deref()
        .map(|k| shared.matcher.matches(k))
        .unwrap_or_default();
    if rules.is_empty() && shared.cfg.unmatched == Unmatched::Refuse {
        Stats::inc(&st.refused_unmatched);
        return Some(wire::error_reply(&q, ResponseCode::Refused));
    }
    let stale_names: Vec<String> = if rules.is_empty() {
        Vec::new()
    } else {
        q.key.iter().cloned().collect()
    };
    let (mut bytes, resp) = match forward(shared, buf, &q, tcp).await {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(%client, name = %q.name, "DNS upstreams failed: {e}");
            shared.fail(&stale_names, &e.to_string());
            Stats::inc(&st.servfail);
            return Some(wire::error_reply(&q, ResponseCode::ServFail));
        }
    };
    if resp.rcode == ResponseCode::ServFail {
        shared.fail(&stale_names, "upstream answered SERVFAIL");
    }
    let matched = wire::matched_names(&shared.matcher, &q.name, &resp.msg.answers);
    if matched.is_empty() {
        Stats::inc(&st.unmatched);
    } else {
        Stats::inc(&st.matched);
        if let Err(e) = shared.apply(&matched, true) {
            tracing::warn!(%client, name = %q.name, "answering SERVFAIL: the datapath was not programmed: {e}");
            Stats::inc(&st.servfail);
            return Some(wire::error_reply(&q, ResponseCode::ServFail));
        }
        if wire::cap_answer_ttls(&mut bytes, shared.cfg.max_ttl).is_none() {
            // parse_response decoded it, so this cannot happen; never answer
            // with TTLs longer than the table keeps the addresses.
            tracing::warn!(name = %q.name, "cannot walk a validated answer to cap TTLs: SERVFAIL");
            Stats::inc(&st.servfail);
            return Some(wire::error_reply(&q, ResponseCode::ServFail));
        }
    }
    if resp.truncated {
        Stats::inc(&st.truncated);
    }
    wire::set_id(&mut bytes, q.id);
    Stats::inc(&st.answered);
    Some(bytes)
}

/// Try the upstreams in order. SERVFAIL/REFUSED answers move on to the next
/// upstream; the last one's answer is relayed whatever it says.
async fn forward(
    shared: &Shared,
    raw: &[u8],
    q: &ParsedQuery,
    tcp: bool,
) -> Result<(Vec<u8>, ParsedResponse), UpstreamError> {
    let ups = &shared.cfg.upstreams;
    let limit = shared.cfg.upstream_timeout();
    let mut last = None;
    for (i, &up) in ups.iter().enumerate() {
        let id: u16 = rand::random();
        let mut out = raw.to_vec();
        wire::set_id(&mut out, id);
        let attempt = async {
            if tcp {
                tcp_exchange(up, &out, id, q).await
            } else {
                udp_exchange(shared, up, &out, id, q).await
            }
        };
        let r = match timeout(limit, attempt).await {
            Ok(r) => r,
            Err(_) => {
                Stats::inc(&shared.stats.upstream_timeouts);
                Err(UpstreamError::Timeout(up))
            }
        };
        match r {
            Ok((bytes, resp)) => {
                let retry = matches!(resp.rcode, ResponseCode::ServFail | ResponseCode::Refused);
                if retry && i + 1 < ups.len() {
                    Stats::inc(&shared.stats.upstream_errors);
                    last = Some(UpstreamError::Rcode(up, resp.rcode));
                    continue;
                }
                return Ok((bytes, resp));
            }
            Err(e) => {
                Stats::inc(&shared.stats.upstream_errors);
                tracing::debug!("DNS upstream attempt failed: {e}");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or(UpstreamError::Io(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        std::io::Error::other("no upstream configured"),
    )))
}

async fn udp_exchange(
    shared: &Shared,
    up: SocketAddr,
    out: &[u8],
    id: u16,
    q: &ParsedQuery,
) -> Result<(Vec<u8>, ParsedResponse), UpstreamError> {
    let io = |e| UpstreamError::Io(up, e);
    let any: SocketAddr = if up.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(any).await.map_err(io)?;
    sock.connect(up).await.map_err(io)?;
    sock.send(out).await.map_err(io)?;
    // The upstream sees the client's EDNS payload size (the query is forwarded as
    // is) and must not exceed it; 4 KiB at least, one more byte to notice a larger
    // datagram (the kernel cuts it) instead of relaying a cut one.
    let limit = q
        .msg
        .edns
        .as_ref()
        .map_or(512, hickory_proto::op::Edns::max_payload)
        .max(4096);
    let mut buf = vec![0u8; usize::from(limit) + 1];
    loop {
        let n = sock.recv(&mut buf).await.map_err(io)?;
        if n > usize::from(limit) {
            return Err(UpstreamError::Bad(
                up,
                wire::ResponseError::Decode(format!(
                    "answer larger than {limit} bytes over UDP (the client's limit)"
                )),
            ));
        }
        let data = &buf[..n];
        match wire::parse_response(data, id, q) {
            Ok(r) => return Ok((data.to_vec(), r)),
            Err(e) if e.is_mismatch() => {
                Stats::inc(&shared.stats.upstream_mismatched);
                tracing::debug!(upstream = %up, "ignoring a datagram that is not the answer: {e}");
            }
            Err(e) => {
                // Ours (right id) but undecodable: if it says TC, let the client
                // retry over TCP rather than fail.
                if data.len() >= wire::HEADER_LEN && data[2] & 0x82 == 0x82 {
                    let tc = wire::truncated_reply(q);
                    let r = wire::parse_response(&tc, q.id, q)
                        .map_err(|e| UpstreamError::Bad(up, e))?;
                    return Ok((tc, r));
                }
                return Err(UpstreamError::Bad(up, e));
            }
        }
    }
}

async fn tcp_exchange(
    up: SocketAddr,
    out: &[u8],
    id: u16,
    q: &ParsedQuery,
) -> Result<(Vec<u8>, ParsedResponse), UpstreamError> {
    let io = |e| UpstreamError::Io(up, e);
    let mut s = TcpStream::connect(up).await.map_err(io)?;
    let len = u16::try_from(out.len()).map_err(|_| io(std::io::Error::other("query too long")))?;
    let mut msg = Vec::with_capacity(out.len() + 2);
    msg.extend_from_slice(&len.to_be_bytes());
    msg.extend_from_slice(out);
    s.write_all(&msg).await.map_err(io)?;
    let n = usize::from(s.read_u16().await.map_err(io)?);
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await.map_err(io)?;
    let r = wire::parse_response(&buf, id, q).map_err(|e| UpstreamError::Bad(up, e))?;
    Ok((buf, r))
}
