//! Gateway fast forwarding (`[fast_forward] interfaces`): the real `tagwall run`
//! binary on both gateway veths of the lab, real TCP and UDP from the client through
//! the gateway. Allowed packets routed out of a listed interface are forwarded by XDP
//! (TTL/hop limit decremented with a valid checksum, MACs rewritten, redirected);
//! allowed packets routed elsewhere and those whose TTL expires go up the stack;
//! denied packets are still dropped. Checked against the echo servers, the TTL the
//! receiver sees and `tagwall counters`.

use std::{
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::Ordering,
    time::Duration,
};

use serde_json::Value;
use tagwall_tests::{
    lab::*,
    netns::{set_gro, tx_checksum_off},
};

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip literal"), port)
}

fn fwd(c: &Value, outcome: &str) -> u64 {
    c["fast_forward"][outcome]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no fast_forward.{outcome} in counters: {c:#}"))
}

fn setsockopt(s: &UdpSocket, level: libc::c_int, name: libc::c_int, v: libc::c_int) {
    // SAFETY: a live socket and an int option value that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&raw const v).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

/// A UDP socket bound in `ns` that reports the TTL (hop limit) of what it receives.
fn ttl_receiver(lab_ns: &tagwall_tests::netns::Netns, addr: SocketAddr) -> UdpSocket {
    let s = lab_ns.run(move || UdpSocket::bind(addr).expect("bind ttl receiver"));
    if addr.is_ipv4() {
        setsockopt(&s, libc::IPPROTO_IP, libc::IP_RECVTTL, 1);
    } else {
        setsockopt(&s, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1);
    }
    s.set_read_timeout(Some(Duration::from_millis(1500)))
        .expect("timeout");
    s
}

/// Receive one datagram: its TTL (hop limit), or `None` on timeout.
fn recv_ttl(s: &UdpSocket) -> Option<u8> {
    let mut buf = [0u8; 2048];
    let mut cbuf = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: zeroed msghdr pointing at the live buffers above; the cmsg walk stays
    // inside `cbuf` (CMSG_NXTHDR checks msg_controllen).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        if libc::recvmsg(s.as_raw_fd(), &raw mut msg, 0) < 0 {
            return None;
        }
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
            if (level == libc::IPPROTO_IP && kind == libc::IP_TTL)
                || (level == libc::IPPROTO_IPV6 && kind == libc::IPV6_HOPLIMIT)
            {
                let v = libc::CMSG_DATA(c).cast::<libc::c_int>().read_unaligned();
                return Some(u8::try_from(v).expect("ttl"));
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    panic!("datagram without a TTL control message");
}

/// Send one datagram from `ns` to `to` with this TTL (hop limit).
fn send_with_ttl(ns: &tagwall_tests::netns::Netns, to: SocketAddr, ttl: u8) {
    ns.run(move || {
        let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let s = UdpSocket::bind(bind).expect("bind sender");
        if to.is_ipv4() {
            s.set_ttl(u32::from(ttl)).expect("ttl");
        } else {
            setsockopt(
                &s,
                libc::IPPROTO_IPV6,
                libc::IPV6_UNICAST_HOPS,
                libc::c_int::from(ttl),
            );
        }
        s.send_to(b"ttl probe", to).expect("send_to");
    });
}

fn policy(fast: &[&str]) -> String {
    format!(
        r#"
[fast_forward]
interfaces = {fast:?}

[[rules]]
name = "web-a"
to = ["10.77.2.2/32", "fd77:2::2/128"]
protocol = "tcp"
ports = [8080]

[[rules]]
name = "udp-a"
to = ["10.77.2.2/32", "fd77:2::2/128"]
protocol = "udp"
ports = ["5300-5303"]

[[rules]]
name = "web-b"
to = ["10.77.3.2/32"]
protocol = "tcp"
ports = [8080]
"#
    )
}

#[test]
fn allowed_packets_are_forwarded_by_xdp_and_the_rest_by_the_stack() {
    let lab = Lab::new();
    let long = Duration::from_secs(3);
    let short = Duration::from_millis(800);
    // Frames redirected to a veth arrive through its peer's NAPI: GRO on the client's
    // and inet-a's ends (a real NIC needs nothing of the kind).
    set_gro(&lab.client, &lab.c0).expect("GRO on the client veth");
    set_gro(&lab.inet_a, &lab.a0).expect("GRO on inet-a's veth");
    // And complete checksums from the sockets at both ends (see `tx_checksum_off`).
    tx_checksum_off(&lab.client, &lab.c0).expect("client tx checksum");
    tx_checksum_off(&lab.inet_a, &lab.a0).expect("inet-a tx checksum");

    let web_a = tcp_echo(&lab.inet_a, sa(INET_A_V4, 8080));
    let _web_a6 = tcp_echo(&lab.inet_a, sa(INET_A_V6, 8080));
    let web_b = tcp_echo(&lab.inet_b, sa(INET_B_V4, 8080));
    let denied = tcp_echo(&lab.inet_a, sa(INET_A_V4, 9090));
    let udp_a = udp_echo(&lab.inet_a, sa(INET_A_V4, 5301));
    let ttl4 = ttl_receiver(&lab.inet_a, sa(INET_A_V4, 5302));
    let ttl6 = ttl_receiver(&lab.inet_a, sa(INET_A_V6, 5302));

    // Both directions: the client side (replies) and inet-a's side are fast-forward
    // ports; inet-b's side is not.
    let p = lab.write_policy("ff.toml", &policy(&[&lab.gw_a, &lab.gw_in]));
    let _daemon = lab.start_tagwall(&p, &["--also-iface", &lab.gw_a, "--mode", "native"]);
    let c0 = lab.counters();
    assert_eq!(fwd(&c0, "redirected"), 0, "{c0:#}");

    // Allowed, fast-forwarded both ways: TCP v4 and v6, UDP.
    for to in [sa(INET_A_V4, 8080), sa(INET_A_V6, 8080)] {
        tcp_exchange(&lab.client, to, long).unwrap_or_else(|e| panic!("allowed flow failed: {e}"));
    }
    assert_eq!(
        udp_exchange(&lab.client, sa(INET_A_V4, 5301), 5, 100, long),
        5
    );
    assert_eq!(udp_a.hits.load(Ordering::Relaxed), 5);
    // The receiver sees TTL 64 - 1: decremented once, with a header checksum the
    // receiving stack accepts (a bad one is dropped in ip_rcv).
    let c1 = lab.counters();
    send_with_ttl(&lab.client, sa(INET_A_V4, 5302), 64);
    assert_eq!(recv_ttl(&ttl4), Some(63), "IPv4 TTL after the gateway");
    send_with_ttl(&lab.client, sa(INET_A_V6, 5302), 64);
    assert_eq!(
        recv_ttl(&ttl6),
        Some(63),
        "IPv6 hop limit after the gateway"
    );
    let c2 = lab.counters();
    assert_eq!(
        fwd(&c2, "redirected") - fwd(&c1, "redirected"),
        2,
        "the two TTL probes went the fast path: {c2:#}"
    );
    // TTL 1 would expire at the gateway: the stack gets it (and answers with ICMP time
    // exceeded), it is not forwarded.
    send_with_ttl(&lab.client, sa(INET_A_V4, 5302), 1);
    assert_eq!(recv_ttl(&ttl4), None, "a TTL-1 datagram was forwarded");
    let c3 = lab.counters();
    assert_eq!(
        fwd(&c3, "ttl_expiring") - fwd(&c2, "ttl_expiring"),
        1,
        "{c3:#}"
    );

    // Allowed but routed out of inet-b's side, not a fast-forward port: the stack
    // forwards it (its replies come in on inet-b's side, where tagwall is not).
    tcp_exchange(&lab.client, sa(INET_B_V4, 8080), long)
        .unwrap_or_else(|e| panic!("allowed flow to inet-b failed: {e}"));
    assert_eq!(web_b.hits.load(Ordering::Relaxed), 1);
    // Denied stays denied.
    assert!(tcp_exchange(&lab.client, sa(INET_A_V4, 9090), short).is_err());
    assert_eq!(denied.hits.load(Ordering::Relaxed), 0);

    let c = lab.counters();
    // 2 TCP exchanges (>= 3 packets each way) + 5 UDP each way + 2 probes.
    assert!(fwd(&c, "redirected") >= 6 + 6 + 10 + 2, "{c:#}");
    assert!(fwd(&c, "other_interface") >= 3, "inet-b's flow: {c:#}");
    assert_eq!(web_a.hits.load(Ordering::Relaxed), 1);
    // Each allowed packet XDP saw has one outcome; passes also count non-IP frames
    // and the gateway's own packets on TC egress, which have none.
    let outcomes: u64 = c["fast_forward"]
        .as_object()
        .expect("fast_forward object")
        .values()
        .map(|k| k["packets"].as_u64().expect("packets"))
        .sum();
    assert!(
        outcomes <= c["actions"]["pass"]["packets"].as_u64().expect("pass"),
        "more fast-forward outcomes than passed packets: {c:#}"
    );
    let text = String::from_utf8(lab.tagwall("counters", &[]).stdout).expect("utf-8");
    assert!(
        text.contains("FAST FORWARD") && text.contains("redirected"),
        "{text}"
    );
}

#[test]
fn a_missing_fast_forward_interface_is_an_error_before_attaching() {
    let lab = Lab::new();
    let p = lab.write_policy("bad.toml", &policy(&["nosuch0"]));
    let err = lab.run_rejected(&p, &[]);
    assert!(
        err.contains("[fast_forward] interfaces") && err.contains("\"nosuch0\""),
        "{err}"
    );
    // Nothing was attached: no XDP program on the interface.
    let link = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.gw.name,
            "ip",
            "link",
            "show",
            &lab.gw_in,
        ])
        .output()
        .expect("ip link");
    assert!(
        !String::from_utf8_lossy(&link.stdout).contains("xdp"),
        "{}",
        String::from_utf8_lossy(&link.stdout)
    );
    // Host mode cannot fast-forward.
    let ok = lab.write_policy("host.toml", &policy(&[&lab.gw_a]));
    let err = lab.run_rejected(&ok, &["--host"]);
    assert!(err.contains("gateway mode"), "{err}");
}
