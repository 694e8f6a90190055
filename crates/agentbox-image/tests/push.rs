//! Pushing images of the store to a real registry on loopback (Debian's `docker-registry`), and pulling them
//! back into a fresh store.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use agentbox_image::{Credential, ImageConfig, ImageRef, PushError, Store};
use common::{Comp, E, Layer, Registry, config_json, host_arch, push_image, tar};

fn store_at(dir: &std::path::Path) -> Store {
    let mut config = ImageConfig::in_dir(dir.to_owned());
    // Never the user's own docker config in a test.
    config.docker_config = Some(dir.join("absent-docker-config.json"));
    Store::open(config).unwrap()
}

fn layers() -> Vec<Layer> {
    vec![
        Layer::new(&tar(&[E::Dir("etc/", 0o755), E::File("etc/os-release", b"ID=test\n", 0o644)]), Comp::Gzip),
        Layer::new(&tar(&[E::File("app/data", &[7u8; 3 << 20], 0o600)]), Comp::None),
    ]
}

#[tokio::test]
async fn a_pushed_image_pulls_back_with_the_same_digest_and_files() {
    let reg = Registry::start();
    let layers = layers();
    push_image(&reg, "team/app:1", &layers, &config_json(&host_arch(), &layers, serde_json::json!({}))).await;
    let dir = tempfile::tempdir().unwrap();
    let store = store_at(&dir.path().join("a"));
    let source = ImageRef::parse(&reg.reference("team/app:1")).unwrap();
    let (record, _) = store.pull(&source).await.unwrap();

    let copy = ImageRef::parse(&reg.reference("other/copy:v2")).unwrap();
    let report = store.push(&source, &copy).await.unwrap();
    assert_eq!(report.manifest_digest, record.manifest_digest.to_string(), "the manifest is pushed byte for byte");
    // The layers are in the registry already (under another repository, which the registry shares blobs with, or
    // not): either way every blob of the image is there after the push.
    assert_eq!(report.blobs_pushed + report.blobs_skipped, 3, "two layers and the config: {report:?}");
    let again = store.push(&source, &copy).await.unwrap();
    assert_eq!(
        (again.blobs_pushed, again.blobs_skipped, again.bytes_pushed),
        (0, 3, 0),
        "a second push uploads nothing"
    );

    let fresh = store_at(&dir.path().join("b"));
    let (pulled, _) = fresh.pull(&copy).await.unwrap();
    assert_eq!(pulled.manifest_digest, record.manifest_digest);
    let dirs = fresh.layer_dirs(&pulled).unwrap();
    assert_eq!(std::fs::read(dirs[0].join("etc/os-release")).unwrap(), b"ID=test\n");
    assert_eq!(std::fs::read(dirs[1].join("app/data")).unwrap().len(), 3 << 20);

    let missing = ImageRef::parse(&reg.reference("never/pulled:1")).unwrap();
    let err = store.push(&missing, &copy).await.unwrap_err();
    assert!(matches!(err, PushError::NotInStore { .. }), "{err}");
}

#[tokio::test]
async fn a_push_needs_the_registrys_credentials() {
    let reg = Registry::start_with_token_auth("agent", "s3cret");
    let layers = layers();
    push_image(&reg, "private/app:1", &layers, &config_json(&host_arch(), &layers, serde_json::json!({}))).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = ImageConfig::in_dir(dir.path().join("store"));
    config.docker_config = Some(dir.path().join("absent-docker-config.json"));
    config
        .credentials
        .insert(reg.addr.clone(), Credential::Basic { username: "agent".into(), password: "s3cret".into() });
    let store = Store::open(config.clone()).unwrap();
    let source = ImageRef::parse(&reg.reference("private/app:1")).unwrap();
    store.pull(&source).await.unwrap();
    let copy = ImageRef::parse(&reg.reference("private/copy:1")).unwrap();
    store.push(&source, &copy).await.unwrap();

    // The same store without credentials for the registry: refused, with what to check.
    config.credentials.clear();
    let anonymous = Store::open(config).unwrap();
    let err = anonymous.push(&source, &ImageRef::parse(&reg.reference("private/other:1")).unwrap()).await.unwrap_err();
    assert!(matches!(err, PushError::Registry { .. }), "{err}");
    assert!(err.to_string().contains("credentials"), "{err}");
}
