//! Finds the workspace binaries that tests run as processes. `env!("CARGO_BIN_EXE_…")` is
//! set only when compiling a test of the package that has the binary, so this library
//! cannot use it for `leader-proxy`, nor can any test use it for `sim-manager` (a crate of
//! its own, crates/sim-manager). Cargo puts every binary of a build in the profile
//! directory the test executable's `deps/` sits in (`target/debug/deps/<test>` →
//! `target/debug/sim-manager`), so that is where they are looked for. Cargo builds
//! `leader-proxy` there for leader-proxy's own tests; `sim-manager` is built by
//! `cargo build --locked --workspace --bins`, which `scripts/test` runs first.

use std::path::{Path, PathBuf};

/// The `leader-proxy` binary: `$TESTKIT_LEADER_PROXY_BIN` if set (a test executable run
/// from elsewhere, e.g. a nextest archive), else the one built next to the test executable.
/// Not `LEADER_PROXY_…`: that prefix is the product's own configuration.
pub fn leader_proxy() -> PathBuf {
    locate("leader-proxy", "TESTKIT_LEADER_PROXY_BIN")
}

/// The `sim-manager` binary: `$TESTKIT_SIM_MANAGER_BIN` if set, else the one built next to
/// the test executable.
pub fn sim_manager() -> PathBuf {
    locate("sim-manager", "TESTKIT_SIM_MANAGER_BIN")
}

/// The `bare-pingora` binary (crates/bare-pingora), the load benchmark's pingora anchor:
/// `$TESTKIT_BARE_PINGORA_BIN` if set, else the one built next to the bench executable.
pub fn bare_pingora() -> PathBuf {
    locate("bare-pingora", "TESTKIT_BARE_PINGORA_BIN")
}

/// `$override_var`, else `name` in the running executable's profile directory. Panics with
/// the command that builds it when it is missing: a test would otherwise fail with a bare
/// "No such file or directory" from `Command::spawn`.
fn locate(name: &str, override_var: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(override_var) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{override_var}={} is not a file",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("the path of the running test executable");
    let profile_dir = profile_dir(&exe);
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: build the workspace's binaries first with `{}`, or set {override_var} \
         to the binary",
        path.display(),
        build_command(profile_dir),
    );
    path
}

/// `target/<profile>` for a test or bench executable
/// (`target/<profile>/deps/<name>-<hash>`), the directory itself for anything else (an
/// example or a binary run in place).
fn profile_dir(exe: &Path) -> &Path {
    let dir = exe.parent().expect("an executable lives in a directory");
    match dir.file_name() {
        Some(name) if name == "deps" => dir.parent().unwrap_or(dir),
        _ => dir,
    }
}

/// The cargo command that builds the binaries into `profile_dir` (`debug` is the `dev`
/// profile's directory, `release` the `release` profile's, any other its own name).
fn build_command(profile_dir: &Path) -> String {
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => String::new(),
        Some("release") => " --release".to_string(),
        Some(other) => format!(" --profile {other}"),
    };
    format!("cargo build --locked --workspace --bins{profile}")
}
