//! Ports a user forwards: a host loopback listener whose connections are joined, byte for byte, to
//! connections made inside the sandbox's network namespace.

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::netns::NetNs;

/// Serves `listener` until aborted: each connection is copied to and from `port` on the sandbox's loopback.
pub(super) fn forward(listener: TcpListener, netns: NetNs, port: u16) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let netns = netns.clone();
            tokio::spawn(async move {
                let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                let Ok(Ok(inner)) = tokio::task::spawn_blocking(move || netns.connect(target)).await else {
                    return;
                };
                if inner.set_nonblocking(true).is_err() {
                    return;
                }
                let Ok(mut inner) = tokio::net::TcpStream::from_std(inner) else { return };
                let _ = tokio::io::copy_bidirectional(&mut client, &mut inner).await;
            });
        }
    })
}
