//! TLS for the gRPC listeners and their clients: read the PEM files the `--tls-*` flags name,
//! check them at startup, and build tonic's rustls (ring) configurations. Errors name the flag
//! and the file, never key material; the HTTP listener is not covered (it stays plaintext).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// A client that opens a TCP connection and then sends nothing cannot hold a handshake slot for
/// longer than this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's TLS files, as given on the command line (read by [`server_config`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// `--tls-cert`: the certificate chain, leaf first.
    pub cert: PathBuf,
    /// `--tls-key`: the private key of the leaf.
    pub key: PathBuf,
    /// `--tls-client-ca`: when set, clients must present a certificate signed by one of these.
    pub client_ca: Option<PathBuf>,
}

/// A TLS file or PEM value that cannot be used: what it is (the flag and file, e.g.
/// `--tls-key /etc/tls/tls.key`) and why, never its contents.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct TlsError {
    what: String,
    reason: String,
}

impl TlsError {
    fn new(what: impl Into<String>, reason: impl Into<String>) -> Self {
        TlsError {
            what: what.into(),
            reason: reason.into(),
        }
    }

    fn file(flag: &str, path: &Path, reason: impl Into<String>) -> Self {
        TlsError::new(format!("{flag} {}", path.display()), reason)
    }
}

/// Reads a file, naming the flag when it cannot be read.
fn read(flag: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::file(flag, path, e.to_string()))
}

/// Checks PEM certificates (a chain or a CA bundle): at least one, all well formed.
fn check_certs(pem_bytes: &[u8]) -> Result<(), &'static str> {
    let mut count = 0usize;
    for item in CertificateDer::pem_slice_iter(pem_bytes) {
        item.map_err(|e| pem_problem(&e))?;
        count += 1;
    }
    if count == 0 {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
    }
    Ok(())
}

/// Checks a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC). The reason never quotes the key.
fn check_key(pem_bytes: &[u8]) -> Result<(), &'static str> {
    match PrivateKeyDer::from_pem_slice(pem_bytes) {
        Ok(_) => Ok(()),
        Err(pem::Error::NoItemsFound) => Err(
            "holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)",
        ),
        Err(e) => Err(pem_problem(&e)),
    }
}

/// A description of a PEM syntax error that quotes nothing from the file.
fn pem_problem(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "is not valid PEM: a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "is not valid PEM: a malformed BEGIN line",
        pem::Error::Base64Decode(_) => "is not valid PEM: a section is not valid base64",
        pem::Error::SectionTooLarge => "is not valid PEM: a section is too large",
        _ => "is not valid PEM",
    }
}

/// The error and its causes on one line (rustls' reason sits under tonic's "transport error").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// Reads and checks the server's files and builds the configuration both gRPC listeners use:
/// the certificate chain and key must parse and belong together, the client CA bundle (when
/// given) must hold at least one usable CA certificate, and then client certificates signed by
/// it are required (no anonymous clients).
///
/// # Errors
/// A [`TlsError`] naming the flag and the file at fault.
pub fn server_config(files: &ServerTlsFiles) -> Result<ServerTlsConfig, TlsError> {
    let cert = read("--tls-cert", &files.cert)?;
    check_certs(&cert).map_err(|r| TlsError::file("--tls-cert", &files.cert, r))?;
    let key = read("--tls-key", &files.key)?;
    check_key(&key).map_err(|r| TlsError::file("--tls-key", &files.key, r))?;
    let base = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .timeout(HANDSHAKE_TIMEOUT);
    // tonic builds the rustls config here, so a key that does not match the certificate (or a
    // certificate rustls cannot use) is found now rather than on the first handshake.
    Server::builder().tls_config(base.clone()).map_err(|e| {
        TlsError::file(
            "--tls-key",
            &files.key,
            format!(
                "cannot be used with the certificate in {}: {}",
                files.cert.display(),
                chain(&e)
            ),
        )
    })?;
    let Some(ca_path) = &files.client_ca else {
        return Ok(base);
    };
    let ca = read("--tls-client-ca", ca_path)?;
    check_certs(&ca).map_err(|r| TlsError::file("--tls-client-ca", ca_path, r))?;
    let with_ca = base
        .client_ca_root(Certificate::from_pem(ca))
        .client_auth_optional(false);
    Server::builder()
        .tls_config(with_ca.clone())
        .map_err(|e| TlsError::file("--tls-client-ca", ca_path, chain(&e)))?;
    Ok(with_ca)
}

