//! Pulling from a real registry on loopback (Debian's `docker-registry`), with images the tests push.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;

use agentbox_image::{
    Credential, Digest, ImageConfig, ImageRecord, ImageRef, Platform, PullError, PullEvent, Store, StoreError,
    UnpackError,
};
use common::{Comp, E, Layer, Registry, config_json, host_arch, push_image, push_index, tar};

fn store(dir: &tempfile::TempDir) -> Store {
    let mut config = ImageConfig::in_dir(dir.path().join("store"));
    config.retry.attempts = 2;
    config.retry.initial_backoff = std::time::Duration::from_millis(10);
    Store::open(config).unwrap()
}

fn image(reg: &Registry, name: &str) -> ImageRef {
    ImageRef::parse(&reg.reference(name)).unwrap()
}

fn three_layers() -> Vec<Layer> {
    vec![
        Layer::new(&tar(&[E::Dir("etc/", 0o755), E::File("etc/os-release", b"ID=test\n", 0o644)]), Comp::Gzip),
        Layer::new(&tar(&[E::Dir("app/", 0o755), E::File("app/main.py", b"print(1)\n", 0o644)]), Comp::Zstd),
        Layer::new(&tar(&[E::File("app/data", &[7u8; 100_000], 0o600)]), Comp::None),
    ]
}

#[tokio::test]
async fn pull_unpacks_layers_and_parses_the_config() {
    let reg = Registry::start();
    let layers = three_layers();
    let config = config_json(
        &host_arch(),
        &layers,
        serde_json::json!({
            "Env": ["PATH=/usr/local/bin:/usr/bin", "LANG=C.UTF-8"],
            "WorkingDir": "/app",
            "User": "1000:1000",
            "Entrypoint": ["python3"],
            "Cmd": ["main.py"],
            "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
            "Labels": {"org.example": "yes"},
        }),
    );
    push_image(&reg, "team/app:1", &layers, &config).await;

    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let events = Mutex::new(Vec::new());
    let record_event = |e: PullEvent| events.lock().unwrap().push(e);
    let (record, report) = store.pull_with_progress(&image(&reg, "team/app:1"), Some(&record_event)).await.unwrap();

    assert_eq!(record.reference, format!("{}/team/app:1", reg.addr));
    assert_eq!(record.config_digest, Digest::of(&config));
    assert_eq!(record.platform, format!("linux/{}", host_arch()));
    assert_eq!(record.config.env, vec!["PATH=/usr/local/bin:/usr/bin".to_owned(), "LANG=C.UTF-8".to_owned()]);
    assert_eq!(record.config.working_dir.as_deref(), Some("/app"));
    assert_eq!(record.config.user.as_deref(), Some("1000:1000"));
    assert_eq!(record.config.entrypoint, Some(vec!["python3".to_owned()]));
    assert_eq!(record.config.cmd, Some(vec!["main.py".to_owned()]));
    let mut ports = record.config.exposed_ports.clone();
    ports.sort();
    assert_eq!(ports, vec!["53/udp".to_owned(), "8080/tcp".to_owned()]);
    assert_eq!(record.config.labels, BTreeMap::from([("org.example".to_owned(), "yes".to_owned())]));
    assert_eq!((report.layers_unpacked, report.layers_reused, report.blobs_reused), (3, 0, 0));
    assert_eq!(report.blobs_downloaded, 5, "manifest, config and three layers");

    let dirs = store.layer_dirs(&record).unwrap();
    assert_eq!(dirs.len(), 3);
    assert_eq!(std::fs::read(dirs[0].join("etc/os-release")).unwrap(), b"ID=test\n");
    assert_eq!(std::fs::read(dirs[1].join("app/main.py")).unwrap(), b"print(1)\n");
    assert_eq!(std::fs::read(dirs[2].join("app/data")).unwrap().len(), 100_000);
    for l in &layers {
        assert!(store.has_blob(&l.digest()) && store.has_layer(&l.diff_id));
    }
    let events = events.into_inner().unwrap();
    assert!(matches!(events.first(), Some(PullEvent::Resolved { layers, .. }) if layers.len() == 3));
    assert_eq!(events.iter().filter(|e| matches!(e, PullEvent::Unpacked { .. })).count(), 3);

    // Pulled again: nothing downloaded but the manifest, nothing unpacked.
    let (again, report) = store.pull(&image(&reg, "team/app:1")).await.unwrap();
    assert_eq!(again.manifest_digest, record.manifest_digest);
    assert_eq!((report.layers_unpacked, report.layers_reused, report.blobs_downloaded), (0, 3, 1));
    assert_eq!(store.list().unwrap().len(), 1);
}

