//! Token lifecycle (the business logic behind `TokenAdmin`): create and rotate API keys, issue and
//! refresh OAuth tokens with reuse detection, revoke, list. Checks its input, writes through the
//! store, and publishes every invalidation.

use crate::clock::Clock;
use crate::record::TokenRecord;
use crate::revocation::{Granularity, Revocations};
use crate::scope::ScopeSet;
use crate::store::{
    Changed, ListQuery, RefreshRefusal, RevokeTarget, SpendOutcome, Store, StoreError,
};
use crate::token::{self, SecretToken, TokenKind};

/// Default OAuth access token lifetime.
pub const DEFAULT_ACCESS_TTL: i64 = 3600;
/// Default OAuth refresh token lifetime (30 days).
pub const DEFAULT_REFRESH_TTL: i64 = 30 * 86_400;
/// Longest lifetime of anything (10 years).
pub const MAX_TTL: i64 = 10 * 365 * 86_400;
const MAX_ID_LEN: usize = 256;
const MAX_NAME_LEN: usize = 128;
const MAX_RESOURCE_LEN: usize = 2048;
const MAX_PAGE: usize = 1000;

/// Why an admin call failed. `grpc` maps each variant to one status code.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A field is missing or malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named token does not exist (or is not of the kind the call needs).
    #[error("{0}")]
    NotFound(&'static str),
    /// A refresh was refused: OAuth `invalid_grant` / `invalid_scope`.
    #[error("{0}")]
    Refresh(RefreshRefusal),
    /// A spent refresh token was presented again; its grant is now revoked.
    #[error("invalid_grant: refresh token reuse detected; the grant has been revoked")]
    RefreshReuse,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The OS random source failed.
    #[error("random source unavailable")]
    Random,
}

fn invalid(msg: impl Into<String>) -> AdminError {
    AdminError::InvalidArgument(msg.into())
}

impl From<getrandom::Error> for AdminError {
    fn from(_: getrandom::Error) -> Self {
        AdminError::Random
    }
}

/// A newly made token: the plaintext (shown once) and its record.
#[derive(Debug)]
pub struct Issued {
    /// The plaintext.
    pub secret: SecretToken,
    /// What was stored.
    pub record: TokenRecord,
}

/// An OAuth access + refresh pair.
#[derive(Debug)]
pub struct IssuedPair {
    /// The access token.
    pub access: Issued,
    /// The refresh token.
    pub refresh: Issued,
}

/// What `CreateApiKey` takes.
#[derive(Clone, Debug, Default)]
pub struct NewApiKey {
    /// Who the key acts for.
    pub subject: String,
    /// Scope strings (space- or comma-separated allowed).
    pub scopes: Vec<String>,
    /// A label.
    pub name: String,
    /// Seconds; 0 = never expires.
    pub ttl_seconds: i64,
    /// RFC 8707 resource; empty = any.
    pub resource: String,
}

/// What `IssueOAuthTokens` takes.
#[derive(Clone, Debug, Default)]
pub struct NewGrant {
    /// The user.
    pub subject: String,
    /// The OAuth client.
    pub client_id: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// RFC 8707 resource; empty = any.
    pub resource: String,
    /// 0 = [`DEFAULT_ACCESS_TTL`].
    pub access_ttl_seconds: i64,
    /// 0 = [`DEFAULT_REFRESH_TTL`].
    pub refresh_ttl_seconds: i64,
}

/// The token lifecycle service.
#[derive(Clone, Debug)]
pub struct TokenService {
    store: Store,
    revocations: Revocations,
    clock: Clock,
}

fn check_text(field: &str, v: &str, required: bool, max: usize) -> Result<(), AdminError> {
    if required && v.trim().is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    if v.len() > max {
        return Err(invalid(format!("{field} is longer than {max} bytes")));
    }
    if v.chars().any(char::is_control) {
        return Err(invalid(format!("{field} contains control characters")));
    }
    Ok(())
}

