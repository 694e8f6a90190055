//! The browser tool's input: one action per call, each with its own fields.

use schemars::JsonSchema;
use serde::Deserialize;

/// Longest time limit a call may ask for, in milliseconds.
pub const MAX_TIMEOUT_MS: u64 = 300_000;
/// Smallest and largest snapshot page, in bytes.
pub const SNAPSHOT_LIMIT_RANGE: (usize, usize) = (256, 262_144);
/// Smallest and largest text returned by extract and evaluate, in bytes.
pub const MAX_BYTES_RANGE: (usize, usize) = (256, 1_048_576);

/// One browser action. The `action` field picks it; the other fields belong to that action.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum BrowserAction {
    /// Open a URL in the current tab and wait until it has loaded.
    Navigate {
        /// The URL: http(s)://, file:// or data:. Without a scheme, http:// is assumed. Pages served inside the
        /// sandbox are reached at http://127.0.0.1:PORT; other hosts follow the sandbox's network policy.
        url: String,
        /// When a navigation counts as done: `load` (default), `domcontentloaded`, `networkidle`, or `selector`
        /// (once the element matching `selector` is visible).
        wait: Option<WaitUntil>,
        /// CSS selector: with wait=selector, the element to wait for.
        selector: Option<String>,
        /// Time limit in milliseconds (default 30000).
        #[schemars(range(min = 1, max = 300_000))]
        timeout_ms: Option<u64>,
    },
    /// Go back one page in the current tab's history.
    Back {
        /// When the navigation counts as done (default `load`).
        wait: Option<WaitUntil>,
        /// Time limit in milliseconds (default 30000).
        #[schemars(range(min = 1, max = 300_000))]
        timeout_ms: Option<u64>,
    },
    /// Go forward one page in the current tab's history.
    Forward {
        /// When the navigation counts as done (default `load`).
        wait: Option<WaitUntil>,
        /// Time limit in milliseconds (default 30000).
        #[schemars(range(min = 1, max = 300_000))]
        timeout_ms: Option<u64>,
    },
    /// Reload the current page.
    Reload {
        /// When the navigation counts as done (default `load`).
        wait: Option<WaitUntil>,
        /// Time limit in milliseconds (default 30000).
        #[schemars(range(min = 1, max = 300_000))]
        timeout_ms: Option<u64>,
    },
    /// Click an element, given by `ref` (from a snapshot) or a CSS `selector`. Waits until it is visible,
    /// enabled and not covered, then clicks its centre with the mouse, and waits for a navigation it starts.
    Click {
        /// A ref from the latest snapshot, such as `e12`.
        #[serde(rename = "ref")]
        reference: Option<String>,
        /// CSS selector of the element (the first match is used).
        selector: Option<String>,
        /// Mouse button (default left).
        button: Option<MouseButton>,
        /// Double-click instead of a single click.
        #[serde(default)]
        double_click: bool,
        /// Click even when another element covers the target (dispatches the click to the element itself).
        #[serde(default)]
        force: bool,
        /// Time limit in milliseconds (default 10000).
        #[schemars(range(min = 1, max = 300_000))]
        timeout_ms: Option<u64>,
    },
    /// Type text into an input, textarea or contenteditable element given by `ref` or `selector`.
    Type {
        /// A ref from the latest snapshot, such as `e12`.
        #[serde(rename = "ref")]
        reference: Option<String>,
        /// CSS selector of the element (the first match is used).
        selector: Option<String>,
        /// The text to type.
        text: String,
        /// Press Enter afterwards (submits a form), and wait for a navigation it starts.
        #[serde(default)]
        submit: bool,
        /// Replace the field's current content (default true); false appends.
        clear: Option<bool>,
        /// Type one key at a time (fires key events for every character) instead of inserting the text at once.
        #[serde(default)]
        slowly: bool,
        /// Time limit in milliseconds (default 10000).
        #[schemars(range(min = 1, max = 300_000))]
        timeout_ms: Option<u64>,
    },
    /// Press a key (`Enter`, `Tab`, `Escape`, `ArrowDown`, `Backspace`, a character...), optionally on an element
    /// given by `ref` or `selector`, which is focused first.
    Press {
        /// The key, by its name as in KeyboardEvent.key.
        key: String,
        /// A ref from the latest snapshot, such as `e12`.
        #[serde(rename = "ref")]
        reference: Option<String>,
        /// CSS selector of the element to focus first.
        selector: Option<String>,
        /// Time limit in milliseconds (default 10000).
        #[schemars(range(min = 1, max = 300_000))]
        timeout_ms: Option<u64>,
    },
    /// Choose options of a `<select>` element, by value or visible label.
    Select {
        /// A ref from the latest snapshot, such as `e12`.
        #[serde(rename = "ref")]
        reference: Option<String>,
        /// CSS selector of the `<select>` element.
        selector: Option<String>,
        /// Values or labels of the options to select (several only for a multiple select).
        values: Vec<String>,
        /// Time limit in milliseconds (default 10000).
        #[schemars(range(min = 1, max = 300_000))]
        timeout_ms: Option<u64>,
    },
    /// Take a PNG screenshot of the viewport or the full page, returned as base64 and optionally saved in the sandbox.
    Screenshot {
        /// Capture the whole scrollable page instead of the viewport.
        #[serde(default)]
        full_page: bool,
        /// Also save the PNG to this path inside the sandbox (relative paths are taken from the home).
        path: Option<String>,
        /// Return the image as base64 (default true); set false when saving to `path` is enough.
        return_data: Option<bool>,
    },
    /// Get the readable text or the HTML of the page, of the elements matching `selector`, or of a `ref`.
    Extract {
        /// `text` (default; the rendered text) or `html`.
        format: Option<ExtractFormat>,
        /// CSS selector: every match is included.
        selector: Option<String>,
        /// A ref from the latest snapshot.
        #[serde(rename = "ref")]
        reference: Option<String>,
        /// Byte offset to start from, to page through long content (default 0).
        offset: Option<usize>,
        /// Most bytes returned (default 16384); longer content ends with a mark saying how to read on.
        #[schemars(range(min = 256, max = 1_048_576))]
        max_bytes: Option<usize>,
    },
    /// Evaluate JavaScript in the page and return its JSON value. Promises are awaited, top-level await works,
    /// and a function (such as `() => document.title`) is called.
    Evaluate {
        /// The JavaScript expression or statements (the value of the last one is returned).
        expression: String,
        /// Most bytes of JSON returned (default 16384).
        #[schemars(range(min = 256, max = 1_048_576))]
        max_bytes: Option<usize>,
        /// Time limit in milliseconds (default 10000).
        #[schemars(range(min = 1, max = 300_000))]
        timeout_ms: Option<u64>,
    },
    /// A compact accessibility tree of the page: one line per element (`- role "name" [ref=eN]`), small by default.
    /// Refs stay the same while the page is unchanged and work with click, type, press, select and scroll.
    Snapshot {
        /// CSS selector: only this element's subtree.
        selector: Option<String>,
        /// Only interactive elements (links, buttons, fields...) and headings, as a flat list.
        #[serde(default)]
        interactive_only: bool,
        /// Line to start from, to page through a long snapshot (default 0).
        offset: Option<usize>,
        /// Most bytes returned (default 8192).
        #[schemars(range(min = 256, max = 262_144))]
        limit: Option<usize>,
    },
    /// Wait until an element reaches a state, or a text appears on or disappears from the page.
    WaitFor {
        /// CSS selector of the element to wait for.
        selector: Option<String>,
        /// A ref from the latest snapshot.
        #[serde(rename = "ref")]
        reference: Option<String>,
        /// The element's state to wait for (default visible).
        state: Option<ElementState>,
        /// Text to wait for in the page's rendered text.
        text: Option<String>,
        /// Text to wait to disappear from the page's rendered text.
        text_gone: Option<String>,
        /// Time limit in milliseconds (default 10000).
        #[schemars(range(min = 1, max = 300_000))]
        timeout_ms: Option<u64>,
    },
    /// Scroll the page or an element: an element (given by ref or selector) into view, by dx/dy pixels, or to the top
    /// or bottom. Without arguments, scrolls the page down by most of a screen.
    Scroll {
        /// A ref from the latest snapshot.
        #[serde(rename = "ref")]
        reference: Option<String>,
        /// CSS selector of the element.
        selector: Option<String>,
        /// Horizontal pixels to scroll by.
        dx: Option<i64>,
        /// Vertical pixels to scroll by (negative scrolls up).
        dy: Option<i64>,
        /// Scroll to the top or the bottom.
        to: Option<ScrollTo>,
    },
    /// Set the viewport size of the current tab (and of tabs opened later).
    SetViewport {
        /// Width in CSS pixels.
        #[schemars(range(min = 64, max = 8192))]
        width: u32,
        /// Height in CSS pixels.
        #[schemars(range(min = 64, max = 8192))]
        height: u32,
        /// Device pixel ratio (default 1).
        #[schemars(range(min = 0.25, max = 4.0))]
        device_scale_factor: Option<f64>,
        /// Emulate a mobile device (touch, mobile viewport rules).
        #[serde(default)]
        mobile: bool,
    },
    /// Manage tabs: list them, open a new one, switch to one, or close one.
    Tabs {
        /// What to do.
        op: TabOp,
        /// With op=new: the URL to open (default about:blank).
        url: Option<String>,
        /// With op=switch or close: the tab's index in the list.
        index: Option<usize>,
        /// With op=switch or close: the tab's id from the list.
        id: Option<String>,
    },
    /// List the files this browser downloaded to ~/Downloads, optionally waiting for ones in progress.
    Downloads {
        /// Wait until no download is in progress.
        #[serde(default)]
        wait: bool,
        /// Time limit of the wait in milliseconds (default 30000).
        #[schemars(range(min = 1, max = 300_000))]
        timeout_ms: Option<u64>,
    },
    /// Close the browser (the next call starts a new one).
    Close {},
}