#[tokio::test]
async fn a_blob_the_registry_corrupted_is_refused() {
    let reg = Registry::start();
    let layers = three_layers();
    let config = config_json(&host_arch(), &layers, serde_json::json!({}));
    push_image(&reg, "corrupt:1", &layers, &config).await;
    // The registry serves what is on its disk without checking it: change one byte of a layer there.
    let data = reg.blob_data(&layers[1].digest());
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let err = store.pull(&image(&reg, "corrupt:1")).await.unwrap_err();
    assert!(matches!(err, PullError::DigestMismatch { what: "blob", .. }), "{err}");
    assert!(!store.has_blob(&layers[1].digest()), "the corrupt blob was not kept");
    assert!(store.list().unwrap().is_empty());
    let tmp: Vec<_> = std::fs::read_dir(dir.path().join("store/tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "no download left behind: {tmp:?}");
}

#[tokio::test]
async fn a_config_whose_diff_id_lies_is_refused() {
    let reg = Registry::start();
    let layers = three_layers();
    let mut lying = layers.clone();
    lying[0].diff_id = Digest::of(b"not this layer");
    let config = config_json(&host_arch(), &lying, serde_json::json!({}));
    push_image(&reg, "lying:1", &layers, &config).await;

    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let err = store.pull(&image(&reg, "lying:1")).await.unwrap_err();
    assert!(
        matches!(
            err,
            PullError::Store(StoreError::Unpack(UnpackError::DigestMismatch { what: "uncompressed (diff_id)", .. }))
        ),
        "{err}"
    );
    assert!(!store.has_layer(&lying[0].diff_id) && !store.has_layer(&layers[0].diff_id));
}

#[tokio::test]
async fn an_interrupted_pull_resumes_with_what_was_verified() {
    let reg = Registry::start();
    let layers = three_layers();
    let config = config_json(&host_arch(), &layers, serde_json::json!({}));
    push_image(&reg, "resume:1", &layers, &config).await;

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = store(&dir).config().clone();
    cfg.concurrency = 1;
    let store = Store::open(cfg).unwrap();

    // The third layer can't be fetched: the pull stops after the first two.
    let data = reg.blob_data(&layers[2].digest());
    let hidden = data.with_extension("hidden");
    std::fs::rename(&data, &hidden).unwrap();
    let err = store.pull(&image(&reg, "resume:1")).await.unwrap_err();
    assert!(matches!(err, PullError::Registry { .. }), "{err}");
    assert!(store.has_layer(&layers[0].diff_id) && store.has_layer(&layers[1].diff_id));
    assert!(!store.has_blob(&layers[2].digest()));
    assert!(store.list().unwrap().is_empty(), "no record of an incomplete image");

    // Back: the resumed pull fetches the third layer only.
    std::fs::rename(&hidden, &data).unwrap();
    let (record, report) = store.pull(&image(&reg, "resume:1")).await.unwrap();
    assert_eq!((report.layers_reused, report.layers_unpacked), (2, 1));
    assert_eq!(report.blobs_downloaded, 2, "the manifest and the third layer; the config was kept");
    assert_eq!(store.layer_dirs(&record).unwrap().len(), 3);

    // Unpacked layers lost (a crash mid-unpack), blobs kept: re-unpacked from the verified blobs, no download.
    for l in &layers {
        std::fs::remove_dir_all(store.layer_dir(&l.diff_id)).unwrap();
    }
    let (_, report) = store.pull(&image(&reg, "resume:1")).await.unwrap();
    assert_eq!((report.blobs_reused, report.layers_unpacked, report.blobs_downloaded), (3, 3, 1));
}

#[tokio::test]
async fn a_multi_platform_index_resolves_to_the_host() {
    let reg = Registry::start();
    let host = host_arch();
    let other = if host == "amd64" { "arm64" } else { "amd64" };
    let mine = vec![Layer::new(&tar(&[E::File("arch", host.as_bytes(), 0o644)]), Comp::Gzip)];
    let theirs = vec![Layer::new(&tar(&[E::File("arch", other.as_bytes(), 0o644)]), Comp::Gzip)];
    let m_other = push_image(&reg, "multi:other", &theirs, &config_json(other, &theirs, serde_json::json!({}))).await;
    let m_host = push_image(&reg, "multi:host", &mine, &config_json(&host, &mine, serde_json::json!({}))).await;
    let index = push_index(&reg, "multi:1", &[(&m_other, other), (&m_host, &host)]).await;

    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let (record, _) = store.pull(&image(&reg, "multi:1")).await.unwrap();
    assert_eq!(record.index_digest, Some(Digest::of(&index)));
    assert_eq!(record.manifest_digest, Digest::of(&m_host));
    assert_eq!(std::fs::read(store.layer_dirs(&record).unwrap()[0].join("arch")).unwrap(), host.as_bytes());

    // Another platform when asked for; a platform the index lacks is a clear error.
    let mut cfg = store.config().clone();
    cfg.platform = Platform { os: "linux".into(), architecture: other.into(), variant: None };
    let (record, _) = Store::open(cfg.clone()).unwrap().pull(&image(&reg, "multi:1")).await.unwrap();
    assert_eq!(record.manifest_digest, Digest::of(&m_other));
    cfg.platform.architecture = "riscv64".into();
    let err = Store::open(cfg).unwrap().pull(&image(&reg, "multi:1")).await.unwrap_err();
    assert!(matches!(err, PullError::NoPlatform { .. }), "{err}");
    assert!(err.to_string().contains(&host), "{err}");

    // By digest, the index's digest is checked too.
    let pinned = ImageRef::parse(&format!("{}/multi@{}", reg.addr, Digest::of(&index))).unwrap();
    let (_, report) = store.pull(&pinned).await.unwrap();
    assert_eq!(report.source, reg.addr);

    // Pinned and in the store: no registry needed any more.
    drop(reg);
    let (again, report) = store.pull(&pinned).await.unwrap();
    assert_eq!((report.source.as_str(), report.blobs_downloaded), ("store", 0));
    assert_eq!(again.manifest_digest, Digest::of(&m_host));
    let tagged = image_at(&again.reference.replace(&format!("@{}", Digest::of(&index)), ":1"));
    assert!(store.pull(&tagged).await.is_err(), "a tag is resolved again, so it needs the registry");
}

fn image_at(reference: &str) -> ImageRef {
    ImageRef::parse(reference).unwrap()
}

#[tokio::test]
async fn mirrors_are_tried_first_and_skipped_when_down() {
    let mirror = Registry::start();
    let layers = three_layers();
    let config = config_json(&host_arch(), &layers, serde_json::json!({}));
    push_image(&mirror, "library/tool:1", &layers, &config).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = store(&dir).config().clone();
    cfg.mirrors.insert("docker.io".into(), vec![dead, mirror.addr.clone()]);
    let store = Store::open(cfg).unwrap();
    // `tool:1` is Docker Hub's `library/tool:1`, served here by the mirror only (this machine is offline).
    let (record, report) = store.pull(&ImageRef::parse("tool:1").unwrap()).await.unwrap();
    assert_eq!(record.reference, "docker.io/library/tool:1");
    assert_eq!(report.source, mirror.addr);
    assert_eq!(store.layer_dirs(&record).unwrap().len(), 3);
}

#[tokio::test]
async fn gc_frees_unreferenced_layers_and_keeps_under_budget() {
    let reg = Registry::start();
    let base = Layer::new(&tar(&[E::File("base", &[1u8; 50_000], 0o644)]), Comp::Gzip);
    let a = vec![base.clone(), Layer::new(&tar(&[E::File("a", &[2u8; 50_000], 0o644)]), Comp::Gzip)];
    let b = vec![base.clone(), Layer::new(&tar(&[E::File("b", &[3u8; 50_000], 0o644)]), Comp::Gzip)];
    push_image(&reg, "a:1", &a, &config_json(&host_arch(), &a, serde_json::json!({"Env": ["A=1"]}))).await;
    push_image(&reg, "b:1", &b, &config_json(&host_arch(), &b, serde_json::json!({"Env": ["B=1"]}))).await;

    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let (ra, _) = store.pull(&image(&reg, "a:1")).await.unwrap();
    let (rb, report) = store.pull(&image(&reg, "b:1")).await.unwrap();
    assert_eq!(report.layers_reused, 1, "the base layer is shared");
    assert_eq!(store.layer_dirs(&ra).unwrap()[0], store.layer_dirs(&rb).unwrap()[0]);

    // Nothing unreferenced: nothing removed.
    let r = store.gc(&[]).unwrap();
    assert_eq!((r.blobs_removed, r.layers_removed), (0, 0));

    // `a` removed: its own layer and blobs go, the shared base stays.
    assert!(store.remove(&image(&reg, "a:1")).unwrap());
    let r = store.gc(&[]).unwrap();
    assert_eq!(r.layers_removed, 1);
    assert_eq!(r.blobs_removed, 3, "a's manifest, config and own layer");
    assert!(!store.has_layer(&a[1].diff_id) && store.has_layer(&base.diff_id) && store.has_layer(&b[1].diff_id));
    assert_eq!(store.layer_dirs(&rb).unwrap().len(), 2);

    // A use marks an image at most once a minute: a fresh mark stays, an older one is rewritten.
    let b_record = store.image(&image(&reg, "b:1")).unwrap().unwrap();
    store.mark_used(&ImageRecord { last_used: b_record.last_used + 1, ..b_record.clone() }).unwrap();
    assert_eq!(
        store.image(&image(&reg, "b:1")).unwrap().unwrap().last_used,
        b_record.last_used,
        "fresh: not rewritten"
    );
    let old = b_record.last_used - agentbox_image::USE_GRANULARITY.as_secs();
    store.mark_used(&ImageRecord { last_used: old, ..b_record }).unwrap();
    assert!(store.image(&image(&reg, "b:1")).unwrap().unwrap().last_used > old, "old: marked now");

    // Under a budget smaller than one image: the least recently used image goes, unless it is kept.
    store.pull(&image(&reg, "a:1")).await.unwrap();
    store.touch(&image(&reg, "b:1")).unwrap();
    let mut cfg = store.config().clone();
    cfg.budget_bytes = Some(1);
    let tight = Store::open(cfg).unwrap();
    let r = tight.gc(&[image(&reg, "a:1")]).unwrap();
    assert_eq!(r.images_evicted, vec![format!("{}/b:1", reg.addr)]);
    assert!(tight.image(&image(&reg, "a:1")).unwrap().is_some());
    assert!(!tight.has_layer(&b[1].diff_id) && tight.has_layer(&a[1].diff_id) && tight.has_layer(&base.diff_id));
    assert!(r.bytes_freed > 50_000);
}

#[tokio::test]
async fn a_hostile_image_from_the_registry_leaves_nothing_behind() {
    let reg = Registry::start();
    let layers = vec![
        Layer::new(&tar(&[E::File("ok", b"fine", 0o644)]), Comp::Gzip),
        Layer::new(&tar(&[E::Symlink("etc", "/etc"), E::File("etc/agentbox-pwned", b"x", 0o644)]), Comp::Gzip),
    ];
    push_image(&reg, "hostile:1", &layers, &config_json(&host_arch(), &layers, serde_json::json!({}))).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let err = store.pull(&image(&reg, "hostile:1")).await.unwrap_err();
    assert!(matches!(err, PullError::Store(StoreError::Unpack(UnpackError::SymlinkInPath { .. }))), "{err}");
    assert!(!std::path::Path::new("/etc/agentbox-pwned").exists());
    assert!(!store.has_layer(&layers[1].diff_id));
    assert!(store.list().unwrap().is_empty());
}

#[tokio::test]
async fn a_registry_that_comes_back_is_retried_with_backoff() {
    let mut reg = Registry::start();
    let layers = three_layers();
    push_image(&reg, "flaky:1", &layers, &config_json(&host_arch(), &layers, serde_json::json!({}))).await;
    let reference = image(&reg, "flaky:1");
    reg.stop();

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = store(&dir).config().clone();
    cfg.retry.attempts = 10;
    cfg.retry.initial_backoff = std::time::Duration::from_millis(100);
    cfg.retry.max_backoff = std::time::Duration::from_secs(2);
    let store = Store::open(cfg).unwrap();
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(400));
        reg.restart();
        reg
    });
    let pulled = store.pull(&reference).await;
    let _reg = restarter.join().unwrap();
    let (record, _) = pulled.unwrap();
    assert_eq!(store.layer_dirs(&record).unwrap().len(), 3);

    // Without retries, the same outage is an error that says what failed.
    let mut cfg = store.config().clone();
    cfg.retry.attempts = 1;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let err = Store::open(cfg).unwrap().pull(&ImageRef::parse(&format!("{dead}/x:1")).unwrap()).await.unwrap_err();
    assert!(matches!(err, PullError::Registry { .. }), "{err}");
    assert!(err.to_string().contains("reachable"), "{err}");
}

