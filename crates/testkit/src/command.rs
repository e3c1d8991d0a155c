//! Runs the `leader-proxy` binary once, to its end, for the commands that answer and exit
//! (`status`, `leader`, `--help`): its exit code and what it printed.

use std::process::Command;

/// What one run printed and how it ended.
#[derive(Debug)]
pub struct Ran {
    /// `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// `leader-proxy ARGS…` with `env` added to this process's environment.
pub fn leader_proxy(args: &[&str], env: &[(&str, &str)]) -> Ran {
    let out = Command::new(crate::bins::leader_proxy())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run leader-proxy");
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
