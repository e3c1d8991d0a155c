//! deploy/: the compose file of the whole stack is valid for Compose and names only files
//! that exist, and deploy/README.md describes every file there. (The monitoring files are
//! run for real in tests/prometheus.rs; the stack itself cannot run here: no registry.)

use std::path::{Path, PathBuf};

use testkit::compose::compose;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

#[test]
fn compose_file_is_valid_and_names_the_whole_stack() {
    let file = deploy().join("compose.yml");
    compose(&file, &["config", "-q"]).unwrap_or_else(|e| panic!("{e}"));

    let services = compose(&file, &["config", "--services"]).unwrap_or_else(|e| panic!("{e}"));
    let services: Vec<&str> = services.lines().collect();
    for wanted in [
        "etcd",
        "manager1",
        "manager2",
        "manager3",
        "proxy",
        "prometheus",
    ] {
        assert!(
            services.contains(&wanted),
            "no service {wanted} in {services:?}"
        );
    }

    // The resolved file names host paths absolutely: build contexts and bind mounts must
    // exist, and each build's Dockerfile in its context.
    let resolved = compose(&file, &["config"]).unwrap_or_else(|e| panic!("{e}"));
    let mut context = None;
    let mut checked = 0;
    for line in resolved.lines().map(str::trim) {
        if let Some(dir) = line.strip_prefix("context: ") {
            context = Some(PathBuf::from(dir));
            assert!(Path::new(dir).is_dir(), "build context {dir} missing");
            checked += 1;
        } else if let Some(dockerfile) = line.strip_prefix("dockerfile: ") {
            let dir = context.as_ref().expect("a dockerfile after its context");
            assert!(
                dir.join(dockerfile).is_file(),
                "{dockerfile} missing in {}",
                dir.display()
            );
            checked += 1;
        } else if let Some(mount) = line.strip_prefix("- /") {
            let host = mount.split(':').next().unwrap_or_default();
            assert!(
                Path::new("/").join(host).exists(),
                "bind mount /{host} missing"
            );
            checked += 1;
        }
    }
    assert!(checked >= 6, "found too few paths to check in:\n{resolved}");
}

#[test]
fn a_broken_compose_file_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("compose.yml");
    std::fs::write(
        &file,
        "services:\n  proxy:\n    image: leader-proxy\n    ports: 2375\n",
    )
    .expect("write");
    let error = compose(&file, &["config", "-q"]).expect_err("a port list that is not a list");
    assert!(error.contains("ports"), "{error}");
}

#[test]
fn deploy_readme_describes_every_file() {
    let readme = std::fs::read_to_string(deploy().join("README.md")).expect("deploy/README.md");
    let mut stack = vec![deploy()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read deploy/") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let relative = path.strip_prefix(deploy()).expect("under deploy/");
            let name = relative.to_str().expect("utf-8 name");
            if name != "README.md" {
                assert!(
                    readme.contains(name),
                    "deploy/README.md does not mention {name}"
                );
            }
        }
    }
}
