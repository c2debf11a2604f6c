//! The client subcommands (`keys`, `oauth`, `revoke`, `validate`): talk to a running service over
//! gRPC and print what a person needs. Plaintext tokens are printed only where they are created.

use std::io::{BufRead, IsTerminal};
use std::time::Duration;

use anyhow::{Context, Result};
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

use crate::config::{ClientArgs, KeysCmd, OauthCmd, RevokeCmd};
use crate::pb::{self, token_admin_client::TokenAdminClient, validator_client::ValidatorClient};
use crate::tls::ClientTls;

/// Exit code of `validate` for a denial (ALLOW is 0).
pub const EXIT_DENIED: u8 = 1;

#[derive(Clone)]
struct AdminBearer(MetadataValue<tonic::metadata::Ascii>);

impl Interceptor for AdminBearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

type Admin =
    TokenAdminClient<tonic::service::interceptor::InterceptedService<Channel, AdminBearer>>;

/// Connects to `addr`: `https://` uses the `--tls-*` settings (which must be given), `http://`
/// is plaintext, and a bare `host:port` means https when `--tls-ca` is given, else http.
async fn connect(addr: &str, c: &ClientArgs) -> Result<Channel> {
    let tls = client_tls(c)?;
    let uri = match (addr.contains("://"), &tls) {
        (true, _) => addr.to_owned(),
        (false, Some(_)) => format!("https://{addr}"),
        (false, None) if is_loopback(addr) => format!("http://{addr}"),
        // Every call carries a secret (the admin token, or the token being validated): never
        // send it in plaintext off this host unless the address says so.
        (false, None) => anyhow::bail!(
            "{addr} is not a loopback address: pass --tls-ca (NAVIS_AUTH_TLS_CA) to connect over \
             TLS, or write http://{addr} to send in plaintext on purpose"
        ),
    };
    let mut endpoint = Endpoint::from_shared(uri.clone())
        .with_context(|| format!("bad address {addr}"))?
        .connect_timeout(Duration::from_secs(5));
    match (&tls, endpoint.uri().scheme_str() == Some("https")) {
        (Some(tls), _) => endpoint = tls.apply(endpoint)?,
        (None, true) => anyhow::bail!(
            "{uri} needs --tls-ca (NAVIS_AUTH_TLS_CA): the CA bundle that signed the server's certificate"
        ),
        (None, false) => {}
    }
    let hint = if tls.is_some() {
        "is `navis-auth serve` running with --tls-cert, signed by --tls-ca, for this host name?"
    } else {
        "is `navis-auth serve` running?"
    };
    endpoint.connect().await.map_err(|e| {
        let mut text = format!("cannot reach navis-auth at {uri} ({hint}): {e}");
        append_causes(&mut text, std::error::Error::source(&e));
        anyhow::anyhow!(text)
    })
}