fn check_resource(v: &str) -> Result<(), AdminError> {
    if v.is_empty() {
        return Ok(());
    }
    let scheme_ok = v.split_once(':').is_some_and(|(s, rest)| {
        !rest.is_empty()
            && s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    if !scheme_ok
        || v.len() > MAX_RESOURCE_LEN
        || v.contains('#')
        || !v.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(invalid(
            "resource must be an absolute URI without a fragment (RFC 8707), at most 2048 bytes",
        ));
    }
    Ok(())
}

fn check_ttl(field: &str, v: i64) -> Result<(), AdminError> {
    if !(0..=MAX_TTL).contains(&v) {
        return Err(invalid(format!(
            "{field} must be between 0 and {MAX_TTL} seconds"
        )));
    }
    Ok(())
}

fn parse_scopes(scopes: &[String], required: bool) -> Result<ScopeSet, AdminError> {
    let set = ScopeSet::parse(scopes).map_err(|e| invalid(format!("scopes: {e}")))?;
    if required && set.is_empty() {
        return Err(invalid(
            "scopes: at least one scope is required (e.g. mcp:read)",
        ));
    }
    Ok(set)
}

impl TokenService {
    /// A service over `store`, publishing invalidations to `revocations`.
    pub fn new(store: Store, revocations: Revocations, clock: Clock) -> Self {
        TokenService {
            store,
            revocations,
            clock,
        }
    }

    fn new_record(
        &self,
        kind: TokenKind,
        template: &TokenRecord,
        ttl: i64,
    ) -> Result<Issued, AdminError> {
        let now = self.clock.now();
        let secret = token::generate(kind)?;
        let record = TokenRecord {
            hash: secret.hash(),
            token_id: token::random_id("tok_", 20)?,
            kind,
            created_at: now,
            expires_at: if ttl == 0 { 0 } else { now + ttl },
            last_used_at: 0,
            revoked_at: 0,
            spent_at: 0,
            ..template.clone()
        };
        Ok(Issued { secret, record })
    }

    fn template(
        subject: String,
        scopes: ScopeSet,
        client_id: String,
        resource: String,
    ) -> TokenRecord {
        TokenRecord {
            hash: token::TokenHash([0; 32]),
            token_id: String::new(),
            kind: TokenKind::ApiKey,
            subject,
            scopes,
            client_id,
            grant_id: String::new(),
            name: String::new(),
            resource,
            created_at: 0,
            expires_at: 0,
            last_used_at: 0,
            revoked_at: 0,
            spent_at: 0,
        }
    }

    /// Inserts, retrying once with fresh random values on the (astronomically unlikely) clash.
    async fn insert_fresh(
        &self,
        make: impl Fn() -> Result<Vec<Issued>, AdminError>,
    ) -> Result<Vec<Issued>, AdminError> {
        for attempt in 0..2 {
            let issued = make()?;
            match self
                .store
                .insert(issued.iter().map(|i| i.record.clone()).collect())
                .await
            {
                Ok(()) => return Ok(issued),
                Err(StoreError::Conflict(_)) if attempt == 0 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict("token id").into())
    }

    /// Creates an API key.
    ///
    /// # Errors
    /// [`AdminError::InvalidArgument`] for bad fields; store failures.
    pub async fn create_api_key(&self, req: NewApiKey) -> Result<Issued, AdminError> {
        check_text("subject", &req.subject, true, MAX_ID_LEN)?;
        check_text("name", &req.name, false, MAX_NAME_LEN)?;
        check_ttl("ttl_seconds", req.ttl_seconds)?;
        check_resource(&req.resource)?;
        let scopes = parse_scopes(&req.scopes, true)?;
        let mut template = Self::template(req.subject, scopes, String::new(), req.resource);
        template.name = req.name;
        let mut issued = self
            .insert_fresh(|| {
                Ok(vec![self.new_record(
                    TokenKind::ApiKey,
                    &template,
                    req.ttl_seconds,
                )?])
            })
            .await?;
        let key = issued.remove(0);
        tracing::info!(token_id = %key.record.token_id, subject = %key.record.subject, "api key created");
        Ok(key)
    }

    /// Rotates an API key: a new key with the same subject, scopes, name, resource and
    /// lifetime; the old one expires after `grace_seconds`.
    ///
    /// # Errors
    /// [`AdminError::NotFound`] when the key is unknown, not an API key, or no longer active.
    pub async fn rotate_api_key(
        &self,
        token_id: &str,
        grace_seconds: i64,
    ) -> Result<(Issued, i64), AdminError> {
        check_text("token_id", token_id, true, MAX_ID_LEN)?;
        check_ttl("grace_period_seconds", grace_seconds)?;
        let now = self.clock.now();
        let Some(old) = self.store.get_by_id(token_id.to_owned()).await? else {
            return Err(AdminError::NotFound("no such API key"));
        };
        if old.kind != TokenKind::ApiKey || !old.is_active(now) {
            return Err(AdminError::NotFound("no such active API key"));
        }
        let lifetime = if old.expires_at == 0 {
            0
        } else {
            old.expires_at - old.created_at
        };
        let new = self.new_record(TokenKind::ApiKey, &old, lifetime)?;
        let old_expires_at = now + grace_seconds;
        let rotated = self
            .store
            .rotate(
                old.token_id.clone(),
                old_expires_at,
                new.record.clone(),
                now,
            )
            .await
            .inspect_err(|e| self.revocations.publish(Granularity::Update, e.changed()))?;
        let Some(before) = rotated else {
            return Err(AdminError::NotFound("no such active API key"));
        };
        let effective = match before.expires_at {
            0 => old_expires_at,
            e => e.min(old_expires_at),
        };
        self.revocations.publish(
            Granularity::Update,
            &[Changed {
                hash: before.hash,
                token_id: before.token_id.clone(),
            }],
        );
        tracing::info!(old = %before.token_id, new = %new.record.token_id, grace_seconds, "api key rotated");
        Ok((new, effective))
    }

    /// Issues an OAuth access + refresh pair under a new grant.
    ///
    /// # Errors
    /// [`AdminError::InvalidArgument`] for bad fields; store failures.
    pub async fn issue_oauth(&self, req: NewGrant) -> Result<IssuedPair, AdminError> {
        check_text("subject", &req.subject, true, MAX_ID_LEN)?;
        check_text("client_id", &req.client_id, true, MAX_ID_LEN)?;
        check_resource(&req.resource)?;
        check_ttl("access_ttl_seconds", req.access_ttl_seconds)?;
        check_ttl("refresh_ttl_seconds", req.refresh_ttl_seconds)?;
        let scopes = parse_scopes(&req.scopes, true)?;
        let access_ttl = if req.access_ttl_seconds == 0 {
            DEFAULT_ACCESS_TTL
        } else {
            req.access_ttl_seconds
        };
        let refresh_ttl = if req.refresh_ttl_seconds == 0 {
            DEFAULT_REFRESH_TTL
        } else {
            req.refresh_ttl_seconds
        };
        let template = Self::template(req.subject, scopes, req.client_id, req.resource);
        let mut issued = self
            .insert_fresh(|| {
                let mut t = template.clone();
                t.grant_id = token::random_id("grt_", 20)?;
                Ok(vec![
                    self.new_record(TokenKind::OAuthAccess, &t, access_ttl)?,
                    self.new_record(TokenKind::OAuthRefresh, &t, refresh_ttl)?,
                ])
            })
            .await?;
        let refresh = issued.pop().ok_or(AdminError::Random)?;
        let access = issued.pop().ok_or(AdminError::Random)?;
        tracing::info!(grant_id = %access.record.grant_id, subject = %access.record.subject,
            client_id = %access.record.client_id, "oauth grant issued");
        Ok(IssuedPair { access, refresh })
    }

    /// Spends a refresh token for a new pair (same grant, same or fewer scopes, the refresh
    /// token's remaining lifetime policy renewed). Reuse of a spent one revokes the grant.
    ///
    /// # Errors
    /// [`AdminError::Refresh`] (`invalid_grant`, `invalid_scope`), [`AdminError::RefreshReuse`],
    /// [`AdminError::InvalidArgument`], store failures.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        client_id: &str,
        scopes: &[String],
    ) -> Result<IssuedPair, AdminError> {
        check_text("client_id", client_id, true, MAX_ID_LEN)?;
        let parsed = token::parse(refresh_token.trim().as_bytes())
            .map_err(|_| AdminError::Refresh(RefreshRefusal::Unknown))?;
        if parsed.kind() != TokenKind::OAuthRefresh {
            return Err(AdminError::Refresh(RefreshRefusal::Unknown));
        }
        let narrowed = parse_scopes(scopes, false)?;
        let access_secret = token::generate(TokenKind::OAuthAccess)?;
        let refresh_secret = token::generate(TokenKind::OAuthRefresh)?;
        let ids = (token::random_id("tok_", 20)?, token::random_id("tok_", 20)?);
        let now = self.clock.now();
        let client = client_id.to_owned();
        let (a_hash, r_hash) = (access_secret.hash(), refresh_secret.hash());
        let successors: crate::store::Successors = Box::new(move |old: &TokenRecord| {
            if old.client_id != client {
                return Err(RefreshRefusal::ClientMismatch);
            }
            let scopes = if narrowed.is_empty() {
                old.scopes.clone()
            } else {
                narrowed
            };
            if !scopes.is_subset_of(&old.scopes) {
                return Err(RefreshRefusal::ScopeWidened);
            }
            let access_ttl = DEFAULT_ACCESS_TTL;
            let refresh_ttl = if old.expires_at == 0 {
                0
            } else {
                old.expires_at - old.created_at
            };
            let base = TokenRecord {
                scopes,
                created_at: now,
                last_used_at: 0,
                revoked_at: 0,
                spent_at: 0,
                ..old.clone()
            };
            Ok(vec![
                TokenRecord {
                    hash: a_hash,
                    token_id: ids.0,
                    kind: TokenKind::OAuthAccess,
                    expires_at: now + access_ttl,
                    ..base.clone()
                },
                TokenRecord {
                    hash: r_hash,
                    token_id: ids.1,
                    kind: TokenKind::OAuthRefresh,
                    expires_at: if refresh_ttl == 0 {
                        0
                    } else {
                        now + refresh_ttl
                    },
                    ..base
                },
            ])
        });
        let spent = self
            .store
            .spend_refresh(parsed.hash(), now, successors)
            .await
            .inspect_err(|e| self.revocations.publish(Granularity::Grant, e.changed()))?;
        match spent {
            SpendOutcome::Spent { old, mut issued } => {
                self.revocations.publish(
                    Granularity::Update,
                    &[Changed {
                        hash: old.hash,
                        token_id: old.token_id.clone(),
                    }],
                );
                let refresh = issued.pop().ok_or(AdminError::Random)?;
                let access = issued.pop().ok_or(AdminError::Random)?;
                tracing::info!(grant_id = %old.grant_id, spent = %old.token_id, "refresh token rotated");
                Ok(IssuedPair {
                    access: Issued {
                        secret: access_secret,
                        record: access,
                    },
                    refresh: Issued {
                        secret: refresh_secret,
                        record: refresh,
                    },
                })
            }
            SpendOutcome::Reused { revoked } => {
                self.revocations.publish(Granularity::Grant, &revoked);
                tracing::warn!(
                    revoked = revoked.len(),
                    "refresh token reuse detected; grant revoked"
                );
                Err(AdminError::RefreshReuse)
            }
            SpendOutcome::Refused(r) => Err(AdminError::Refresh(r)),
        }
    }

    /// Revokes one token by id or by the token itself.
    ///
    /// # Errors
    /// [`AdminError::NotFound`] for an unknown id or token; store failures.
    pub async fn revoke_token(&self, target: TokenRef<'_>) -> Result<Vec<Changed>, AdminError> {
        let target = match target {
            TokenRef::Id(id) => {
                check_text("token_id", id, true, MAX_ID_LEN)?;
                if self.store.get_by_id(id.to_owned()).await?.is_none() {
                    return Err(AdminError::NotFound("no such token"));
                }
                RevokeTarget::TokenId(id.to_owned())
            }
            TokenRef::Token(t) => {
                let cred = token::strip_bearer(t.as_bytes()).and_then(token::parse);
                let hash = cred.map_err(|_| invalid("token is malformed"))?.hash();
                if self.store.get(hash).await?.is_none() {
                    return Err(AdminError::NotFound("no such token"));
                }
                RevokeTarget::Token(hash)
            }
        };
        self.revoke(Granularity::Token, target).await
    }

    /// Revokes every token a subject gave one client.
    ///
    /// # Errors
    /// [`AdminError::InvalidArgument`]; store failures.
    pub async fn revoke_grant(
        &self,
        subject: &str,
        client_id: &str,
    ) -> Result<Vec<Changed>, AdminError> {
        check_text("subject", subject, true, MAX_ID_LEN)?;
        check_text("client_id", client_id, true, MAX_ID_LEN)?;
        let target = RevokeTarget::SubjectClient {
            subject: subject.into(),
            client_id: client_id.into(),
        };
        self.revoke(Granularity::Grant, target).await
    }

    /// Revokes every token of a subject.
    ///
    /// # Errors
    /// [`AdminError::InvalidArgument`]; store failures.
    pub async fn revoke_subject(&self, subject: &str) -> Result<Vec<Changed>, AdminError> {
        check_text("subject", subject, true, MAX_ID_LEN)?;
        self.revoke(Granularity::Subject, RevokeTarget::Subject(subject.into()))
            .await
    }

    async fn revoke(
        &self,
        g: Granularity,
        target: RevokeTarget,
    ) -> Result<Vec<Changed>, AdminError> {
        match self.store.revoke(target, self.clock.now()).await {
            Ok(changed) => {
                self.revocations.publish(g, &changed);
                Ok(changed)
            }
            Err(e) => {
                // Part of it may be done in the store: this replica drops that part now.
                self.revocations.publish(g, e.changed());
                Err(e.into())
            }
        }
    }

    /// Lists a subject's tokens (metadata only).
    ///
    /// # Errors
    /// [`AdminError::InvalidArgument`]; store failures.
    pub async fn list(
        &self,
        subject: &str,
        client_id: &str,
        include_inactive: bool,
        page_size: usize,
        after: Option<String>,
    ) -> Result<(Vec<TokenRecord>, Option<String>), AdminError> {
        check_text("subject", subject, true, MAX_ID_LEN)?;
        check_text("client_id", client_id, false, MAX_ID_LEN)?;
        let limit = match page_size {
            0 => 100,
            n => n.min(MAX_PAGE),
        };
        let page = self
            .store
            .list(ListQuery {
                subject: subject.into(),
                client_id: client_id.into(),
                include_inactive,
                after: after.filter(|a| !a.is_empty()),
                limit,
                now: self.clock.now(),
            })
            .await?;
        Ok((page.records, page.next))
    }
}

/// A token named by id or by its plaintext.
#[derive(Clone, Copy)]
pub enum TokenRef<'a> {
    /// The public token id.
    Id(&'a str),
    /// The token itself.
    Token(&'a str),
}
