//! OCI images for agentbox: references, a registry puller, a content-addressed store and a layer unpacker
//! made for hostile input. See docs/IMAGES.md.

pub mod auth;
pub mod config;
pub mod digest;
pub mod reference;
pub mod unpack;
