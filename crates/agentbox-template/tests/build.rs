//! A template built from a Dockerfile on a real local backend, from a base image pulled from a real registry on
//! loopback: COPY from the build context, RUN steps as root inside (an apt install of a package built in the
//! step), ENV/ARG/WORKDIR/USER/CMD in the image's config, a deletion kept as a whiteout; then a sandbox started
//! from it, a rebuild with nothing changed that runs no step, and a change that reruns only what follows it.
#![allow(clippy::unwrap_used)]

#[path = "../../agentbox-image/tests/common/mod.rs"]
mod image_common;

use std::sync::Arc;

use agentbox_config::SandboxConfig;
use agentbox_core::{CreateRequest, ExecRequest, SandboxBackend};
use agentbox_image::{ImageConfig, Store};
use agentbox_local::{LocalBackend, LocalConfig};
use agentbox_template::{BuildRequest, Builder, TemplateError};
use image_common::{Registry, debian_in_registry};

fn not_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() != 0 }
}

const DOCKERFILE: &str = r#"
FROM {BASE}
ARG GREETING=hello
ENV APP_HOME=/opt/app SAID="$GREETING world"
WORKDIR /opt/app
COPY hello.sh /usr/local/bin/hello
COPY data/ ./data/
RUN chmod 755 /usr/local/bin/hello && echo "$GREETING from run as $(id -un)" > made.txt && rm /etc/issue.net
RUN mkdir -p /tmp/deb/DEBIAN /tmp/deb/usr/share/demo \
 && printf 'Package: demo\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.com>\nDescription: d\n' > /tmp/deb/DEBIAN/control \
 && echo packaged > /tmp/deb/usr/share/demo/data \
 && dpkg-deb --build --root-owner-group /tmp/deb /tmp/demo.deb >/dev/null \
 && apt-get install -y /tmp/demo.deb >/dev/null 2>&1
LABEL purpose=test
USER user
CMD ["python3", "-m", "http.server"]
"#;

/// A local backend with an image store in a temporary directory, a template builder over it, an empty build
/// context, and the Debian fixture (`base`) in a registry on loopback.
struct Fixture {
    _registry: Registry,
    base: String,
    dir: tempfile::TempDir,
    backend: Arc<LocalBackend>,
    builder: Builder,
    context: std::path::PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let (registry, base) = debian_in_registry();
        let dir = tempfile::tempdir().unwrap();
        let images = ImageConfig::in_dir(dir.path().join("images"));
        let backend = Arc::new(
            LocalBackend::new(LocalConfig { images: Some(images.clone()), ..LocalConfig::default() }).unwrap(),
        );
        let builder = Builder::new(backend.clone(), Store::open(images).unwrap());
        let context = dir.path().join("context");
        std::fs::create_dir_all(&context).unwrap();
        Self { _registry: registry, base, dir, backend, builder, context }
    }
}

