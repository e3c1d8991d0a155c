//! `dist-assets OUT_DIR`: writes into OUT_DIR the man pages (`man/leader-proxy.1`, and
//! `man/leader-proxy-status.1`, `man/leader-proxy-leader.1` for the commands) and the
//! completions (`completions/leader-proxy.bash`, `completions/_leader-proxy` for zsh,
//! `completions/leader-proxy.fish`), generated from `leader-proxy`'s own clap command
//! (`leader_proxy_parsers::config::cli::documented_command`). `scripts/package` runs it before
//! `cargo deb`, whose assets name these files (Cargo.toml, `[package.metadata.deb]`).

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_complete::Shell;
use leader_proxy_parsers::config::cli;

const BIN: &str = "leader-proxy";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: dist-assets OUT_DIR");
        return ExitCode::from(2);
    };
    match write_all(Path::new(&out)) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dist-assets: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes every file; returns their paths.
fn write_all(out: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man = out.join("man");
    fs::create_dir_all(&man)?;
    let command = cli::documented_command();
    written.push(write(&man.join(format!("{BIN}.1")), |w| {
        clap_mangen::Man::new(command.clone()).render(w)
    })?);
    for sub in command.get_subcommands() {
        let title = format!("{BIN}-{}", sub.get_name());
        let page = clap_mangen::Man::new(sub.clone()).title(title.clone());
        written.push(write(&man.join(format!("{title}.1")), |w| page.render(w))?);
    }
    let completions = out.join("completions");
    fs::create_dir_all(&completions)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let name = match shell {
            Shell::Zsh => format!("_{BIN}"),
            other => format!("{BIN}.{other}"),
        };
        written.push(write(&completions.join(name), |w| {
            clap_complete::generate(shell, &mut cli::documented_command(), BIN, w);
            Ok(())
        })?);
    }
    Ok(written)
}

/// Creates `path` and fills it with `render`.
fn write(
    path: &Path,
    render: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<PathBuf> {
    let mut file = BufWriter::new(File::create(path)?);
    render(&mut file)
        .and_then(|()| file.flush())
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    Ok(path.to_path_buf())
}