#[tokio::test]
async fn token_auth_with_configured_and_docker_credentials() {
    let reg = Registry::start_with_token_auth("agent", "s3cret");
    let layers = three_layers();
    push_image(&reg, "private/app:1", &layers, &config_json(&host_arch(), &layers, serde_json::json!({}))).await;
    let reference = image(&reg, "private/app:1");
    let dir = tempfile::tempdir().unwrap();
    let base = store(&dir).config().clone();
    // Never the user's own docker config in a test.
    let no_docker = ImageConfig { docker_config: Some(dir.path().join("absent.json")), ..base.clone() };

    let err = Store::open(no_docker.clone()).unwrap().pull(&reference).await.unwrap_err();
    assert!(matches!(err, PullError::Registry { .. }), "anonymous: {err}");

    let mut wrong = no_docker.clone();
    wrong.credentials.insert(reg.addr.clone(), Credential::Basic { username: "agent".into(), password: "nope".into() });
    let err = Store::open(wrong).unwrap().pull(&reference).await.unwrap_err();
    assert!(matches!(err, PullError::Registry { .. }), "wrong password: {err}");

    let mut right = no_docker;
    right
        .credentials
        .insert(reg.addr.clone(), Credential::Basic { username: "agent".into(), password: "s3cret".into() });
    let (record, _) = Store::open(right).unwrap().pull(&reference).await.unwrap();
    assert_eq!(record.layers.len(), 3);

    // The same from docker's config.json, into a fresh store.
    let docker = dir.path().join("docker-config.json");
    let auth = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode("agent:s3cret")
    };
    std::fs::write(&docker, format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr)).unwrap();
    let cfg = ImageConfig { dir: dir.path().join("store2"), docker_config: Some(docker), ..base };
    let (record, _) = Store::open(cfg).unwrap().pull(&reference).await.unwrap();
    assert_eq!(record.layers.len(), 3);
}

