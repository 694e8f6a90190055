//! `agentbox template build|ls|rm`: templates, images built from a Dockerfile into the local image store
//! (docs/IMAGES.md), each RUN step in a sandbox of this host's local backend.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use agentbox_image::{ImageConfig, Store};
use agentbox_local::{LocalBackend, LocalConfig};
use agentbox_template::{BuildRequest, Builder, TemplateError};

use super::CliError;

/// Arguments of `agentbox template`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
    /// The image store's directory (default /var/lib/agentbox/images).
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

/// What to do.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Build a template from a Dockerfile: each RUN in a sandbox (root inside, network to the package
    /// registries only), each step a cached layer; start sandboxes from it with `--template NAME`.
    Build {
        /// The Dockerfile (default: CONTEXT/Dockerfile).
        #[arg(short = 'f', long = "file", value_name = "PATH")]
        file: Option<PathBuf>,
        /// The template's name.
        #[arg(short = 't', long = "tag", value_name = "NAME")]
        name: String,
        /// A build argument (repeatable).
        #[arg(long = "build-arg", value_name = "K=V")]
        build_args: Vec<String>,
        /// A domain RUN steps may reach besides the package registries (repeatable).
        #[arg(long = "allow-domain", value_name = "DOMAIN")]
        allow_domains: Vec<String>,
        /// An address range RUN steps may reach although it is not public, such as a package mirror on a private
        /// network (repeatable; `10.1.2.3/32`).
        #[arg(long = "allow-cidr", value_name = "CIDR")]
        allow_cidrs: Vec<String>,
        /// After the build, push the template to this reference (`registry.example.com/team/agent:1`).
        #[arg(long, value_name = "REFERENCE")]
        push: Option<String>,
        /// The build context: the directory COPY sources are in.
        #[arg(default_value = ".")]
        context: PathBuf,
    },
    /// List the built templates.
    Ls,
    /// Remove templates (their layers go at the next `image prune` unless cached steps or images use them).
    Rm {
        /// Names.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Runs the subcommand.
///
/// # Errors
/// An unreadable Dockerfile or context, a failed step (its output is printed first), the store or backend.
pub fn run(args: &Args) -> Result<(), CliError> {
    let images = args.store.clone().map_or_else(ImageConfig::default, ImageConfig::in_dir);
    let store = Store::open(images.clone()).map_err(|e| CliError::Image(e.into()))?;
    let backend = LocalBackend::new(LocalConfig { images: Some(images), ..LocalConfig::default() })?;
    let builder = Builder::new(Arc::new(backend), store.clone());
    let mut out = io::stdout().lock();
    match &args.action {
        Action::Build { file, name, build_args, allow_domains, allow_cidrs, push, context } => {
            // A destination that can't be parsed fails before the build, not after it.
            let push = push
                .as_deref()
                .map(agentbox_image::ImageRef::parse)
                .transpose()
                .map_err(|e| CliError::Image(e.into()))?;
            let path = file.clone().unwrap_or_else(|| context.join("Dockerfile"));
            let dockerfile = std::fs::read_to_string(&path)
                .map_err(|e| CliError::Usage(format!("reading the Dockerfile {}: {e}", path.display())))?;
            let mut request = BuildRequest::new(name.clone(), dockerfile, context.clone());
            request.allow_domains.clone_from(allow_domains);
            request.allow_cidrs.clone_from(allow_cidrs);
            let mut parsed = BTreeMap::new();
            for arg in build_args {
                let (k, v) = arg
                    .split_once('=')
                    .ok_or_else(|| CliError::Usage(format!("--build-arg {arg}: expected NAME=VALUE")))?;
                parsed.insert(k.to_owned(), v.to_owned());
            }
            request.build_args = parsed;
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            let report = match runtime.block_on(builder.build(&request)) {
                Ok(r) => r,
                Err(TemplateError::StepFailed { step, instruction, exit_code, output }) => {
                    let _ = writeln!(io::stderr().lock(), "{output}");
                    return Err(CliError::TemplateStep(format!(
                        "template step {step} ({instruction}) exited with {exit_code} (its output is above)"
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            let pushed = match push {
                Some(destination) => {
                    let source =
                        agentbox_image::ImageRef::parse(&report.reference).map_err(|e| CliError::Image(e.into()))?;
                    Some((super::image::push(&store, &source, &destination)?, destination))
                }
                None => None,
            };
            if args.json {
                let mut value = serde_json::to_value(&report)?;
                if let Some((p, destination)) = &pushed {
                    value["pushed"] = serde_json::json!({
                        "destination": destination.to_string(),
                        "manifest_digest": p.manifest_digest,
                        "bytes_pushed": p.bytes_pushed,
                    });
                }
                serde_json::to_writer_pretty(&mut out, &value)?;
                writeln!(out)?;
            } else {
                let total = report.steps.len();
                for (i, s) in report.steps.iter().enumerate() {
                    let how = match (&s.layer, s.cached) {
                        (None, _) => "settings".to_owned(),
                        (Some(_), true) => "cached".to_owned(),
                        (Some(_), false) => format!("{} ms", s.millis),
                    };
                    let text: String = s.instruction.chars().take(100).collect();
                    writeln!(out, "step {}/{total} {text} ({how})", i + 1)?;
                }
                writeln!(out, "{} {} in {} ms", report.reference, report.digest, report.millis)?;
                if let Some((p, destination)) = &pushed {
                    writeln!(out, "pushed {destination} {} ({} bytes)", p.manifest_digest, p.bytes_pushed)?;
                }
            }
        }
        Action::Ls => {
            let list = builder.list()?;
            if args.json {
                serde_json::to_writer_pretty(&mut out, &list)?;
                writeln!(out)?;
            } else {
                for t in list {
                    writeln!(out, "{}\t{}\t{} layers", t.name, t.digest, t.layers)?;
                }
            }
        }
        Action::Rm { names } => {
            let mut missing = 0usize;
            for n in names {
                if builder.remove(n)? {
                    writeln!(out, "{n}")?;
                } else {
                    let _ = writeln!(io::stderr().lock(), "agentbox: template {n} not found");
                    missing += 1;
                }
            }
            if missing > 0 {
                return Err(CliError::Partial(format!("{missing} of {} templates were not found", names.len())));
            }
        }
    }
    Ok(())
}