/// How a client reaches navis-auth's TLS listeners: the CA bundle that signed the server's
/// certificate and, for a server started with `--tls-client-ca` (mTLS), the client's own
/// certificate and key. There is no fallback to the system's trust store: name the CA.
#[derive(Clone)]
pub struct ClientTls {
    config: ClientTlsConfig,
}

impl std::fmt::Debug for ClientTls {
    /// Opaque: the configuration may hold the client's private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts the CA certificates in `ca_pem` (PEM) to sign the server's certificate.
    ///
    /// # Errors
    /// When `ca_pem` holds no well-formed PEM certificate.
    pub fn new(ca_pem: &[u8]) -> Result<Self, TlsError> {
        check_certs(ca_pem).map_err(|r| TlsError::new("CA bundle", r))?;
        Ok(ClientTls::trusting(ca_pem))
    }

    fn trusting(ca_pem: &[u8]) -> Self {
        ClientTls {
            config: ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .timeout(HANDSHAKE_TIMEOUT),
        }
    }

    /// Presents this certificate chain and key (PEM) when the server asks for one (mTLS).
    ///
    /// # Errors
    /// When either holds no well-formed PEM item of its kind (the error never quotes the key).
    pub fn with_identity(self, cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        check_certs(cert_pem).map_err(|r| TlsError::new("client certificate", r))?;
        check_key(key_pem).map_err(|r| TlsError::new("client key", r))?;
        self.identity(cert_pem, key_pem)
            .map_err(|r| TlsError::new("client key", r))
    }

