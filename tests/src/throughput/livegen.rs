//! A packet generator that injects XDP frames into a veth with BPF_PROG_RUN in live
//! frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`, the mechanism of xdp-tools'
//! xdp-trafficgen): no socket, no sk_buff on the sending side. A tiny XDP program
//! (assembled here, 30-odd instructions) picks a random frame from its CPU's table
//! for every frame, copies it over the packet and returns `XDP_TX`, which transmits the
//! frame out of the generator's veth into the peer's receive ring as an XDP frame,
//! the way a NIC driver hands frames to native XDP.
//!
//! xdp-trafficgen itself only sends UDP to one destination (and its probe fails on
//! this kernel), hence this: TCP SYNs to a spread of destinations. The table holds
//! whole frames and the program copies one over the page every time, because live
//! frames are recycled as the receiver left them (the gateway rewrites the Ethernet
//! header and decrements the TTL when it forwards).

use std::{
    ffi::c_void,
    fs::File,
    net::IpAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::{Context as _, bail, ensure};

const BPF_MAP_CREATE: i64 = 0;
const BPF_MAP_UPDATE_ELEM: i64 = 2;
const BPF_PROG_LOAD: i64 = 5;
const BPF_OBJ_GET: i64 = 7;
const BPF_PROG_TEST_RUN: i64 = 10;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
const XDP_TX: i32 = 3;

pub const ETH_HDR: usize = 14;
fn sys_bpf(cmd: i64, attr: &mut [u64]) -> std::io::Result<i64> {
    // SAFETY: `attr` is a zeroed, 8-aligned buffer large enough for the command's
    // union member; the kernel reads and writes only within `size`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr().cast::<c_void>(),
            std::mem::size_of_val(attr) as u32,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: a new file descriptor the kernel just returned to us.
    unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).expect("fd fits i32")) }
}

/// Open a map pinned at `path` (BPF_OBJ_GET).
///
/// # Errors
/// No such pin, or not a BPF object.
pub fn pinned_map(path: &std::path::Path) -> anyhow::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u64; 4];
    attr[0] = c.as_ptr() as u64; // pathname
    let fd = sys_bpf(BPF_OBJ_GET, &mut attr)
        .with_context(|| format!("BPF_OBJ_GET {}", path.display()))?;
    Ok(owned(fd))
}

/// `bpf_map_update_elem(map, key, value, BPF_ANY)`.
///
/// # Errors
/// What the kernel says (wrong sizes, map full).
pub fn map_update(map: &OwnedFd, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
    let mut attr = [0u64; 4];
    attr[0] = map.as_raw_fd() as u64;
    attr[1] = key.as_ptr() as u64;
    attr[2] = value.as_ptr() as u64;
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut attr).context("BPF_MAP_UPDATE_ELEM")?;
    Ok(())
}

const BPF_LINK_CREATE: i64 = 28;
const BPF_XDP: u64 = 37;
const XDP_FLAGS_DRV_MODE: u64 = 1 << 2;
const XDP_DROP: i32 = 1;

/// Attach an XDP program that drops every frame to `ifindex` (native mode, in the
/// calling thread's network namespace): the benchmark's sink. Detached when the
/// returned link is closed.
///
/// # Errors
/// The kernel refusing the program or the link.
pub fn attach_xdp_drop(ifindex: u32) -> anyhow::Result<OwnedFd> {
    let insns = [insn(0xb7, 0, 0, 0, XDP_DROP), insn(0x95, 0, 0, 0, 0)];
    let prog = load_xdp(&insns, "the XDP_DROP sink")?;
    let mut attr = [0u64; 8];
    attr[0] = prog.as_raw_fd() as u64 | (u64::from(ifindex) << 32); // prog_fd, target_ifindex
    attr[1] = BPF_XDP | (XDP_FLAGS_DRV_MODE << 32); // attach_type, flags
    let link = sys_bpf(BPF_LINK_CREATE, &mut attr).context("attaching the XDP_DROP sink")?;
    Ok(owned(link))
}

