//! Provisioning through TokenAdmin: the run's API keys and OAuth access tokens (some read-only),
//! the tokens to revoke mid-run, well-formed unknown and malformed tokens; revocation and cleanup.
//! Tokens stay in memory only: reports name token ids, never tokens.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use navis_auth::pb::{self, token_admin_client::TokenAdminClient};
use navis_auth::token::{self, TokenKind};
use tokio::task::JoinSet;
use tonic::Request;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::cli::uri;

/// How long one admin call may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin calls in flight while provisioning.
const PROVISION_PARALLEL: usize = 16;
/// Sizes of the unknown and malformed token lists.
const JUNK: usize = 1024;
/// Provisioned tokens are spread over this many subjects (revoked by subject at cleanup).
const SUBJECTS: usize = 8;

/// One provisioned token.
pub struct Tok {
    /// The plaintext: sent to the Validator, never printed.
    pub secret: Vec<u8>,
    /// Its public id: what reports name.
    pub id: String,
    /// Holds only `mcp:read`.
    pub read_only: bool,
}

impl fmt::Debug for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tok")
            .field("id", &self.id)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

/// Every token the traffic draws from.
pub struct Pool {
    /// API keys and OAuth access tokens that stay valid all run.
    pub good: Vec<Tok>,
    /// Indices into `good` of the read-only ones.
    pub read_only: Vec<u32>,
    /// Well-formed tokens nobody issued.
    pub unknown: Vec<Vec<u8>>,
    /// Tokens with a bad checksum.
    pub malformed: Vec<Vec<u8>>,
    /// Tokens revoked during the run, in revocation order.
    pub revocable: Vec<Tok>,
    /// Subjects the tokens were issued to (for cleanup).
    pub subjects: Vec<String>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("good", &self.good.len())
            .field("read_only", &self.read_only.len())
            .field("unknown", &self.unknown.len())
            .field("malformed", &self.malformed.len())
            .field("revocable", &self.revocable.len())
            .finish()
    }
}

/// Adds `authorization: Bearer <admin token>` to every admin call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A TokenAdmin client that authenticates.
pub type Admin = TokenAdminClient<InterceptedService<Channel, Bearer>>;

