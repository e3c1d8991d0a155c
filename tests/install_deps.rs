//! `scripts/install-deps`, the one list of what the build, tests, demo and benchmarks need
//! (docs/testing.md): the package it names for each checked file is the package that owns
//! that file, `--check` passes on a machine that ran it, and without root it installs
//! nothing and says what it would install.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install-deps");

/// One row of `install-deps --list`.
struct Entry {
    kind: String,
    thing: String,
    package: String,
}

fn entries() -> Vec<Entry> {
    let out = run(Command::new(SCRIPT).arg("--list"));
    assert!(out.status.success(), "install-deps --list failed");
    let rows: Vec<Entry> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(
                cols.len(),
                4,
                "malformed row in install-deps --list: {line:?}"
            );
            Entry {
                kind: cols[0].to_string(),
                thing: cols[1].to_string(),
                package: cols[2].to_string(),
            }
        })
        .collect();
    assert!(rows.len() > 10, "install-deps --list printed too little");
    rows
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run a program")
}

/// The package `dpkg -S` names for `path`, following symlinks one step at a time (an
/// alternatives link such as /usr/bin/java belongs to no package; what it points to does),
/// and trying the pre-usrmerge path that packages still list (/usr/sbin/ip is /sbin/ip).
fn owner(path: &Path) -> Option<String> {
    let mut current = path.to_path_buf();
    for _ in 0..8 {
        let mut candidates = vec![current.clone()];
        if let Ok(rest) = current.strip_prefix("/usr") {
            if rest.starts_with("bin") || rest.starts_with("sbin") {
                candidates.push(Path::new("/").join(rest));
            }
        }
        for candidate in &candidates {
            let out = run(Command::new("dpkg").arg("-S").arg(candidate));
            if out.status.success() {
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                // "package[:arch]: /path"; diversions print other lines first.
                let line = text.lines().find(|l| !l.starts_with("diversion"))?;
                let package = line.split(':').next()?.trim();
                return Some(package.to_string());
            }
        }
        let target = std::fs::read_link(&current).ok()?;
        current = match current.parent() {
            Some(dir) if target.is_relative() => dir.join(target),
            _ => target,
        };
    }
    None
}

/// Where the thing of a `prog`, `file` or `python` row is on this machine.
fn locate(entry: &Entry) -> Option<PathBuf> {
    match entry.kind.as_str() {
        "file" => Some(PathBuf::from(&entry.thing)),
        "prog" => {
            let out = run(Command::new("sh").args(["-c", &format!("command -v {}", entry.thing)]));
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (!path.is_empty()).then(|| PathBuf::from(path))
        }
        "python" => {
            let code = format!("import {0}; print({0}.__file__)", entry.thing);
            let out = run(Command::new("/usr/bin/python3").args(["-c", &code]));
            let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (!path.is_empty()).then(|| PathBuf::from(path))
        }
        _ => None,
    }
}

#[test]
fn every_checked_file_belongs_to_the_package_install_deps_names() {
    let mut checked = 0;
    let mut wrong = Vec::new();
    for entry in entries() {
        // Rust comes from rustup and nextest from cargo: no Debian package owns them.
        if entry.package == "rustup" || matches!(entry.kind.as_str(), "cargo" | "manual") {
            continue;
        }
        let path = locate(&entry).unwrap_or_else(|| {
            panic!(
                "{} is missing: run scripts/install-deps (it installs {})",
                entry.thing, entry.package
            )
        });
        checked += 1;
        match owner(&path) {
            Some(package) if package == entry.package => {}
            other => wrong.push(format!(
                "{} ({}): install-deps names {}, dpkg -S says {:?}",
                entry.thing,
                path.display(),
                entry.package,
                other
            )),
        }
    }
    assert!(
        checked >= 15,
        "only {checked} rows were checked against dpkg"
    );
    assert!(
        wrong.is_empty(),
        "install-deps names the wrong package:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn check_passes_on_a_machine_that_ran_install_deps() {
    let out = run(Command::new(SCRIPT).arg("--check"));
    assert!(
        out.status.success(),
        "install-deps --check failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_names_the_package_of_a_missing_program() {
    let path = path_without("etcd");
    let out = run(Command::new("/bin/bash")
        .arg(SCRIPT)
        .args(["--check", "test"])
        .env("PATH", path.path()));
    assert!(!out.status.success(), "--check passed without etcd on PATH");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing: etcd (install: apt-get install etcd-server)"),
        "--check did not name etcd's package:\n{stderr}"
    );
    assert!(
        !stderr.contains("missing: cmake"),
        "cmake was reported missing:\n{stderr}"
    );
}

/// As `nobody`, with no sudo and a PATH that lacks etcd: nothing is installed, the list of
/// what would be installed is printed, and the exit status says it failed.
#[test]
fn without_root_it_installs_nothing_and_prints_what_it_would_install() {
    let path = path_without("etcd");
    // nobody cannot read this checkout under /root or a 0700 clone dir: run a copy.
    let script = path.path().join("install-deps-copy");
    std::fs::copy(SCRIPT, &script).expect("copy install-deps");
    let out = run(Command::new("setpriv")
        .args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "/usr/bin/env",
            "-i",
        ])
        .arg(format!("PATH={}", path.path().display()))
        .arg("HOME=/nonexistent")
        .arg("/bin/bash")
        .arg(&script));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "install-deps as nobody exited 0:\n{stdout}\n{stderr}"
    );
    let would = stdout
        .lines()
        .find(|l| l.starts_with("would install:"))
        .unwrap_or_else(|| panic!("no 'would install' line:\n{stdout}\n{stderr}"));
    assert!(
        would.contains("etcd-server"),
        "etcd-server not listed: {would}"
    );
    assert!(
        !stdout.contains("installing:"),
        "it tried to install:\n{stdout}"
    );
}

/// A directory of links to every program on the usual PATH except `left_out`, readable by
/// anyone (the nobody test runs with it as PATH).
fn path_without(left_out: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod temp dir");
    let user_path = std::env::var("PATH").unwrap_or_default();
    for bin in user_path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"])
    {
        let Ok(read) = std::fs::read_dir(bin) else {
            continue;
        };
        for item in read.flatten() {
            let name = item.file_name();
            let link = dir.path().join(&name);
            if name == left_out || link.exists() {
                continue;
            }
            let _ = std::os::unix::fs::symlink(item.path(), link);
        }
    }
    dir
}

/// The images' build stages (the proxy's `Dockerfile`, deploy/'s sim-manager) install the
/// same build packages, or a fresh image build fails where a fresh machine would not.
#[test]
fn the_dockerfile_build_stage_installs_every_build_package() {
    let out = run(Command::new(SCRIPT).arg("--list"));
    for path in ["Dockerfile", "deploy/sim-manager.Dockerfile"] {
        let dockerfile = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
            .unwrap_or_else(|e| panic!("read {path}: {e}"));
        let install = dockerfile
            .lines()
            .find(|l| l.contains("apt-get install") && l.contains("protobuf-compiler"))
            .unwrap_or_else(|| panic!("{path}: the build stage's apt-get install line"));
        let installed: Vec<&str> = install.split_whitespace().collect();
        let mut build_packages = 0;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let [kind, _, package, uses] = cols[..] else {
                continue;
            };
            if !uses.split(',').any(|u| u == "build") || package == "rustup" || kind == "manual" {
                continue;
            }
            build_packages += 1;
            assert!(
                installed.contains(&package),
                "{path}'s build stage does not install {package}: {install}"
            );
        }
        assert!(
            build_packages >= 4,
            "install-deps lists {build_packages} build packages"
        );
    }
}
