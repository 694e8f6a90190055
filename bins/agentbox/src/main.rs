//! `agentbox`: the command line.
fn main() {}