/// One HTTP/2 connection to `addr`, established now.
///
/// # Errors
/// When the address is bad or nothing answers within 5 s.
pub async fn connect(addr: &str) -> Result<Channel> {
    let u = uri(addr);
    Endpoint::from_shared(u.clone())
        .with_context(|| format!("bad address {addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("cannot reach {u} (is `navis-auth serve` running?)"))
}

/// The admin token: `--admin-token` / `NAVIS_AUTH_ADMIN_TOKEN`, else the file (`--admin-token-file`,
/// else `<data-dir>/admin-token`, as the `navis-auth` client commands do).
///
/// # Errors
/// When no token can be read.
pub fn admin_token(
    token: Option<&str>,
    file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
) -> Result<String> {
    if let Some(t) = token {
        return Ok(t.trim().to_owned());
    }
    let client = navis_auth::config::ClientArgs {
        addr: String::new(),
        admin_addr: String::new(),
        admin_token: None,
        admin_token_file: file,
        data_dir,
        tls_ca: None,
        tls_client_cert: None,
        tls_client_key: None,
        tls_server_name: None,
    };
    let path = client.admin_token_path();
    Ok(std::fs::read_to_string(&path)
        .with_context(|| {
            format!(
                "no admin token: pass --admin-token / NAVIS_AUTH_ADMIN_TOKEN, --admin-token-file, --data-dir, or make {} readable",
                path.display()
            )
        })?
        .trim()
        .to_owned())
}

/// An authenticated TokenAdmin client for `addr`.
///
/// # Errors
/// When the token cannot be sent as a header or the address cannot be reached.
pub async fn admin_client(addr: &str, token: &str) -> Result<Admin> {
    let value: MetadataValue<Ascii> = format!("Bearer {token}")
        .parse()
        .map_err(|_| anyhow!("the admin token holds characters that cannot be sent"))?;
    Ok(TokenAdminClient::with_interceptor(
        connect(addr).await?,
        Bearer(value),
    ))
}

/// What to provision.
#[derive(Clone, Debug)]
pub struct Plan {
    /// API keys.
    pub keys: u32,
    /// OAuth access tokens.
    pub oauth: u32,
    /// Percentage of `keys + oauth` that are read-only.
    pub read_only_percent: u32,
    /// Tokens to revoke during the run.
    pub revocable: u32,
    /// Names this run's subjects.
    pub run_id: String,
    /// Lifetime of every token: they expire by themselves even if cleanup does not happen.
    pub ttl: Duration,
}

#[derive(Clone, Copy)]
enum Job {
    Key { read_only: bool },
    Oauth { read_only: bool },
}

/// Creates the pool through `admin`.
///
/// # Errors
/// The first admin call that fails.
pub async fn provision(admin: &Admin, plan: &Plan) -> Result<Pool> {
    let total = plan.keys + plan.oauth;
    let pct = u64::from(plan.read_only_percent);
    // Read-only tokens spread evenly, exactly total * pct / 100 of them.
    let ro = |i: u32| (u64::from(i) * pct) / 100 != (u64::from(i + 1) * pct) / 100;
    let subjects: Vec<String> = (0..SUBJECTS)
        .map(|i| format!("load-{}-{i}", plan.run_id))
        .chain(std::iter::once(format!("load-{}-revoked", plan.run_id)))
        .collect();
    let jobs: Vec<(Job, String)> = (0..total)
        .map(|i| {
            let job = if i < plan.keys {
                Job::Key { read_only: ro(i) }
            } else {
                Job::Oauth { read_only: ro(i) }
            };
            (job, subjects[i as usize % SUBJECTS].clone())
        })
        .collect();
    let good = create_all(admin, jobs, plan.ttl).await?;
    let revocable_jobs = (0..plan.revocable)
        .map(|i| {
            let job = if i % 2 == 0 {
                Job::Key { read_only: false }
            } else {
                Job::Oauth { read_only: false }
            };
            (job, subjects[SUBJECTS].clone())
        })
        .collect();
    let revocable = create_all(admin, revocable_jobs, plan.ttl).await?;
    let read_only = good
        .iter()
        .enumerate()
        .filter(|(_, t)| t.read_only)
        .map(|(i, _)| i as u32)
        .collect();
    let mut unknown = Vec::with_capacity(JUNK);
    for i in 0..JUNK {
        let kind = if i % 2 == 0 {
            TokenKind::ApiKey
        } else {
            TokenKind::OAuthAccess
        };
        let t = token::generate(kind).map_err(|e| anyhow!("OS random source: {e}"))?;
        unknown.push(t.into_exposed().into_bytes());
    }
    let malformed = unknown
        .iter()
        .enumerate()
        .map(|(i, t)| corrupt(t, i))
        .collect();
    Ok(Pool {
        good,
        read_only,
        unknown,
        malformed,
        revocable,
        subjects,
    })
}

/// A copy of a well-formed token with one character after the prefix changed: the CRC32 catches
/// every single-character change, so the checksum no longer matches.
fn corrupt(t: &[u8], salt: usize) -> Vec<u8> {
    let mut t = t.to_vec();
    let pos = 5 + (salt * 7) % (t.len() - 5);
    t[pos] = if t[pos] == b'x' { b'y' } else { b'x' };
    t
}

async fn create_all(admin: &Admin, jobs: Vec<(Job, String)>, ttl: Duration) -> Result<Vec<Tok>> {
    let ttl_seconds = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let mut out: Vec<Option<Tok>> = (0..jobs.len()).map(|_| None).collect();
    let mut set = JoinSet::new();
    let mut jobs = jobs.into_iter().enumerate();
    loop {
        while set.len() < PROVISION_PARALLEL {
            let Some((i, (job, subject))) = jobs.next() else {
                break;
            };
            let mut a = admin.clone();
            set.spawn(async move { (i, create_one(&mut a, job, subject, ttl_seconds).await) });
        }
        let Some(done) = set.join_next().await else {
            break;
        };
        let (i, tok) = done.context("provisioning task")?;
        out[i] = Some(tok?);
    }
    Ok(out.into_iter().flatten().collect())
}

async fn create_one(a: &mut Admin, job: Job, subject: String, ttl_seconds: i64) -> Result<Tok> {
    let scopes = |read_only: bool| {
        if read_only {
            vec!["mcp:read".to_owned()]
        } else {
            vec!["mcp:read".to_owned(), "mcp:write".to_owned()]
        }
    };
    match job {
        Job::Key { read_only } => {
            let r = tokio::time::timeout(
                ADMIN_TIMEOUT,
                a.create_api_key(pb::CreateApiKeyRequest {
                    subject,
                    scopes: scopes(read_only),
                    name: "navis-auth-load".into(),
                    ttl_seconds,
                    resource: String::new(),
                }),
            )
            .await
            .map_err(|_| anyhow!("CreateApiKey timed out"))?
            .map_err(|s| anyhow!("CreateApiKey: {:?}: {}", s.code(), s.message()))?
            .into_inner();
            Ok(Tok {
                secret: r.api_key.into_bytes(),
                id: r.info.map(|i| i.token_id).unwrap_or_default(),
                read_only,
            })
        }
        Job::Oauth { read_only } => {
            let r = tokio::time::timeout(
                ADMIN_TIMEOUT,
                a.issue_o_auth_tokens(pb::IssueOAuthTokensRequest {
                    subject,
                    client_id: "navis-auth-load".into(),
                    scopes: scopes(read_only),
                    resource: String::new(),
                    access_ttl_seconds: ttl_seconds,
                    refresh_ttl_seconds: ttl_seconds,
                }),
            )
            .await
            .map_err(|_| anyhow!("IssueOAuthTokens timed out"))?
            .map_err(|s| anyhow!("IssueOAuthTokens: {:?}: {}", s.code(), s.message()))?
            .into_inner();
            Ok(Tok {
                secret: r.access_token.into_bytes(),
                id: r.access.map(|i| i.token_id).unwrap_or_default(),
                read_only,
            })
        }
    }
}

/// Revokes one token by id.
///
/// # Errors
/// The call's status, or `DEADLINE_EXCEEDED` after 10 s.
pub async fn revoke(admin: &mut Admin, token_id: &str) -> Result<(), tonic::Status> {
    let call = admin.revoke_token(pb::RevokeTokenRequest {
        target: Some(pb::revoke_token_request::Target::TokenId(
            token_id.to_owned(),
        )),
    });
    match tokio::time::timeout(ADMIN_TIMEOUT, call).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(tonic::Status::deadline_exceeded("RevokeToken timed out")),
    }
}

/// Revokes every token of the run's subjects; returns how many were revoked.
pub async fn cleanup(admin: &mut Admin, pool: &Pool) -> Result<u32> {
    let mut n = 0;
    for subject in &pool.subjects {
        let call = admin.revoke_subject(pb::RevokeSubjectRequest {
            subject: subject.clone(),
        });
        let r = tokio::time::timeout(ADMIN_TIMEOUT, call)
            .await
            .map_err(|_| anyhow!("RevokeSubject timed out"))?
            .map_err(|s| anyhow!("RevokeSubject: {:?}: {}", s.code(), s.message()))?;
        n += r.into_inner().revoked;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupted_tokens_fail_the_checksum() {
        for i in 0..200 {
            let t = token::generate(TokenKind::ApiKey)
                .expect("random")
                .into_exposed()
                .into_bytes();
            let bad = corrupt(&t, i);
            assert_ne!(bad, t);
            assert_eq!(&bad[..5], &t[..5]);
            assert!(
                token::parse(&bad).is_err(),
                "a corrupted token still parses"
            );
        }
    }
}
