//! The Debian package as an admin gets it (docs/packaging.md): `dpkg -i` installs the
//! binary, the hardened systemd unit (checked with `systemd-analyze verify`, not started),
//! the conffile, the man pages and the completions, and creates the service's user;
//! `dpkg --purge` takes it all away again, also when a check fails (a guard).
//!
//! The package is built by `scripts/package` (a release build: `scripts/test` runs it
//! before the tests), never here. One at a time (the `system` test group): it changes the
//! machine's installed packages. Tests run as root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PACKAGE: &str = "leader-proxy";
const CONFFILE: &str = "/etc/leader-proxy/leader-proxy.toml";
const UNIT: &str = "/usr/lib/systemd/system/leader-proxy.service";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (install: scripts/install-deps)"))
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The newest `leader-proxy_*.deb` under target/debian/; fails with the command that
/// builds it.
fn built_package() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debian");
    let newest = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("leader-proxy_") && name.ends_with(".deb")
        })
        .max_by_key(|path| path.metadata().and_then(|m| m.modified()).ok());
    newest.unwrap_or_else(|| {
        panic!(
            "no leader-proxy_*.deb in {}: build it with scripts/package (scripts/test does)",
            dir.display()
        )
    })
}

/// Purges the package when dropped, so that a failed check leaves the machine as it was.
struct Installed;

impl Installed {
    fn install(deb: &Path) -> Installed {
        // A package left by an earlier run that was killed goes first.
        purge();
        let guard = Installed;
        let out = run("dpkg", &["-i", deb.to_str().expect("a UTF-8 path")]);
        assert!(
            out.status.success(),
            "dpkg -i {}: {}",
            deb.display(),
            text(&out)
        );
        guard
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        purge();
    }
}

fn purge() {
    let out = run("dpkg", &["--purge", PACKAGE]);
    assert!(
        out.status.success() || std::thread::panicking(),
        "dpkg --purge {PACKAGE}: {}",
        text(&out)
    );
}

fn is_installed() -> bool {
    let out = run("dpkg-query", &["-W", "-f=${Status}", PACKAGE]);
    String::from_utf8_lossy(&out.stdout).contains("install ok installed")
}

#[test]
fn package_installs_its_files_and_purges_cleanly() {
    let deb = built_package();
    let out = run("id", &["-u"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "installing a package needs root"
    );
    let installed = Installed::install(&deb);
    assert!(is_installed());

    // The binary runs, its version the package's.
    let out = run("/usr/bin/leader-proxy", &["--version"]);
    assert!(out.status.success(), "{}", text(&out));
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        version,
        format!("leader-proxy {}", env!("CARGO_PKG_VERSION"))
    );

    // The conffile is one for dpkg, and the installed binary accepts it: `leader` reads the
    // election it names (no store there: 1 or 3), never refuses it (2).
    let out = run("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(CONFFILE),
        "{}",
        text(&out)
    );
    let out = run(
        "/usr/bin/leader-proxy",
        &["leader", "--config", CONFFILE, "--connect-timeout", "1s"],
    );
    assert_ne!(
        out.status.code(),
        Some(2),
        "the shipped {CONFFILE} is refused: {}",
        text(&out)
    );

    // The man pages, compressed, name the commands; `man` finds them.
    let out = run("man", &["-w", "leader-proxy"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "/usr/share/man/man1/leader-proxy.1.gz"
    );
    let out = run("gzip", &["-dc", "/usr/share/man/man1/leader-proxy.1.gz"]);
    let page = String::from_utf8_lossy(&out.stdout);
    for needle in ["leader-proxy", "hold\\-timeout", "status", "leader"] {
        assert!(page.contains(needle), "the man page lacks {needle:?}");
    }
    for command in ["status", "leader"] {
        let path = format!("/usr/share/man/man1/leader-proxy-{command}.1.gz");
        assert!(Path::new(&path).is_file(), "{path} is missing");
    }

    // Completions for bash, zsh and fish, with the flags and the commands.
    for path in [
        "/usr/share/bash-completion/completions/leader-proxy",
        "/usr/share/zsh/vendor-completions/_leader-proxy",
        "/usr/share/fish/vendor_completions.d/leader-proxy.fish",
    ] {
        let script = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        for needle in ["hold-timeout", "status", "leader"] {
            assert!(script.contains(needle), "{path} lacks {needle:?}");
        }
    }

    // The unit: hardened, run as the user the package created, valid for systemd.
    let unit = std::fs::read_to_string(UNIT).unwrap_or_else(|e| panic!("{UNIT}: {e}"));
    for line in [
        "ExecStart=/usr/bin/leader-proxy --config /etc/leader-proxy/leader-proxy.toml",
        "User=leader-proxy",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "RuntimeDirectory=leader-proxy",
        "LimitNOFILE=65536",
    ] {
        assert!(unit.lines().any(|l| l == line), "{UNIT} lacks {line:?}");
    }
    let out = run("getent", &["passwd", "leader-proxy"]);
    assert!(out.status.success(), "no user leader-proxy: {}", text(&out));
    let out = run("systemd-analyze", &["verify", UNIT]);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify {UNIT}: {}",
        text(&out)
    );

    // Purged: the binary, the unit and the conffile are gone.
    drop(installed);
    assert!(!is_installed());
    for path in ["/usr/bin/leader-proxy", UNIT, CONFFILE] {
        assert!(
            !Path::new(path).exists(),
            "{path} is still there after the purge"
        );
    }
}
