//! `agentbox image pull|push|ls|rm|prune`: the local image store (docs/IMAGES.md), where sandbox roots come
//! from.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::Mutex;

use agentbox_image::{ImageConfig, ImageRef, PullEvent, Store};

use super::CliError;
use agentbox_core::LockExt;

/// Arguments of `agentbox image`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
    /// The store's directory (default /var/lib/agentbox/images).
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<std::path::PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

/// What to do with the store.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Pull an image (`python:3.12-slim`, `localhost:5000/team/agent:1`, `name@sha256:...`) with a progress bar
    /// per layer; an interrupted pull resumes where it stopped.
    Pull {
        /// The reference.
        reference: String,
    },
    /// Push an image of the store (pulled, or a template: `agentbox.local/templates/NAME:latest`) to a registry
    /// under another name; credentials as for pulls (docker's config.json, `AGENTBOX_REGISTRY_*`).
    Push {
        /// The image in the store.
        source: String,
        /// Where to push it (`registry.example.com/team/agent:1`).
        destination: String,
    },
    /// List the pulled images.
    Ls,
    /// Remove images from the store (their layers go at the next prune unless another image uses them).
    Rm {
        /// References.
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Remove unreferenced blobs and layers, then evict the least recently used images over the store's budget.
    Prune,
}

fn store(args: &Args) -> Result<Store, CliError> {
    let config = args.store.clone().map_or_else(ImageConfig::default, ImageConfig::in_dir);
    Store::open(config).map_err(|e| CliError::Image(e.into()))
}

fn reference(s: &str) -> Result<ImageRef, CliError> {
    ImageRef::parse(s).map_err(|e| CliError::Image(e.into()))
}

/// Pushes `source` of the store to `destination`.
///
/// # Errors
/// What the push reports.
pub fn push(store: &Store, source: &ImageRef, destination: &ImageRef) -> Result<agentbox_image::PushReport, CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(store.push(source, destination)).map_err(|e| CliError::Image(e.into()))
}

/// Runs the subcommand.
///
/// # Errors
/// A bad reference, a failed pull, a store that can't be read or written.
pub fn run(args: &Args) -> Result<(), CliError> {
    let store = store(args)?;
    let mut out = io::stdout().lock();
    match &args.action {
        Action::Pull { reference: r } => {
            let r = reference(r)?;
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            let bars = Bars::new(!args.json);
            let progress = |event: PullEvent| bars.event(&event);
            let (record, report) = runtime
                .block_on(store.pull_with_progress(&r, Some(&progress)))
                .map_err(|e| CliError::Image(e.into()))?;
            bars.finish();
            if args.json {
                serde_json::to_writer_pretty(&mut out, &serde_json::json!({ "image": record, "report": report }))?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{} {} ({} layers: {} downloaded, {} reused; {} bytes from {})",
                    record.reference,
                    record.manifest_digest,
                    record.layers.len(),
                    report.layers_unpacked,
                    report.layers_reused,
                    report.bytes_downloaded,
                    report.source
                )?;
            }
        }
        Action::Push { source, destination } => {
            let (source, destination) = (reference(source)?, reference(destination)?);
            let report = push(&store, &source, &destination)?;
            if args.json {
                serde_json::to_writer_pretty(
                    &mut out,
                    &serde_json::json!({
                        "destination": destination.to_string(),
                        "manifest_digest": report.manifest_digest,
                        "blobs_pushed": report.blobs_pushed,
                        "blobs_skipped": report.blobs_skipped,
                        "bytes_pushed": report.bytes_pushed,
                    }),
                )?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{destination} {} ({} blobs pushed, {} already there; {} bytes)",
                    report.manifest_digest, report.blobs_pushed, report.blobs_skipped, report.bytes_pushed
                )?;
            }
        }
        Action::Ls => {
            let images = store.list().map_err(|e| CliError::Image(e.into()))?;
            if args.json {
                serde_json::to_writer_pretty(&mut out, &images)?;
                writeln!(out)?;
            } else if images.is_empty() {
                writeln!(out, "no images; pull one with `agentbox image pull REFERENCE`")?;
            } else {
                writeln!(out, "{:<60} {:<20} {:>7} {:>14}", "REFERENCE", "ID", "LAYERS", "SIZE")?;
                for i in images {
                    let size: u64 = i.layers.iter().map(|l| l.size).sum();
                    writeln!(
                        out,
                        "{:<60} {:<20} {:>7} {:>14}",
                        i.reference,
                        i.config_digest.short(),
                        i.layers.len(),
                        size
                    )?;
                }
            }
        }
        Action::Rm { references } => {
            let mut missing = 0;
            for r in references {
                if store.remove(&reference(r)?).map_err(|e| CliError::Image(e.into()))? {
                    writeln!(out, "{r}")?;
                } else {
                    let _ = writeln!(io::stderr(), "agentbox: {r}: no such image in the store");
                    missing += 1;
                }
            }
            if missing > 0 {
                return Err(CliError::Partial(format!(
                    "{missing} of {} images were not in the store",
                    references.len()
                )));
            }
        }
        Action::Prune => {
            let report = store.gc(&[]).map_err(|e| CliError::Image(e.into()))?;
            if args.json {
                serde_json::to_writer_pretty(&mut out, &report)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "removed {} blobs and {} layers, evicted {} images: {} bytes freed, {} bytes left",
                    report.blobs_removed,
                    report.layers_removed,
                    report.images_evicted.len(),
                    report.bytes_freed,
                    report.bytes_after
                )?;
            }
        }
    }
    Ok(())
}

/// One progress bar per layer, on stderr.
struct Bars {
    multi: Option<indicatif::MultiProgress>,
    bars: Mutex<HashMap<String, indicatif::ProgressBar>>,
}

impl Bars {
    fn new(show: bool) -> Self {
        Self { multi: show.then(indicatif::MultiProgress::new), bars: Mutex::new(HashMap::new()) }
    }

    fn bar(&self, layer: &str, total: u64) -> Option<indicatif::ProgressBar> {
        let multi = self.multi.as_ref()?;
        let mut bars = self.bars.lock_unpoisoned();
        Some(
            bars.entry(layer.to_owned())
                .or_insert_with(|| {
                    let bar = multi.add(indicatif::ProgressBar::new(total));
                    let style =
                        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {msg}")
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
                    bar.set_style(style.progress_chars("=> "));
                    bar.set_prefix(layer.chars().skip(7).take(12).collect::<String>());
                    bar
                })
                .clone(),
        )
    }

    fn event(&self, event: &PullEvent) {
        match event {
            PullEvent::Resolved { layers, .. } => {
                for (digest, size) in layers {
                    let _ = self.bar(&digest.to_string(), *size);
                }
            }
            PullEvent::Progress { layer, bytes, total } => {
                if let Some(b) = self.bar(&layer.to_string(), *total) {
                    b.set_length(*total);
                    b.set_position(*bytes);
                }
            }
            PullEvent::Reused { layer } => {
                if let Some(b) = self.bar(&layer.to_string(), 0) {
                    b.finish_with_message("already here");
                }
            }
            PullEvent::Unpacked { layer } => {
                if let Some(b) = self.bar(&layer.to_string(), 0) {
                    b.finish_with_message("unpacked");
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(m) = &self.multi {
            let _ = m.clear();
        }
    }
}
