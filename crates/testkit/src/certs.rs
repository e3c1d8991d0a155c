//! Test certificates, made fresh for each test with rcgen (ECDSA P-256): a CA, a server
//! certificate for `127.0.0.1`, `::1` and `localhost`, and client certificates, written as
//! PEM files into a temp dir that lives as long as the [`Certs`].
//!
//! Two `Certs` have two unrelated CAs: give a server one and its client the other to get a
//! server certificate the client does not trust.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

pub struct Certs {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The server certificate (`ServerAuth`, and `ClientAuth` too: etcd's own gateway dials
    /// etcd with the server certificate when client certificates are required).
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate (`ClientAuth`) with the common name `client`.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Certs {
    /// A new CA, named `name` (it shows in TLS errors), with a server and a client
    /// certificate.
    pub fn new(name: &str) -> Certs {
        let dir = tempfile::Builder::new()
            .prefix("leader-proxy-certs-")
            .tempdir()
            .expect("create a temp dir for certificates");
        let mut params = CertificateParams::new(Vec::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("a CA key");
        let cert = params.self_signed(&key).expect("a self-signed CA");
        let ca = dir.path().join("ca.pem");
        write(&ca, &cert.pem());
        let issuer = Issuer::new(params, key);
        let mut certs = Certs {
            dir,
            issuer,
            ca,
            server_cert: PathBuf::new(),
            server_key: PathBuf::new(),
            client_cert: PathBuf::new(),
            client_key: PathBuf::new(),
        };
        (certs.server_cert, certs.server_key) = certs.leaf(
            "server",
            "127.0.0.1",
            &["127.0.0.1", "::1", "localhost"],
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        (certs.client_cert, certs.client_key) = certs.client("client");
        certs
    }

    /// The proxy's flags for a `--tlsverify` listener: this CA's server certificate, and
    /// clients must present a certificate from this CA.
    pub fn tlsverify_args(&self) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        vec![
            "--tlscert".into(),
            path(&self.server_cert),
            "--tlskey".into(),
            path(&self.server_key),
            "--tlscacert".into(),
            path(&self.ca),
            "--tlsverify".into(),
        ]
    }

    /// The temp dir holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Another client certificate from this CA, with common name `cn` (etcd with
    /// `--client-cert-auth` and authentication enabled takes it as the user name). Returns
    /// the certificate and key paths.
    pub fn client(&self, cn: &str) -> (PathBuf, PathBuf) {
        self.leaf(
            &format!("client-{cn}"),
            cn,
            &[],
            &[ExtendedKeyUsagePurpose::ClientAuth],
        )
    }

    /// Another server certificate from this CA, for `names` (IP addresses become IP SANs,
    /// as for the default one), like the default one otherwise: assign it to `server_cert`
    /// and `server_key` for servers on other addresses. Returns the certificate and key
    /// paths.
    pub fn server(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        self.leaf(
            file,
            names.first().copied().unwrap_or("server"),
            names,
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// A directory in the `DOCKER_CERT_PATH` layout (`ca.pem`, `cert.pem`, `key.pem`) with
    /// the client certificate.
    pub fn docker_cert_path(&self) -> PathBuf {
        let dir = self.dir.path().join("docker");
        std::fs::create_dir_all(&dir).expect("create the cert path");
        for (from, to) in [
            (&self.ca, "ca.pem"),
            (&self.client_cert, "cert.pem"),
            (&self.client_key, "key.pem"),
        ] {
            std::fs::copy(from, dir.join(to)).expect("copy a certificate file");
        }
        dir
    }

    /// A `DOCKER_CERT_PATH` (`ca.pem`, `cert.pem`, `key.pem`) for a new client certificate
    /// with common name `cn`, signed by this CA: a second client identity.
    pub fn docker_cert_path_for(&self, cn: &str) -> PathBuf {
        let (cert, key) = self.client(cn);
        let dir = self.dir.path().join(format!("docker-{cn}"));
        std::fs::create_dir_all(&dir).expect("create the cert path");
        for (from, to) in [(&self.ca, "ca.pem"), (&cert, "cert.pem"), (&key, "key.pem")] {
            std::fs::copy(from, dir.join(to)).expect("copy a certificate file");
        }
        dir
    }

    fn leaf(
        &self,
        file: &str,
        cn: &str,
        names: &[&str],
        usages: &[ExtendedKeyUsagePurpose],
    ) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("certificate parameters");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages.to_vec();
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().expect("a key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a certificate signed by the CA");
        let cert_path = self.dir.path().join(format!("{file}.pem"));
        let key_path = self.dir.path().join(format!("{file}-key.pem"));
        write(&cert_path, &cert.pem());
        write(&key_path, &key.serialize_pem());
        (cert_path, key_path)
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
