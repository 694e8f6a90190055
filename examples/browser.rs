//! Opens a page in a sandbox's browser, fills in a form, saves a screenshot as a PNG file and
//! prints the page's accessibility snapshot.
//!
//! ```text
//! sudo cargo run --example browser [OUT.png]    # the local backend needs root; Chromium: apt-get install -y chromium
//! ```
#![allow(clippy::print_stdout)]

use std::sync::Arc;

use agentbox_core::config::Preset;
use agentbox_core::{CreateOptions, ManagerConfig, RunId, SandboxManager};
use agentbox_local::{LocalBackend, LocalConfig};
use agentbox_tools::browser::{BrowserConfig, BrowserTool};
use agentbox_tools::{Tool, ToolContext};
use base64::Engine as _;
use serde_json::{Value, json};

const PAGE: &str = r#"<!doctype html>
<title>Sign up</title>
<h1>Sign up</h1>
<form onsubmit="event.preventDefault(); document.querySelector('#done').hidden = false;
                document.querySelector('#who').textContent = this.email.value;">
  <label>Email <input name="email" type="email" placeholder="you@example.com"></label>
  <label>Plan <select name="plan"><option>Free</option><option>Team</option></select></label>
  <label><input type="checkbox" name="news"> Send me news</label>
  <button>Create account</button>
</form>
<p id="done" hidden>Welcome, <b id="who"></b>!</p>
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args().nth(1).unwrap_or_else(|| "browser-example.png".into());
    let manager = SandboxManager::new(Arc::new(LocalBackend::new(LocalConfig::default())?), ManagerConfig::default());
    let run = RunId::parse("browser-example")?;
    manager.get_or_create(&run, CreateOptions { preset: Some(Preset::Browser), config: None }).await?;
    manager.write_file(&run, "/home/user/signup.html", PAGE.as_bytes().to_vec()).await?;
    let ctx = ToolContext::new(manager.clone(), run);
    let browser = BrowserTool::new(BrowserConfig::default());

    let result = async {
        let call = |input: Value| {
            let (browser, ctx) = (&browser, &ctx);
            async move { browser.call(ctx, input).await }
        };
        let page = call(json!({"action": "navigate", "url": "file:///home/user/signup.html"})).await?;
        println!("opened {} (browser started in {} ms)", page["title"], page["browser_launch_ms"]);

        let snapshot = call(json!({"action": "snapshot", "interactive_only": true})).await?;
        let tree = snapshot["snapshot"].as_str().unwrap_or_default().to_owned();
        let email = ref_of(&tree, "textbox \"Email\"").ok_or("no email field in the snapshot")?;
        call(json!({"action": "type", "ref": email, "text": "ada@example.com"})).await?;
        call(json!({"action": "select", "selector": "select[name=plan]", "values": ["Team"]})).await?;
        call(json!({"action": "click", "selector": "input[name=news]"})).await?;
        call(json!({"action": "click", "ref": ref_of(&tree, "button \"Create account\"").ok_or("no button")?})).await?;
        call(json!({"action": "wait_for", "text": "Welcome, ada@example.com!"})).await?;

        let shot = call(json!({"action": "screenshot", "full_page": true})).await?;
        let png = base64::engine::general_purpose::STANDARD.decode(shot["data_base64"].as_str().unwrap_or_default())?;
        std::fs::write(&out, &png)?;
        println!("wrote {out}: {}x{} PNG, {} bytes", shot["width"], shot["height"], png.len());

        let snapshot = call(json!({"action": "snapshot"})).await?;
        println!("\n{}", snapshot["snapshot"].as_str().unwrap_or_default());
        Ok::<_, Box<dyn std::error::Error>>(())
    }
    .await;
    manager.shutdown().await;
    result
}

/// The ref of the first snapshot line containing `needle`.
fn ref_of(snapshot: &str, needle: &str) -> Option<String> {
    let line = snapshot.lines().find(|l| l.contains(needle))?;
    Some(line.split("[ref=").nth(1)?.split(']').next()?.to_owned())
}