/// A browser action's number outside the range its input schema states.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} must be between {min} and {max}, got {got}")]
pub struct RangeError {
    /// The field (or fields) out of range.
    pub field: &'static str,
    /// The smallest accepted value.
    pub min: String,
    /// The largest accepted value.
    pub max: String,
    /// The value given.
    pub got: String,
}

impl RangeError {
    fn new(
        field: &'static str,
        min: &dyn std::fmt::Display,
        max: &dyn std::fmt::Display,
        got: &dyn std::fmt::Display,
    ) -> Self {
        Self { field, min: min.to_string(), max: max.to_string(), got: got.to_string() }
    }
}

impl BrowserAction {
    /// Checks the numeric ranges the input schema states, so that bad input is refused before any work.
    ///
    /// # Errors
    /// A [`RangeError`] naming the field and its range.
    pub fn validate(&self) -> Result<(), RangeError> {
        let timeout = match self {
            Self::Navigate { timeout_ms, .. }
            | Self::Back { timeout_ms, .. }
            | Self::Forward { timeout_ms, .. }
            | Self::Reload { timeout_ms, .. }
            | Self::Click { timeout_ms, .. }
            | Self::Type { timeout_ms, .. }
            | Self::Press { timeout_ms, .. }
            | Self::Select { timeout_ms, .. }
            | Self::Evaluate { timeout_ms, .. }
            | Self::WaitFor { timeout_ms, .. }
            | Self::Downloads { timeout_ms, .. } => *timeout_ms,
            _ => None,
        };
        if let Some(ms) = timeout {
            if !(1..=MAX_TIMEOUT_MS).contains(&ms) {
                return Err(RangeError::new("timeout_ms", &1, &MAX_TIMEOUT_MS, &ms));
            }
        }
        let in_range = |name: &'static str, v: Option<usize>, (min, max): (usize, usize)| match v {
            Some(n) if n < min || n > max => Err(RangeError::new(name, &min, &max, &n)),
            _ => Ok(()),
        };
        match self {
            Self::Snapshot { limit, .. } => in_range("limit", *limit, SNAPSHOT_LIMIT_RANGE),
            Self::Extract { max_bytes, .. } | Self::Evaluate { max_bytes, .. } => {
                in_range("max_bytes", *max_bytes, MAX_BYTES_RANGE)
            }
            Self::SetViewport { width, height, device_scale_factor, .. } => {
                if !(64..=8192).contains(width) || !(64..=8192).contains(height) {
                    return Err(RangeError::new("width and height", &64, &8192, &format!("{width}x{height}")));
                }
                match device_scale_factor {
                    Some(f) if !(0.25..=4.0).contains(f) => Err(RangeError::new("device_scale_factor", &0.25, &4, f)),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// The action's name as written in `action`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Navigate { .. } => "navigate",
            Self::Back { .. } => "back",
            Self::Forward { .. } => "forward",
            Self::Reload { .. } => "reload",
            Self::Click { .. } => "click",
            Self::Type { .. } => "type",
            Self::Press { .. } => "press",
            Self::Select { .. } => "select",
            Self::Screenshot { .. } => "screenshot",
            Self::Extract { .. } => "extract",
            Self::Evaluate { .. } => "evaluate",
            Self::Snapshot { .. } => "snapshot",
            Self::WaitFor { .. } => "wait_for",
            Self::Scroll { .. } => "scroll",
            Self::SetViewport { .. } => "set_viewport",
            Self::Tabs { .. } => "tabs",
            Self::Downloads { .. } => "downloads",
            Self::Close {} => "close",
        }
    }
}

/// When a navigation counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WaitUntil {
    /// The load event: the page and its resources have loaded.
    #[default]
    Load,
    /// The DOMContentLoaded event: the HTML is parsed.
    Domcontentloaded,
    /// No network activity for 500 ms.
    Networkidle,
    /// An element matching `selector` is visible.
    Selector,
}

