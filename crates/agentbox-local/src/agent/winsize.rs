//! A terminal's window size as the host asked for it, held against programs that write back a size they read
//! before the resize.
//!
//! GNU readline (bash's line editor) reads the window size and writes the same value back each time it prepares
//! the terminal for a line (`set_winsize` in its `rltty.c`, which makes a backgrounded shell stop there). A resize
//! that lands between that read and that write is undone: the program sees its old size and no further SIGWINCH
//! comes. A window resized just as a shell starts, or just as it prints its next prompt, is lost that way. So
//! for a while after a resize, the agent checks the size before it writes input to the terminal and whenever
//! output comes from it, and sets the host's size again if the size is back to what it was just before. A size
//! that is neither (a program inside chose one, say with `stty rows`) ends the watch: that choice stands, as it
//! would on a real terminal.

use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use crate::proto::TermSize;
use crate::sys;

/// How long after a resize a reverted size is set again. A line editor writes its read-back size well within
/// this, even on a loaded machine; after it, a program that sets the old size again keeps it.
const WATCH: Duration = Duration::from_secs(5);

/// The last size the host set on a terminal, while it is watched.
#[derive(Debug, Clone, Copy)]
pub(super) struct SizeWatch {
    /// What the host asked for.
    wanted: (u16, u16),
    /// What the terminal had before: a program that read it before the resize writes this back.
    before: (u16, u16),
    until: Instant,
}

/// Resizes the terminal whose master is `master` to `size`, returning what to watch (nothing when the size did
/// not change, or could not be read or set).
pub(super) fn resize(master: BorrowedFd<'_>, size: TermSize) -> Option<SizeWatch> {
    let before = sys::window_size(master).ok();
    let wanted = (size.rows, size.cols);
    sys::set_window_size(master, size.rows, size.cols).ok()?;
    let before = before.filter(|b| *b != wanted)?;
    Some(SizeWatch { wanted, before, until: Instant::now() + WATCH })
}

/// Sets the watched size again if the terminal's size is back to the one before it. Returns whether to go on
/// watching.
pub(super) fn hold(master: BorrowedFd<'_>, watch: &SizeWatch, now: Instant) -> bool {
    if now >= watch.until {
        return false;
    }
    match sys::window_size(master) {
        Ok(size) if size == watch.wanted => true,
        Ok(size) if size == watch.before => sys::set_window_size(master, watch.wanted.0, watch.wanted.1).is_ok(),
        // A size of the program's own choosing, or a terminal gone.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn a_size_written_back_from_before_the_resize_is_set_again() {
        let (master, slave) = sys::open_pty(24, 80).expect("a pty");
        let watch = resize(master.as_fd(), TermSize { rows: 30, cols: 100 }).expect("a size to watch");
        // What readline does with a size it read before the resize.
        sys::set_window_size(slave.as_fd(), 24, 80).expect("writing back the old size");
        assert!(hold(master.as_fd(), &watch, Instant::now()));
        assert_eq!(sys::window_size(slave.as_fd()).expect("the size"), (30, 100));
        assert!(hold(master.as_fd(), &watch, Instant::now()), "the size holds: still watched");
    }

    #[test]
    fn a_size_the_program_chose_stands_and_ends_the_watch() {
        let (master, slave) = sys::open_pty(24, 80).expect("a pty");
        let watch = resize(master.as_fd(), TermSize { rows: 30, cols: 100 }).expect("a size to watch");
        sys::set_window_size(slave.as_fd(), 40, 132).expect("stty rows 40 cols 132");
        assert!(!hold(master.as_fd(), &watch, Instant::now()));
        assert_eq!(sys::window_size(slave.as_fd()).expect("the size"), (40, 132));
    }

    #[test]
    fn the_watch_ends_in_time_and_a_resize_to_the_same_size_is_not_watched() {
        let (master, slave) = sys::open_pty(24, 80).expect("a pty");
        assert!(resize(master.as_fd(), TermSize { rows: 24, cols: 80 }).is_none());
        let watch = resize(master.as_fd(), TermSize { rows: 30, cols: 100 }).expect("a size to watch");
        sys::set_window_size(slave.as_fd(), 24, 80).expect("the old size, after the watch");
        assert!(!hold(master.as_fd(), &watch, Instant::now() + WATCH));
        assert_eq!(sys::window_size(slave.as_fd()).expect("the size"), (24, 80));
    }
}
