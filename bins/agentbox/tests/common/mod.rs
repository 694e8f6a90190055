//! Helpers shared by the binary's tests.

pub mod server;
pub mod tmux;
