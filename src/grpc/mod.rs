//! gRPC adapters: protobuf ↔ domain types, the admin credential check, and the one place that
//! maps errors to `tonic::Status` (leaking no internals).

pub mod admin;
pub mod ext_authz;
pub mod validator;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use crate::admin::AdminError;
use crate::pb;
use crate::record::TokenRecord;
use crate::store::{RefreshRefusal, StoreError};
use crate::token::TokenKind;
use crate::validator::ValidateError;

/// Maps a validation failure to a status. The store's own message stays in the logs.
pub fn validate_status(e: &ValidateError) -> Status {
    match e {
        ValidateError::InvalidArgument(m) => Status::invalid_argument(*m),
        ValidateError::Unavailable(cause) => {
            tracing::warn!(error = %cause, "validation could not reach the store");
            Status::unavailable("token store unavailable; retry")
        }
    }
}

/// Maps an admin failure to a status.
pub fn admin_status(e: AdminError) -> Status {
    match e {
        AdminError::InvalidArgument(m) => Status::invalid_argument(m),
        AdminError::NotFound(m) => Status::not_found(m),
        AdminError::Refresh(r @ RefreshRefusal::ScopeWidened) => {
            Status::invalid_argument(r.to_string())
        }
        AdminError::Refresh(r) => Status::failed_precondition(r.to_string()),
        e @ AdminError::RefreshReuse => Status::failed_precondition(e.to_string()),
        AdminError::Store(
            StoreError::Unavailable(cause) | StoreError::Incomplete { cause, .. },
        ) => {
            tracing::warn!(error = %cause, "admin call could not reach the store");
            Status::unavailable("token store unavailable; retry")
        }
        AdminError::Store(e) => {
            tracing::error!(error = %e, "admin call failed in the store");
            Status::internal("internal store error")
        }
        AdminError::Random => Status::internal("random source unavailable"),
    }
}

/// The protobuf kind of a token.
pub fn kind_to_pb(k: TokenKind) -> pb::TokenKind {
    match k {
        TokenKind::ApiKey => pb::TokenKind::ApiKey,
        TokenKind::OAuthAccess => pb::TokenKind::OauthAccess,
        TokenKind::OAuthRefresh => pb::TokenKind::OauthRefresh,
    }
}

/// A record's public metadata.
pub fn token_info(r: &TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        token_id: r.token_id.clone(),
        kind: kind_to_pb(r.kind) as i32,
        subject: r.subject.clone(),
        scopes: r.scopes.as_slice().to_vec(),
        client_id: r.client_id.clone(),
        grant_id: r.grant_id.clone(),
        name: r.name.clone(),
        resource: r.resource.clone(),
        created_at: r.created_at,
        expires_at: r.expires_at,
        last_used_at: r.last_used_at,
        revoked_at: r.revoked_at,
        spent_at: r.spent_at,
    }
}

/// Checks `authorization: Bearer <admin token>` on every admin call, in constant time.
#[derive(Clone)]
pub struct AdminAuth {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminAuth(<redacted>)")
    }
}

impl AdminAuth {
    /// Accepts exactly `token`.
    pub fn new(token: &str) -> Self {
        AdminAuth {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Whether `presented` (a whole `Authorization` value or the bare credential) is the
    /// credential, compared in constant time.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let credential = crate::token::strip_bearer(presented).unwrap_or_default();
        let digest: [u8; 32] = Sha256::digest(credential).into();
        bool::from(digest.ct_eq(&self.digest))
    }

    /// The interceptor body.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` for a missing or wrong credential.
    #[allow(clippy::result_large_err)]
    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(value) = req.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "admin token required (authorization: Bearer …)",
            ));
        };
        // Comparing digests makes the comparison constant-time in the length too.
        if self.matches(value.as_bytes()) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("invalid admin token"))
        }
    }
}
