//! TLS and mTLS on both gRPC listeners, with certificates generated here (rcgen): TLS clients
//! (the library's, the tower client's, the CLI's) get answers; plaintext clients, clients
//! without a certificate and clients with a certificate from another CA are refused; bad TLS
//! configuration stops `serve` with one line naming the flag and the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use navis_auth::client::NavisAuth;
use navis_auth::pb::{self, Decision, validator_client::ValidatorClient};
use navis_auth::tls::ClientTls;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::helpers::{Bearer, TestServer, decision, req};

/// A CA and what it signed, as PEM.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("key");
        let pem = params.self_signed(&key).expect("self-signed").pem();
        Ca {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (IP addresses become IP SANs): (certificate PEM, key PEM).
    fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "navis-auth test");
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

/// Every file the tests need, in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
    client: (String, String),
    stranger: (String, String),
}

impl Pki {
    fn new() -> Pki {
        let ca = Ca::new("navis-auth test CA");
        let other = Ca::new("some other CA");
        let server = ca.leaf(
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = ca.leaf(&["api-server"], ExtendedKeyUsagePurpose::ClientAuth);
        let stranger = other.leaf(&["api-server"], ExtendedKeyUsagePurpose::ClientAuth);
        let pki = Pki {
            dir: tempfile::tempdir().expect("tempdir"),
            ca_pem: ca.pem.clone(),
            client,
            stranger,
        };
        pki.write("ca.crt", &ca.pem);
        pki.write("other-ca.crt", &other.pem);
        pki.write("server.crt", &server.0);
        pki.write("server.key", &server.1);
        pki.write("client.crt", &pki.client.0);
        pki.write("client.key", &pki.client.1);
        pki.write("stranger.crt", &pki.stranger.0);
        pki.write("stranger.key", &pki.stranger.1);
        pki
    }

    fn write(&self, name: &str, contents: &str) {
        std::fs::write(self.path(name), contents).expect("write pem");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().expect("utf-8 path").to_owned()
    }

    /// `serve` flags for TLS, and for mTLS when `mtls`.
    fn serve_flags(&self, mtls: bool) -> Vec<String> {
        let mut flags = vec![
            "--tls-cert".to_owned(),
            self.arg("server.crt"),
            "--tls-key".to_owned(),
            self.arg("server.key"),
        ];
        if mtls {
            flags.extend(["--tls-client-ca".to_owned(), self.arg("ca.crt")]);
        }
        flags
    }

    async fn start(&self, mtls: bool) -> TestServer {
        let flags = self.serve_flags(mtls);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        TestServer::start_with(&flags).await
    }

    /// Trusts the test CA, without a client certificate.
    fn trust(&self) -> ClientTls {
        ClientTls::new(self.ca_pem.as_bytes()).expect("ca")
    }

    /// Trusts the test CA and presents the CA-signed client certificate.
    fn client(&self) -> ClientTls {
        self.trust()
            .with_identity(self.client.0.as_bytes(), self.client.1.as_bytes())
            .expect("identity")
    }

    /// Trusts the test CA and presents a certificate from another CA.
    fn stranger(&self) -> ClientTls {
        self.trust()
            .with_identity(self.stranger.0.as_bytes(), self.stranger.1.as_bytes())
            .expect("identity")
    }
}

/// A TLS channel to `addr`; the error when the connection (or handshake) fails.
async fn tls_channel(addr: SocketAddr, tls: &ClientTls) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    let endpoint = tls.apply(endpoint).map_err(|e| e.to_string())?;
    endpoint.connect().await.map_err(|e| format!("{e:?}"))
}

/// Validates `token` over a fresh TLS connection: the decision, or why no answer came.
async fn validate_with(addr: SocketAddr, tls: &ClientTls, token: &str) -> Result<Decision, String> {
    let ch = tls_channel(addr, tls).await?;
    let r = ValidatorClient::new(ch)
        .validate(req(token, &[]))
        .await
        .map_err(|s| format!("{s:?}"))?;
    Ok(decision(r.get_ref()))
}

