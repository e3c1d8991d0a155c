//! Store security for the etcd backends (`etcd://`, `etcdv3://`), against a real etcd started
//! by each test: TLS with `kv.cacertfile` (and `kv.certfile`/`kv.keyfile` where etcd requires
//! client certificates), user/password with `kv.username`/`kv.password` (the v3 API's users,
//! and the v2 API's own), the failures each must report as `Degraded` without adopting a
//! leader, the option errors at start-up, and, through the real binary, that no secret
//! reaches the log or `/leader`. Certificates are made fresh by `testkit::certs`.

use std::path::Path;
use std::time::{Duration, Instant};

use leader_proxy::discovery::{source_for, LeaderEvent, SourceError};
use testkit::certs::Certs;
use testkit::etcd::Etcd;
use testkit::proxy::Proxy;
use testkit::source_events::{addr, key_config, Follower, WAIT};
const V2_KEY: &str = "/swarm/docker/swarm/leader";
const V3_KEY: &str = "swarm/docker/swarm/leader";
/// The etcd user the proxy logs in as; its passwords are distinctive, to be looked for in
/// logs.
const USER: &str = "swarm";
const PASSWORD: &str = "pw-Zq8xK3v";
const WRONG_PASSWORD: &str = "wrong-Jt5rW9m";

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// The TLS options for `certs`: the CA, and the client certificate if `client`.
fn tls_options(certs: &Certs, client: bool) -> Vec<(&'static str, &str)> {
    let mut options = vec![("kv.cacertfile", path(&certs.ca))];
    if client {
        options.push(("kv.certfile", path(&certs.client_cert)));
        options.push(("kv.keyfile", path(&certs.client_key)));
    }
    options
}

/// Both etcd schemes, with the leader key each writes.
enum Api {
    V2,
    V3,
}

impl Api {
    fn url(&self, etcd: &Etcd) -> String {
        match self {
            Api::V2 => format!("etcd://{}/swarm", etcd.endpoint()),
            Api::V3 => format!("etcdv3://{}/swarm", etcd.endpoint()),
        }
    }

    fn put(&self, etcd: &Etcd, value: &str) {
        match self {
            Api::V2 => {
                etcd.put_v2(V2_KEY, value, None);
            }
            Api::V3 => {
                etcd.put_v3(V3_KEY, value);
            }
        }
    }

    fn delete(&self, etcd: &Etcd) {
        match self {
            Api::V2 => etcd.delete_v2(V2_KEY),
            Api::V3 => etcd.delete_v3(V3_KEY),
        }
    }
}

/// `reason` mentions one of `words` (case-insensitive), and no secret.
fn assert_reason(reason: &str, words: &[&str]) {
    let lower = reason.to_lowercase();
    assert!(
        words.iter().any(|w| lower.contains(&w.to_lowercase())),
        "the reason {reason:?} mentions none of {words:?}"
    );
    for secret in [PASSWORD, WRONG_PASSWORD] {
        assert!(
            !reason.contains(secret),
            "the reason {reason:?} holds a password"
        );
    }
}

/// The leader is followed through a change and a deletion.
fn follows(api: Api, etcd: &Etcd, options: &[(&str, &str)]) {
    api.put(etcd, "127.0.0.1:2001");
    let mut f = Follower::start(key_config(&api.url(etcd), options));
    f.expect(addr("127.0.0.1:2001"));
    api.put(etcd, "127.0.0.1:2002");
    f.expect(addr("127.0.0.1:2002"));
    api.delete(etcd);
    f.expect(LeaderEvent::NoLeader);
}

// ------------------------------------------------------------------------------ TLS

#[test]
fn etcd2_follows_the_leader_over_tls_with_a_client_certificate() {
    let certs = Certs::new("store CA");
    let etcd = Etcd::start_tls(&certs, true);
    follows(Api::V2, &etcd, &tls_options(&certs, true));
}

#[test]
fn etcd3_follows_the_leader_over_tls_with_a_client_certificate() {
    let certs = Certs::new("store CA");
    let etcd = Etcd::start_tls(&certs, true);
    follows(Api::V3, &etcd, &tls_options(&certs, true));
}

