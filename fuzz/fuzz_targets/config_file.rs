//! The `--config` file layer (`leader_proxy_parsers::config::file::parse`: TOML into the
//! clap `Cli`, then the `discovery-opt` entries) against arbitrary text.
//!
//! Properties of an accepted file:
//! - every key it gives, laid on the command line as its flag (`--KEY=VALUE`, one per
//!   item of a repeatable flag's list, a comma list for the others, DISCOVERY after `--`),
//!   is accepted by clap and sets exactly what the file set: the contract that makes a flag one field (docs/cli.md). The `[[listener]]`
//!   tables ([`FILE_ONLY`]) have no flag: they are left out on both sides;
//! - each single-valued key given as its `LEADER_PROXY_*` variable (the environment layer)
//!   sets the same as its flag, but for blank values, which count as unset there;
//! - `discovery-opt` entries are one per key, with a key that is not empty and has no
//!   surrounding space, and a Debug print of them shows no value (they are `Secret`s).

#![no_main]

use std::collections::HashMap;

use clap::{ArgAction, FromArgMatches};
use leader_proxy_parsers::config::cli::{self, Cli};
use leader_proxy_parsers::config::{env, file};
use libfuzzer_sys::fuzz_target;

/// Keys only the file has (a listener's own policy is a table, docs/cli.md).
const FILE_ONLY: &[&str] = &["listener"];

/// Whether `--key` may be given more than once (a list flag such as `--listen`).
fn repeatable(key: &str) -> bool {
    cli::command()
        .get_arguments()
        .any(|a| a.get_long() == Some(key) && matches!(a.get_action(), ArgAction::Append))
}

/// A file value as a flag or variable gives it: a string as it is, an array (of a flag that
/// takes a comma list, such as `allow`) joined with commas, anything else as TOML writes it.
fn flag_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(items) => items.iter().map(flag_text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// The command line that gives what `table` gives; `cli` is what the file parsed into.
fn as_flags(table: &toml::Table, parsed: &Cli) -> Vec<String> {
    let mut argv = vec!["leader-proxy".to_string()];
    let mut discovery = None;
    for (key, value) in table {
        if FILE_ONLY.contains(&key.as_str()) {
            continue;
        }
        if key == "discovery" {
            discovery = value.as_str().map(str::to_string);
            continue;
        }
        if key == "discovery-opt" {
            // The table form's dotted keys are joined by the file layer; take its entries.
            argv.extend(
                parsed
                    .discovery_opt
                    .iter()
                    .map(|entry| format!("--discovery-opt={}", entry.expose())),
            );
            continue;
        }
        match value {
            toml::Value::Array(items) if repeatable(key) => {
                argv.extend(
                    items
                        .iter()
                        .map(|item| format!("--{key}={}", flag_text(item))),
                );
            }
            one => argv.push(format!("--{key}={}", flag_text(one))),
        }
    }
    if let Some(discovery) = discovery {
        argv.push("--".to_string());
        argv.push(discovery);
    }
    argv
}

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let Ok((from_file, opts)) = file::parse(text) else {
        return;
    };
    let table: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("the file parsed into Cli but not as a TOML table: {e}"));

    let argv = as_flags(&table, &from_file);
    let matches = cli::command()
        .try_get_matches_from(&argv)
        .unwrap_or_else(|e| panic!("the file was accepted, its flags {argv:?} are not: {e}"));
    let from_flags = Cli {
        listener: from_file.listener.clone(),
        ..Cli::from_arg_matches(&matches).expect("clap's own matches")
    };
    assert_eq!(
        from_flags, from_file,
        "the flags {argv:?} set something else than the file"
    );

    // The environment: the single-valued keys (a list's variable is split at commas), as
    // text; a blank variable counts as unset, so it is left out.
    let mut vars = HashMap::new();
    let mut single = toml::Table::new();
    for (key, value) in &table {
        if FILE_ONLY.contains(&key.as_str()) {
            continue;
        }
        let value_text = flag_text(value);
        if repeatable(key) || value_text.trim().is_empty() {
            continue;
        }
        let var = if key == "discovery" {
            "LEADER_PROXY_DISCOVERY".to_string()
        } else {
            env::env_name(key)
        };
        vars.insert(var, value_text);
        single.insert(key.clone(), value.clone());
    }
    let from_env = env::layer(&vars)
        .map(|matches| Cli::from_arg_matches(&matches).expect("clap's own matches"))
        .unwrap_or_else(|e| panic!("the file was accepted, its variables {vars:?} are not: {e}"));
    let argv = as_flags(&single, &from_file);
    let matches = cli::command()
        .try_get_matches_from(&argv)
        .unwrap_or_else(|e| panic!("flags {argv:?}: {e}"));
    let from_single_flags = Cli::from_arg_matches(&matches).expect("clap's own matches");
    assert_eq!(
        from_env, from_single_flags,
        "the variables {vars:?} set something else than {argv:?}"
    );

    let entries = from_file.discovery_opt.len();
    assert_eq!(
        opts.len(),
        entries,
        "a discovery-opt key given twice was kept"
    );
    for key in opts.keys() {
        assert!(
            !key.is_empty() && key.trim() == key,
            "discovery-opt key {key:?}"
        );
    }
    let shown = format!("{:?}", from_file.discovery_opt);
    assert_eq!(
        shown,
        format!("[{}]", vec!["***"; entries].join(", ")),
        "Debug shows a value"
    );
});
