//! A Dockerfile, read into the steps a template build takes: the subset E2B's templates use (FROM, RUN,
//! COPY/ADD from the build context, ENV, WORKDIR, USER, ARG, LABEL, CMD, ENTRYPOINT, EXPOSE). The text is
//! parsed by `parse-dockerfile`; what it doesn't cover (multi-stage builds, `ADD` of URLs and archives,
//! HEALTHCHECK, ONBUILD, SHELL, VOLUME) is refused by name.

use parse_dockerfile::{Command, Instruction, Source};

use crate::TemplateError;

/// How a RUN step's command is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunCommand {
    /// A command line for `/bin/sh -c`.
    Shell(String),
    /// A program and its arguments.
    Exec(Vec<String>),
}

/// One step of a build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Runs a command in a sandbox of the image so far; what it changes becomes a layer.
    Run(RunCommand),
    /// Copies files of the build context into the image, as a layer.
    Copy {
        /// Paths in the build context.
        sources: Vec<String>,
        /// Where they go in the image.
        dest: String,
        /// `--chown=USER[:GROUP]`.
        chown: Option<String>,
    },
    /// Sets environment variables (`ENV`).
    Env(Vec<(String, String)>),
    /// Declares a build argument with its default (`ARG`).
    Arg(String, Option<String>),
    /// Sets the working directory (`WORKDIR`).
    Workdir(String),
    /// Sets the user (`USER`).
    User(String),
    /// Adds labels (`LABEL`).
    Label(Vec<(String, String)>),
    /// Sets the start command (`CMD`).
    Cmd(Vec<String>),
    /// Sets the entrypoint (`ENTRYPOINT`).
    Entrypoint(Vec<String>),
    /// Lists exposed ports (`EXPOSE`).
    Expose(Vec<String>),
}

/// A parsed Dockerfile: its base image and its steps, each with its normalized instruction text (for messages
/// and the cache key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipe {
    /// The `FROM` image.
    pub from: String,
    /// The steps after `FROM` (and `ARG`s before it), in order.
    pub steps: Vec<(String, Step)>,
}

fn unsupported(what: &str) -> TemplateError {
    TemplateError::Dockerfile(format!("{what} is not supported in templates"))
}

/// Splits `K=V K2="V 2"` (or the legacy `K V` of ENV) into pairs, unquoting values.
fn pairs(text: &str, legacy_space_form: bool) -> Result<Vec<(String, String)>, TemplateError> {
    let tokens = split_words(text)?;
    if tokens.is_empty() {
        return Err(TemplateError::Dockerfile(format!("expected KEY=VALUE in {text:?}")));
    }
    if legacy_space_form && !tokens[0].contains('=') {
        let rest = text.trim_start()[tokens[0].len()..].trim().to_owned();
        return Ok(vec![(tokens[0].clone(), unquote(&rest))]);
    }
    tokens
        .into_iter()
        .map(|t| match t.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(TemplateError::Dockerfile(format!("expected KEY=VALUE, found {t:?}"))),
        })
        .collect()
}

fn unquote(s: &str) -> String {
    split_words(s).map(|w| w.join(" ")).unwrap_or_else(|_| s.to_owned())
}

/// Splits on unquoted whitespace, removing quotes and backslash escapes as a shell would.
fn split_words(text: &str) -> Result<Vec<String>, TemplateError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    in_word = true;
                }
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(TemplateError::Dockerfile(format!("unterminated quote in {text:?}")));
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

fn command(c: &Command<'_>) -> Result<Vec<String>, TemplateError> {
    match c {
        Command::Exec(args) => Ok(args.value.iter().map(|a| a.value.to_string()).collect()),
        Command::Shell(line) => Ok(vec!["/bin/sh".into(), "-c".into(), line.value.to_owned()]),
        _ => Err(unsupported("this form of command")),
    }
}

