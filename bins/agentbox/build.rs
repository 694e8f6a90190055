//! Links the `agentbox` command line as a position-dependent executable on Linux with glibc.
//!
//! Each `agentbox run` is one short process, so the dynamic loader's work is paid on every command: a PIE build
//! of this binary carries about 76 000 relative relocations, and applying them copies some 330 pages of
//! `.data.rel.ro` on write, 1.2 ms of every run (half the start of `agentbox --version`). Linked at a fixed
//! address there is nothing to relocate and those pages stay shared with the page cache.
//!
//! The cost is ASLR of this executable's own image (heap, stack, libraries and thread stacks stay randomized).
//! `agentboxd`, the long-running server that SECURITY.md tells operators to deploy, stays a PIE. Set
//! `AGENTBOX_CLI_PIE=1` at build time to keep the CLI a PIE as well.

fn main() {
    println!("cargo::rerun-if-env-changed=AGENTBOX_CLI_PIE");
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let keep_pie = std::env::var_os("AGENTBOX_CLI_PIE").is_some_and(|v| v != "0");
    if target_os == "linux" && target_env == "gnu" && !keep_pie {
        println!("cargo::rustc-link-arg-bin=agentbox=-no-pie");
    }
}
