//! The bind and TLS policy: which listeners may be opened without client certificates,
//! and which TLS options go together. These are the checks that keep an open Docker API
//! (root on every node) from being one flag away, so they live apart from the value
//! parsing in `resolve.rs`, with their own tests.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::env::env_name;
use super::error::{invalid, ConfigError};
use super::{ListenAddr, Mode};
use crate::discovery::{DiscoveryUrl, Scheme};
use crate::tls::ClientTls;

/// Refuses a listener anyone else can reach unless its clients are verified or the operator
/// said something else protects it (`--insecure-bind`). With `--tlsverify` every client shows
/// a certificate; in `--mode tcp` the proxy cannot see TLS, so only `--insecure-bind` ("my
/// managers enforce TLS") lets a listener out. The admin listener has no authentication at
/// all, so only `--insecure-bind` lets it out.
pub(super) fn check_bind(
    listen: &[ListenAddr],
    admin: Option<SocketAddr>,
    insecure_bind: bool,
    tlsverify: bool,
    mode: Mode,
) -> Result<(), ConfigError> {
    if insecure_bind {
        return Ok(());
    }
    let clients_verified = tlsverify && mode == Mode::Http;
    if !clients_verified {
        if let Some(addr) = listen.iter().find(|addr| !addr.is_local()) {
            return Err(ConfigError::InsecureBind(open_listener_message(addr, mode)));
        }
    }
    if let Some(addr) = admin.filter(|addr| !addr.ip().is_loopback()) {
        return Err(ConfigError::InsecureBind(format!(
            "refusing --admin {addr} (also LEADER_PROXY_ADMIN / admin): it is not a loopback \
             address and the admin listener has no authentication. Use 127.0.0.1, \
             --admin off, or pass --insecure-bind if something else protects this port"
        )));
    }
    Ok(())
}

/// The client TLS flags (`[--tlscert, --tlskey, --tlscacert]`, `--tlsverify`), checked to go
/// together. Their files are read once, by `server::build`.
pub(super) fn client_tls(
    [cert, key, ca]: [Option<String>; 3],
    verify: bool,
    mode: Mode,
) -> Result<Option<ClientTls>, ConfigError> {
    let flag = |long: &str| format!("--{long} (also {} / {long})", env_name(long));
    let path = |long: &str, value: Option<String>| match value {
        Some(v) if v.trim().is_empty() => Err(invalid(long, &v, "expected a file path")),
        v => Ok(v.map(|v| PathBuf::from(v.trim()))),
    };
    let (cert, key, ca) = (
        path("tlscert", cert)?,
        path("tlskey", key)?,
        path("tlscacert", ca)?,
    );
    if mode == Mode::Tcp && (cert.is_some() || key.is_some() || ca.is_some() || verify) {
        return Err(ConfigError::Tls(
            "--tlscert, --tlskey, --tlscacert and --tlsverify are for --mode http: in --mode tcp \
             the clients' TLS passes through to the managers, which check the certificates"
                .to_string(),
        ));
    }
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => ClientTls {
            cert,
            key,
            ca,
            verify,
        },
        (None, None) if verify => {
            return Err(ConfigError::Tls(format!(
                "{} needs --tlscert, --tlskey and --tlscacert",
                flag("tlsverify")
            )))
        }
        (None, None) if ca.is_some() => {
            return Err(ConfigError::Tls(format!(
                "{} needs --tlscert and --tlskey (TLS is on when both are given) and \
                 --tlsverify (to require client certificates signed by it)",
                flag("tlscacert")
            )))
        }
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(ConfigError::Tls(format!(
                "{} needs --tlskey, its private key",
                flag("tlscert")
            )))
        }
        (None, Some(_)) => {
            return Err(ConfigError::Tls(format!(
                "{} needs --tlscert, the certificate of that key",
                flag("tlskey")
            )))
        }
    };
    if tls.verify && tls.ca.is_none() {
        return Err(ConfigError::Tls(format!(
            "{} needs --tlscacert: the CA that client certificates must be signed by",
            flag("tlsverify")
        )));
    }
    Ok(Some(tls))
}

