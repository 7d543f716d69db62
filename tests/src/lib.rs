//! Test support for tagwall's kernel-level tests: crafted packets, a BPF_PROG_TEST_RUN
//! harness, and network-namespace guards. The tests themselves are in `tests/tests/`.

pub mod dnsbench;
pub mod dnslab;
pub mod harness;
pub mod lab;
pub mod netns;
pub mod pkt;
pub mod throughput;
