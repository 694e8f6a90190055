//! Arbitrary bytes against everything the host decodes from a sandbox's agent: the frame reader
//! and every payload decoder in `proto`. No input may panic, and none may make the host allocate
//! more than the frame's limit, whatever length a header claims.
//!
//! Runs with `cargo test` (256 cases per property); `PROPTEST_CASES=100000 cargo test -p
//! agentbox-local --test proto_fuzz` runs a longer campaign (see docs/SECURITY.md).
#![allow(clippy::unwrap_used, missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use agentbox_local::proto::{self, FrameError, HEADER, Kind, MAX_FRAME};
use proptest::prelude::*;

/// Counts the largest single allocation made on this thread while counting is on.
struct Counting;

thread_local! {
    static LARGEST: Cell<Option<usize>> = const { Cell::new(None) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counter only reads the size.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller upholds `alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn note(size: usize) {
    // `try_with`: the allocator also runs while thread-locals are being torn down.
    let _ = LARGEST.try_with(|l| {
        if let Some(max) = l.get() {
            l.set(Some(max.max(size)));
        }
    });
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result with the largest allocation it made.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(Some(0)));
    let out = f();
    let largest = LARGEST.with(|l| l.replace(None)).unwrap_or(0);
    (out, largest)
}

/// Reads every frame from `bytes` as the host does, until the end or a refusal.
fn read_all(bytes: &[u8]) -> (Vec<proto::Frame>, Option<FrameError>) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut rd = bytes;
    let mut frames = Vec::new();
    rt.block_on(async {
        loop {
            match proto::read_agent_frame(&mut rd).await {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => return (frames, None),
                Err(e) => return (frames, Some(e)),
            }
        }
    })
}

fn header(kind: u8, id: u32, len: u32) -> Vec<u8> {
    let mut h = vec![kind];
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h
}

/// Every decoder of a payload the agent sends.
fn decode_all(payload: &[u8]) {
    let _ = proto::decode_ready(payload);
    let _ = proto::decode_started(payload);
    let _ = proto::decode_exited(payload);
    let f = proto::decode_failure(payload);
    assert!(f.message.len() <= proto::MAX_MESSAGE + 64, "a failure's message is clipped");
    let _ = proto::decode_proc_list(payload);
}

proptest! {
    /// Arbitrary bytes: frames come out within their kind's limit, or the reader refuses; the largest
    /// allocation is bounded by the input (a header alone never buys more than the input holds
    /// beyond what the payload limit allows).
    #[test]
    fn arbitrary_bytes_never_panic_or_overallocate(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let ((frames, _), largest) = largest_allocation(|| read_all(&bytes));
        for f in &frames {
            prop_assert!(f.payload.len() <= proto::agent_frame_limit(f.kind as u8).unwrap());
        }
        prop_assert!(largest <= proto::MAX_FRAME.max(64 * 1024), "largest allocation {largest}");
    }

    /// A header claiming more than its kind allows is refused before anything is allocated for it.
    #[test]
    fn oversized_headers_are_refused_before_allocation(kind in 0u8..=20, id in any::<u32>(), len in any::<u32>()) {
        let bytes = header(kind, id, len);
        let ((frames, err), largest) = largest_allocation(|| read_all(&bytes));
        prop_assert!(frames.is_empty());
        match proto::agent_frame_limit(kind) {
            None => prop_assert!(matches!(err, Some(FrameError::UnexpectedKind(k)) if k == kind), "{err:?}"),
            Some(max) if len as usize > max => {
                prop_assert!(matches!(err, Some(FrameError::TooLarge { .. })), "{err:?}");
                prop_assert!(largest < 64 * 1024, "nothing sized by the header: {largest}");
            }
            // Within the limit, the payload is missing: an end of stream inside the frame.
            Some(_) => prop_assert!(len == 0 || matches!(err, Some(FrameError::Io(_))), "{err:?}"),
        }
    }

    /// Every decoder takes arbitrary payloads without panicking.
    #[test]
    fn decoders_take_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decode_all(&bytes);
    }

    /// Decoders take JSON-shaped payloads (valid JSON of the wrong shape, huge numbers, deep nesting).
    #[test]
    fn decoders_take_arbitrary_json(text in "[\\[\\]{}\",:0-9a-z_ -]{0,512}") {
        decode_all(text.as_bytes());
    }

    /// Well-formed frames of every kind the agent sends round-trip through the reader.
    #[test]
    fn agent_frames_round_trip(kind in prop::sample::select(vec![Kind::Ready, Kind::Started, Kind::Stdout, Kind::Stderr,
        Kind::Exited, Kind::Failure, Kind::Ping, Kind::ListProcs]), id in any::<u32>(),
        payload in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let bytes = proto::encode(kind, id, &payload);
        let (frames, err) = read_all(&bytes);
        prop_assert!(err.is_none());
        prop_assert_eq!(frames, vec![proto::Frame { kind, id, payload }]);
    }
}

#[test]
fn a_dense_process_list_is_refused_before_parsing() {
    let argv = vec![String::new(); proto::MAX_LIST_ELEMENTS + 1];
    let list =
        serde_json::json!({"procs": [{"id": 1, "pid": 2, "argv": argv, "exit_code": null, "output_path": null}]});
    let bytes = serde_json::to_vec(&list).unwrap();
    assert!(bytes.len() < MAX_FRAME, "it fits in a frame");
    let (decoded, largest) = largest_allocation(|| proto::decode_proc_list(&bytes));
    assert!(matches!(decoded, Err(proto::DecodeError::TooManyElements { .. })), "{decoded:?}");
    assert!(largest < 64 * 1024, "refused without parsing: {largest}");
    assert_eq!(proto::json_elements(br#"{"a,[":[1,2],"b":{}}"#), 7);
}

#[test]
fn the_1_tib_header_and_a_stream_cut_inside_a_frame_are_refused() {
    let mut bytes = header(Kind::Stdout as u8, 1, u32::MAX);
    bytes.extend_from_slice(&[0; HEADER]);
    let ((_, err), largest) = largest_allocation(|| read_all(&bytes));
    assert!(matches!(err, Some(FrameError::TooLarge { len, .. }) if len == u32::MAX as usize), "{err:?}");
    assert!(largest < 64 * 1024, "{largest}");
    // A process list may be large, but not over MAX_FRAME.
    let (_, err) = read_all(&header(Kind::ListProcs as u8, 1, u32::try_from(MAX_FRAME + 1).unwrap()));
    assert!(matches!(err, Some(FrameError::TooLarge { .. })), "{err:?}");
    // A frame cut short is an error, not a short frame.
    let mut cut = proto::encode(Kind::Stdout, 1, b"hello");
    cut.truncate(cut.len() - 1);
    assert!(matches!(read_all(&cut).1, Some(FrameError::Io(_))));
}