#[tokio::test]
async fn a_layer_listed_twice_is_one_lower_directory() {
    let reg = Registry::start();
    let empty = Layer::new(&tar(&[]), Comp::Gzip);
    let app = Layer::new(&tar(&[E::File("app", b"1", 0o644)]), Comp::Gzip);
    let layers = vec![empty.clone(), app.clone(), empty.clone()];
    push_image(&reg, "twice:1", &layers, &config_json(&host_arch(), &layers, serde_json::json!({}))).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let (record, report) = store.pull(&image(&reg, "twice:1")).await.unwrap();
    assert_eq!(report.layers_unpacked + report.layers_reused, 3);
    let bottom_up = store.layer_dirs(&record).unwrap();
    assert_eq!(bottom_up.len(), 3);
    assert_eq!(store.lower_dirs(&record).unwrap(), vec![bottom_up[2].clone(), bottom_up[1].clone()]);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(store.dir()).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);
}

#[tokio::test]
async fn a_download_cut_mid_layer_is_fetched_again() {
    let reg = Registry::start();
    // Incompressible data, so the layer is a few MB on the wire.
    let mut data = vec![0u8; 4 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in &mut data {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let layers = vec![Layer::new(&tar(&[E::File("big", &data, 0o644)]), Comp::Gzip)];
    push_image(&reg, "cut:1", &layers, &config_json(&host_arch(), &layers, serde_json::json!({}))).await;
    let proxy = common::CuttingProxy::start(&reg.addr, 1 << 20, 1);

    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir);
    let events = Mutex::new(Vec::new());
    let record_event = |e: PullEvent| events.lock().unwrap().push(e);
    let reference = ImageRef::parse(&format!("{}/cut:1", proxy.addr)).unwrap();
    let (record, report) = store.pull_with_progress(&reference, Some(&record_event)).await.unwrap();
    assert_eq!(proxy.cuts_left(), 0, "the first download was cut");
    assert_eq!(std::fs::read(store.layer_dirs(&record).unwrap()[0].join("big")).unwrap(), data);
    assert_eq!(report.layers_unpacked, 1);
    assert!(store.has_blob(&layers[0].digest()));
    let tmp: Vec<_> = std::fs::read_dir(dir.path().join("store/tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "nothing of the cut download left: {tmp:?}");
    // The first download got partway before it was cut.
    let progressed = events.into_inner().unwrap().iter().any(|e| matches!(e, PullEvent::Progress { .. }));
    assert!(progressed);
}
