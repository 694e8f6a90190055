//! E2B's wire formats, in one place for both sides of the protocol: agentbox's E2B backend (a client of E2B's
//! control plane, envd and code interpreter) and agentboxd's E2B-compatible API (a server of the same).
//!
//! - [`connect`]: the Connect protocol's envelopes (`[flags u8][length u32 BE][JSON]`), decoded with size checks,
//!   and its error and end-of-stream messages.
//! - [`wire`]: the control plane's JSON bodies, envd's process and filesystem messages in proto3 JSON, and the code
//!   interpreter's NDJSON lines.

pub mod connect;
pub mod wire;