#[test]
fn a_tls_store_restarted_is_followed_again() {
    let certs = Certs::new("store CA");
    let mut etcd = Etcd::start_tls(&certs, true);
    etcd.put_v2(V2_KEY, "127.0.0.1:2001", None);
    etcd.put_v3(V3_KEY, "127.0.0.1:2001");
    let options = tls_options(&certs, true);
    let mut v2 = Follower::start(key_config(&Api::V2.url(&etcd), &options));
    let mut v3 = Follower::start(key_config(&Api::V3.url(&etcd), &options));
    v2.expect(addr("127.0.0.1:2001"));
    v3.expect(addr("127.0.0.1:2001"));
    etcd.stop();
    for f in [&mut v2, &mut v3] {
        f.expect_degraded();
    }
    etcd.restart();
    // New connections, new handshakes, the same files.
    v2.expect(addr("127.0.0.1:2001"));
    v3.expect(addr("127.0.0.1:2001"));
}

#[test]
fn the_ca_alone_is_enough_where_etcd_requires_no_client_certificate() {
    let certs = Certs::new("store CA");
    let etcd = Etcd::start_tls(&certs, false);
    follows(Api::V2, &etcd, &tls_options(&certs, false));
    follows(Api::V3, &etcd, &tls_options(&certs, false));
}

#[test]
fn a_server_certificate_from_another_ca_is_degraded() {
    let store = Certs::new("store CA");
    let other = Certs::new("another CA");
    let etcd = Etcd::start_tls(&store, true);
    etcd.put_v2(V2_KEY, "127.0.0.1:2001", None);
    etcd.put_v3(V3_KEY, "127.0.0.1:2001");
    // The client certificate is `store`'s, so that only the server's certificate is wrong.
    let options = [
        ("kv.cacertfile", path(&other.ca)),
        ("kv.certfile", path(&store.client_cert)),
        ("kv.keyfile", path(&store.client_key)),
    ];
    for api in [Api::V2, Api::V3] {
        let mut f = Follower::start(key_config(&api.url(&etcd), &options));
        let reason = f.expect_only_degraded();
        assert_reason(&reason, &["certificate", "UnknownIssuer"]);
    }
}

#[test]
fn no_client_certificate_where_etcd_requires_one_is_degraded() {
    let certs = Certs::new("store CA");
    let etcd = Etcd::start_tls(&certs, true);
    etcd.put_v2(V2_KEY, "127.0.0.1:2001", None);
    etcd.put_v3(V3_KEY, "127.0.0.1:2001");
    for api in [Api::V2, Api::V3] {
        let mut f = Follower::start(key_config(&api.url(&etcd), &tls_options(&certs, false)));
        let reason = f.expect_only_degraded();
        // etcd refuses the handshake (TLS 1.3: after it, with an alert); gRPC may report
        // only the closed connection, with the hint to give a client certificate.
        assert_reason(&reason, &["BadCertificate", "kv.certfile"]);
    }
}

#[test]
fn plain_http_to_an_etcd_serving_tls_is_degraded() {
    let certs = Certs::new("store CA");
    let etcd = Etcd::start_tls(&certs, false);
    etcd.put_v2(V2_KEY, "127.0.0.1:2001", None);
    etcd.put_v3(V3_KEY, "127.0.0.1:2001");
    for api in [Api::V2, Api::V3] {
        let mut f = Follower::start(key_config(&api.url(&etcd), &[]));
        f.expect_only_degraded();
    }
}

// --------------------------------------------------------------------- user/password

#[test]
fn etcd3_user_and_password() {
    let mut etcd = Etcd::start();
    etcd.enable_auth(USER, PASSWORD, "swarm/");
    let login = [("kv.username", USER), ("kv.password", PASSWORD)];
    follows(Api::V3, &etcd, &login);

    etcd.put_v3(V3_KEY, "127.0.0.1:2001");
    let wrong = [("kv.username", USER), ("kv.password", WRONG_PASSWORD)];
    let mut f = Follower::start(key_config(&Api::V3.url(&etcd), &wrong));
    assert_reason(&f.expect_only_degraded(), &["authentication failed"]);
    // Without credentials etcd refuses the read.
    let mut f = Follower::start(key_config(&Api::V3.url(&etcd), &[]));
    assert_reason(
        &f.expect_only_degraded(),
        &["user name is empty", "permission"],
    );
}