/// `--upstream-cert-path`: a directory in the `DOCKER_CERT_PATH` layout (read once, by
/// `server::build`).
pub(super) fn upstream_cert_path(
    value: Option<String>,
    mode: Mode,
    discovery: &DiscoveryUrl,
) -> Result<Option<PathBuf>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    if value.trim().is_empty() {
        return Err(invalid(
            "upstream-cert-path",
            &value,
            "expected a directory holding ca.pem, cert.pem and key.pem",
        ));
    }
    let probed = matches!(discovery.scheme(), Scheme::Swarm | Scheme::Static);
    if mode == Mode::Tcp && !probed {
        return Err(ConfigError::Tls(format!(
            "--upstream-cert-path (also {} / upstream-cert-path) is not used in --mode tcp with \
             {}://: the clients' TLS passes through to the managers (it is used by swarm:// \
             and static:// probes, and by --mode http)",
            env_name("upstream-cert-path"),
            discovery.scheme().as_str()
        )));
    }
    Ok(Some(PathBuf::from(value.trim())))
}

/// Why `addr` is refused and every way out, since the operator may want any of them.
fn open_listener_message(addr: &ListenAddr, mode: Mode) -> String {
    let mut fixes = vec![
        "listen on a loopback address (127.0.0.1:PORT)",
        "on a unix socket (unix:///PATH)",
    ];
    if mode == Mode::Http {
        fixes.push("require client certificates with --tlsverify");
    }
    fixes.push(
        "pass --insecure-bind if something else (a firewall, TLS enforced by the managers) \
         already protects this port",
    );
    let why = match mode {
        Mode::Http => "clients are not required to present certificates (--tlsverify)",
        Mode::Tcp => "in --mode tcp the proxy cannot check client certificates",
    };
    format!(
        "refusing --listen {addr} (also LEADER_PROXY_LISTEN / listen): it is not a loopback \
         address and {why}. The Docker API is root on every node: an open port is an open \
         cluster. Either {}",
        fixes.join(", or ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{err, file, load, load_env, path, URL};

    #[test]
    fn non_loopback_needs_insecure_bind() {
        for addr in ["0.0.0.0:0", "[::]:2375", "10.1.2.3:2375"] {
            let e = err(&["--listen", "127.0.0.1:0", "--listen", addr, URL]);
            assert!(e.starts_with("refusing --listen"), "{e}");
            assert!(e.contains("The Docker API is root on every node"), "{e}");
            assert!(e.contains("--insecure-bind"), "{e}");
            let s = load(&["--listen", addr, "--insecure-bind", URL]).unwrap();
            assert!(s.insecure_bind);
        }
        let e = err(&["--admin", "0.0.0.0:9375", URL]);
        assert!(e.starts_with("refusing --admin 0.0.0.0:9375"), "{e}");
        assert!(load(&["--admin", "0.0.0.0:9375", "--insecure-bind", URL]).is_ok());
        assert_eq!(
            load(&["--admin", "localhost:1", URL]).unwrap().admin,
            Some("127.0.0.1:1".parse().unwrap())
        );
    }

    #[test]
    fn client_tls_from_every_source_and_what_goes_together() {
        use crate::tls::test_files::Files;
        let f = Files::new();
        let (cert, key, ca) = (
            f.str("server.pem"),
            f.str("server-key.pem"),
            f.str("ca.pem"),
        );
        let s = load(&["--tlscert", &cert, "--tlskey", &key, URL]).unwrap();
        assert_eq!(
            s.tls,
            Some(ClientTls {
                cert: cert.clone().into(),
                key: key.clone().into(),
                ca: None,
                verify: false
            })
        );
        let s = load_env(
            &[URL],
            &[
                ("LEADER_PROXY_TLSCERT", &cert),
                ("LEADER_PROXY_TLSKEY", &key),
                ("LEADER_PROXY_TLSCACERT", &ca),
                ("LEADER_PROXY_TLSVERIFY", "1"),
            ],
        )
        .unwrap();
        assert_eq!(s.tls, Some(f.client(true)));
        let toml = file(&format!(
            "tlscert = {cert:?}\ntlskey = {key:?}\ntlscacert = {ca:?}\ntlsverify = true\n"
        ));
        let s = load(&["--config", path(&toml), URL]).unwrap();
        assert_eq!(s.tls, Some(f.client(true)));
        // --tlsverify lets a non-loopback listener out; TLS without it does not.
        assert!(load_env(
            &["--listen", "0.0.0.0:0", URL],
            &[
                ("LEADER_PROXY_TLSCERT", &cert),
                ("LEADER_PROXY_TLSKEY", &key),
                ("LEADER_PROXY_TLSCACERT", &ca),
                ("LEADER_PROXY_TLSVERIFY", "true"),
            ],
        )
        .is_ok());
        let e = err(&[
            "--listen",
            "0.0.0.0:0",
            "--tlscert",
            &cert,
            "--tlskey",
            &key,
            URL,
        ]);
        assert!(e.starts_with("refusing --listen 0.0.0.0:0"), "{e}");
        assert!(e.contains("--tlsverify"), "{e}");

        assert_eq!(
            err(&["--tlscert", &cert, URL]),
            "--tlscert (also LEADER_PROXY_TLSCERT / tlscert) needs --tlskey, its private key"
        );
        assert!(err(&["--tlskey", &key, URL]).starts_with("--tlskey (also"));
        assert_eq!(
            err(&["--tlscert", &cert, "--tlskey", &key, "--tlsverify", URL]),
            "--tlsverify (also LEADER_PROXY_TLSVERIFY / tlsverify) needs --tlscacert: the CA \
             that client certificates must be signed by"
        );
        assert!(err(&["--tlsverify", URL]).contains("needs --tlscert, --tlskey and --tlscacert"));
        assert!(err(&["--tlscacert", &ca, URL]).starts_with("--tlscacert (also"));
        // --tlscacert without --tlsverify: accepted and not used, as dockerd does.
        let s = load(&[
            "--tlscert",
            &cert,
            "--tlskey",
            &key,
            "--tlscacert",
            &ca,
            URL,
        ])
        .unwrap();
        assert!(!s.tls.unwrap().verify);
        let e = err(&["--mode", "tcp", "--tlscert", &cert, "--tlskey", &key, URL]);
        assert!(e.contains("are for --mode http"), "{e}");
    }

    #[test]
    fn upstream_cert_path_is_taken_where_it_is_used() {
        use crate::tls::test_files::Files;
        let f = Files::new();
        let dir = f.dir.path().display().to_string();
        let s = load(&["--upstream-cert-path", &dir, URL]).unwrap();
        assert_eq!(s.upstream_cert_path, Some(f.dir.path().to_path_buf()));
        let s = load_env(&[URL], &[("LEADER_PROXY_UPSTREAM_CERT_PATH", &dir)]).unwrap();
        assert_eq!(s.upstream_cert_path, Some(f.dir.path().to_path_buf()));
        // In --mode tcp only swarm:// and static:// probes use it.
        let e = err(&["--mode", "tcp", "--upstream-cert-path", &dir, URL]);
        assert!(e.contains("not used in --mode tcp with etcd://"), "{e}");
        let s = load(&[
            "--mode",
            "tcp",
            "--upstream-cert-path",
            &dir,
            "swarm://127.0.0.1:2376",
        ])
        .unwrap();
        assert_eq!(s.mode, Mode::Tcp);
    }

    #[test]
    fn mode_tcp() {
        let s = load(&["--mode", "tcp", URL]).unwrap();
        assert_eq!(s.mode, Mode::Tcp);
        let s = load_env(&[URL], &[("LEADER_PROXY_MODE", "TCP")]).unwrap();
        assert_eq!(s.mode, Mode::Tcp);
        // The proxy cannot see TLS: a non-loopback listener needs --insecure-bind.
        let e = err(&["--mode", "tcp", "--listen", "0.0.0.0:0", URL]);
        assert!(e.contains("in --mode tcp the proxy cannot check"), "{e}");
        assert!(load(&[
            "--mode",
            "tcp",
            "--listen",
            "0.0.0.0:0",
            "--insecure-bind",
            URL
        ])
        .is_ok());
    }
}
