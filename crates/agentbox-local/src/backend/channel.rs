//! The control channel to a sandbox's agent: requests out, and one reader task per sandbox that
//! routes the agent's frames to the execution or request waiting for them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentbox_core::{Error, ExecEvent, ExitStatus, LockExt, Result};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};

use super::{LiveSandbox, LocalBackend};
use crate::cgroup::SandboxCgroup;
use crate::proto::{self, Kind};

/// Where the agent's frames for one request id go.
pub(super) enum Route {
    Exec { tx: mpsc::Sender<ExecEvent>, oom_before: u64 },
    Reply(oneshot::Sender<(Kind, Vec<u8>)>),
}

impl LocalBackend {
    pub(super) async fn request(
        &self,
        sb: &LiveSandbox,
        kind: Kind,
        payload: &[u8],
        deadline: Duration,
    ) -> Result<(Kind, Vec<u8>)> {
        let id = sb.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        sb.routes.lock_unpoisoned().insert(id, Route::Reply(tx));
        let sent = sb.send(&proto::encode(kind, id, payload)).await;
        let result = match sent {
            Ok(()) => match tokio::time::timeout(deadline, rx).await {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(_)) => Err(Error::backend("the sandbox agent exited; destroy and recreate the sandbox")),
                Err(_) => Err(Error::Timeout(format!("the sandbox agent did not answer within {deadline:?}"))),
            },
            Err(e) => Err(e),
        };
        sb.routes.lock_unpoisoned().remove(&id);
        result
    }
}

impl LiveSandbox {
    /// Writes frames to the agent; refused while the sandbox is paused (a frozen agent reads nothing).
    pub(super) async fn send(&self, frame: &[u8]) -> Result<()> {
        if self.paused.load(Ordering::SeqCst) {
            return Err(Error::Conflict(format!(
                "sandbox {} is paused: resume it first (its files can be read and written while it is paused)",
                self.info.id
            )));
        }
        let mut w = self.writer.lock().await;
        let Some(w) = w.as_mut() else { return Err(Error::NotFound(format!("sandbox {}", self.info.id))) };
        w.write_all(frame).await.map_err(|e| {
            Error::backend_with(format!("the sandbox agent is gone ({e}); destroy and recreate the sandbox"), e)
        })
    }
}