/// Load XDP program `insns` (`what` names it in errors, with the verifier's log).
fn load_xdp(insns: &[u64], what: &str) -> anyhow::Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 65536];
    let mut attr = [0u64; 20];
    attr[0] = u64::from(BPF_PROG_TYPE_XDP) | ((insns.len() as u64) << 32); // type, insn_cnt
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[3] = 1 | ((log.len() as u64) << 32); // log_level, log_size
    attr[4] = log.as_mut_ptr() as u64;
    match sys_bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(owned(fd)),
        Err(e) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(0);
            bail!(
                "loading {what}: {e}\n{}",
                String::from_utf8_lossy(&log[..end])
            );
        }
    }
}

/// One eBPF instruction.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | (u64::from(dst & 0xf) << 8)
        | (u64::from(src & 0xf) << 12)
        | (u64::from(off as u16) << 16)
        | (u64::from(imm as u32) << 32)
}

/// The generator program: bounds check, `bpf_get_prandom_u32() & mask`, table
/// lookup, copy the table's frame (`len` bytes) over the packet, `XDP_TX`.
fn program(len: usize, map_fd: i32, mask: u32) -> Vec<u64> {
    const MOV_X: u8 = 0xbf;
    const MOV_K: u8 = 0xb7;
    const ADD_K: u8 = 0x07;
    const AND_K: u8 = 0x57;
    const JGT_X: u8 = 0x2d;
    const JEQ_K: u8 = 0x15;
    const CALL: u8 = 0x85;
    const EXIT: u8 = 0x95;
    const LD_IMM64: u8 = 0x18;
    const STX_W: u8 = 0x63;
    let len_i = i32::try_from(len).expect("short frame");
    let mut p = vec![
        insn(MOV_X, 6, 1, 0, 0),           // r6 = ctx
        insn(0x61, 7, 6, 0, 0),            // r7 = ctx->data
        insn(0x61, 8, 6, 4, 0),            // r8 = ctx->data_end
        insn(MOV_X, 2, 7, 0, 0),           // r2 = data
        insn(ADD_K, 2, 0, 0, len_i),       // r2 += len
        insn(JGT_X, 2, 8, 0x7fff, 0),      // if r2 > data_end goto out (patched)
        insn(CALL, 0, 0, 0, 7),            // r0 = bpf_get_prandom_u32()
        insn(AND_K, 0, 0, 0, mask as i32), // r0 &= mask
        insn(STX_W, 10, 0, -4, 0),         // *(u32 *)(fp - 4) = r0
        insn(LD_IMM64, 1, 1, 0, map_fd),   // r1 = map (BPF_PSEUDO_MAP_FD)
        0,
        insn(MOV_X, 2, 10, 0, 0),     // r2 = fp
        insn(ADD_K, 2, 0, 0, -4),     // r2 = fp - 4
        insn(CALL, 0, 0, 0, 1),       // r0 = bpf_map_lookup_elem(r1, r2)
        insn(JEQ_K, 0, 0, 0x7fff, 0), // if r0 == 0 goto out (patched)
    ];
    // Copy with the widest loads that fit: (LDX, STX, width).
    let mut off = 0usize;
    for (ldx, stx, w) in [
        (0x79u8, 0x7bu8, 8usize),
        (0x61, 0x63, 4),
        (0x69, 0x6b, 2),
        (0x71, 0x73, 1),
    ] {
        while len - off >= w {
            let o = i16::try_from(off).expect("short frame");
            p.push(insn(ldx, 1, 0, o, 0));
            p.push(insn(stx, 7, 1, o, 0));
            off += w;
        }
    }
    let out = p.len();
    p.push(insn(MOV_K, 0, 0, 0, XDP_TX));
    p.push(insn(EXIT, 0, 0, 0, 0));
    for at in [5usize, 14] {
        let off = i16::try_from(out - at - 1).expect("short program");
        p[at] = (p[at] & !(0xffff << 16)) | (u64::from(off as u16) << 16);
    }
    p
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// One's complement sum of 16-bit big-endian words.
fn sum16(b: &[u8]) -> u16 {
    let mut s = 0u32;
    for c in b.chunks(2) {
        s += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    fold(s)
}

fn add(a: u16, b: u16) -> u16 {
    fold(u32::from(a) + u32::from(b))
}

/// TCP SYN template from `src:sport` to `dst:dport` with valid checksums; `src_mac`
/// is the generator's, `dst_mac` the gateway's.
#[must_use]
pub fn template(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    (src, sport): (IpAddr, u16),
    (dst, dport): (IpAddr, u16),
) -> Vec<u8> {
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    let mut f = Vec::with_capacity(80);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut ip = vec![0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&40u16.to_be_bytes());
            ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
            ip[6] = 0x40; // DF
            ip[8] = 64;
            ip[9] = 6;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let c = !sum16(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            let pseudo = add(add(sum16(&s.octets()), sum16(&d.octets())), 6 + 20);
            let c = !add(pseudo, sum16(&tcp));
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let mut ip = vec![0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&20u16.to_be_bytes());
            ip[6] = 6;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            let pseudo = add(add(sum16(&s.octets()), sum16(&d.octets())), 6 + 20);
            let c = !add(pseudo, sum16(&tcp));
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        _ => panic!("template: mixed address families"),
    }
    f.extend_from_slice(&tcp);
    f
}

/// Are the IPv4 header and TCP checksums of `f` valid?
#[must_use]
pub fn checksums_ok(f: &[u8]) -> bool {
    let (ip_len, src, dst) = match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => (
            20,
            &f[ETH_HDR + 12..ETH_HDR + 16],
            &f[ETH_HDR + 16..ETH_HDR + 20],
        ),
        _ => (
            40,
            &f[ETH_HDR + 8..ETH_HDR + 24],
            &f[ETH_HDR + 24..ETH_HDR + 40],
        ),
    };
    let ip_ok = ip_len == 40 || sum16(&f[ETH_HDR..ETH_HDR + 20]) == 0xffff;
    let tcp = &f[ETH_HDR + ip_len..];
    let pseudo = add(add(sum16(src), sum16(dst)), 6 + 20);
    ip_ok && add(pseudo, sum16(tcp)) == 0xffff
}

/// The possible CPUs' numbers, in order (per-CPU map values have one slot each, in
/// this order, so slot k is CPU `possible_cpus()[k]`, not CPU k when the numbers
/// have gaps).
///
/// # Errors
/// The sysfs file missing or not a CPU list.
pub fn possible_cpus() -> anyhow::Result<Vec<usize>> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    cpu_list(&s).with_context(|| format!("/sys/devices/system/cpu/possible: {s:?}"))
}