    /// Adds the identity, after checking with rustls that the key goes with the certificate.
    fn identity(self, cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, String> {
        let tls = ClientTls {
            config: self.config.identity(Identity::from_pem(cert_pem, key_pem)),
        };
        // tonic builds the rustls client config (and checks the pair) when it meets an endpoint.
        Endpoint::from_static("https://localhost")
            .tls_config(tls.config.clone())
            .map_err(|e| format!("does not go with the client certificate: {}", chain(&e)))?;
        Ok(tls)
    }

    /// Reads the files the CLI's `--tls-ca`, `--tls-client-cert` and `--tls-client-key` name.
    ///
    /// # Errors
    /// A [`TlsError`] naming the flag and the file at fault.
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self, TlsError> {
        let ca_pem = read("--tls-ca", ca)?;
        check_certs(&ca_pem).map_err(|r| TlsError::file("--tls-ca", ca, r))?;
        let tls = ClientTls::trusting(&ca_pem);
        let Some((cert, key)) = identity else {
            return Ok(tls);
        };
        let cert_pem = read("--tls-client-cert", cert)?;
        check_certs(&cert_pem).map_err(|r| TlsError::file("--tls-client-cert", cert, r))?;
        let key_pem = read("--tls-client-key", key)?;
        check_key(&key_pem).map_err(|r| TlsError::file("--tls-client-key", key, r))?;
        tls.identity(&cert_pem, &key_pem).map_err(|r| {
            TlsError::file(
                "--tls-client-key",
                key,
                r.replace("the client certificate", &format!("{}", cert.display())),
            )
        })
    }

    /// Verifies the server's certificate against this name instead of the address's host
    /// (e.g. when dialling an IP address the certificate does not list).
    #[must_use]
    pub fn with_server_name(self, name: &str) -> Self {
        ClientTls {
            config: self.config.domain_name(name),
        }
    }

    /// Applies these settings to `endpoint`, which must be an `https://` address.
    ///
    /// # Errors
    /// When the address is not `https://`, or tonic refuses the settings (a client key that does
    /// not match its certificate, a host that is not a valid server name).
    pub fn apply(&self, endpoint: Endpoint) -> Result<Endpoint, TlsError> {
        let address = endpoint.uri().to_string();
        if endpoint.uri().scheme_str() != Some("https") {
            return Err(TlsError::new(
                address,
                "TLS settings are given, so use an https:// address",
            ));
        }
        endpoint
            .tls_config(self.config.clone())
            .map_err(|e| TlsError::new(address, chain(&e)))
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::config::{Cli, Config, ServeArgs};

    fn env_of(cmd: &clap::Command, id: &str) -> Option<String> {
        cmd.get_arguments()
            .find(|a| a.get_id() == id)
            .and_then(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
    }

    #[test]
    fn flags_have_their_environment_twins() {
        let serve = ServeArgs::command();
        for (id, env) in [
            ("tls_cert", "NAVIS_AUTH_TLS_CERT"),
            ("tls_key", "NAVIS_AUTH_TLS_KEY"),
            ("tls_client_ca", "NAVIS_AUTH_TLS_CLIENT_CA"),
        ] {
            assert_eq!(env_of(&serve, id).as_deref(), Some(env), "{id}");
        }
        let cli = Cli::command();
        let keys = cli.find_subcommand("keys").expect("keys");
        for (id, env) in [
            ("tls_ca", "NAVIS_AUTH_TLS_CA"),
            ("tls_client_cert", "NAVIS_AUTH_TLS_CLIENT_CERT"),
            ("tls_client_key", "NAVIS_AUTH_TLS_CLIENT_KEY"),
            ("tls_server_name", "NAVIS_AUTH_TLS_SERVER_NAME"),
        ] {
            assert_eq!(env_of(keys, id).as_deref(), Some(env), "{id}");
        }
    }

    #[test]
    fn cert_and_key_go_together_and_client_ca_needs_both() {
        let c =
            Config::try_parse_from(["serve", "--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
        assert_eq!(
            c.tls,
            Some(ServerTlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into(),
                client_ca: None,
            })
        );
        assert!(Config::try_parse_from(["serve"]).unwrap().tls.is_none());
        for (args, missing) in [
            (&["--tls-cert", "c.pem"][..], "--tls-key"),
            (&["--tls-key", "k.pem"][..], "--tls-cert"),
            (&["--tls-client-ca", "ca.pem"][..], "--tls-cert"),
        ] {
            let e = Config::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
                .unwrap_err();
            assert!(e.to_string().contains(missing), "{args:?}: {e}");
        }
        let list = ["navis-auth", "keys", "list", "--subject", "a"];
        assert!(Cli::try_parse_from(list).is_ok());
        let e =
            Cli::try_parse_from(list.iter().chain(&["--tls-client-cert", "c.pem"])).unwrap_err();
        assert!(e.to_string().contains("--tls-client-key"), "{e}");
    }

    #[test]
    fn pem_problems_never_quote_the_file() {
        let key = b"-----BEGIN PRIVATE KEY-----\nSECRET!!\n-----END PRIVATE KEY-----\n";
        let e = check_key(key).unwrap_err();
        assert!(!e.contains("SECRET"), "{e}");
        assert!(check_key(b"").is_err());
        assert!(check_certs(b"-----BEGIN CERTIFICATE-----\nAAAA\n").is_err());
        assert!(check_certs(b"nothing here").is_err());
        assert!(ClientTls::new(b"nothing").is_err());
        let e = server_config(&ServerTlsFiles {
            cert: "/nonexistent/c.pem".into(),
            key: "/nonexistent/k.pem".into(),
            client_ca: None,
        })
        .unwrap_err();
        assert!(
            e.to_string().starts_with("--tls-cert /nonexistent/c.pem: "),
            "{e}"
        );
    }
}
