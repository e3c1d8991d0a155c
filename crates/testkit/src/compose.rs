//! `docker-compose` (Debian's `docker-compose` package, Compose v1) for checking
//! deploy/compose.yml. The stack itself cannot run on this project's machines (no image
//! registry), so only what Compose checks without images is checked: the file's syntax and
//! schema, and what it resolves (services, paths).

use std::path::Path;
use std::process::Command;

use crate::programs::Program;

pub const DOCKER_COMPOSE: Program =
    Program::new("TESTKIT_DOCKER_COMPOSE", "/usr/bin/docker-compose");

/// Runs `docker-compose -f FILE ARGS…` and returns its stdout, or its stderr on failure.
pub fn compose(file: &Path, args: &[&str]) -> Result<String, String> {
    DOCKER_COMPOSE.require(
        "apt-get install --no-install-recommends docker-compose (or run scripts/install-deps)",
    );
    let output = Command::new(DOCKER_COMPOSE.path())
        .arg("-f")
        .arg(file)
        .args(args)
        .output()
        .expect("run docker-compose");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "docker-compose -f {} {args:?} failed ({}):\n{}",
            file.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
