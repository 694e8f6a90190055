//! Files moving between a caller and a sandbox in bounded chunks, with back-pressure.
//!
//! A [`FileStream`] is a download: the file's size when opened and its bytes through a small bounded channel, so
//! a slow reader slows the sender and memory stays at a few chunks whatever the file's size (a 10 GiB sparse
//! file included). A [`FileUpload`] is the other way: the caller sends chunks and drops its sender when done,
//! or sends an error to abandon the upload, which leaves the old file untouched.

use tokio::sync::mpsc;

use crate::{Error, Result};

/// The size of the chunks backends send, and a sensible one for callers to send.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// How many chunks may wait in a transfer's channel.
pub const CHANNEL_CHUNKS: usize = 4;

/// A file being read in chunks.
#[derive(Debug)]
pub struct FileStream {
    /// The file's size when it was opened. The stream carries exactly this many bytes, or ends with an error.
    pub size: u64,
    chunks: mpsc::Receiver<Result<Vec<u8>>>,
}

impl FileStream {
    /// A stream and the sender a backend feeds it through.
    #[must_use]
    pub fn channel(size: u64) -> (mpsc::Sender<Result<Vec<u8>>>, Self) {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        (tx, Self { size, chunks: rx })
    }

    /// A stream of bytes already in memory (backends without ranged reads).
    #[must_use]
    pub fn from_bytes(mut data: Vec<u8>) -> Self {
        let size = data.len() as u64;
        // Split from the end so no byte is copied twice.
        let mut chunks = Vec::new();
        while data.len() > CHUNK_BYTES {
            let start = (data.len() - 1) / CHUNK_BYTES * CHUNK_BYTES;
            chunks.push(data.split_off(start));
        }
        chunks.push(data);
        let (tx, rx) = mpsc::channel(chunks.len());
        for chunk in chunks.into_iter().rev() {
            // Cannot fail: the channel has room for every chunk and the receiver is alive.
            let _ = tx.try_send(Ok(chunk));
        }
        Self { size, chunks: rx }
    }

    /// The next chunk; `None` at the end.
    pub async fn next_chunk(&mut self) -> Option<Result<Vec<u8>>> {
        self.chunks.recv().await
    }

    /// Collects the whole stream, refusing more than `max` bytes.
    ///
    /// # Errors
    /// [`Error::TooLarge`] past `max`, or the stream's own error.
    pub async fn collect(mut self, max: u64) -> Result<Vec<u8>> {
        if self.size > max {
            return Err(Error::TooLarge(format!("the file is {} bytes, over the {max}-byte limit", self.size)));
        }
        let mut out = Vec::with_capacity(usize::try_from(self.size).unwrap_or(0));
        while let Some(chunk) = self.next_chunk().await {
            out.extend_from_slice(&chunk?);
            if out.len() as u64 > max {
                return Err(Error::TooLarge(format!("the file grew over the {max}-byte limit while it was read")));
            }
        }
        Ok(out)
    }

    /// Turns the stream into its channel (for adapters such as an HTTP body).
    #[must_use]
    pub fn into_receiver(self) -> mpsc::Receiver<Result<Vec<u8>>> {
        self.chunks
    }
}

/// A file being written in chunks: the receiving end a backend drains.
#[derive(Debug)]
pub struct FileUpload {
    chunks: mpsc::Receiver<Result<Vec<u8>>>,
}

impl FileUpload {
    /// An upload and the sender a caller feeds it through. Drop the sender to finish; send an `Err` to abandon.
    #[must_use]
    pub fn channel() -> (mpsc::Sender<Result<Vec<u8>>>, Self) {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        (tx, Self { chunks: rx })
    }

    /// An upload of bytes already in memory.
    #[must_use]
    pub fn from_bytes(data: Vec<u8>) -> Self {
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(Ok(data));
        Self { chunks: rx }
    }

    /// The next chunk; `None` when the caller is done.
    pub async fn next_chunk(&mut self) -> Option<Result<Vec<u8>>> {
        self.chunks.recv().await
    }

    /// Collects the whole upload into memory, refusing more than `max` bytes (backends without streamed writes).
    ///
    /// # Errors
    /// [`Error::TooLarge`] past `max`, or the error the caller sent.
    pub async fn collect(mut self, max: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(chunk) = self.next_chunk().await {
            out.extend_from_slice(&chunk?);
            if out.len() as u64 > max {
                return Err(Error::TooLarge(format!("the upload is over the {max}-byte limit")));
            }
        }
        Ok(out)
    }
}