/// A kernel CPU list such as `0-3,8,10-11` (cpuset(7), "List format").
fn cpu_list(s: &str) -> anyhow::Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.trim().split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (lo, hi) = (lo.parse::<usize>()?, hi.parse::<usize>()?);
        ensure!(
            lo <= hi && cpus.last().is_none_or(|&l| l < lo),
            "not an ascending CPU list"
        );
        cpus.extend(lo..=hi);
    }
    Ok(cpus)
}

/// The frame list for each slot of a per-CPU value: slot k is the k-th possible
/// CPU's (`possible`), which sends its own list in `per_cpu` or, when it has none,
/// the first.
fn slot_lists<'a>(possible: &[usize], per_cpu: &'a [(usize, Vec<Vec<u8>>)]) -> Vec<&'a [Vec<u8>]> {
    possible
        .iter()
        .map(|c| {
            let mine = per_cpu.iter().find(|(cpu, _)| cpu == c);
            mine.unwrap_or(&per_cpu[0]).1.as_slice()
        })
        .collect()
}

/// A loaded generator for one address family: program, frame table, first frame.
pub struct Family {
    prog: OwnedFd,
    _map: OwnedFd,
    frame: Vec<u8>,
}

impl Family {
    /// `per_cpu` pairs a CPU's number with the frames it sends, each with equal
    /// probability; CPUs not listed (which no sender runs on) get the first list.
    /// Every list has the same count, rounded down to a power of two, and every
    /// frame the same length (e.g. [`template`]s of one family). The table is a
    /// per-CPU array, so that the CPUs can send flows of their own, as a NIC's
    /// receive-side scaling keeps a flow on one queue.
    ///
    /// # Errors
    /// Lists of different counts, frames of different lengths or with bad checksums,
    /// a listed CPU that is not a possible one; the kernel refusing the map or the
    /// program (the verifier's log is in the message).
    pub fn load(per_cpu: &[(usize, Vec<Vec<u8>>)]) -> anyhow::Result<Self> {
        ensure!(!per_cpu.is_empty() && !per_cpu[0].1.is_empty(), "no frames");
        let (count, len) = (per_cpu[0].1.len(), per_cpu[0].1[0].len());
        let possible = possible_cpus()?;
        for (cpu, frames) in per_cpu {
            ensure!(possible.contains(cpu), "CPU {cpu} is not a possible CPU");
            ensure!(frames.len() == count, "CPUs with different frame counts");
            for f in frames {
                ensure!(f.len() == len, "frames of different lengths");
                ensure!(checksums_ok(f), "a frame has wrong checksums");
            }
        }
        let n = 1usize << count.ilog2();
        let mut attr = [0u64; 16];
        attr[0] = u64::from(BPF_MAP_TYPE_PERCPU_ARRAY) | (4u64 << 32); // map_type, key_size
        attr[1] = len as u64 | ((n as u64) << 32); // value_size, max_entries
        let map = owned(sys_bpf(BPF_MAP_CREATE, &mut attr).context("BPF_MAP_CREATE")?);
        // A per-CPU value from user space: one slot per possible CPU, 8-byte aligned.
        let stride = len.next_multiple_of(8);
        let mut value = vec![0u8; stride * possible.len()];
        let mut lists: Vec<_> = slot_lists(&possible, per_cpu)
            .into_iter()
            .map(|l| l.iter())
            .collect();
        for key in 0..u32::try_from(n).expect("small") {
            for (slot, list) in value.chunks_mut(stride).zip(&mut lists) {
                slot[..len].copy_from_slice(list.next().expect("n <= count"));
            }
            map_update(&map, &key.to_ne_bytes(), &value)?;
        }
        let insns = program(len, map.as_raw_fd(), u32::try_from(n - 1).expect("small"));
        let prog = load_xdp(&insns, "the generator program")?;
        Ok(Self {
            prog,
            _map: map,
            frame: per_cpu[0].1[0].clone(),
        })
    }