#[test]
fn etcd2_user_and_password() {
    let mut etcd = Etcd::start();
    etcd.enable_v2_auth(USER, PASSWORD, "swarm");
    let login = [("kv.username", USER), ("kv.password", PASSWORD)];
    follows(Api::V2, &etcd, &login);

    etcd.put_v2(V2_KEY, "127.0.0.1:2001", None);
    let wrong = [("kv.username", USER), ("kv.password", WRONG_PASSWORD)];
    let mut f = Follower::start(key_config(&Api::V2.url(&etcd), &wrong));
    assert_reason(&f.expect_only_degraded(), &["authentication"]);
    // Without credentials the request is a guest's, and the guest role may read nothing.
    let mut f = Follower::start(key_config(&Api::V2.url(&etcd), &[]));
    assert_reason(&f.expect_only_degraded(), &["authentication"]);
}

#[test]
fn etcd_v2_and_v3_users_are_separate_in_etcd_3_4() {
    let mut etcd = Etcd::start();
    etcd.enable_auth(USER, PASSWORD, "swarm/");
    etcd.put_v2(V2_KEY, "127.0.0.1:2001", None);
    // v3 authentication does not protect the v2 API: without v2 auth it serves anybody.
    let mut f = Follower::start(key_config(&Api::V2.url(&etcd), &[]));
    f.expect(addr("127.0.0.1:2001"));
    // And once v2 auth is on, the v2 API knows only its own users.
    etcd.enable_v2_auth("v2user", "v2-pw-Hn4", "swarm");
    let v3_login = [("kv.username", USER), ("kv.password", PASSWORD)];
    let mut f = Follower::start(key_config(&Api::V2.url(&etcd), &v3_login));
    assert_reason(&f.expect_only_degraded(), &["authentication"]);
    let v2_login = [("kv.username", "v2user"), ("kv.password", "v2-pw-Hn4")];
    let mut f = Follower::start(key_config(&Api::V2.url(&etcd), &v2_login));
    f.expect(addr("127.0.0.1:2001"));
}

#[test]
fn etcd3_takes_the_client_certificates_common_name_as_the_user() {
    let certs = Certs::new("store CA");
    let mut etcd = Etcd::start_tls(&certs, true);
    etcd.enable_auth(USER, PASSWORD, "swarm/");
    etcd.put_v3(V3_KEY, "127.0.0.1:2001");
    // A certificate for the user `swarm`, and no password.
    let (cert, key) = certs.client(USER);
    let options = [
        ("kv.cacertfile", path(&certs.ca)),
        ("kv.certfile", path(&cert)),
        ("kv.keyfile", path(&key)),
    ];
    let mut f = Follower::start(key_config(&Api::V3.url(&etcd), &options));
    f.expect(addr("127.0.0.1:2001"));
    // The default client certificate's common name (`client`) is nobody etcd knows.
    let mut f = Follower::start(key_config(&Api::V3.url(&etcd), &tls_options(&certs, true)));
    assert_reason(&f.expect_only_degraded(), &["permission denied"]);
}

// -------------------------------------------------------------------- option errors

fn option_error(url: &str, options: &[(&str, &str)]) -> (String, String) {
    match source_for(key_config(url, options)) {
        Err(SourceError::Option { option, reason }) => (option, reason),
        Err(other) => panic!("expected an option error, got {other}"),
        Ok(_) => panic!("{options:?} was accepted"),
    }
}

#[test]
fn tls_option_errors_name_the_option_and_the_file() {
    let certs = Certs::new("store CA");
    let other = Certs::new("another CA");
    let missing = certs.dir().join("missing.pem");
    for url in [
        "etcd://127.0.0.1:2379/swarm",
        "etcdv3://127.0.0.1:2379/swarm",
    ] {
        let (option, reason) = option_error(
            url,
            &[
                ("kv.cacertfile", path(&certs.ca)),
                ("kv.certfile", path(&certs.client_cert)),
            ],
        );
        assert_eq!(option, "kv.certfile");
        assert!(reason.contains("kv.keyfile"), "{reason}");

        let (option, reason) = option_error(
            url,
            &[
                ("kv.cacertfile", path(&certs.ca)),
                ("kv.keyfile", path(&certs.client_key)),
            ],
        );
        assert_eq!(option, "kv.keyfile");
        assert!(reason.contains("kv.certfile"), "{reason}");

        let (option, reason) = option_error(url, &[("kv.cacertfile", path(&missing))]);
        assert_eq!(option, "kv.cacertfile");
        assert!(reason.contains(path(&missing)), "{reason}");

        let (option, reason) = option_error(
            url,
            &[
                ("kv.cacertfile", path(&certs.ca)),
                ("kv.certfile", path(&certs.client_cert)),
                ("kv.keyfile", path(&missing)),
            ],
        );
        assert_eq!(option, "kv.keyfile");
        assert!(reason.contains(path(&missing)), "{reason}");

        // A key file given as the CA: no certificate in it.
        let (option, reason) = option_error(url, &[("kv.cacertfile", path(&certs.client_key))]);
        assert_eq!(option, "kv.cacertfile");
        assert!(reason.contains(path(&certs.client_key)), "{reason}");

        // Somebody else's key for this certificate.
        let (option, reason) = option_error(
            url,
            &[
                ("kv.cacertfile", path(&certs.ca)),
                ("kv.certfile", path(&certs.client_cert)),
                ("kv.keyfile", path(&other.client_key)),
            ],
        );
        assert_eq!(option, "kv.keyfile");
        assert!(
            reason.contains(path(&other.client_key)) && reason.contains("does not go with"),
            "{reason}"
        );
        // The key's contents never show in an error.
        let key = std::fs::read_to_string(&other.client_key).expect("read the key");
        let body = key.lines().nth(1).expect("a PEM body line");
        assert!(!reason.contains(body), "{reason}");
    }
}