async fn sh(b: &LocalBackend, id: &agentbox_core::SandboxId, line: &str) -> String {
    let out = b.exec(id, ExecRequest::shell(line)).await.unwrap().collect(1 << 20).await;
    assert_eq!(out.exit_code, 0, "{line}: {out:?}");
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dockerfile_builds_a_template_sandboxes_start_from_and_rebuilds_from_cache() {
    if not_root() {
        return;
    }
    let Fixture { _registry, base, dir, backend, builder, context } = Fixture::new();
    // The storage pool is the host's: other processes' stopped sandboxes may be on its shelf.
    let stopped_before = backend.list_stopped().await.unwrap().len();
    std::fs::create_dir_all(context.join("data/sub")).unwrap();
    std::fs::write(context.join("hello.sh"), "#!/bin/sh\necho hello from the template\n").unwrap();
    std::fs::write(context.join("data/a.txt"), "a").unwrap();
    std::fs::write(context.join("data/sub/b.txt"), "b").unwrap();
    let dockerfile = DOCKERFILE.replace("{BASE}", &base);
    let mut request = BuildRequest::new("demo", dockerfile.clone(), &context);
    request.build_args.insert("GREETING".into(), "hi".into());

    let built = builder.build(&request).await.unwrap();
    assert_eq!(built.reference, "agentbox.local/templates/demo:latest");
    assert_eq!(built.cached_steps(), 0, "{built:?}");
    assert_eq!(built.steps.iter().filter(|s| s.layer.is_some()).count(), 4, "{built:?}");

    // A sandbox from the template: its files, its package, its settings, the deletion.
    let config = SandboxConfig { image: Some(built.reference.clone()), ..SandboxConfig::default() };
    let sb = backend.create(CreateRequest::new(config)).await.unwrap();
    let out = sh(
        &backend,
        &sb.id,
        "hello; cat /opt/app/made.txt /opt/app/data/a.txt /opt/app/data/sub/b.txt /usr/share/demo/data; \
         dpkg -s demo | grep Status; echo \"$APP_HOME|$SAID\"; test -e /etc/issue.net || echo whiteout; \
         stat -c %U /opt/app/made.txt /usr/local/bin/hello",
    )
    .await;
    assert_eq!(
        out,
        "hello from the template\nhi from run as root\nabpackaged\nStatus: install ok installed\n/opt/app|hi world\nwhiteout\nroot\nroot\n",
        "{out}"
    );
    // Executions start in the template's WORKDIR; one that names a directory starts there.
    assert_eq!(sh(&backend, &sb.id, "pwd").await, "/opt/app\n");
    let out = backend.exec(&sb.id, ExecRequest { cwd: Some("/tmp".into()), ..ExecRequest::shell("pwd") }).await;
    assert_eq!(out.unwrap().collect(1 << 10).await.stdout, "/tmp\n");
    backend.destroy(&sb.id).await.unwrap();
    let record = builder.list().unwrap();
    assert_eq!(record.len(), 1);
    assert_eq!(record[0].name, "demo");

    // Nothing changed: every layer from the cache, no sandbox made.
    let again = builder.build(&request).await.unwrap();
    assert_eq!(again.cached_steps(), 4, "{again:?}");
    assert_eq!(again.digest, built.digest, "the same layers and settings make the same image");

    // A changed file reruns its COPY and the steps after it, not the ones before.
    std::fs::write(context.join("data/a.txt"), "changed").unwrap();
    let changed = builder.build(&request).await.unwrap();
    let cached: Vec<bool> = changed.steps.iter().filter(|s| s.layer.is_some()).map(|s| s.cached).collect();
    assert_eq!(cached, [true, false, false, false], "{changed:?}");

    // A failing step says which and how it ended.
    let failing = BuildRequest::new("broken", format!("FROM {base}\nRUN echo about to fail; exit 7\n"), &context);
    let err = builder.build(&failing).await.unwrap_err();
    assert!(
        matches!(&err, TemplateError::StepFailed { step: 1, exit_code: 7, output, .. } if output.contains("about to fail")),
        "{err}"
    );
    assert!(backend.list().await.unwrap().is_empty(), "a failed step left its sandbox");
    assert_eq!(backend.list_stopped().await.unwrap().len(), stopped_before, "a step left its stopped sandbox");
    // A step that leaves huge sparse files (nothing on its disk) can't make the host write it out.
    let sparse = BuildRequest::new("sparse", format!("FROM {base}\nRUN truncate -s 9G /opt/a /opt/b\n"), &context);
    let err = builder.build(&sparse).await.unwrap_err();
    assert!(err.to_string().contains("sparse files are not kept"), "{err}");
    let leftovers = std::fs::read_dir(dir.path().join("images/tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "the export left files in the store's tmp");
    assert_eq!(backend.list_stopped().await.unwrap().len(), stopped_before);
    // A template that was never built is named as such.
    let config =
        SandboxConfig { image: Some("agentbox.local/templates/nothing:latest".into()), ..SandboxConfig::default() };
    let err = backend.create(CreateRequest::new(config)).await.unwrap_err();
    assert!(err.to_string().contains("agentbox template build"), "{err}");
    assert!(builder.remove("demo").unwrap());
    assert!(builder.list().unwrap().is_empty());
}

#[test]
fn unsupported_dockerfiles_are_refused_by_name() {
    use agentbox_template::Recipe;
    for (text, needle) in [
        ("RUN true\n", "FROM"),
        ("FROM a\nFROM b\n", "multi-stage"),
        ("FROM a\nHEALTHCHECK CMD true\n", "HEALTHCHECK"),
        ("FROM a\nADD https://example.com/x /x\n", "URLs and archives"),
        ("FROM a\nRUN --mount=type=cache,target=/x true\n", "RUN with options"),
        ("", "FROM"),
    ] {
        let err = Recipe::parse(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text:?}: {err}");
    }
    let r = Recipe::parse("FROM python:3.12\nENV A=1 B=\"two words\"\nENV C three words\nUSER user\n").unwrap();
    assert_eq!(r.from, "python:3.12");
    let described: Vec<&str> = r.steps.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(described, ["ENV A=\"1\" B=\"two words\"", "ENV C=\"three words\"", "USER user"]);
}

/// An image's `User` is who a sandbox's executions run as (its name, ids and home), unless the config names a
/// user; an account the image doesn't have, or root, is refused or ignored with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_images_user_is_who_executions_run_as() {
    if not_root() {
        return;
    }
    let Fixture { _registry, base, dir: _dir, backend, builder, context } = Fixture::new();
    let build = |name: &str, tail: &str| {
        let dockerfile = format!("FROM {base}\nRUN groupadd -g 2345 crew && useradd -m -u 1234 -g 2345 app\n{tail}");
        BuildRequest::new(name, dockerfile, &context)
    };
    let create = |reference: String, run_as: Option<agentbox_config::RunAs>| {
        let mut config = SandboxConfig { image: Some(reference), ..SandboxConfig::default() };
        if let Some(r) = run_as {
            config.security.run_as = r;
        }
        let backend = backend.clone();
        async move { backend.create(CreateRequest::new(config)).await }
    };
    let who = "id -un; id -u; id -g; echo $HOME; pwd; touch ~/mine && stat -c %U:%G ~/mine";

    let by_name = builder.build(&build("by-name", "USER app\n")).await.unwrap();
    let sb = create(by_name.reference.clone(), None).await.unwrap();
    assert_eq!(sh(&backend, &sb.id, who).await, "app\n1234\n2345\n/home/app\n/home/app\napp:crew\n");
    backend.destroy(&sb.id).await.unwrap();
    // A configured user wins over the image's.
    let alice = agentbox_config::RunAs { name: "alice".into(), uid: 1500, gid: 1500 };
    let sb = create(by_name.reference.clone(), Some(alice)).await.unwrap();
    assert_eq!(sh(&backend, &sb.id, "id -un; id -u").await, "alice\n1500\n");
    backend.destroy(&sb.id).await.unwrap();

    // uid:group, and a uid the image doesn't list.
    let by_ids = builder.build(&build("by-ids", "USER 1234:crew\n")).await.unwrap();
    let sb = create(by_ids.reference.clone(), None).await.unwrap();
    assert_eq!(sh(&backend, &sb.id, "id -un; id -u; id -g").await, "app\n1234\n2345\n");
    backend.destroy(&sb.id).await.unwrap();
    let unlisted = builder.build(&build("unlisted", "USER 4321\n")).await.unwrap();
    let sb = create(unlisted.reference.clone(), None).await.unwrap();
    assert_eq!(sh(&backend, &sb.id, "id -u; echo $HOME").await, "4321\n/home/u4321\n");
    backend.destroy(&sb.id).await.unwrap();

    // Root, or no User: the sandbox's own unprivileged user, as always.
    let rooted = builder.build(&build("rooted", "USER root\n")).await.unwrap();
    let sb = create(rooted.reference.clone(), None).await.unwrap();
    assert_eq!(sh(&backend, &sb.id, "id -un").await, "user\n");
    backend.destroy(&sb.id).await.unwrap();

    // A name the image doesn't have, or an account that can't be a sandbox's user, is refused with the reason.
    let ghost = builder.build(&build("ghost", "USER ghost\n")).await.unwrap();
    let err = create(ghost.reference.clone(), None).await.unwrap_err().to_string();
    assert!(err.contains("\"ghost\"") && err.contains("/etc/passwd") && err.contains("security.run_as"), "{err}");
    let grouped = builder.build(&build("grouped", "USER app:0\n")).await.unwrap();
    let err = create(grouped.reference.clone(), None).await.unwrap_err().to_string();
    assert!(err.contains("must not be 0") && err.contains("security.run_as"), "{err}");
    assert!(backend.list().await.unwrap().is_empty(), "a refused create left a sandbox");
}

/// `start = "image"` runs the image's Entrypoint and Cmd when the sandbox starts, as a background process, and
/// again after a stop and start; a command runs the same way; an image with nothing to start, or a sandbox
/// without an image, is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_starts_its_images_entrypoint_and_cmd() {
    if not_root() {
        return;
    }
    let Fixture { _registry, base, dir: _dir, backend, builder, context } = Fixture::new();
    // The entrypoint records its arguments (the Cmd) and its directory, then stays up.
    let dockerfile = format!(
        "FROM {base}\nWORKDIR /srv\n\
         ENTRYPOINT [\"/bin/sh\", \"-c\", \"echo \\\"$0 $1 in $PWD as $(id -un)\\\" > /tmp/started; exec sleep 300\"]\n\
         CMD [\"from\", \"cmd\"]\n"
    );
    let server = builder.build(&BuildRequest::new("server", dockerfile, &context)).await.unwrap();
    let started = "for i in $(seq 100); do cat /tmp/started 2>/dev/null && exit 0; sleep 0.1; done; exit 1";
    let config = SandboxConfig {
        image: Some(server.reference.clone()),
        start: agentbox_config::StartProcess::Image,
        ..SandboxConfig::default()
    };
    let sb = backend.create(CreateRequest::new(config.clone())).await.unwrap();
    assert_eq!(sh(&backend, &sb.id, started).await, "from cmd in /srv as user\n");
    let procs = backend.list_processes(&sb.id).await.unwrap();
    assert!(procs.iter().any(|p| p.running && p.argv.first().is_some_and(|a| a == "/bin/sh")), "{procs:?}");
    // Stopped and started again: it runs again.
    let stopped = backend.stop(&sb.id).await.unwrap();
    let again = backend.start(&stopped.key, CreateRequest::new(config)).await.unwrap();
    assert_eq!(sh(&backend, &again.id, started).await, "from cmd in /srv as user\n");
    backend.destroy(&again.id).await.unwrap();

    // A command of the config's own, on the host's system.
    let config = SandboxConfig {
        start: agentbox_config::StartProcess::Command(vec!["sleep".into(), "300".into()]),
        ..SandboxConfig::default()
    };
    let sb = backend.create(CreateRequest::new(config)).await.unwrap();
    let procs = backend.list_processes(&sb.id).await.unwrap();
    assert!(procs.iter().any(|p| p.running && p.argv == ["sleep", "300"]), "{procs:?}");
    backend.destroy(&sb.id).await.unwrap();

    // Nothing to start.
    let plain = builder.build(&BuildRequest::new("plain", format!("FROM {base}\nCMD []\n"), &context)).await.unwrap();
    let config = SandboxConfig {
        image: Some(plain.reference.clone()),
        start: agentbox_config::StartProcess::Image,
        ..SandboxConfig::default()
    };
    let err = backend.create(CreateRequest::new(config)).await.unwrap_err().to_string();
    assert!(err.contains("no Entrypoint or Cmd"), "{err}");
    let config = SandboxConfig { start: agentbox_config::StartProcess::Image, ..SandboxConfig::default() };
    let err = backend.create(CreateRequest::new(config)).await.unwrap_err().to_string();
    assert!(err.contains("needs an `image`"), "{err}");
    assert!(backend.list().await.unwrap().is_empty(), "a refused create left a sandbox");
}

/// This host's IPv4 addresses for `host`, when the first answers on `port` within a few seconds.
fn reachable(host: &str, port: u16) -> Option<Vec<std::net::SocketAddr>> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<_> = (host, port).to_socket_addrs().ok()?.filter(std::net::SocketAddr::is_ipv4).collect();
    let first = addrs.first()?;
    std::net::TcpStream::connect_timeout(first, std::time::Duration::from_secs(3)).ok()?;
    Some(addrs)
}

