//! The browser tool against a real Chromium running inside a real local sandbox (browser preset),
//! on pages served by a small HTTP server inside the same sandbox.
//!
//! Needs Debian's chromium (`apt-get install -y chromium`) and root for the local backend.
#![cfg(feature = "browser")]
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use agentbox_core::config::Preset;
use agentbox_core::{CreateOptions, ExecRequest, ManagerConfig, RunId, SandboxManager};
use agentbox_local::{LocalBackend, LocalConfig};
use agentbox_tools::browser::{BrowserConfig, BrowserTool};
use agentbox_tools::{Tool, ToolContext, ToolError, ToolErrorKind};
use base64::Engine as _;
use serde_json::{Value, json};

/// Every call of a test is bounded by this.
const CALL_LIMIT: Duration = Duration::from_secs(90);

const SERVER: &str = r#"
import http.server, sys, time, urllib.parse, html
class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        path = urllib.parse.urlparse(self.path)
        if path.path == '/slow':
            time.sleep(120)
            return
        if path.path == '/download':
            body = b'id,value\n1,42\n'
            self.send_response(200)
            self.send_header('Content-Type', 'text/csv')
            self.send_header('Content-Disposition', 'attachment; filename="report.csv"')
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if path.path == '/submit':
            q = urllib.parse.parse_qs(path.query)
            name = html.escape(q.get('name', [''])[0])
            color = html.escape(q.get('color', [''])[0])
            body = f'<!doctype html><title>Thanks</title><h1 id="greeting">Hello, {name}!</h1><p id="color">{color}</p>'.encode()
            self.send_response(200)
            self.send_header('Content-Type', 'text/html; charset=utf-8')
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        return super().do_GET()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), Handler).serve_forever()
"#;

const INDEX: &str = r#"<!doctype html>
<html><head><title>Agentbox test page</title></head>
<body>
<h1>Welcome</h1>
<p>An introduction with <a href="/second.html">a link to the second page</a>.</p>
<p>This page exercises the browser tool: it has buttons that change the page, a form that is sent to the server
inside the sandbox, a link to a download, a link that opens a new tab, an alert, text that arrives late, and enough
words in this paragraph that its readable text is longer than the smallest page of extracted text, so that reading
it in pieces can be checked as well.</p>
<button id="reveal" onclick="document.getElementById('secret').hidden = false">Show secret</button>
<div id="secret" hidden>The secret is 42</div>
<button id="count" onclick="this.dataset.n = (+this.dataset.n || 0) + 1; this.textContent = 'Clicked ' + this.dataset.n">Count</button>
<form action="/submit" method="get">
  <label for="name">Your name</label> <input id="name" name="name" placeholder="Name">
  <select id="color" name="color"><option value="red">Red</option><option value="green">Green</option></select>
  <button type="submit">Send</button>
</form>
<p><a id="dl" href="/download">Get the report</a> <a id="newtab" href="/second.html" target="_blank">Second page in a new tab</a></p>
<button id="alert" onclick="alert('hello from the page'); document.title = 'after alert'">Alert</button>
<div id="late"></div>
<script>setTimeout(() => { document.getElementById('late').textContent = 'Arrived late'; }, 400);</script>
<div style="height: 2000px"></div>
<p id="bottom">The end</p>
</body></html>
"#;

const SECOND: &str = "<!doctype html><title>Second</title><h1>Second page</h1>";
const HANG: &str = "<!doctype html><title>Hanging</title><h1>Almost there</h1><img src=\"/slow\">";

/// A browser-preset sandbox serving the test pages on 127.0.0.1:8000, and a browser tool on it.
struct Site {
    manager: SandboxManager,
    ctx: ToolContext,
    run: RunId,
    tool: BrowserTool,
    profile: String,
}

impl Site {
    async fn new(name: &str) -> Self {
        Self::with(name, |_| {}).await
    }

