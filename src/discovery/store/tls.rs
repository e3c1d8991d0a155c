//! TLS to the store, in `swarm manage`'s `--discovery-opt` syntax: `kv.cacertfile` (the CA
//! that signed the store's certificate), `kv.certfile` and `kv.keyfile` (a client
//! certificate, for stores that require one).
//!
//! The files are read and checked once, when the source is built: a wrong path, a file that
//! holds no certificate, or a key that does not belong to the certificate stops the proxy at
//! start-up with the option and the path named, instead of surfacing later as a handshake
//! failure on every reconnect. The CA given is the only root trusted for the store: a store
//! certificate signed by anybody else (a public CA included) is refused.
//!
//! The same checked files then configure both HTTP stacks the backends use: reqwest (etcd
//! v2, Consul) through [`StoreTls::reqwest_builder`], and etcd-client (etcd v3) through
//! [`StoreTls::etcd_tls_options`]. Both run rustls with ring.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::CertificateDer;
use rustls::ClientConfig;

use crate::discovery::SourceError;
use crate::tls::pem;

/// The CA that signed the store's certificate.
pub(crate) const CA_FILE: &str = "kv.cacertfile";
/// The client certificate (PEM; may carry its chain after it).
pub(crate) const CERT_FILE: &str = "kv.certfile";
/// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
pub(crate) const KEY_FILE: &str = "kv.keyfile";

/// The store TLS files, read and checked. Cloning is cheap.
///
/// Its `Debug` shows the paths, never the key.
#[derive(Clone)]
pub(crate) struct StoreTls {
    /// Built once from the files: the CA as the only root, and the client identity if any.
    config: Arc<ClientConfig>,
    /// The files as read, for etcd-client, which takes PEM (and parses it the same way).
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    ca_path: String,
    cert_path: Option<String>,
}

impl fmt::Debug for StoreTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreTls")
            .field(CA_FILE, &self.ca_path)
            .field(CERT_FILE, &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl StoreTls {
    /// Reads `kv.cacertfile`, `kv.certfile` and `kv.keyfile` from `--discovery-opt` values.
    ///
    /// `Ok(None)`: none of them is given, the store is spoken to in clear text. Any of them
    /// turns TLS on, and then `kv.cacertfile` is required (it is the only root trusted), and
    /// `kv.certfile` and `kv.keyfile` go together. Every error names the option, and the
    /// path when a file is at fault.
    pub(crate) fn from_options(
        options: &BTreeMap<String, String>,
    ) -> Result<Option<Self>, SourceError> {
        let path = |option: &str| -> Result<Option<&str>, SourceError> {
            match options.get(option).map(|p| p.trim()) {
                None => Ok(None),
                Some("") => Err(option_error(option, "needs a file path")),
                Some(path) => Ok(Some(path)),
            }
        };
        let (ca, cert, key) = (path(CA_FILE)?, path(CERT_FILE)?, path(KEY_FILE)?);
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((cert, key)),
            (Some(_), None) => {
                return Err(option_error(
                    CERT_FILE,
                    format!("needs {KEY_FILE} too (the client certificate's private key)"),
                ))
            }
            (None, Some(_)) => {
                return Err(option_error(
                    KEY_FILE,
                    format!("needs {CERT_FILE} too (the certificate of this private key)"),
                ))
            }
        };
        let ca = match (ca, identity) {
            (None, None) => return Ok(None),
            (Some(ca), _) => ca,
            (None, Some(_)) => {
                return Err(option_error(
                    CERT_FILE,
                    format!(
                        "needs {CA_FILE} too: the CA that signed the store's certificate, the \
                         only one trusted for the store"
                    ),
                ))
            }
        };

        let ca_pem = read(CA_FILE, ca)?;
        let roots = pem::roots(certificates(CA_FILE, ca, &ca_pem)?)
            .map_err(|reason| file_error(CA_FILE, ca, reason))?;

        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| option_error(CA_FILE, format!("no TLS version available: {e}")))?
            .with_root_certificates(roots);
        let (config, identity) = match identity {
            None => (builder.with_no_client_auth(), None),
            Some((cert, key)) => {
                let cert_pem = read(CERT_FILE, cert)?;
                let chain = certificates(CERT_FILE, cert, &cert_pem)?;
                let key_pem = read(KEY_FILE, key)?;
                let private_key = pem::private_key(&key_pem)
                    .map_err(|reason| file_error(KEY_FILE, key, reason))?;
                pem::check_pair(&chain, &private_key).map_err(|e| {
                    option_error(
                        KEY_FILE,
                        format!("{key} does not go with {CERT_FILE} {cert}: {e}"),
                    )
                })?;
                let config = builder
                    .with_client_auth_cert(chain, private_key)
                    .map_err(|e| option_error(KEY_FILE, format!("{key}: {e}")))?;
                (config, Some((cert_pem, key_pem)))
            }
        };
        Ok(Some(Self {
            config: Arc::new(config),
            ca_pem,
            identity,
            ca_path: ca.to_string(),
            cert_path: cert.map(str::to_string),
        }))
    }

    /// Whether a client certificate (`kv.certfile`, `kv.keyfile`) is presented.
    pub(crate) fn has_client_certificate(&self) -> bool {
        self.identity.is_some()
    }

    /// A reqwest client builder that speaks TLS with the store's CA as its only root and
    /// presents the client certificate if one was given. Add timeouts and the like, then
    /// `build()`; use `https://` URLs.
    ///
    /// For any reqwest-based store backend (etcd v2 here; Consul may use it too). The TLS
    /// configuration is the one checked by [`Self::from_options`]; it offers no ALPN, so the
    /// client speaks HTTP/1.1 over it, which is what etcd v2 and Consul serve.
    pub(crate) fn reqwest_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder().use_preconfigured_tls((*self.config).clone())
    }

    /// etcd-client's TLS options: the store's CA as the only root, and the client identity if
    /// one was given. Use `https://` endpoints.
    pub(crate) fn etcd_tls_options(&self) -> etcd_client::TlsOptions {
        let options = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(&self.ca_pem));
        match &self.identity {
            Some((cert, key)) => options.identity(etcd_client::Identity::from_pem(cert, key)),
            None => options,
        }
    }
}

