//! The multibit trie the datapath looks prefixes up in (stride 8, leaf-pushed), kept
//! as 256-entry nodes in the one value of an array map (`LOOKUP`, [`Table`]). A
//! lookup reads one entry per byte of the address, a masked offset into that value
//! (no map lookup per step): at most 4 reads for IPv4 and 16 for IPv6, against a
//! kernel LPM-trie walk that costs a node visit per branching bit.
//! A slot whose policy does not fit the table falls back to the LPM tries
//! ([`crate::policy::CONFIG_F_LPM_FALLBACK`]).
//!
//! Layout: nodes `0..ROOTS` are the roots, one per (slot, key direction, family);
//! then each slot's IPv6 shortcuts ([`SHORTCUT_NODES`] nodes per slot, see below); the
//! other nodes are split in two halves, one per slot, so building the inactive slot
//! never touches a node the active one uses. Userspace builds a slot by
//! inserting prefixes shortest first: a prefix of length `l` lands in the node of
//! level `(l - 1) / 8` and fills the `2^(8(level + 1) - l)` entries it covers there; a longer
//! prefix below an entry turns it into a child node whose entries start as copies of
//! the entry ("leaf pushing"), so the walk ends at the first non-child entry with the
//! longest match already in it.
//!
//! IPv6 shortcuts: an IPv6 walk to a long prefix (AzureMachineLearning's are /122;
//! the Service Tags' IPv6 prefixes are /64 or shorter, or /117 and longer) reads up
//! to 16 entries, one dependent load each. A shortcut record maps a /112 (the
//! address's first 14 bytes, [`shortcut_key`]) and key direction to the child entry
//! the walk reads at its 14th byte, so the walk goes on at the 15th. Records sit in a
//! direct-mapped table per slot ([`shortcut_offset`]); userspace fills them after
//! building a slot, while no packet reads it, and only for /112s whose 14th entry is
//! a child: such an entry never changes until the slot is cleared (an insert only
//! turns results into children and writes below them), so a record never goes
//! stale. A /112 without a record (none needed, or its record was taken by another
//! /112) walks from the root, with the same result. The walk reads the root entry
//! first and looks for a record only when that child entry has [`SHORTCUTS_BELOW`]
//! (the /8 holds a record), so an address elsewhere pays nothing for them.

/// Entries per node (one byte of the address).
pub const FANOUT: usize = 256;
/// An entry with this bit points at a child node ([`child`]); without it, an entry is
/// a result ([`result`]): 0 no prefix covers the address, else `(value + 1) << 1`.
/// Bit 0, so that a walk step tests it without sign-extending the entry (the BPF
/// target has no 32-bit compares) and the child's offset is the entry masked.
pub const CHILD: u32 = 1;
/// In a child entry of an IPv6 root: some /112 under this /8 has a shortcut record.
/// The walk ignores it ([`NODE_OFFSET`] does not cover it).
pub const SHORTCUTS_BELOW: u32 = 2;
/// Values a result entry can hold (`0..MAX_VALUE`).
pub const MAX_VALUE: u32 = (1 << 30) - 1;
/// The bits of a child entry that hold the child's byte offset in the table.
pub const NODE_OFFSET: u32 = ((LOOKUP_ENTRIES * 4 - 1) & !(FANOUT * 4 - 1)) as u32;
/// Root nodes: 2 slots x 4 key directions x 2 families.
pub const ROOTS: u32 = 16;
/// Nodes of IPv6 shortcut records per slot, after the roots: slot `s`'s records are
/// in nodes `ROOTS + s * SHORTCUT_NODES ..`.
pub const SHORTCUT_NODES: u32 = 128;
/// Entries (`u32`) of one shortcut record: the /112's address words as the datapath
/// reads them ([`shortcut_key`]), the record's tag ([`shortcut_tag`], 0: empty), the
/// child entry the walk reads at [`SHORTCUT_BYTES`] and two unused entries (a record
/// is 32 bytes, within one cache line).
pub const SHORTCUT_RECORD: usize = 8;
/// The address bytes a record stands for: the walk resumes at this byte.
pub const SHORTCUT_BYTES: usize = 14;
/// The address bits of the last key word that belong to the /112: its first two
/// bytes, as a native-endian load holds them.
pub const SHORTCUT_W3_MASK: u32 = u32::from_ne_bytes([0xff, 0xff, 0, 0]);
/// Records per slot, a power of two.
pub const SHORTCUTS: u32 = SHORTCUT_NODES * FANOUT as u32 / SHORTCUT_RECORD as u32;
const SHORTCUT_BITS: u32 = SHORTCUTS.trailing_zeros();
const _: () = assert!(SHORTCUTS.is_power_of_two());
/// The first node that is not a root or a shortcut record: the slots' halves start here.
pub const FIRST_NODE: u32 = ROOTS + 2 * SHORTCUT_NODES;
/// Size of `LOOKUP` in nodes (1 KiB each), roots included: fixed in the object (a
/// map's value size cannot change at load time). Userspace may use fewer.
pub const LOOKUP_NODES: u32 = 16384;
/// Entries of the table; a power of two, so a masked offset is always in bounds.
pub const LOOKUP_ENTRIES: usize = LOOKUP_NODES as usize * FANOUT;
const _: () = assert!(FANOUT * 4 == 1 << 10 && LOOKUP_ENTRIES * 4 <= 1 << 30);