    async fn with(name: &str, tweak: impl FnOnce(&mut BrowserConfig)) -> Self {
        let backend = Arc::new(LocalBackend::new(LocalConfig::default()).expect("the local backend needs root"));
        let manager = SandboxManager::new(backend, ManagerConfig::default());
        let run = RunId::parse(name).unwrap();
        manager.get_or_create(&run, CreateOptions { preset: Some(Preset::Browser), config: None }).await.unwrap();
        let ctx = ToolContext::new(manager.clone(), run.clone());
        for (path, body) in
            [("server.py", SERVER), ("site/index.html", INDEX), ("site/second.html", SECOND), ("site/hang.html", HANG)]
        {
            manager.write_file(&run, &format!("/home/user/{path}"), body.as_bytes().to_vec()).await.unwrap();
        }
        let items: String = (0..1500).map(|i| format!("<li><a href=\"#i{i}\">Item number {i}</a></li>")).collect();
        let long = format!(
            "<!doctype html><title>Long</title><h1>Long list</h1><ul id=\"list\">{items}</ul><p id=\"tail\">tail</p>"
        );
        manager.write_file(&run, "/home/user/site/long.html", long.into_bytes()).await.unwrap();
        let mut serve = ExecRequest::argv(["python3", "/home/user/server.py", "8000"]);
        serve.cwd = Some("/home/user/site".into());
        manager.spawn_background(&run, serve).await.unwrap();
        let ready =
            "for i in $(seq 100); do (echo > /dev/tcp/127.0.0.1/8000) 2>/dev/null && exit 0; sleep 0.1; done; exit 1";
        assert_eq!(
            manager.exec_collect(&run, ExecRequest::shell(ready)).await.unwrap().exit_code,
            0,
            "the server starts"
        );
        let profile = format!("/home/user/.config/chromium-{name}");
        let mut config = BrowserConfig { user_data_dir: profile.clone(), ..BrowserConfig::default() };
        tweak(&mut config);
        Self { manager, ctx, run, tool: BrowserTool::new(config), profile }
    }

    async fn try_call(&self, input: Value) -> Result<Value, ToolError> {
        tokio::time::timeout(CALL_LIMIT, self.tool.call(&self.ctx, input.clone()))
            .await
            .unwrap_or_else(|_| panic!("browser call {input} did not return within {CALL_LIMIT:?}"))
    }

    async fn call(&self, input: Value) -> Value {
        match self.try_call(input.clone()).await {
            Ok(v) => v,
            Err(e) => panic!("browser call {input} failed: {e:?}"),
        }
    }

    async fn sh(&self, line: &str) -> String {
        let out = self.manager.exec_collect(&self.run, ExecRequest::shell(line)).await.unwrap();
        out.stdout
    }

    /// Host processes whose command line names this site's browser profile.
    fn chromium_processes(&self) -> usize {
        let mut n = 0;
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                if String::from_utf8_lossy(&cmdline).contains(&self.profile) {
                    n += 1;
                }
            }
        }
        n
    }

    async fn close(self) {
        self.manager.shutdown().await;
    }
}

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

