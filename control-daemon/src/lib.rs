//! tagwall control daemon library: everything the `tagwall` binary does, usable from
//! tests and benchmarks.
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod catalog;
pub mod cli;
pub mod compile;
pub mod config;
pub mod dataplane;
pub mod deps;
pub mod dns;
pub mod enforcer;
pub mod netif;
pub mod nft;
pub mod policy;
pub mod reference;
pub mod reports;
pub mod rules;
pub mod servicetags;
pub mod state;
pub mod stride;