    /// Send `repeat` frames out of `ifindex` (in the calling thread's network
    /// namespace). Returns how many the kernel ran the program for.
    fn send(&self, ifindex: u32, repeat: u32) -> std::io::Result<()> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        // data_end must be the frame's length.
        let len = u32::try_from(self.frame.len()).expect("small frame");
        let ctx: [u32; 6] = [0, len, 0, ifindex, 0, 0];
        let mut attr = [0u64; 10];
        attr[0] = self.prog.as_raw_fd() as u64; // prog_fd, retval
        attr[1] = self.frame.len() as u64; // data_size_in, data_size_out
        attr[2] = self.frame.as_ptr() as u64; // data_in
        attr[3] = 0; // data_out
        attr[4] = u64::from(repeat); // repeat, duration
        attr[5] = std::mem::size_of_val(&ctx) as u64; // ctx_size_in, ctx_size_out
        attr[6] = ctx.as_ptr() as u64; // ctx_in
        attr[7] = 0; // ctx_out
        attr[8] = u64::from(BPF_F_TEST_XDP_LIVE_FRAMES); // flags, cpu
        attr[9] = 0; // batch_size: default (64)
        sys_bpf(BPF_PROG_TEST_RUN, &mut attr).map(|_| ())
    }
}

/// Sender threads (one per CPU, pinned), stopped and joined on drop.
pub struct Sender {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
    /// Kernel thread ids of the sending threads (for their CPU time).
    pub tids: Arc<Mutex<Vec<i32>>>,
}

