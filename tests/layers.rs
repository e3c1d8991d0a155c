//! The layer order of docs/architecture.md ("Layers"), checked against the code: every
//! `crate::…` path in a file under `src/` names a top-level module at or below the file's
//! own layer. A lower layer that reaches up is an import circle waiting to happen (the
//! four that existed were found this way), so the order in the doc is the rule, not a
//! description.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `module -> layer` from the numbered list under "## Layers" in docs/architecture.md:
/// lines like "3. `tls`: …". Several modules may share a number.
fn layers() -> BTreeMap<String, usize> {
    let doc = std::fs::read_to_string(Path::new(ROOT).join("docs/architecture.md"))
        .expect("read docs/architecture.md");
    let section = doc
        .split("\n## Layers\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/architecture.md has a \"## Layers\" section");
    let mut layers = BTreeMap::new();
    for line in section.lines() {
        let Some((number, rest)) = line.split_once(". ") else {
            continue;
        };
        let Ok(number) = number.trim().parse::<usize>() else {
            continue;
        };
        // "`metrics` and `keepalive`: …": every backquoted name before the colon.
        let names = rest.split(':').next().unwrap_or_default();
        for name in names.split('`').skip(1).step_by(2) {
            layers.insert(name.to_string(), number);
        }
    }
    assert!(layers.len() >= 6, "too few layers found: {layers:?}");
    layers
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`src/proxy/http.rs` -> `proxy`).
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("a file under src/");
    let first = relative.components().next().expect("a path");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

/// The top-level modules `code` names through `crate::`, outside comments: `crate::x::…`,
/// and each name of `crate::{x, y::…}`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or_default();
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().last();
            rest = &rest[at + "crate::".len()..];
            // `leader_proxy_crate::` or `$crate::` are not this crate's paths.
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        found.push(name);
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                found.push(name);
            }
        }
    }
    found
}

#[test]
fn no_module_imports_a_higher_layer() {
    let layers = layers();
    let src = Path::new(ROOT).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward = Vec::new();
    let mut unplaced = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        // The binary and the crate root wire everything; they are above every layer.
        if module == "main" || module == "lib" {
            continue;
        }
        let Some(&own) = layers.get(&module) else {
            unplaced.push(module);
            continue;
        };
        let code = std::fs::read_to_string(file).expect("read a source file");
        for used in crate_paths(&code) {
            match layers.get(&used) {
                Some(&layer) if layer <= own => {}
                Some(&layer) => upward.push(format!(
                    "{} ({module}, layer {own}) uses crate::{used} (layer {layer})",
                    file.strip_prefix(ROOT).unwrap_or(file).display()
                )),
                None => unplaced.push(used),
            }
        }
    }
    unplaced.sort();
    unplaced.dedup();
    assert!(
        unplaced.is_empty(),
        "modules missing from docs/architecture.md's layer list: {unplaced:?}"
    );
    assert!(
        upward.is_empty(),
        "imports that go up the layers of docs/architecture.md:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_plain_paths_but_not_comments() {
    let code = "use crate::{metrics::Metrics, router};\nlet x = crate::tls::load();\n\
                // crate::server is only mentioned\n/// [`crate::admin`] in a doc link";
    assert_eq!(crate_paths(code), ["metrics", "router", "tls"]);
}

/// The parsers crate (crates/parsers) is what the fuzz targets build: if it pulled in
/// pingora, a store client or leader-proxy itself, every fuzz build would compile them,
/// and a parser would be one import away from the proxy's state. Checked on `Cargo.lock`,
/// which lists what each package really depends on, transitively.
#[test]
fn the_parsers_crate_builds_without_pingora_or_the_proxy() {
    let lock: toml::Table = std::fs::read_to_string(Path::new(ROOT).join("Cargo.lock"))
        .expect("read Cargo.lock")
        .parse()
        .expect("Cargo.lock is TOML");
    let packages = lock["package"].as_array().expect("[[package]] entries");
    // name -> the names it depends on (one version of each is enough to see a name).
    let mut deps: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for package in packages {
        let name = package["name"].as_str().expect("a package name");
        let named = package
            .get("dependencies")
            .and_then(|d| d.as_array())
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str())
            .map(|d| d.split(' ').next().unwrap_or(d));
        deps.entry(name).or_default().extend(named);
    }
    assert!(
        deps.contains_key("leader-proxy-parsers"),
        "Cargo.lock has no leader-proxy-parsers"
    );
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec!["leader-proxy-parsers"];
    while let Some(name) = todo.pop() {
        if seen.insert(name) {
            todo.extend(deps.get(name).into_iter().flatten().copied());
        }
    }
    let forbidden: Vec<_> = seen
        .iter()
        .filter(|name| {
            name.starts_with("pingora")
                || [
                    "leader-proxy",
                    "etcd-client",
                    "zookeeper-client",
                    "reqwest",
                    "hyper",
                ]
                .contains(name)
        })
        .collect();
    assert!(
        forbidden.is_empty(),
        "leader-proxy-parsers depends on {forbidden:?}; the fuzz targets would build them"
    );
}
