//! `--owner-label` with the real docker CLI and a real dockerd (20.10): two CI jobs, each
//! behind its own proxy with its own label, share one dockerd and cannot see or touch each
//! other's containers, volumes and networks (docs/policy.md, "Ownership"). An etcd names
//! the dockerd as leader to both.
//!
//! The tests named `dockerd_…` start dockerd; nextest runs at most two at once
//! (`.config/nextest.toml`, test group `dockerd`).

use std::time::Duration;

use testkit::dockerd::{docker, run, Dockerd, Output, DOCKER};
use testkit::etcd::Etcd;
use testkit::etcd_proxy::proxy_leading_to;
use testkit::proxy::Proxy;

const IMAGE: &str = "bb:local";
/// For docker commands that should take a second or two.
const CMD: Duration = Duration::from_secs(60);

/// One CI job: a proxy with `--owner-label ci=NAME` in front of the shared dockerd, and a
/// docker CLI with its own config dir.
struct Job {
    proxy: Proxy,
    config: tempfile::TempDir,
}

impl Job {
    fn start(etcd: &Etcd, dockerd: &Dockerd, name: &str) -> Job {
        let label = format!("ci={name}");
        let proxy = proxy_leading_to(etcd, &dockerd.endpoint(), &["--owner-label", &label]);
        Job {
            proxy,
            config: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn docker(&self, args: &[&str]) -> Output {
        let host = format!("tcp://{}", self.proxy.addr());
        run(
            docker(DOCKER.path(), &host, self.config.path()).args(args),
            None,
            CMD,
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(out.ok(), "{out}\nproxy log:\n{}", self.proxy.log());
        out.stdout_text()
    }

    /// `args` fails with `message` in the CLI's error output.
    fn refused(&self, args: &[&str], message: &str) {
        let out = self.docker(args);
        assert!(!out.ok(), "{args:?} was served: {out}");
        assert!(out.stderr_text().contains(message), "{args:?}: {out}");
    }
}

/// One API call through `job`'s proxy.
fn api(job: &Job, method: &str, path: &str, body: &str) -> testkit::http::Response {
    testkit::http::request(
        job.proxy.addr(),
        method,
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
        CMD,
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

#[test]
fn dockerd_owner_labels_keep_two_jobs_apart() {
    let dockerd = Dockerd::start();
    let etcd = Etcd::start();
    let a = Job::start(&etcd, &dockerd, "job-a");
    let b = Job::start(&etcd, &dockerd, "job-b");
    let sleeper = ["--network", "none", IMAGE, "sleep", "300"];
    a.ok(&[&["run", "-d", "--name", "a-run"][..], &sleeper].concat());
    a.ok(&[
        "create",
        "--name",
        "a-made",
        "--network",
        "none",
        IMAGE,
        "true",
    ]);
    b.ok(&[&["run", "-d", "--name", "b-run"][..], &sleeper].concat());
    b.ok(&[
        "create",
        "--name",
        "b-made",
        "--network",
        "none",
        IMAGE,
        "true",
    ]);

    // Lists: each job sees its own, the dockerd itself all of them.
    let names = ["ps", "-a", "--format", "{{.Names}}"];
    assert_eq!(lines(&a.ok(&names)), ["a-made", "a-run"]);
    assert_eq!(lines(&b.ok(&names)), ["b-made", "b-run"]);
    let everything = run(dockerd.direct(DOCKER.path()).args(names), None, CMD);
    assert_eq!(
        lines(&everything.stdout_text()),
        ["a-made", "a-run", "b-made", "b-run"]
    );
    // The client's own filters still apply, among its own containers.
    let running = ["ps", "--filter", "status=running", "--format", "{{.Names}}"];
    assert_eq!(lines(&a.ok(&running)), ["a-run"]);

    // The other job's containers do not exist, in dockerd's own words.
    for args in [
        // Not `rm -f`: the CLI takes "no such container" as done there.
        &["rm", "b-run"][..],
        &["logs", "b-run"],
        &["exec", "b-run", "true"],
        &["inspect", "--type", "container", "b-run"],
        &["stop", "b-run"],
    ] {
        a.refused(args, "No such container: b-run");
    }
    // A container id prefix is resolved the way dockerd resolves it.
    let b_id = b.ok(&["inspect", "--format", "{{.Id}}", "b-run"]);
    a.refused(
        &["logs", &b_id[..12]],
        &format!("No such container: {}", &b_id[..12]),
    );
    // A name b's container holds is a conflict, as in dockerd, but without b's id.
    for args in [
        &[
            "create",
            "--name",
            "b-run",
            "--network",
            "none",
            IMAGE,
            "true",
        ][..],
        &["rename", "a-made", "b-run"],
    ] {
        let out = a.docker(args);
        assert!(!out.ok(), "{args:?} was served: {out}");
        let said = out.stderr_text();
        assert!(said.contains("already in use by another owner's"), "{out}");
        assert!(!said.contains(b_id.trim()), "b's id shown: {out}");
    }
    assert_eq!(a.ok(&["exec", "a-run", "echo", "mine"]), "mine\n");
    assert_eq!(
        a.ok(&[
            "logs",
            &a.ok(&["inspect", "--format", "{{.Id}}", "a-run"])[..12]
        ]),
        ""
    );

    // Nor can a new container reach into them.
    a.refused(
        &["create", "--volumes-from", "b-run", IMAGE, "true"],
        "No such container: b-run",
    );
    a.refused(
        &["create", "--network", "container:b-run", IMAGE, "true"],
        "No such container: b-run",
    );
    a.refused(
        &["create", "--pid", "container:b-run", IMAGE, "true"],
        "No such container: b-run",
    );
    a.ok(&[
        "create",
        "--volumes-from",
        "a-run",
        "--network",
        "none",
        IMAGE,
        "true",
    ]);

    // An exec instance is its container's: b's exec id is unknown to a.
    let exec = api(
        &b,
        "POST",
        "/v1.41/containers/b-run/exec",
        r#"{"Cmd":["true"]}"#,
    );
    assert_eq!(exec.status, 201, "{}", exec.text());
    let exec_id = exec.json()["Id"].as_str().expect("exec id").to_string();
    let seen = api(&a, "GET", &format!("/v1.41/exec/{exec_id}/json"), "");
    assert_eq!(
        (seen.status, seen.json()["message"].clone()),
        (404, format!("No such exec instance: {exec_id}").into())
    );
    assert_eq!(
        api(&b, "GET", &format!("/v1.41/exec/{exec_id}/json"), "").status,
        200
    );

    // Volumes and networks alike.
    a.ok(&["volume", "create", "va"]);
    b.ok(&["volume", "create", "vb"]);
    assert_eq!(lines(&a.ok(&["volume", "ls", "-q"])), ["va"]);
    a.refused(&["volume", "rm", "vb"], "get vb: no such volume");
    // dockerd would answer a create of an existing name with that volume, b's included.
    a.refused(&["volume", "create", "vb"], "volume vb is another owner's");
    b.refused(&["volume", "inspect", "va"], "get va: no such volume");
    // A container reaches volumes by name too: b cannot mount a's; a volume a container
    // create makes is the job's own (listed, removable), `:ro` kept.
    let none = ["--network", "none", IMAGE, "true"];
    for mount in [
        &["-v", "va:/data"][..],
        &["--mount", "type=volume,src=va,dst=/data"],
    ] {
        b.refused(
            &[&["create"][..], mount, &none].concat(),
            "volume va is another owner's",
        );
    }
    a.ok(&[
        &[
            "create",
            "--name",
            "a-vols",
            "-v",
            "va:/data",
            "-v",
            "va-new:/new:ro",
        ][..],
        &["--mount", "type=volume,src=va-mount,dst=/m"],
        &none,
    ]
    .concat());
    assert_eq!(
        lines(&a.ok(&["volume", "ls", "-q"])),
        ["va", "va-mount", "va-new"]
    );
    let mounts = a.ok(&[
        "inspect",
        "--format",
        "{{range .Mounts}}{{.Name}}:{{.Destination}}:{{.RW}} {{end}}",
        "a-vols",
    ]);
    let mut mounts: Vec<&str> = mounts.split_whitespace().collect();
    mounts.sort();
    assert_eq!(
        mounts,
        ["va-mount:/m:true", "va-new:/new:false", "va:/data:true"]
    );
    a.ok(&["rm", "a-vols"]);
    a.ok(&["volume", "rm", "va-new", "va-mount"]);
    a.ok(&["network", "create", "na"]);
    let na = a.ok(&["network", "inspect", "--format", "{{.Id}}", "na"]);
    let bridge = format!("br-{}", &na[..12.min(na.len())]);
    assert_eq!(
        lines(&b.ok(&["network", "ls", "--format", "{{.Name}}"])),
        Vec::<String>::new(),
        "b sees neither a's network nor dockerd's own"
    );
    assert_eq!(
        lines(&a.ok(&["network", "ls", "--format", "{{.Name}}"])),
        ["na"]
    );
    b.refused(&["network", "rm", "na"], "network na not found");
    b.refused(
        &["network", "connect", "na", "b-run"],
        "network na not found",
    );

    // Prune removes only the job's own: a's stopped containers go, b's stays.
    a.ok(&["container", "prune", "-f"]);
    let left = run(dockerd.direct(DOCKER.path()).args(names), None, CMD);
    assert_eq!(lines(&left.stdout_text()), ["a-run", "b-made", "b-run"]);

    // Images are shared: used by both, removed by neither.
    a.refused(&["rmi", IMAGE], "images are shared");
    a.refused(&["image", "prune", "-a", "-f"], "images are shared");
    let images = run(
        dockerd.direct(DOCKER.path()).args(["images", "-q", IMAGE]),
        None,
        CMD,
    );
    assert!(!images.stdout_text().trim().is_empty(), "{images}");

    // Events: only the job's own containers' (the label is merged into `filters`).
    let until = a.ok(&["info", "--format", "{{.SystemTime}}"]);
    let events = a.ok(&[
        "events",
        "--since",
        "0",
        "--until",
        until.trim(),
        "--filter",
        "type=container",
        "--format",
        "{{.Actor.Attributes.name}}",
    ]);
    let mut seen = lines(&events);
    seen.dedup();
    assert!(seen.contains(&"a-run".to_string()), "{events}");
    assert!(seen.iter().all(|name| !name.starts_with("b-")), "{events}");

    a.ok(&["rm", "-f", "a-run"]);
    b.ok(&["rm", "-f", "b-run"]);

    // The network's bridge is gone from the host with the dockerd (testkit removes what
    // the test made): one left per run would use up dockerd's address pools.
    drop(dockerd);
    let interface = std::path::Path::new("/sys/class/net").join(&bridge);
    assert!(
        !interface.exists(),
        "{bridge} was left in the host's network namespace"
    );
}