/// Reads the agent's frames and routes them. An execution whose stream is not read as fast as its
/// output comes holds the reader (and so every frame after it: back-pressure on the agent);
/// `waiting` says when that is so, since the agent is not at fault then.
pub(super) async fn reader_loop(
    mut rd: tokio::net::unix::OwnedReadHalf,
    routes: Arc<Mutex<HashMap<u32, Route>>>,
    alive: Arc<AtomicBool>,
    waiting: Arc<AtomicBool>,
    cgroup: SandboxCgroup,
) {
    // Frames are size-checked by kind before anything is allocated; a refused frame, or a report that
    // does not parse, ends the connection: the agent broke the protocol.
    let mut broken = None;
    loop {
        let proto::Frame { kind, id, payload } = match proto::read_agent_frame(&mut rd).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                broken = Some(e.to_string());
                break;
            }
        };
        enum Action {
            Send(mpsc::Sender<ExecEvent>, ExecEvent),
            None,
        }
        let action = {
            let mut r = routes.lock_unpoisoned();
            match (kind, r.get(&id)) {
                (Kind::Stdout, Some(Route::Exec { tx, .. })) => Action::Send(tx.clone(), ExecEvent::Stdout(payload)),
                (Kind::Stderr, Some(Route::Exec { tx, .. })) => Action::Send(tx.clone(), ExecEvent::Stderr(payload)),
                (Kind::Exited, Some(Route::Exec { .. })) => {
                    let e = match proto::decode_exited(&payload) {
                        Ok(e) => e,
                        Err(e) => {
                            broken = Some(e.to_string());
                            break;
                        }
                    };
                    let Some(Route::Exec { tx, oom_before }) = r.remove(&id) else { continue };
                    let oom = e.signal == Some(libc::SIGKILL) && !e.timed_out && cgroup.oom_kills() > oom_before;
                    Action::Send(
                        tx,
                        ExecEvent::Exit(ExitStatus {
                            exit_code: e.code,
                            signal: e.signal,
                            timed_out: e.timed_out,
                            oom_killed: oom,
                            duration: Duration::from_micros(e.micros),
                        }),
                    )
                }
                (Kind::Failure, Some(Route::Exec { .. })) => {
                    let Some(Route::Exec { tx, .. }) = r.remove(&id) else { continue };
                    let f = proto::decode_failure(&payload);
                    let _ = tx.try_send(ExecEvent::Stderr(format!("agentbox: {}\n", f.message).into_bytes()));
                    Action::Send(
                        tx,
                        ExecEvent::Exit(ExitStatus {
                            exit_code: 126,
                            signal: None,
                            timed_out: false,
                            oom_killed: false,
                            duration: Duration::ZERO,
                        }),
                    )
                }
                (Kind::Started, Some(Route::Exec { .. })) => Action::None,
                (_, Some(Route::Reply(_))) => {
                    if let Some(Route::Reply(tx)) = r.remove(&id) {
                        let _ = tx.send((kind, payload));
                    }
                    Action::None
                }
                _ => Action::None,
            }
        };
        if let Action::Send(tx, ev) = action {
            if let Err(mpsc::error::TrySendError::Full(ev)) = tx.try_send(ev) {
                waiting.store(true, Ordering::SeqCst);
                let _ = tx.send(ev).await;
                waiting.store(false, Ordering::SeqCst);
            }
        }
    }
    alive.store(false, Ordering::SeqCst);
    let why = match &broken {
        Some(reason) => {
            tracing::warn!(%reason, "the sandbox agent broke the protocol; its connection is closed");
            format!("agentbox: the sandbox agent broke the protocol ({reason}); destroy and recreate the sandbox\n")
        }
        None => "agentbox: the sandbox agent exited\n".to_owned(),
    };
    let pending: Vec<Route> = routes.lock_unpoisoned().drain().map(|(_, r)| r).collect();
    for r in pending {
        if let Route::Exec { tx, .. } = r {
            let _ = tx.send(ExecEvent::Stderr(why.clone().into_bytes())).await;
            let _ = tx
                .send(ExecEvent::Exit(ExitStatus {
                    exit_code: 255,
                    signal: None,
                    timed_out: false,
                    oom_killed: false,
                    duration: Duration::ZERO,
                }))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Runs the reader on one end of a socket pair with an execution waiting as id 7, sends `frames`
    /// from the other end as the agent would, and returns what the execution received.
    async fn execution_sees(frames: &[Vec<u8>]) -> (Vec<ExecEvent>, bool) {
        let (host, mut agent) = tokio::net::UnixStream::pair().unwrap();
        let (rd, _wr) = host.into_split();
        let routes = Arc::new(Mutex::new(HashMap::new()));
        let (tx, mut rx) = mpsc::channel(16);
        routes.lock_unpoisoned().insert(7, Route::Exec { tx, oom_before: 0 });
        let alive = Arc::new(AtomicBool::new(true));
        let waiting = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn(reader_loop(rd, routes, alive.clone(), waiting, SandboxCgroup::default()));
        for f in frames {
            agent.write_all(f).await.unwrap();
        }
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            let last = matches!(e, ExecEvent::Exit(_));
            events.push(e);
            if last {
                break;
            }
        }
        drop(agent);
        reader.await.unwrap();
        (events, alive.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn an_exit_report_that_does_not_parse_ends_the_connection_and_says_so() {
        let (events, alive) = execution_sees(&[proto::encode(Kind::Exited, 7, b"{\"code\": \"soon\"}")]).await;
        assert!(!alive, "the connection to an agent that broke the protocol is closed");
        let [ExecEvent::Stderr(msg), ExecEvent::Exit(status)] = events.as_slice() else { panic!("{events:?}") };
        let msg = String::from_utf8_lossy(msg);
        assert!(msg.contains("broke the protocol") && msg.contains("exit report"), "{msg}");
        assert_eq!(status.exit_code, 255);
    }

    #[tokio::test]
    async fn a_valid_exit_report_is_passed_on() {
        let exited = br#"{"code":3,"signal":null,"timed_out":false,"micros":5}"#;
        let (events, _) =
            execution_sees(&[proto::encode(Kind::Stdout, 7, b"hi"), proto::encode(Kind::Exited, 7, exited)]).await;
        let [ExecEvent::Stdout(out), ExecEvent::Exit(status)] = events.as_slice() else { panic!("{events:?}") };
        assert_eq!((out.as_slice(), status.exit_code), (&b"hi"[..], 3));
    }
}
