//! A real terminal for the interactive tests: tmux on a server of the test's own (`-L SOCKET`), so no other tmux
//! session is touched.
#![allow(dead_code)]

use std::process::Command;
use std::time::Duration;

/// Runs `tmux` on the server `socket`; returns its stdout.
pub fn tmux(socket: &str, args: &[&str]) -> String {
    let o = Command::new("tmux").arg("-L").arg(socket).args(args).output().expect("tmux is installed");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Waits until the pane of session `s` shows `needle` (its last 100 lines of history included); returns the pane.
pub fn pane_until(socket: &str, needle: &str) -> String {
    let mut pane = String::new();
    for _ in 0..200 {
        pane = tmux(socket, &["capture-pane", "-p", "-J", "-S", "-100", "-t", "s"]);
        if pane.contains(needle) {
            return pane;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the terminal never showed {needle:?}:\n{pane}");
}