/// Whether a scheme-less `host:port` names this machine.
fn is_loopback(addr: &str) -> bool {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h,
        None => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The client TLS settings from `--tls-ca`, `--tls-client-cert`, `--tls-client-key` and
/// `--tls-server-name`.
fn client_tls(c: &ClientArgs) -> Result<Option<ClientTls>> {
    let Some(ca) = &c.tls_ca else {
        return Ok(None);
    };
    let identity = c
        .tls_client_cert
        .as_deref()
        .zip(c.tls_client_key.as_deref());
    let tls = ClientTls::from_files(ca, identity)?;
    Ok(Some(match &c.tls_server_name {
        Some(name) => tls.with_server_name(name),
        None => tls,
    }))
}

async fn admin(c: &ClientArgs) -> Result<Admin> {
    let token = match &c.admin_token {
        Some(t) => t.trim().to_owned(),
        None => {
            let path = c.admin_token_path();
            std::fs::read_to_string(&path)
                .with_context(|| {
                    format!(
                        "no admin token: pass --admin-token / NAVIS_AUTH_ADMIN_TOKEN, or make {} readable",
                        path.display()
                    )
                })?
                .trim()
                .to_owned()
        }
    };
    let value: MetadataValue<_> = format!("Bearer {token}")
        .parse()
        .context("the admin token holds characters that cannot be sent")?;
    let ch = connect(&c.admin_addr, c).await?;
    Ok(TokenAdminClient::with_interceptor(ch, AdminBearer(value)))
}

/// Reads a secret from standard input when the argument is `-`.
fn secret_arg(arg: &str) -> Result<String> {
    if arg != "-" {
        return Ok(arg.to_owned());
    }
    if std::io::stdin().is_terminal() {
        eprint!("token: ");
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    // A call that failed in transport ("transport error") says why in its sources: e.g. the
    // server refused the TLS handshake after it completed on our side (TLS 1.3, mTLS).
    let mut text = format!("{:?}: {}", s.code(), s.message());
    append_causes(&mut text, std::error::Error::source(&s));
    // A plaintext HTTP/2 client talking to a TLS listener reads the server's TLS alert as a
    // malformed HTTP/2 frame: say what that usually means.
    // Depending on timing that shows as a protocol error, a closed connection or a broken pipe.
    let transport = [
        "h2 protocol error",
        "connection closed",
        "broken pipe",
        "reset",
    ]
    .iter()
    .any(|m| text.to_ascii_lowercase().contains(m));
    if matches!(
        s.code(),
        tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Cancelled
    ) && transport
    {
        text.push_str(
            " (if the server runs with --tls-cert, connect over TLS: pass --tls-ca, or an https:// address)",
        );
    }
    anyhow::anyhow!(text)
}

/// Appends `source` and its causes, skipping one that repeats what the text already ends with
/// (tonic's connect errors show their cause and also return it as their source).
fn append_causes(text: &mut String, mut source: Option<&(dyn std::error::Error + 'static)>) {
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
}

fn secs(d: Option<Duration>) -> i64 {
    d.map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `navis-auth keys …`
///
/// # Errors
/// When the service cannot be reached or refuses the call.
pub async fn keys(cmd: KeysCmd, c: &ClientArgs) -> Result<()> {
    let mut a = admin(c).await?;
    match cmd {
        KeysCmd::Create {
            subject,
            scopes,
            name,
            ttl,
            resource,
        } => {
            let r = a
                .create_api_key(pb::CreateApiKeyRequest {
                    subject,
                    scopes,
                    name,
                    ttl_seconds: secs(ttl),
                    resource,
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let info = r.info.unwrap_or_default();
            println!("{}", r.api_key);
            eprintln!(
                "created {} for {} with scopes {} (expires {}). The key above is shown once: store it now.",
                info.token_id,
                info.subject,
                info.scopes.join(" "),
                when(info.expires_at, "never"),
            );
        }
        KeysCmd::List {
            subject,
            client_id,
            all,
        } => {
            let mut page_token = String::new();
            let mut rows = Vec::new();
            loop {
                let r = a
                    .list_tokens(pb::ListTokensRequest {
                        subject: subject.clone(),
                        client_id: client_id.clone(),
                        include_inactive: all,
                        page_size: 1000,
                        page_token,
                    })
                    .await
                    .map_err(status_err)?
                    .into_inner();
                rows.extend(r.tokens);
                if r.next_page_token.is_empty() {
                    break;
                }
                page_token = r.next_page_token;
            }
            print_table(&rows);
        }
        KeysCmd::Revoke { token_id } => revoke_one(&mut a, token_id).await?,
        KeysCmd::Rotate { token_id, grace } => {
            let r = a
                .rotate_api_key(pb::RotateApiKeyRequest {
                    token_id,
                    grace_period_seconds: secs(Some(grace)),
                })
                .await
                .map_err(status_err)?
                .into_inner();
            let info = r.info.unwrap_or_default();
            println!("{}", r.api_key);
            eprintln!(
                "created {} to replace the old key, which stops working at {}. The key above is shown once.",
                info.token_id,
                when(r.old_expires_at, "never"),
            );
        }
    }
    Ok(())
}

async fn revoke_one(a: &mut Admin, token_id: String) -> Result<()> {
    let r = a
        .revoke_token(pb::RevokeTokenRequest {
            target: Some(pb::revoke_token_request::Target::TokenId(token_id.clone())),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    if r.revoked == 0 {
        println!("{token_id} was already revoked or expired");
    } else {
        println!("revoked {token_id}");
    }
    Ok(())
}

/// `navis-auth oauth …`
///
/// # Errors
/// When the service cannot be reached or refuses the call.
pub async fn oauth(cmd: OauthCmd, c: &ClientArgs) -> Result<()> {
    let mut a = admin(c).await?;
    let pair = match cmd {
        OauthCmd::Issue {
            subject,
            client_id,
            scopes,
            resource,
            access_ttl,
            refresh_ttl,
        } => a
            .issue_o_auth_tokens(pb::IssueOAuthTokensRequest {
                subject,
                client_id,
                scopes,
                resource,
                access_ttl_seconds: secs(access_ttl),
                refresh_ttl_seconds: secs(refresh_ttl),
            })
            .await
            .map_err(status_err)?
            .into_inner(),
        OauthCmd::Refresh {
            refresh_token,
            client_id,
            scopes,
        } => a
            .refresh_o_auth_tokens(pb::RefreshOAuthTokensRequest {
                refresh_token: secret_arg(&refresh_token)?,
                client_id,
                scopes,
            })
            .await
            .map_err(status_err)?
            .into_inner(),
    };
    let access = pair.access.unwrap_or_default();
    let refresh = pair.refresh.unwrap_or_default();
    println!("access_token={}", pair.access_token);
    println!("refresh_token={}", pair.refresh_token);
    eprintln!(
        "grant {}: access {} (expires {}), refresh {} (expires {}), scopes {}",
        access.grant_id,
        access.token_id,
        when(access.expires_at, "never"),
        refresh.token_id,
        when(refresh.expires_at, "never"),
        access.scopes.join(" "),
    );
    Ok(())
}

/// `navis-auth revoke …`
///
/// # Errors
/// When the service cannot be reached or refuses the call.
pub async fn revoke(cmd: RevokeCmd, c: &ClientArgs) -> Result<()> {
    let mut a = admin(c).await?;
    let r = match cmd {
        RevokeCmd::Token { token_id } => return revoke_one(&mut a, token_id).await,
        RevokeCmd::Grant { subject, client_id } => a
            .revoke_grant(pb::RevokeGrantRequest { subject, client_id })
            .await
            .map_err(status_err)?
            .into_inner(),
        RevokeCmd::Subject { subject } => a
            .revoke_subject(pb::RevokeSubjectRequest { subject })
            .await
            .map_err(status_err)?
            .into_inner(),
    };
    println!("revoked {} token(s)", r.revoked);
    for id in r.token_ids {
        println!("  {id}");
    }
    Ok(())
}

/// `navis-auth validate …`; returns the process exit code (0 = ALLOW).
///
/// # Errors
/// When the service cannot be reached or fails the call.
pub async fn validate(
    token: &str,
    scopes: Vec<String>,
    resource: String,
    c: &ClientArgs,
) -> Result<u8> {
    let token = secret_arg(token)?;
    let mut v = ValidatorClient::new(connect(&c.addr, c).await?);
    let required_scopes = scopes
        .iter()
        .flat_map(|s| s.split([' ', ',']))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let r = v
        .validate(pb::ValidateRequest {
            token: token.into_bytes(),
            required_scopes,
            resource,
            request_id: String::new(),
        })
        .await
        .map_err(status_err)?
        .into_inner();
    let decision = pb::Decision::try_from(r.decision).unwrap_or(pb::Decision::Unspecified);
    match decision {
        pb::Decision::Allow => {
            println!("ALLOW");
            println!("  subject:    {}", r.subject);
            println!("  scopes:     {}", r.scopes.join(" "));
            println!("  token_id:   {}", r.token_id);
            if !r.client_id.is_empty() {
                println!("  client_id:  {}", r.client_id);
            }
            println!("  expires_at: {}", when(r.expires_at, "never"));
            Ok(0)
        }
        other => {
            let (name, http) = match other {
                pb::Decision::Forbidden => ("FORBIDDEN", 403),
                _ => ("UNAUTHENTICATED", 401),
            };
            println!("{name} (HTTP {http})");
            if !r.error.is_empty() {
                println!("  error:             {}", r.error);
            }
            println!("  error_description: {}", r.error_description);
            println!("  WWW-Authenticate:  {}", r.www_authenticate);
            Ok(EXIT_DENIED)
        }
    }
}

fn print_table(rows: &[pb::TokenInfo]) {
    if rows.is_empty() {
        println!("no tokens");
        return;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    let header = [
        "TOKEN ID",
        "KIND",
        "NAME",
        "SCOPES",
        "CREATED",
        "EXPIRES",
        "LAST USED",
        "STATUS",
    ];
    let mut table: Vec<[String; 8]> = vec![header.map(str::to_owned)];
    for t in rows {
        let kind = match pb::TokenKind::try_from(t.kind) {
            Ok(pb::TokenKind::ApiKey) => "api_key",
            Ok(pb::TokenKind::OauthAccess) => "oauth_access",
            Ok(pb::TokenKind::OauthRefresh) => "oauth_refresh",
            _ => "?",
        };
        let status = if t.revoked_at != 0 {
            "revoked"
        } else if t.expires_at != 0 && now >= t.expires_at {
            "expired"
        } else if t.spent_at != 0 {
            "spent"
        } else {
            "active"
        };
        let name = if t.name.is_empty() {
            t.client_id.clone()
        } else {
            t.name.clone()
        };
        table.push([
            t.token_id.clone(),
            kind.to_owned(),
            if name.is_empty() { "-".into() } else { name },
            t.scopes.join(" "),
            when(t.created_at, "-"),
            when(t.expires_at, "never"),
            when(t.last_used_at, "never"),
            status.to_owned(),
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &table {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &table {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// Formats unix seconds as `YYYY-MM-DD HH:MM:SSZ` (UTC), or `zero` when 0.
pub fn when(unix: i64, zero: &str) -> String {
    if unix == 0 {
        return zero.to_owned();
    }
    let days = unix.div_euclid(86_400);
    let rem = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::{is_loopback, when};

    #[test]
    fn only_loopback_hosts_get_plaintext_without_asking() {
        for a in [
            "127.0.0.1:50051",
            "localhost:1",
            "LOCALHOST:1",
            "[::1]:50052",
            "127.8.0.1:9",
        ] {
            assert!(is_loopback(a), "{a}");
        }
        for a in [
            "10.0.0.1:50051",
            "navis-auth.internal:50051",
            "[2001:db8::1]:1",
            "0.0.0.0:1",
        ] {
            assert!(!is_loopback(a), "{a}");
        }
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(when(0, "never"), "never");
        assert_eq!(when(1, "-"), "1970-01-01 00:00:01Z");
        assert_eq!(when(1_796_413_491, "-"), "2026-12-04 19:44:51Z");
        assert_eq!(when(951_782_400, "-"), "2000-02-29 00:00:00Z");
    }
}