// ---------------------------------------------------------------- the real binary

/// `/leader` as text, and the proxy's log: neither may hold a secret.
fn assert_no_secret(proxy: &Proxy, secrets: &[&str]) {
    let leader = proxy.leader().to_string();
    let log = proxy.log();
    for secret in secrets {
        assert!(!leader.contains(secret), "/leader holds a secret: {leader}");
        assert!(!log.contains(secret), "the log holds a secret:\n{log}");
    }
}

#[test]
fn secrets_stay_out_of_the_log_and_leader() {
    let certs = Certs::new("store CA");
    let mut etcd = Etcd::start_tls(&certs, true);
    etcd.enable_auth(USER, PASSWORD, "swarm/");
    etcd.enable_v2_auth(USER, PASSWORD, "swarm");
    etcd.put_v2(V2_KEY, "127.0.0.1:2001", None);
    etcd.put_v3(V3_KEY, "127.0.0.1:2001");
    let key = std::fs::read_to_string(&certs.client_key).expect("read the key");
    let key_body = key.lines().nth(1).expect("a PEM body line").to_string();
    let secrets = [PASSWORD, WRONG_PASSWORD, key_body.as_str()];
    let tls = [
        format!("kv.cacertfile={}", path(&certs.ca)),
        format!("kv.certfile={}", path(&certs.client_cert)),
        format!("kv.keyfile={}", path(&certs.client_key)),
    ];
    for api in [Api::V2, Api::V3] {
        for password in [PASSWORD, WRONG_PASSWORD] {
            let user = format!("kv.username={USER}");
            let password_opt = format!("kv.password={password}");
            let url = api.url(&etcd);
            let mut args: Vec<&str> = Vec::new();
            for opt in tls.iter().chain([&user, &password_opt]) {
                args.extend(["--discovery-opt", opt.as_str()]);
            }
            args.push(&url);
            let proxy = Proxy::start(&args);
            if password == PASSWORD {
                proxy.wait_for_leader(WAIT, |l| l["leader"] == "127.0.0.1:2001");
            } else {
                proxy.wait_for_leader(WAIT, |l| l["state"] == "degraded");
                // The reason is logged, and says what went wrong.
                let deadline = Instant::now() + WAIT;
                while !proxy.log().contains("authentication") {
                    assert!(
                        Instant::now() < deadline,
                        "no authentication failure logged:\n{}",
                        proxy.log()
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            assert_no_secret(&proxy, &secrets);
        }
    }
}

#[test]
fn a_missing_tls_file_stops_the_proxy_naming_the_option_and_the_path() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let missing = dir.path().join("ca.pem");
    let out = std::process::Command::new(testkit::bins::leader_proxy())
        .args(["--listen", "127.0.0.1:0", "--admin", "off"])
        .arg("--discovery-opt")
        .arg(format!("kv.cacertfile={}", path(&missing)))
        .arg("etcdv3://127.0.0.1:2379/swarm")
        .output()
        .expect("run leader-proxy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad store option exits 2: {stderr}"
    );
    assert!(
        stderr.contains("kv.cacertfile") && stderr.contains(path(&missing)),
        "{stderr}"
    );
}
