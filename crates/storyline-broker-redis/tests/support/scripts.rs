//! The Lua scripts the adapter runs, listed here on their own (not taken from the adapter), so a script the adapter
//! forgets to load at connect is still checked: shared by `tests/scripts.rs` and `tests/cluster.rs`.

/// Every script the adapter runs.
const SCRIPTS: [&str; 6] = [
    include_str!("../../scripts/append.lua"),
    include_str!("../../scripts/bounds.lua"),
    include_str!("../../scripts/read.lua"),
    include_str!("../../scripts/gcra.lua"),
    include_str!("../../scripts/revoke.lua"),
    include_str!("../../scripts/revocations.lua"),
];

/// Their SHA-1s, as `SCRIPT EXISTS` takes them.
pub(crate) fn script_shas() -> Vec<String> {
    SCRIPTS.map(fred::util::sha1_hash).to_vec()
}
