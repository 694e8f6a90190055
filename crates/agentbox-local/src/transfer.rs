//! Streams files between the host and a sandbox in bounded chunks, on the blocking pool one chunk at a time.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use agentbox_core::{CHUNK_BYTES, Error, FileStream, FileUpload, Result};
use agentbox_hostfs::{FileReader, Upload};

fn task_error(e: tokio::task::JoinError) -> Error {
    Error::backend_with(format!("file transfer task failed: {e}"), e)
}

/// Streams exactly the file's size when opened, in chunks of at most [`CHUNK_BYTES`]. A file that shrinks ends
/// the stream with an error; bytes past the opened size (a file still growing) are not sent.
pub fn stream_file(reader: FileReader) -> FileStream {
    let (tx, stream) = FileStream::channel(reader.size);
    let FileReader { file, size, path } = reader;
    let file = Arc::new(file);
    tokio::spawn(async move {
        let mut offset = 0u64;
        while offset < size {
            let want = usize::try_from((size - offset).min(CHUNK_BYTES as u64)).unwrap_or(CHUNK_BYTES);
            let f = file.clone();
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; want];
                let n = f.read_at(&mut buf, offset)?;
                buf.truncate(n);
                Ok::<_, std::io::Error>(buf)
            })
            .await;
            let chunk = match read {
                Ok(Ok(buf)) if buf.is_empty() => Err(Error::Conflict(format!(
                    "{path} shrank to {offset} bytes while it was read (it had {size}); read it again"
                ))),
                Ok(Ok(buf)) => Ok(buf),
                Ok(Err(e)) => Err(agentbox_hostfs::map_io(&path, e)),
                Err(e) => Err(task_error(e)),
            };
            let failed = chunk.is_err();
            if let Ok(buf) = &chunk {
                offset += buf.len() as u64;
            }
            if tx.send(chunk).await.is_err() || failed {
                return;
            }
        }
    });
    stream
}

/// Writes an upload's chunks into `up`, refusing more than `max` bytes; commits when the caller is done.
///
/// # Errors
/// Too large, the caller's error, or the file system's. The temporary file is removed on every error.
pub async fn drain_upload(mut up: Upload, mut upload: FileUpload, max: u64) -> Result<u64> {
    while let Some(chunk) = upload.next_chunk().await {
        let data = chunk?;
        if up.written().saturating_add(data.len() as u64) > max {
            return Err(Error::TooLarge(format!("the upload to {} is over the {max}-byte limit", up.path())));
        }
        let (back, result) = tokio::task::spawn_blocking(move || {
            let r = up.write_all(&data);
            (up, r)
        })
        .await
        .map_err(task_error)?;
        up = back;
        result?;
    }
    let written = up.written();
    tokio::task::spawn_blocking(move || up.commit()).await.map_err(task_error)??;
    Ok(written)
}