/// A store that requires a client certificate and was given none closes the connection at
/// once: with TLS 1.3 the handshake completes on the client's side before the server checks
/// the certificate, so depending on timing the client reports etcd's alert
/// (`BadCertificate`) or only a closed or broken connection. That second kind gets a hint.
///
/// For a session that failed before its first successful read, with TLS on and no client
/// certificate given.
pub(crate) fn hint_client_certificate(reason: String) -> String {
    let closed = ["connection closed", "broken pipe", "connection reset"]
        .iter()
        .any(|c| reason.to_lowercase().contains(c));
    if closed {
        format!(
            "{reason} (the store closed the TLS connection: if it requires client \
             certificates, give {CERT_FILE} and {KEY_FILE})"
        )
    } else {
        reason
    }
}

/// The one crypto provider compiled in, whatever process-wide default is (or is not) set.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn option_error(option: &str, reason: impl Into<String>) -> SourceError {
    SourceError::Option {
        option: option.to_string(),
        reason: reason.into(),
    }
}

/// `option`'s file at `path` cannot be used, for `reason`.
fn file_error(option: &str, path: &str, reason: String) -> SourceError {
    option_error(option, format!("{path}: {reason}"))
}

fn read(option: &str, path: &str) -> Result<Vec<u8>, SourceError> {
    pem::read(Path::new(path)).map_err(|reason| file_error(option, path, reason))
}

fn certificates(
    option: &str,
    path: &str,
    text: &[u8],
) -> Result<Vec<CertificateDer<'static>>, SourceError> {
    pem::certificates(text).map_err(|reason| file_error(option, path, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn option_of(result: Result<Option<StoreTls>, SourceError>) -> (String, String) {
        match result {
            Err(SourceError::Option { option, reason }) => (option, reason),
            Err(other) => panic!("expected an option error, got {other}"),
            Ok(tls) => panic!("expected an option error, got {tls:?}"),
        }
    }

    #[test]
    fn no_tls_options_no_tls() {
        let none = StoreTls::from_options(&options(&[("kv.username", "u")]));
        assert!(matches!(none, Ok(None)));
    }

    #[test]
    fn certificate_and_key_go_together() {
        let (option, reason) = option_of(StoreTls::from_options(&options(&[
            (CA_FILE, "/ca.pem"),
            (CERT_FILE, "/cert.pem"),
        ])));
        assert_eq!(option, CERT_FILE);
        assert!(reason.contains(KEY_FILE), "{reason}");
        let (option, reason) = option_of(StoreTls::from_options(&options(&[
            (CA_FILE, "/ca.pem"),
            (KEY_FILE, "/key.pem"),
        ])));
        assert_eq!(option, KEY_FILE);
        assert!(reason.contains(CERT_FILE), "{reason}");
        let (option, reason) = option_of(StoreTls::from_options(&options(&[
            (CERT_FILE, "/cert.pem"),
            (KEY_FILE, "/key.pem"),
        ])));
        assert_eq!(option, CERT_FILE);
        assert!(reason.contains(CA_FILE), "{reason}");
        let (option, _) = option_of(StoreTls::from_options(&options(&[(CA_FILE, " ")])));
        assert_eq!(option, CA_FILE);
    }

    #[test]
    fn a_closed_connection_gets_the_client_certificate_hint() {
        let hinted = hint_client_certificate("transport error: connection closed".into());
        assert!(
            hinted.contains(CERT_FILE) && hinted.contains(KEY_FILE),
            "{hinted}"
        );
        let refused = "tcp connect error: Connection refused (os error 111)";
        assert_eq!(hint_client_certificate(refused.into()), refused);
    }

    #[test]
    fn unreadable_and_wrong_files_are_named() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let missing = dir.path().join("nope.pem");
        let missing = missing.to_str().expect("a UTF-8 path");
        let (option, reason) = option_of(StoreTls::from_options(&options(&[(CA_FILE, missing)])));
        assert_eq!(option, CA_FILE);
        assert!(reason.contains(missing), "{reason}");

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").expect("write");
        let junk = junk.to_str().expect("a UTF-8 path");
        let (option, reason) = option_of(StoreTls::from_options(&options(&[(CA_FILE, junk)])));
        assert_eq!(option, CA_FILE);
        assert!(
            reason.contains(junk) && reason.contains("no PEM certificate"),
            "{reason}"
        );
    }
}