/// The ref of the first snapshot line containing `needle`.
fn ref_of(snapshot: &str, needle: &str) -> String {
    let line = snapshot.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no {needle:?} in:\n{snapshot}"));
    let start = line.find("[ref=").unwrap() + 5;
    line[start..].split(']').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_read_and_driven_through_snapshot_refs_and_selectors() {
    if common::not_root() {
        return;
    }
    let site = Site::new("browser-drive").await;
    let nav = site.call(json!({"action": "navigate", "url": "http://127.0.0.1:8000/index.html"})).await;
    assert_eq!(nav["browser_started"], true, "{nav}");
    assert_eq!(text(&nav, "title"), "Agentbox test page");
    assert_eq!(nav["status"], 200);
    // Let the page's timer finish changing it, so that it is unchanged between the snapshots below.
    site.call(json!({"action": "wait_for", "text": "Arrived late"})).await;

    // The snapshot names elements by role with refs, and hides what is hidden.
    let snap = site.call(json!({"action": "snapshot"})).await;
    let tree = text(&snap, "snapshot");
    assert!(tree.contains("- heading \"Welcome\" [level=1] [ref="), "{tree}");
    assert!(tree.contains("- button \"Show secret\" [ref="), "{tree}");
    assert!(tree.contains("- textbox \"Your name\" [ref="), "{tree}");
    assert!(tree.contains("- combobox \"\" [value=\"Red\"]") || tree.contains("- combobox [value=\"Red\"]"), "{tree}");
    assert!(tree.contains("- link \"a link to the second page\" [url=/second.html]"), "{tree}");
    assert!(!tree.contains("The secret is 42"), "hidden content stays out: {tree}");
    assert!(tree.len() <= 8192);

    // Refs are stable while the page is unchanged.
    let again = text(&site.call(json!({"action": "snapshot"})).await, "snapshot");
    assert_eq!(again, tree);

    // Clicking by ref reveals content.
    let reveal = ref_of(&tree, "button \"Show secret\"");
    let clicked = site.call(json!({"action": "click", "ref": reveal})).await;
    assert_eq!(clicked["navigated"], Value::Null, "{clicked}");
    let after = text(&site.call(json!({"action": "snapshot"})).await, "snapshot");
    assert!(after.contains("The secret is 42"), "{after}");
    assert!(after.contains(&format!("[ref={reveal}]")), "the button keeps its ref");

    // Clicking by selector, twice.
    site.call(json!({"action": "click", "selector": "#count"})).await;
    site.call(json!({"action": "click", "selector": "#count"})).await;
    let count =
        site.call(json!({"action": "evaluate", "expression": "document.querySelector('#count').textContent"})).await;
    assert_eq!(count["result"], "Clicked 2");

    // Evaluate returns JSON values, awaits promises, calls functions, and reports exceptions.
    let v = site.call(json!({"action": "evaluate", "expression": "({a: 1, b: [true, null, 'x'], n: 1.5})"})).await;
    assert_eq!(v["result"], json!({"a": 1, "b": [true, null, "x"], "n": 1.5}));
    assert_eq!(v["type"], "object");
    let v = site
        .call(json!({"action": "evaluate", "expression": "await new Promise(r => setTimeout(() => r(6 * 7), 50))"}))
        .await;
    assert_eq!(v["result"], 42);
    let v = site.call(json!({"action": "evaluate", "expression": "() => document.title"})).await;
    assert_eq!(v["result"], "Agentbox test page");
    let v = site.call(json!({"action": "evaluate", "expression": "undefined"})).await;
    assert_eq!((v["type"].clone(), v["result"].clone()), (json!("undefined"), Value::Null));
    let v = site.call(json!({"action": "evaluate", "expression": "document.querySelectorAll('button')"})).await;
    assert_eq!(v["result"][0], "<button id=\"reveal\">");
    let err = site.try_call(json!({"action": "evaluate", "expression": "nope.nothing"})).await.unwrap_err();
    assert!(err.message.contains("ReferenceError"), "{err:?}");
    let big = site.call(json!({"action": "evaluate", "expression": "'x'.repeat(5000)", "max_bytes": 1000})).await;
    assert_eq!(big["truncated"], true);
    assert!(text(&big, "result_text").contains("bytes truncated"), "{big}");

    // wait_for text that appears later, and an element that is visible.
    site.call(json!({"action": "reload"})).await;
    let w = site.call(json!({"action": "wait_for", "text": "Arrived late", "timeout_ms": 5000})).await;
    assert!(w["waited_ms"].as_u64().is_some());
    site.call(json!({"action": "wait_for", "selector": "#secret", "state": "hidden"})).await;
    let err = site.try_call(json!({"action": "wait_for", "text": "never there", "timeout_ms": 300})).await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::Timeout, "{err:?}");

    // Extract readable text, capped with a truncation mark and pageable.
    let all = site.call(json!({"action": "extract"})).await;
    assert!(text(&all, "content").contains("Welcome\n"), "{all}");
    let part = site.call(json!({"action": "extract", "max_bytes": 256})).await;
    assert_eq!(part["truncated"], true);
    assert!(text(&part, "content").contains("bytes truncated"), "{part}");
    let next = part["next_offset"].as_u64().unwrap();
    let rest = site.call(json!({"action": "extract", "offset": next, "max_bytes": 100_000})).await;
    assert!(text(&rest, "content").contains("The end"), "{rest}");
    let html = site.call(json!({"action": "extract", "format": "html", "selector": "form"})).await;
    assert!(text(&html, "content").starts_with("<form action=\"/submit\""), "{html}");
    assert!(!text(&html, "content").contains("data-agentbox-ref"), "snapshot refs are not shown in HTML");

    // Scroll to the bottom and back.
    let s = site.call(json!({"action": "scroll", "to": "bottom"})).await;
    assert_eq!(s["at_bottom"], true, "{s}");
    let s = site.call(json!({"action": "scroll", "selector": "h1"})).await;
    assert_eq!(s["scroll_y"], 0, "{s}");

    // A dialog is accepted and reported instead of blocking the page.
    let alert = site.call(json!({"action": "click", "selector": "#alert"})).await;
    let title = site.call(json!({"action": "evaluate", "expression": "document.title"})).await;
    assert_eq!(title["result"], "after alert");
    let dialogs = if alert["dialogs"].is_array() { alert["dialogs"].clone() } else { title["dialogs"].clone() };
    assert_eq!(dialogs[0]["message"], "hello from the page", "{alert} {title}");

    // Fill the form by ref and by selector, and submit it: the next page shows what was sent.
    let tree = text(&site.call(json!({"action": "snapshot", "interactive_only": true})).await, "snapshot");
    let name = ref_of(&tree, "textbox \"Your name\"");
    let typed = site.call(json!({"action": "type", "ref": name, "text": "Ada"})).await;
    assert_eq!(typed["value"], "Ada");
    let typed = site.call(json!({"action": "type", "selector": "#name", "text": " Lovelace", "clear": false})).await;
    assert_eq!(typed["value"], "Ada Lovelace");
    let sel = site.call(json!({"action": "select", "selector": "#color", "values": ["Green"]})).await;
    assert_eq!(sel["selected"], json!(["green"]));
    let sent = site.call(json!({"action": "type", "selector": "#name", "text": "Grace", "submit": true})).await;
    assert_eq!(sent["navigated"], true, "{sent}");
    assert_eq!(text(&sent, "title"), "Thanks");
    let greeting = site.call(json!({"action": "extract", "selector": "#greeting"})).await;
    assert_eq!(text(&greeting, "content"), "Hello, Grace!");
    let color = site.call(json!({"action": "extract", "selector": "#color"})).await;
    assert_eq!(text(&color, "content"), "green");

    // History.
    let back = site.call(json!({"action": "back"})).await;
    assert_eq!(text(&back, "title"), "Agentbox test page");
    let fwd = site.call(json!({"action": "forward"})).await;
    assert_eq!(text(&fwd, "title"), "Thanks");

    // A link click navigates and waits for the new page.
    site.call(json!({"action": "navigate", "url": "http://127.0.0.1:8000/index.html", "wait": "domcontentloaded"}))
        .await;
    let link = site.call(json!({"action": "click", "selector": "p a[href='/second.html']"})).await;
    assert_eq!((link["navigated"].clone(), text(&link, "title")), (json!(true), "Second".to_owned()), "{link}");

    // Stale refs and bad input get clear errors.
    let err = site.try_call(json!({"action": "click", "ref": reveal})).await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::NotFound);
    assert!(err.message.contains("take a new snapshot"), "{err:?}");
    let err = site.try_call(json!({"action": "click", "selector": "#nothing", "timeout_ms": 300})).await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::NotFound, "{err:?}");
    let err = site.try_call(json!({"action": "click", "selector": "a[", "timeout_ms": 300})).await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::InvalidInput, "{err:?}");
    let err = site.try_call(json!({"action": "click"})).await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::InvalidInput, "{err:?}");
    let err = site.try_call(json!({"action": "press", "key": "NoSuchKey"})).await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::InvalidInput, "{err:?}");
    site.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_capped_pageable_and_scoped() {
    if common::not_root() {
        return;
    }
    let site = Site::new("browser-snapshot").await;
    site.call(json!({"action": "navigate", "url": "http://127.0.0.1:8000/long.html"})).await;
    let first = site.call(json!({"action": "snapshot"})).await;
    let tree = text(&first, "snapshot");
    assert!(tree.len() <= 8192, "the default snapshot is small: {} bytes", tree.len());
    assert_eq!(first["truncated"], true);
    assert!(first["lines"]["total"].as_u64().unwrap() > 3000);
    assert!(text(&first, "note").contains("offset="), "{first}");
    let next = first["next_offset"].as_u64().unwrap();
    assert_eq!(first["lines"]["count"].as_u64().unwrap(), next);
    let second = site.call(json!({"action": "snapshot", "offset": next, "limit": 4096})).await;
    let page2 = text(&second, "snapshot");
    assert!(page2.len() <= 4096);
    assert_eq!(second["lines"]["offset"], next);
    assert!(!tree.lines().any(|l| page2.lines().next() == Some(l)), "pages do not overlap");

    // Scoped to one element, and refs from a page deep in the list work with click.
    let scoped = site.call(json!({"action": "snapshot", "selector": "#tail"})).await;
    assert_eq!(
        text(&scoped, "snapshot"),
        format!("- paragraph [ref={}]: tail", ref_of(&text(&scoped, "snapshot"), "paragraph"))
    );
    let item = ref_of(&page2, "link \"Item number");
    let clicked = site.call(json!({"action": "click", "ref": item})).await;
    assert!(text(&clicked, "url").contains("#i"), "{clicked}");
    let err = site.try_call(json!({"action": "snapshot", "selector": "#missing"})).await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::NotFound);
    site.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_are_pngs_of_the_requested_size() {
    if common::not_root() {
        return;
    }
    let site = Site::new("browser-shot").await;
    site.call(json!({"action": "navigate", "url": "http://127.0.0.1:8000/index.html"})).await;
    let vp = site.call(json!({"action": "set_viewport", "width": 800, "height": 600})).await;
    assert_eq!(vp["width"], 800);
    let shot = site.call(json!({"action": "screenshot", "path": "shots/page.png"})).await;
    assert_eq!((shot["width"].clone(), shot["height"].clone()), (json!(800), json!(600)), "{}", shot["note"]);
    let png = base64::engine::general_purpose::STANDARD.decode(text(&shot, "data_base64")).unwrap();
    assert_png(&png, 800, 600);
    assert_eq!(text(&shot, "saved_to"), "/home/user/shots/page.png");
    let saved = site.manager.read_file(&site.run, "/home/user/shots/page.png").await.unwrap();
    assert_eq!(saved, png, "the saved file is the returned image");

    let full = site.call(json!({"action": "screenshot", "full_page": true, "return_data": false})).await;
    assert_eq!(full["width"], 800);
    assert!(full["height"].as_u64().unwrap() > 2000, "the full page is taller than the viewport: {full}");
    assert!(full.get("data_base64").is_none());

    // The viewport stays as set after a full-page capture, and a scale factor multiplies the pixels.
    let again = site.call(json!({"action": "screenshot"})).await;
    assert_eq!((again["width"].clone(), again["height"].clone()), (json!(800), json!(600)));
    site.call(json!({"action": "set_viewport", "width": 400, "height": 300, "device_scale_factor": 2})).await;
    let hi = site.call(json!({"action": "screenshot"})).await;
    assert_eq!((hi["width"].clone(), hi["height"].clone()), (json!(800), json!(600)));
    let err = site.try_call(json!({"action": "set_viewport", "width": 10, "height": 300})).await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::InvalidInput);
    site.close().await;
}