/// Creates an API key through the admin listener over TLS.
async fn create_key_with(
    s: &TestServer,
    tls: &ClientTls,
) -> Result<pb::CreateApiKeyResponse, String> {
    let ch = tls_channel(s.admin_addr, tls).await?;
    let bearer: MetadataValue<_> = format!("Bearer {}", s.admin_token).parse().unwrap();
    pb::token_admin_client::TokenAdminClient::with_interceptor(ch, Bearer::new(bearer))
        .create_api_key(pb::CreateApiKeyRequest {
            subject: "alice".into(),
            scopes: vec!["mcp:read".into()],
            name: "tls".into(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{s:?}"))
}

/// A plaintext gRPC call to `addr`: must not get an answer from a TLS listener.
async fn plaintext_validate(addr: SocketAddr) -> Result<(), String> {
    let ch = Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    ValidatorClient::new(ch)
        .validate(req("nops_x", &[]))
        .await
        .map(|_| ())
        .map_err(|s| format!("{s:?}"))
}

#[tokio::test]
async fn validate_and_admin_work_over_tls() {
    let pki = Pki::new();
    let s = pki.start(false).await;
    s.wait_ready().await;
    // The admin listener is TLS too.
    let key = create_key_with(&s, &pki.trust())
        .await
        .expect("create over TLS")
        .api_key;
    assert_eq!(
        validate_with(s.validator_addr, &pki.trust(), &key).await,
        Ok(Decision::Allow)
    );
    // The library client (and so NavisAuthLayer) over TLS, by IP address and by name.
    for addr in [
        format!("https://{}", s.validator_addr),
        format!("https://localhost:{}", s.validator_addr.port()),
    ] {
        let auth = NavisAuth::connect_lazy_tls(&addr, &pki.trust()).expect("client");
        let r = auth.validate(key.as_bytes(), &[]).await.expect("answer");
        assert_eq!(decision(&r), Decision::Allow, "{addr}");
    }
    // An https:// address without TLS settings, or TLS settings for http://, is refused clearly.
    let e = NavisAuth::connect_lazy(&format!("https://{}", s.validator_addr)).unwrap_err();
    assert!(e.to_string().contains("connect_lazy_tls"), "{e}");
    let e = NavisAuth::connect_lazy_tls(&format!("http://{}", s.validator_addr), &pki.trust())
        .unwrap_err();
    assert!(e.to_string().contains("https://"), "{e}");
    // The HTTP listener stays plaintext.
    assert_eq!(s.http_get("/healthz").await.0, 200);
    // So with TLS, introspection does not take the admin token over it: off without its own
    // credential file.
    let auth = format!("Bearer {}", s.admin_token);
    let (code, _, body) = crate::helpers::http_post_at(
        s.http_addr,
        "/oauth/introspect",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Authorization", &auth),
        ],
        "token=x",
    )
    .await;
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("--introspection-token-file"), "{body}");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn plaintext_and_untrusting_clients_get_no_answer() {
    let pki = Pki::new();
    let s = pki.start(false).await;
    for addr in [s.validator_addr, s.admin_addr] {
        let e = plaintext_validate(addr).await.unwrap_err();
        // The server reads garbage where a ClientHello should be and hangs up: a transport
        // error (broken pipe or reset), never a gRPC answer.
        assert!(e.to_lowercase().contains("transport"), "{e}");
    }
    // A client that does not trust the server's CA refuses the server.
    let other =
        ClientTls::new(std::fs::read(pki.path("other-ca.crt")).unwrap().as_slice()).expect("ca");
    let e = validate_with(s.validator_addr, &other, "nops_x")
        .await
        .unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");
    // A client certificate is not needed without --tls-client-ca, and is ignored if sent.
    assert_eq!(
        validate_with(s.validator_addr, &pki.client(), "nops_x").await,
        Ok(Decision::Unauthenticated)
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn mtls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    let pki = Pki::new();
    let s = pki.start(true).await;
    s.wait_ready().await;
    let key = create_key_with(&s, &pki.client())
        .await
        .expect("create with a client certificate")
        .api_key;
    assert_eq!(
        validate_with(s.validator_addr, &pki.client(), &key).await,
        Ok(Decision::Allow)
    );
    let auth = NavisAuth::connect_lazy_tls(&format!("https://{}", s.validator_addr), &pki.client())
        .expect("client");
    let r = auth.validate(key.as_bytes(), &[]).await.expect("answer");
    assert_eq!(decision(&r), Decision::Allow);

    for addr in [s.validator_addr, s.admin_addr] {
        // No certificate: refused in the handshake.
        let e = validate_with(addr, &pki.trust(), &key).await.unwrap_err();
        assert!(e.contains("CertificateRequired"), "{e}");
        // A certificate from another CA: refused.
        let e = validate_with(addr, &pki.stranger(), &key)
            .await
            .unwrap_err();
        assert!(e.contains("UnknownCA"), "{e}");
        // Plaintext: refused.
        let e = plaintext_validate(addr).await.unwrap_err();
        assert!(e.to_lowercase().contains("transport"), "{e}");
    }
    assert!(create_key_with(&s, &pki.trust()).await.is_err());
    assert!(create_key_with(&s, &pki.stranger()).await.is_err());
    s.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_drains_open_tls_connections_within_the_grace_period() {
    let pki = Pki::new();
    let s = pki.start(true).await;
    let key = create_key_with(&s, &pki.client()).await.unwrap().api_key;
    let ch = tls_channel(s.validator_addr, &pki.client()).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ValidateRequest>(4);
    tx.send(req(&key, &[])).await.unwrap();
    let mut answers = ValidatorClient::new(ch)
        .validate_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = answers.message().await.unwrap().unwrap();
    assert_eq!(decision(&first), Decision::Allow);
    let addr = s.validator_addr;
    let t = Instant::now();
    s.stop().await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "drain is bounded");
    assert!(validate_with(addr, &pki.client(), &key).await.is_err());
    drop(tx);
}

// The real binary: the CLI over (m)TLS, and configuration errors.

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_navis-auth"));
    for (k, _) in std::env::vars() {
        if k.starts_with("NAVIS_AUTH_") {
            c.env_remove(k);
        }
    }
    c
}

fn cli(s: &TestServer, args: &[&str], addrs: (&str, &str), tls: &[&str]) -> Output {
    bin()
        .args(args)
        .args(["--addr", addrs.0, "--admin-addr", addrs.1])
        .args(["--data-dir", s.data_dir.to_str().unwrap()])
        .args(tls)
        .output()
        .expect("run navis-auth")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_connects_with_tls_ca_and_client_certificate() {
    let pki = Pki::new();
    let s = pki.start(true).await;
    let (v, a) = (s.validator_addr.to_string(), s.admin_addr.to_string());
    let (ca, cert, key) = (
        pki.arg("ca.crt"),
        pki.arg("client.crt"),
        pki.arg("client.key"),
    );
    let mtls = [
        "--tls-ca",
        &ca,
        "--tls-client-cert",
        &cert,
        "--tls-client-key",
        &key,
    ];
    let create = ["keys", "create", "--subject", "bob", "--scopes", "mcp:read"];

    // host:port with --tls-ca means https.
    let created = cli(&s, &create, (&v, &a), &mtls);
    assert!(created.status.success(), "{}", stderr(&created));
    let token = String::from_utf8_lossy(&created.stdout).trim().to_owned();
    let ok = cli(&s, &["validate", &token], (&v, &a), &mtls);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    // An explicit https:// works the same.
    let (hv, ha) = (format!("https://{v}"), format!("https://{a}"));
    let ok = cli(&s, &["validate", &token], (&hv, &ha), &mtls);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));

    // --tls-server-name replaces the address's host in the certificate check.
    let named = cli(
        &s,
        &["validate", &token],
        (&v, &a),
        &[&mtls[..], &["--tls-server-name", "localhost"]].concat(),
    );
    assert_eq!(named.status.code(), Some(0), "{}", stderr(&named));
    let misnamed = cli(
        &s,
        &["validate", &token],
        (&v, &a),
        &[&mtls[..], &["--tls-server-name", "elsewhere.example"]].concat(),
    );
    assert!(!misnamed.status.success());
    assert!(
        stderr(&misnamed).contains("not valid for name"),
        "{}",
        stderr(&misnamed)
    );

    // Without a client certificate: refused, one line on stderr.
    let refused = cli(&s, &create, (&v, &a), &["--tls-ca", &ca]);
    assert!(!refused.status.success());
    assert_eq!(
        stderr(&refused).trim_end().lines().count(),
        1,
        "{refused:?}"
    );
    // Plaintext: refused.
    let plain = cli(&s, &create, (&v, &a), &[]);
    assert!(!plain.status.success());
    assert!(stderr(&plain).contains("--tls-ca"), "{}", stderr(&plain));
    // TLS settings with an http:// address, or https:// without a CA: a clear error.
    let (pv, pa) = (format!("http://{v}"), format!("http://{a}"));
    let mixed = cli(&s, &create, (&pv, &pa), &mtls);
    assert!(!mixed.status.success());
    assert!(stderr(&mixed).contains("https://"), "{}", stderr(&mixed));
    let no_ca = cli(&s, &create, (&hv, &ha), &[]);
    assert!(!no_ca.status.success());
    assert!(stderr(&no_ca).contains("--tls-ca"), "{}", stderr(&no_ca));
    // A client certificate without its key is a usage error naming the missing flag.
    let half = cli(
        &s,
        &create,
        (&v, &a),
        &["--tls-ca", &ca, "--tls-client-cert", &cert],
    );
    assert_eq!(half.status.code(), Some(2));
    assert!(
        stderr(&half).contains("--tls-client-key"),
        "{}",
        stderr(&half)
    );
    s.stop().await.unwrap();
}

/// Runs `serve` with TLS `flags` on free ports: it must exit at once, nonzero, with one line.
fn serve_fails(flags: &[&str], data_dir: &Path) -> (Option<i32>, String) {
    let mut child = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen"])
        .args(["127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(flags)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn navis-auth");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve {flags:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    // TLS files are read before anything else starts: nothing is logged before the error.
    let err = stderr(&out);
    let lines: Vec<&str> = err.trim_end().lines().collect();
    assert_eq!(lines.len(), 1, "{flags:?}: {err}");
    assert!(lines[0].starts_with("navis-auth: "), "{flags:?}: {err}");
    (out.status.code(), lines[0].to_owned())
}

#[test]
fn tls_configuration_errors_stop_serve_with_one_line_naming_the_flag_and_file() {
    let pki = Pki::new();
    let data = tempfile::tempdir().unwrap();
    let (crt, key, ca) = (
        pki.arg("server.crt"),
        pki.arg("server.key"),
        pki.arg("ca.crt"),
    );
    // Flags that go together: a usage error, exit 2.
    for (flags, missing) in [
        (vec!["--tls-cert", &crt], "--tls-key"),
        (vec!["--tls-key", &key], "--tls-cert"),
        (vec!["--tls-client-ca", &ca], "--tls-cert"),
    ] {
        let (code, line) = serve_fails(&flags, data.path());
        assert_eq!(code, Some(2), "{flags:?}: {line}");
        assert!(line.contains(missing), "{flags:?}: {line}");
    }

    // Files that cannot be used: exit nonzero, naming the flag and the file.
    let missing = pki.arg("missing.crt");
    pki.write("garbage.pem", "this is not PEM\n");
    // A key whose body is not base64: the error must not quote it.
    pki.write(
        "bad.key",
        "-----BEGIN PRIVATE KEY-----\nSECRET!SECRET!SECRET\n-----END PRIVATE KEY-----\n",
    );
    let (garbage, bad_key) = (pki.arg("garbage.pem"), pki.arg("bad.key"));
    let other_key = pki.arg("client.key");
    for (flags, flag, file) in [
        (
            vec!["--tls-cert", &missing, "--tls-key", &key],
            "--tls-cert",
            &missing,
        ),
        (
            vec!["--tls-cert", &garbage, "--tls-key", &key],
            "--tls-cert",
            &garbage,
        ),
        // The key given as the certificate.
        (
            vec!["--tls-cert", &key, "--tls-key", &key],
            "--tls-cert",
            &key,
        ),
        (
            vec!["--tls-cert", &crt, "--tls-key", &garbage],
            "--tls-key",
            &garbage,
        ),
        (
            vec!["--tls-cert", &crt, "--tls-key", &bad_key],
            "--tls-key",
            &bad_key,
        ),
        // A key that belongs to another certificate.
        (
            vec!["--tls-cert", &crt, "--tls-key", &other_key],
            "--tls-key",
            &other_key,
        ),
        (
            vec![
                "--tls-cert",
                &crt,
                "--tls-key",
                &key,
                "--tls-client-ca",
                &garbage,
            ],
            "--tls-client-ca",
            &garbage,
        ),
    ] {
        let (code, line) = serve_fails(&flags, data.path());
        assert!(code.is_some_and(|c| c != 0), "{flags:?}: {line}");
        assert!(
            line.contains(&format!("{flag} {file}")),
            "{flags:?}: {line}"
        );
        assert!(!line.contains("SECRET"), "{line}");
        assert!(!line.contains("panicked"), "{line}");
    }
}
