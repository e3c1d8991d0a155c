//! Programs and files of the machine that the launchers use at fixed paths (the docker
//! CLIs, dockerd, busybox, python3, ZooKeeper's jars): each has today's path as its default
//! and an environment variable that names another, so the tests run on a machine laid out
//! differently. `TESTKIT_`, like `TESTKIT_SIM_MANAGER_BIN` ([`crate::bins`]): the
//! `LEADER_PROXY_` prefix is the product's own configuration. docs/testing.md lists them.
//!
//! Programs the launchers find on `PATH` (`etcd`, `etcdctl`, `java`, `tar`) need no variable.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// A program or file at `default`, or wherever `$var` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Program {
    var: &'static str,
    default: &'static str,
}

impl Program {
    pub const fn new(var: &'static str, default: &'static str) -> Program {
        Program { var, default }
    }

    /// The variable that overrides the path.
    pub fn var(&self) -> &'static str {
        self.var
    }

    /// `$var` if set and not empty, else the default. The variable is read once per process.
    pub fn path(&self) -> &'static Path {
        static RESOLVED: Mutex<Vec<(&'static str, &'static Path)>> = Mutex::new(Vec::new());
        let mut resolved = RESOLVED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, path)) = resolved.iter().find(|(var, _)| *var == self.var) {
            return path;
        }
        let path: &'static Path = match std::env::var_os(self.var) {
            Some(value) if !value.is_empty() => Box::leak(PathBuf::from(value).into_boxed_path()),
            _ => Path::new(self.default),
        };
        resolved.push((self.var, path));
        path
    }

    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// Panics unless it exists, with the path, the variable and `install`.
    pub fn require(&self, install: &str) {
        assert!(
            self.exists(),
            "{} is missing ({} names another path): {install}",
            self.path().display(),
            self.var
        );
    }
}

impl AsRef<OsStr> for Program {
    fn as_ref(&self) -> &OsStr {
        self.path().as_os_str()
    }
}

impl AsRef<Path> for Program {
    fn as_ref(&self) -> &Path {
        self.path()
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path().display())
    }
}