/// What the template's COPY brings: a script that imports the package pip installed and prints its version and
/// where it is.
const REPORT_PY: &str = "import six\nprint(six.__version__, six.__file__)\n";

/// A template with apt, pip and COPY, built and then rebuilt whole from the cache; a sandbox from it has the
/// packages. Its first RUN installs jq and python3-pip from the Debian mirror with apt, the second a pinned
/// pure-Python package from PyPI with pip (HTTPS through the step's egress proxy, which lets it reach the
/// package registries and nothing else, trusting the bundle the step's environment names in `PIP_CERT`).
/// Where this host reaches the mirror or PyPI at an address that is not public (an internal mirror or a
/// proxy), the build allows that address, as a private mirror is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_installs_from_the_package_mirror_and_is_cached() {
    if not_root() {
        return;
    }
    let mut reached = Vec::new();
    for (host, port) in [("deb.debian.org", 80), ("pypi.org", 443), ("files.pythonhosted.org", 443)] {
        let Some(addrs) = reachable(host, port) else {
            eprintln!("skipped: {host}:{port} does not answer from this host (offline?)");
            return;
        };
        reached.push(addrs);
    }
    let mirror = reached[0].clone();
    let mut allowed: Vec<String> = reached.iter().flatten().map(|a| format!("{}/32", a.ip())).collect();
    allowed.sort();
    allowed.dedup();
    let Fixture { _registry, base, dir: _dir, backend, builder, context } = Fixture::new();
    std::fs::write(context.join("report.py"), REPORT_PY).unwrap();
    let dockerfile = format!(
        "FROM {base}\n\
         RUN apt-get update -o Acquire::Retries=3 >/dev/null \
         && apt-get install -y --no-install-recommends jq python3-pip >/dev/null && rm -rf /var/lib/apt/lists/*\n\
         RUN pip install --no-cache-dir --break-system-packages --disable-pip-version-check \
         --timeout 30 --retries 2 six==1.17.0\n\
         COPY report.py /opt/report.py\n"
    );
    let mut request = BuildRequest::new("with-apt-pip", dockerfile, &context);
    request.allow_cidrs = allowed;
    // Bounded: a registry that stalls fails the step instead of holding the test for the default 30 minutes.
    request.step_timeout = std::time::Duration::from_secs(600);
    let built = builder.build(&request).await.unwrap();
    assert_eq!(built.cached_steps(), 0, "{built:?}");
    assert_eq!(built.steps.len(), 3, "{built:?}");
    let again = builder.build(&request).await.unwrap();
    assert_eq!(again.cached_steps(), again.steps.len(), "{again:?}");
    assert_eq!(again.digest, built.digest);
    eprintln!("built in {} ms, rebuilt from the cache in {} ms", built.millis, again.millis);

    let config = SandboxConfig { image: Some(built.reference.clone()), ..SandboxConfig::default() };
    let sb = backend.create(CreateRequest::new(config)).await.unwrap();
    let out = sh(&backend, &sb.id, "echo '{\"a\": [1, 2]}' | jq -c '.a | length'; python3 /opt/report.py").await;
    let (jq, six) = out.split_once('\n').unwrap();
    assert_eq!(jq, "2", "{out}");
    // pip's, not Debian's: 1.17.0 from PyPI, in /usr/local.
    let (version, file) = six.trim_end().split_once(' ').unwrap();
    assert_eq!(version, "1.17.0", "{out}");
    assert!(file.starts_with("/usr/local/lib/python3") && file.ends_with("/dist-packages/six.py"), "{out}");
    backend.destroy(&sb.id).await.unwrap();

    // Without the mirror's address allowed, a mirror at a non-public address is refused by the step's policy.
    if mirror.iter().any(|a| !is_public(a.ip())) {
        request.name = "without-cidr".into();
        request.allow_cidrs.clear();
        request.dockerfile = format!(
            "FROM {base}\nRUN apt-get update -o Acquire::Retries=0; ls /var/lib/apt/lists/ | grep -q Packages\n"
        );
        let err = builder.build(&request).await.unwrap_err().to_string();
        assert!(err.contains("step 1"), "{err}");
    }
}

/// Whether `ip` is a public unicast IPv4 address (the egress policy's test, for the few ranges a mirror could be in).
fn is_public(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_documentation()
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 198 && (18..20).contains(&o[1])))
        }
        std::net::IpAddr::V6(_) => true,
    }
}