impl Recipe {
    /// Reads a Dockerfile.
    ///
    /// # Errors
    /// [`TemplateError::Dockerfile`] for a syntax error, a missing `FROM`, more than one stage, or an
    /// instruction templates don't support.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let file = parse_dockerfile::parse(text).map_err(|e| TemplateError::Dockerfile(e.to_string()))?;
        let mut from: Option<String> = None;
        let mut steps = Vec::new();
        for ins in &file.instructions {
            let step = match ins {
                Instruction::From(f) => {
                    if from.is_some() {
                        return Err(unsupported("a second FROM (multi-stage builds)"));
                    }
                    if !f.options.is_empty() {
                        return Err(unsupported("FROM with options (--platform)"));
                    }
                    from = Some(f.image.value.to_string());
                    continue;
                }
                Instruction::Arg(a) => {
                    let text = a.arguments.value.trim();
                    match text.split_once('=') {
                        Some((k, v)) => Step::Arg(k.to_owned(), Some(unquote(v))),
                        None => Step::Arg(text.to_owned(), None),
                    }
                }
                _ if from.is_none() => {
                    return Err(TemplateError::Dockerfile("the first instruction must be FROM (or ARG)".into()));
                }
                Instruction::Run(r) => {
                    if !r.options.is_empty() {
                        return Err(unsupported("RUN with options (--mount, --network)"));
                    }
                    if !r.here_docs.is_empty() {
                        return Err(unsupported("RUN with here-documents"));
                    }
                    match &r.arguments {
                        Command::Exec(args) => {
                            Step::Run(RunCommand::Exec(args.value.iter().map(|a| a.value.to_string()).collect()))
                        }
                        Command::Shell(line) => Step::Run(RunCommand::Shell(line.value.to_owned())),
                        _ => return Err(unsupported("this form of RUN")),
                    }
                }
                Instruction::Copy(c) => copy_step(&c.options, &c.src, &c.dest.value, "COPY")?,
                Instruction::Add(a) => {
                    let step = copy_step(&a.options, &a.src, &a.dest.value, "ADD")?;
                    if let Step::Copy { sources, .. } = &step {
                        if let Some(s) = sources.iter().find(|s| s.contains("://") || is_archive(s)) {
                            return Err(TemplateError::Dockerfile(format!(
                                "ADD {s}: URLs and archives are not supported in templates; use COPY, or RUN curl/tar"
                            )));
                        }
                    }
                    step
                }
                Instruction::Env(e) => Step::Env(pairs(&e.arguments.value, true)?),
                Instruction::Label(l) => Step::Label(pairs(&l.arguments.value, false)?),
                Instruction::Workdir(w) => Step::Workdir(unquote(w.arguments.value.trim())),
                Instruction::User(u) => Step::User(u.arguments.value.trim().to_owned()),
                Instruction::Cmd(c) => Step::Cmd(command(&c.arguments)?),
                Instruction::Entrypoint(e) => Step::Entrypoint(command(&e.arguments)?),
                Instruction::Expose(e) => Step::Expose(e.arguments.iter().map(|p| p.value.to_string()).collect()),
                Instruction::Maintainer(_) | Instruction::Stopsignal(_) => continue,
                Instruction::Healthcheck(_) => return Err(unsupported("HEALTHCHECK")),
                Instruction::Onbuild(_) => return Err(unsupported("ONBUILD")),
                Instruction::Shell(_) => return Err(unsupported("SHELL")),
                Instruction::Volume(_) => return Err(unsupported("VOLUME (use agentbox volumes at create)")),
                _ => return Err(unsupported("this instruction")),
            };
            steps.push((step.describe(), step));
        }
        let from = from.ok_or_else(|| TemplateError::Dockerfile("no FROM instruction".into()))?;
        Ok(Self { from, steps })
    }
}

fn is_archive(s: &str) -> bool {
    [".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst"].iter().any(|e| s.ends_with(e))
}

fn copy_step(
    options: &[parse_dockerfile::Flag<'_>],
    src: &[Source<'_>],
    dest: &str,
    what: &str,
) -> Result<Step, TemplateError> {
    let mut chown = None;
    for f in options {
        match (f.name.value.as_ref(), &f.value) {
            ("chown", Some(v)) => chown = Some(v.value.to_string()),
            (name, _) => return Err(unsupported(&format!("{what} --{name}"))),
        }
    }
    let sources = src
        .iter()
        .map(|s| match s {
            Source::Path(p) => Ok(p.value.to_string()),
            _ => Err(unsupported(&format!("{what} with a here-document"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Step::Copy { sources, dest: dest.to_owned(), chown })
}

impl Step {
    /// The step as a Dockerfile instruction (normalized: the same step always reads the same).
    #[must_use]
    pub fn describe(&self) -> String {
        let json = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
        let kv = |v: &[(String, String)]| {
            v.iter()
                .map(|(k, v)| format!("{k}={}", serde_json::to_string(v).unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(" ")
        };
        match self {
            Self::Run(RunCommand::Shell(line)) => format!("RUN {line}"),
            Self::Run(RunCommand::Exec(argv)) => format!("RUN {}", json(argv)),
            Self::Copy { sources, dest, chown } => match chown {
                Some(c) => format!("COPY --chown={c} {} {dest}", sources.join(" ")),
                None => format!("COPY {} {dest}", sources.join(" ")),
            },
            Self::Env(v) => format!("ENV {}", kv(v)),
            Self::Arg(k, Some(v)) => format!("ARG {k}={v}"),
            Self::Arg(k, None) => format!("ARG {k}"),
            Self::Workdir(w) => format!("WORKDIR {w}"),
            Self::User(u) => format!("USER {u}"),
            Self::Label(v) => format!("LABEL {}", kv(v)),
            Self::Cmd(v) => format!("CMD {}", json(v)),
            Self::Entrypoint(v) => format!("ENTRYPOINT {}", json(v)),
            Self::Expose(v) => format!("EXPOSE {}", v.join(" ")),
        }
    }
}