/// A PNG: signature, an IHDR of the given size, chunks with valid lengths, ending in IEND.
fn assert_png(png: &[u8], width: u32, height: u32) {
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    let mut at = 8;
    let mut chunks = Vec::new();
    while at + 8 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        let kind = String::from_utf8_lossy(&png[at + 4..at + 8]).into_owned();
        if kind == "IHDR" {
            let w = u32::from_be_bytes(png[at + 8..at + 12].try_into().unwrap());
            let h = u32::from_be_bytes(png[at + 12..at + 16].try_into().unwrap());
            assert_eq!((w, h), (width, height));
        }
        chunks.push(kind);
        at += 12 + len;
    }
    assert_eq!(at, png.len(), "chunks fill the file exactly");
    assert_eq!(chunks.first().map(String::as_str), Some("IHDR"));
    assert!(chunks.iter().any(|c| c == "IDAT"));
    assert_eq!(chunks.last().map(String::as_str), Some("IEND"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_open_switch_and_close() {
    if common::not_root() {
        return;
    }
    let site = Site::new("browser-tabs").await;
    site.call(json!({"action": "navigate", "url": "http://127.0.0.1:8000/index.html"})).await;
    let list = site.call(json!({"action": "tabs", "op": "list"})).await;
    assert_eq!(list["tabs"].as_array().unwrap().len(), 1, "{list}");

    let opened = site.call(json!({"action": "tabs", "op": "new", "url": "http://127.0.0.1:8000/second.html"})).await;
    assert_eq!(opened["active"], 1, "{opened}");
    assert_eq!(text(&opened, "title"), "Second");
    let title = site.call(json!({"action": "evaluate", "expression": "document.title"})).await;
    assert_eq!(title["result"], "Second", "actions work on the new tab");

    let back = site.call(json!({"action": "tabs", "op": "switch", "index": 0})).await;
    assert_eq!(back["active"], 0);
    let title = site.call(json!({"action": "evaluate", "expression": "document.title"})).await;
    assert_eq!(title["result"], "Agentbox test page");

    // A link with target=_blank opens a tab that the click reports and the list shows.
    let click = site.call(json!({"action": "click", "selector": "#newtab"})).await;
    assert_eq!(click["new_tabs"].as_array().map(Vec::len), Some(1), "{click}");
    let list = site.call(json!({"action": "tabs", "op": "list"})).await;
    assert_eq!(list["tabs"].as_array().unwrap().len(), 3);

    let closed = site.call(json!({"action": "tabs", "op": "close", "index": 1})).await;
    assert_eq!(closed["tabs"].as_array().unwrap().len(), 2, "{closed}");
    let closed = site.call(json!({"action": "tabs", "op": "close"})).await;
    assert_eq!(closed["tabs"].as_array().unwrap().len(), 1, "{closed}");
    assert_eq!(closed["active"], 0);
    let err = site.try_call(json!({"action": "tabs", "op": "switch", "index": 7})).await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::NotFound);
    site.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_land_in_the_sandbox() {
    if common::not_root() {
        return;
    }
    let site = Site::new("browser-download").await;
    site.call(json!({"action": "navigate", "url": "http://127.0.0.1:8000/index.html"})).await;
    site.call(json!({"action": "click", "selector": "#dl"})).await;
    let list = site.call(json!({"action": "downloads", "wait": true, "timeout_ms": 20_000})).await;
    let d = &list["downloads"][0];
    assert_eq!(d["state"], "completed", "{list}");
    assert_eq!(text(d, "path"), "/home/user/Downloads/report.csv");
    let body = site.manager.read_file(&site.run, "/home/user/Downloads/report.csv").await.unwrap();
    assert_eq!(body, b"id,value\n1,42\n");
    site.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn navigation_failures_and_timeouts_are_clear_and_do_not_block_later_navigations() {
    if common::not_root() {
        return;
    }
    let site = Site::new("browser-navfail").await;
    let err = site
        .try_call(json!({"action": "navigate", "url": "http://127.0.0.1:8000/hang.html", "timeout_ms": 1500}))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::Timeout, "{err:?}");
    assert!(err.message.contains("did not reach `load` within 1500 ms"), "{err:?}");
    assert!(err.message.contains("wait=domcontentloaded"), "{err:?}");

    // The same page with a lighter wait works, and so does the next navigation, at once.
    let dcl = site
        .call(json!({"action": "navigate", "url": "http://127.0.0.1:8000/hang.html", "wait": "domcontentloaded", "timeout_ms": 5000}))
        .await;
    assert_eq!(text(&dcl, "title"), "Hanging");
    let ok =
        site.call(json!({"action": "navigate", "url": "http://127.0.0.1:8000/second.html", "timeout_ms": 5000})).await;
    assert_eq!(text(&ok, "title"), "Second");
    let sel = site
        .call(json!({"action": "navigate", "url": "http://127.0.0.1:8000/index.html", "wait": "selector", "selector": "#count"}))
        .await;
    assert_eq!(text(&sel, "title"), "Agentbox test page");

    let err = site.try_call(json!({"action": "navigate", "url": "http://127.0.0.1:8001/"})).await.unwrap_err();
    assert!(err.message.contains("ERR_CONNECTION_REFUSED"), "{err:?}");
    assert!(err.message.contains("Nothing listens on that port"), "{err:?}");
    let err = site
        .try_call(json!({"action": "navigate", "url": "https://example.com/", "timeout_ms": 10_000}))
        .await
        .unwrap_err();
    assert!(err.message.contains("no network access"), "{err:?}");
    let err = site.try_call(json!({"action": "navigate", "url": "javascript:alert(1)"})).await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::InvalidInput);

    // A call its caller gives up on (a REST client that hung up) is given up inside the sandbox too: the next
    // call does not wait for a five-minute wait that nobody reads.
    let given_up = json!({"action": "wait_for", "selector": "#never", "timeout_ms": 300_000});
    assert!(tokio::time::timeout(Duration::from_secs(2), site.tool.call(&site.ctx, given_up)).await.is_err());
    let after = site.call(json!({"action": "evaluate", "expression": "6 * 7"})).await;
    assert_eq!(after["result"], 42, "{after}");

    // file:// and data: URLs load from inside the sandbox.
    let file = site.call(json!({"action": "navigate", "url": "/home/user/site/second.html"})).await;
    assert_eq!(text(&file, "title"), "Second");
    let data = site.call(json!({"action": "navigate", "url": "data:text/html,<title>Inline</title><p>hi</p>"})).await;
    assert_eq!(text(&data, "title"), "Inline");
    site.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_browser_is_relaunched_and_destroy_leaves_no_chromium() {
    if common::not_root() {
        return;
    }
    let site = Site::new("browser-crash").await;
    let first = site.call(json!({"action": "navigate", "url": "http://127.0.0.1:8000/second.html"})).await;
    assert_eq!(first["browser_started"], true);
    assert!(site.chromium_processes() > 0, "Chromium runs");
    let again = site.call(json!({"action": "evaluate", "expression": "1 + 1"})).await;
    assert!(
        again.get("browser_started").is_none() && again.get("browser_restarted").is_none(),
        "the browser is reused"
    );

    // The pattern does not match the shell running pkill itself.
    site.sh("pkill -KILL -f '[c]hromium'").await;
    let after = site.call(json!({"action": "navigate", "url": "http://127.0.0.1:8000/index.html"})).await;
    assert_eq!(after["browser_restarted"], true, "{after}");
    assert!(text(&after, "notice").contains("restarted"), "{after}");
    assert_eq!(text(&after, "title"), "Agentbox test page");
    let next = site.call(json!({"action": "evaluate", "expression": "document.title"})).await;
    assert!(next.get("browser_restarted").is_none(), "reported once: {next}");

    // close stops the browser; the next call starts a new one.
    let closed = site.call(json!({"action": "close"})).await;
    assert_eq!(closed["closed"], true);
    let fresh = site.call(json!({"action": "navigate", "url": "http://127.0.0.1:8000/second.html"})).await;
    assert_eq!(fresh["browser_started"], true, "{fresh}");
    assert!(site.chromium_processes() > 0);

    site.manager.destroy(&site.run).await.unwrap();
    let mut left = site.chromium_processes();
    for _ in 0..100 {
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = site.chromium_processes();
    }
    assert_eq!(left, 0, "no Chromium process is left after destroy");
    let err = site.try_call(json!({"action": "evaluate", "expression": "1"})).await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::NotFound, "{err:?}");
    assert_eq!(site.tool.open_browsers(), 0, "the connection to the destroyed sandbox's browser is dropped");
    site.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_executable_names_the_install_command() {
    if common::not_root() {
        return;
    }
    let site = Site::with("browser-missing", |c| c.executable = "/usr/bin/no-such-chromium".into()).await;
    let err = site.try_call(json!({"action": "navigate", "url": "about:blank"})).await.unwrap_err();
    assert_eq!(err.kind, ToolErrorKind::Unsupported, "{err:?}");
    assert!(err.message.contains("apt-get install -y chromium"), "{err:?}");
    assert!(err.message.contains("/usr/bin/no-such-chromium"), "{err:?}");
    site.close().await;
}

/// Figures for docs/BENCHMARKS.md: the browser's launch time, and navigate + screenshot of a page served
/// inside the sandbox once the browser runs. Prints them; asserts nothing about time.
///
/// `cargo test -p agentbox-tools --test browser -- --ignored --nocapture measure`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement that prints figures"]
#[allow(clippy::print_stdout)]
async fn measure_launch_and_navigate_screenshot() {
    if common::not_root() {
        return;
    }
    let site = Site::new("browser-bench").await;
    let mut launches = Vec::new();
    for _ in 0..5 {
        let r = site.call(json!({"action": "navigate", "url": "about:blank"})).await;
        launches.push(r["browser_launch_ms"].as_u64().unwrap());
        site.call(json!({"action": "close"})).await;
    }
    site.call(json!({"action": "navigate", "url": "http://127.0.0.1:8000/index.html"})).await;
    let (mut rounds, mut navs, mut shots, mut evals) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let ms = |t: std::time::Instant| t.elapsed().as_secs_f64() * 1000.0;
    for _ in 0..30 {
        let t = std::time::Instant::now();
        site.call(json!({"action": "navigate", "url": "http://127.0.0.1:8000/index.html"})).await;
        navs.push(ms(t));
        let t2 = std::time::Instant::now();
        let shot = site.call(json!({"action": "screenshot"})).await;
        shots.push(ms(t2));
        rounds.push(ms(t));
        assert_eq!(shot["width"], 1280);
        let t3 = std::time::Instant::now();
        site.call(json!({"action": "evaluate", "expression": "1"})).await;
        evals.push(ms(t3));
    }
    launches.sort_unstable();
    let pct = |v: &mut Vec<f64>, percent: usize| {
        v.sort_by(f64::total_cmp);
        v[(v.len() - 1) * percent / 100]
    };
    println!("launch ms (5 runs, sorted): {launches:?}; median {}", launches[2]);
    println!(
        "navigate + screenshot ms (30 runs): p50 {:.1}, p90 {:.1}; navigate p50 {:.1}, screenshot p50 {:.1}; \
         a trivial call (evaluate 1) p50 {:.1}",
        pct(&mut rounds, 50),
        pct(&mut rounds, 90),
        pct(&mut navs, 50),
        pct(&mut shots, 50),
        pct(&mut evals, 50)
    );
    site.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_too_small_for_a_browser_names_the_browser_preset() {
    if common::not_root() {
        return;
    }
    let backend = Arc::new(LocalBackend::new(LocalConfig::default()).expect("the local backend needs root"));
    let manager = SandboxManager::new(backend, ManagerConfig::default());
    let run = RunId::parse("browser-small").unwrap();
    // Chromium's threads count against the process limit: 64 is far too few.
    let mut config = Preset::Lightweight.config();
    config.security.max_processes = 64;
    manager.get_or_create(&run, CreateOptions { preset: None, config: Some(config) }).await.unwrap();
    let ctx = ToolContext::new(manager.clone(), run);
    let tool = BrowserTool::new(BrowserConfig {
        cdp_timeout: Duration::from_secs(5),
        launch_timeout: Duration::from_secs(20),
        user_data_dir: "/home/user/.config/chromium-browser-small".into(),
        ..BrowserConfig::default()
    });
    let err = tokio::time::timeout(CALL_LIMIT, tool.call(&ctx, json!({"action": "navigate", "url": "about:blank"})))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.message.contains("create the sandbox with the `browser` preset"), "{err:?}");
    assert!(err.message.contains("room for 64 processes"), "{err:?}");
    manager.shutdown().await;
}