/// The value of `LOOKUP[0]`: every node, node `n` at entries `n * 256 ..`.
pub type Table = [u32; LOOKUP_ENTRIES];

/// The child entry for `node`: its byte offset in the table, so that a walk step
/// adds the next byte to it and reads (no multiply or shift of the node number on
/// the chain of dependent reads; see docs/profiling.md).
#[inline(always)]
#[must_use]
pub const fn child(node: u32) -> u32 {
    CHILD | (node << 10) & NODE_OFFSET
}

/// The result entry for `value` (`None`: no prefix covers the address).
#[inline(always)]
#[must_use]
pub const fn result(value: Option<u32>) -> u32 {
    match value {
        Some(v) => (v + 1) << 1,
        None => 0,
    }
}

/// The value of a result entry (`None`: no prefix covers the address).
#[inline(always)]
#[must_use]
pub const fn result_value(entry: u32) -> Option<u32> {
    (entry >> 1).checked_sub(1)
}

/// The node a child entry points at.
#[inline(always)]
#[must_use]
pub const fn child_node(entry: u32) -> u32 {
    (entry & NODE_OFFSET) >> 10
}

/// The byte offset in the table of entry `byte` of the node at byte offset
/// `node_offset` (a child entry or [`child`] of a root; masked: in bounds and
/// aligned for any input).
#[inline(always)]
#[must_use]
pub const fn entry_offset(node_offset: u32, byte: u8) -> usize {
    ((node_offset & NODE_OFFSET) | (byte as u32) << 2) as usize
}

/// The root node of `slot`'s table for key direction `dir` (`DIR_*`/`KEY_DIR_*`)
/// and family (`v6`: 0 or 1).
#[inline(always)]
#[must_use]
pub const fn root(slot: u8, dir: u8, v6: u8) -> u32 {
    (((slot & 1) as u32 * 4 + (dir & 3) as u32) * 2) + (v6 & 1) as u32
}

/// The non-root nodes of `slot`: `first..first + count` of a table of `total` nodes.
#[must_use]
pub const fn slot_nodes(slot: u8, total: u32) -> (u32, u32) {
    let half = total.saturating_sub(FIRST_NODE) / 2;
    (FIRST_NODE + (slot & 1) as u32 * half, half)
}

/// The tag of a shortcut record of key direction `dir` (never 0, the empty record's).
#[inline(always)]
#[must_use]
pub const fn shortcut_tag(dir: u8) -> u32 {
    1 + (dir & 3) as u32
}

/// The key of an IPv6 address's record: its words (as the datapath reads them,
/// `u32::from_ne_bytes` of each 4 bytes) cut to the /112.
#[inline(always)]
#[must_use]
pub const fn shortcut_key(addr: &[u32; 4]) -> [u32; 4] {
    [addr[0], addr[1], addr[2], addr[3] & SHORTCUT_W3_MASK]
}

/// The first node of `slot`'s shortcut records.
#[inline(always)]
#[must_use]
pub const fn shortcut_node(slot: u8) -> u32 {
    ROOTS + (slot & 1) as u32 * SHORTCUT_NODES
}

/// The byte offset in the table of the record for `key` ([`shortcut_key`]) in
/// `slot`/`dir`: a multiplicative hash of the /112 and the direction picks one of the
/// slot's [`SHORTCUTS`] records.
#[inline(always)]
#[must_use]
pub const fn shortcut_offset(slot: u8, dir: u8, key: &[u32; 4]) -> usize {
    // One multiply of the key folded to 64 bits: on the path of every IPv6 lookup.
    let folded = ((key[1] ^ key[3]) as u64) << 32 | (key[0] ^ key[2]) as u64;
    let index =
        (folded ^ (dir & 3) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SHORTCUT_BITS);
    ((shortcut_node(slot) as usize * FANOUT) + index as usize * SHORTCUT_RECORD) * 4
}