impl WaitUntil {
    /// The page lifecycle event that ends the wait.
    pub(crate) fn lifecycle_event(self) -> &'static str {
        match self {
            Self::Load => "load",
            Self::Domcontentloaded | Self::Selector => "DOMContentLoaded",
            Self::Networkidle => "networkIdle",
        }
    }

    /// The name as written in requests.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Load => "load",
            Self::Domcontentloaded => "domcontentloaded",
            Self::Networkidle => "networkidle",
            Self::Selector => "selector",
        }
    }
}

/// A mouse button.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MouseButton {
    /// The primary button.
    #[default]
    Left,
    /// The secondary button (context menu).
    Right,
    /// The wheel button.
    Middle,
}

/// What extract returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExtractFormat {
    /// The rendered, readable text.
    #[default]
    Text,
    /// The HTML.
    Html,
}

/// An element state to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ElementState {
    /// In the page and shown.
    #[default]
    Visible,
    /// Missing or not shown.
    Hidden,
    /// In the page, shown or not.
    Attached,
    /// Not in the page.
    Detached,
}

impl ElementState {
    /// The name as written in requests.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Visible => "visible",
            Self::Hidden => "hidden",
            Self::Attached => "attached",
            Self::Detached => "detached",
        }
    }
}

/// Where to scroll to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScrollTo {
    /// The start.
    Top,
    /// The end.
    Bottom,
}

/// A tab operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TabOp {
    /// List the tabs.
    List,
    /// Open a tab and switch to it.
    New,
    /// Switch to a tab.
    Switch,
    /// Close a tab (the current one when none is given).
    Close,
}
