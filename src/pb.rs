//! The generated protobuf and gRPC code, quarantined: lint allowances live here only. Messages
//! that carry a plaintext token get a hand-written `Debug` that redacts it.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

use std::fmt;

tonic::include_proto!("navis.auth.v1");

/// The internal at-rest encoding of token records.
pub mod storage {
    tonic::include_proto!("navis.auth.v1.storage");
}

/// Encoded file descriptors for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("navis_auth_descriptor");

const REDACTED: &str = "<redacted>";

impl fmt::Debug for ValidateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidateRequest")
            .field(
                "token",
                &format_args!("<{} bytes redacted>", self.token.len()),
            )
            .field("required_scopes", &self.required_scopes)
            .field("resource", &self.resource)
            .field("request_id", &self.request_id)
            .finish()
    }
}

impl fmt::Debug for CreateApiKeyResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateApiKeyResponse")
            .field("api_key", &REDACTED)
            .field("info", &self.info)
            .finish()
    }
}

impl fmt::Debug for RotateApiKeyResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotateApiKeyResponse")
            .field("api_key", &REDACTED)
            .field("info", &self.info)
            .field("old_expires_at", &self.old_expires_at)
            .finish()
    }
}

impl fmt::Debug for OAuthTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthTokens")
            .field("access_token", &REDACTED)
            .field("refresh_token", &REDACTED)
            .field("access", &self.access)
            .field("refresh", &self.refresh)
            .finish()
    }
}

impl fmt::Debug for RefreshOAuthTokensRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshOAuthTokensRequest")
            .field("refresh_token", &REDACTED)
            .field("client_id", &self.client_id)
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl fmt::Debug for RevokeTokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevokeTokenRequest")
            .field("target", &self.target)
            .finish()
    }
}

impl fmt::Debug for revoke_token_request::Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TokenId(id) => f.debug_tuple("TokenId").field(id).finish(),
            Self::Token(_) => f.debug_tuple("Token").field(&REDACTED).finish(),
        }
    }
}