impl Sender {
    /// Start one thread on each of `cpus` (pinned) in `netns` (a /var/run/netns
    /// path), each sending chunks of frames of each family in turn out of interface
    /// `ifname`, from its CPU's table ([`Family::load`]).
    pub fn start(
        netns: &str,
        ifname: &str,
        fams: Arc<Vec<Family>>,
        cpus: &[usize],
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let tids = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for &cpu in cpus {
            let (stop, fams, path, ifname, tids) = (
                stop.clone(),
                fams.clone(),
                netns.to_owned(),
                ifname.to_owned(),
                tids.clone(),
            );
            threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
                let fd = File::open(&path).with_context(|| format!("open {path}"))?;
                // SAFETY: valid netns fd; setns affects only this thread.
                let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
                ensure!(rc == 0, "setns {path}: {}", std::io::Error::last_os_error());
                // Unpinned, the thread would send another CPU's flows.
                crate::harness::pin_to(cpu)
                    .with_context(|| format!("pinning a sender to CPU {cpu}"))?;
                let c = std::ffi::CString::new(ifname.clone()).expect("no NUL");
                // SAFETY: NUL-terminated name.
                let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
                ensure!(ifindex != 0, "no interface {ifname} in {path}");
                // SAFETY: no preconditions.
                tids.lock()
                    .expect("not poisoned")
                    .push(unsafe { libc::gettid() });
                while !stop.load(Ordering::Relaxed) {
                    for f in fams.iter() {
                        match f.send(ifindex, 1 << 15) {
                            Ok(()) => {}
                            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                            Err(e) => bail!("BPF_PROG_TEST_RUN (live frames) on {ifname}: {e}"),
                        }
                    }
                }
                Ok(())
            }));
        }
        Ok(Self {
            stop,
            threads,
            tids,
        })
    }

    /// Stop and report the first thread error.
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let mut r = Ok(());
        for t in self.threads.drain(..) {
            let res = t
                .join()
                .map_err(|_| anyhow::anyhow!("sender thread panicked"))
                .and_then(|x| x);
            if r.is_ok() {
                r = res;
            }
        }
        r
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_have_valid_checksums() {
        let m = [2, 0, 0, 0, 0, 1];
        for (src, dst) in [
            ("10.0.0.2", "20.1.2.3"),
            ("10.0.0.2", "255.255.255.255"),
            ("10.0.0.2", "4.171.27.70"),
            ("fd00::2", "2603:1000::1"),
            ("fd00::2", "ffff:ffff::ffff"),
        ] {
            let f = template(
                m,
                m,
                (src.parse().unwrap(), 40_000),
                (dst.parse().unwrap(), 443),
            );
            assert!(checksums_ok(&f), "{dst}");
            let mut bad = f.clone();
            *bad.last_mut().unwrap() ^= 1;
            assert!(!checksums_ok(&bad), "{dst}");
        }
    }

    #[test]
    fn program_copies_the_whole_frame() {
        // 54 bytes: 6 x 8 + 4 + 2; 74: 9 x 8 + 2.
        assert_eq!(program(54, 3, 1023).len(), 15 + 2 * 8 + 2);
        assert_eq!(program(74, 3, 1023).len(), 15 + 2 * 10 + 2);
    }

    #[test]
    fn cpu_lists_parse_with_gaps_and_reject_garbage() {
        assert_eq!(cpu_list("0\n").unwrap(), [0]);
        assert_eq!(cpu_list("0-3\n").unwrap(), [0, 1, 2, 3]);
        assert_eq!(cpu_list("0-1,4,6-7").unwrap(), [0, 1, 4, 6, 7]);
        for bad in ["", "a", "3-1", "0-1,1", "4,2", "0-"] {
            assert!(cpu_list(bad).is_err(), "{bad:?}");
        }
        // This machine's own list parses too.
        assert!(!possible_cpus().unwrap().is_empty());
    }

    /// With gaps in the CPU numbers, a per-CPU value's slot k is not CPU k's: each
    /// listed CPU must get its own frames in its own slot.
    #[test]
    fn each_cpu_gets_its_frames_in_its_slot_despite_gaps() {
        let frames = |b: u8| vec![vec![b; 4]];
        let per_cpu = [(4, frames(4)), (1, frames(1)), (7, frames(7))];
        let got: Vec<u8> = slot_lists(&[0, 1, 4, 5, 7], &per_cpu)
            .iter()
            .map(|l| l[0][0])
            .collect();
        // CPUs 0 and 5 send nothing and get the first list.
        assert_eq!(got, [4, 1, 4, 4, 7]);
    }
}
