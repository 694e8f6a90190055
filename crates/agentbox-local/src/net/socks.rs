//! The SOCKS5 proxy (RFC 1928): no authentication, CONNECT only, names resolved on the proxy side.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use agentbox_core::budget::{self, Slot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::policy::Rule;
use super::{OpenError, Proxy};

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0;
const NO_ACCEPTABLE_METHOD: u8 = 0xff;
const CMD_CONNECT: u8 = 1;

/// Reply codes.
const SUCCEEDED: u8 = 0;
const NOT_ALLOWED: u8 = 2;
const HOST_UNREACHABLE: u8 = 4;
const COMMAND_NOT_SUPPORTED: u8 = 7;
const ADDRESS_NOT_SUPPORTED: u8 = 8;

async fn reply(stream: &mut TcpStream, code: u8) -> std::io::Result<()> {
    stream.write_all(&[VERSION, code, 0, 1, 0, 0, 0, 0, 0, 0]).await
}

/// Reads the greeting and the request; returns the target, or `None` when the client was answered already.
async fn handshake(stream: &mut TcpStream, proxy: &Proxy) -> std::io::Result<Option<(String, u16)>> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Ok(None);
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    stream.read_exact(&mut methods).await?;
    if !methods.contains(&NO_AUTH) {
        stream.write_all(&[VERSION, NO_ACCEPTABLE_METHOD]).await?;
        return Ok(None);
    }
    stream.write_all(&[VERSION, NO_AUTH]).await?;
    let mut req = [0u8; 4];
    stream.read_exact(&mut req).await?;
    let host = match req[3] {
        1 => {
            let mut a = [0u8; 4];
            stream.read_exact(&mut a).await?;
            Ipv4Addr::from(a).to_string()
        }
        3 => {
            let len = stream.read_u8().await?;
            let mut name = vec![0u8; usize::from(len)];
            stream.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
        4 => {
            let mut a = [0u8; 16];
            stream.read_exact(&mut a).await?;
            Ipv6Addr::from(a).to_string()
        }
        _ => {
            reply(stream, ADDRESS_NOT_SUPPORTED).await?;
            return Ok(None);
        }
    };
    let port = stream.read_u16().await?;
    if req[0] != VERSION {
        return Ok(None);
    }
    if req[1] != CMD_CONNECT {
        let what = if req[1] == 3 { "SOCKS5 UDP ASSOCIATE" } else { "SOCKS5 BIND" };
        proxy.shared.refuse("socks5", &host, port, &Rule::Unsupported(what));
        reply(stream, COMMAND_NOT_SUPPORTED).await?;
        return Ok(None);
    }
    Ok(Some((host, port)))
}

/// Serves one client connection: handshake (within the budget's `header_timeout`), checks, then a
/// tunnel; `slot`, the connection's place in the budget, is held until it ends.
pub(super) async fn serve(mut stream: TcpStream, proxy: Proxy, slot: Arc<Slot>) {
    let limits = budget::proxy_pool().limits();
    let Ok(Ok(Some((host, port)))) = tokio::time::timeout(limits.header_timeout, handshake(&mut stream, &proxy)).await
    else {
        return;
    };
    let up = match proxy.open(&host, port, "socks5").await {
        Ok(up) => up,
        Err(OpenError::Refused(_)) => {
            let _ = reply(&mut stream, NOT_ALLOWED).await;
            return;
        }
        Err(OpenError::Failed(msg)) => {
            tracing::debug!(host, port, error = %msg, "socks5 connect failed");
            let _ = reply(&mut stream, HOST_UNREACHABLE).await;
            return;
        }
    };
    if reply(&mut stream, SUCCEEDED).await.is_err() {
        return;
    }
    proxy.carry(stream, up).await;
    drop(slot);
}
