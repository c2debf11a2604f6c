//! `TokenRecord`: what a token grants, as the store keeps it (never with the token itself).

use prost::Message;

use crate::pb::storage::StoredRecord;
use crate::scope::ScopeSet;
use crate::token::{TokenHash, TokenKind};

const RECORD_VERSION: u32 = 1;

/// Everything known about one token, keyed by the SHA-256 of the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRecord {
    /// SHA-256 of the token: the store key.
    pub hash: TokenHash,
    /// Public identifier: safe to log, enough to revoke.
    pub token_id: String,
    /// API key, OAuth access or OAuth refresh token.
    pub kind: TokenKind,
    /// Who the token acts for.
    pub subject: String,
    /// What it may do.
    pub scopes: ScopeSet,
    /// The OAuth client it was issued to; empty for API keys.
    pub client_id: String,
    /// The OAuth grant (one authorization, and every token refreshed from it); empty for keys.
    pub grant_id: String,
    /// A label chosen by the user (API keys).
    pub name: String,
    /// RFC 8707 resource the token is bound to; empty = any.
    pub resource: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; 0 = never.
    pub expires_at: i64,
    /// Unix seconds; 0 = never used.
    pub last_used_at: i64,
    /// Unix seconds; 0 = not revoked.
    pub revoked_at: i64,
    /// Refresh tokens: when it was exchanged; 0 = not yet.
    pub spent_at: i64,
}

/// A stored value that could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("stored token record is corrupt: {0}")]
pub struct CorruptRecord(pub String);

impl TokenRecord {
    /// Whether the token has expired at `now` (unix seconds).
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at != 0 && now >= self.expires_at
    }

    /// Whether the token has been revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked_at != 0
    }

    /// Neither revoked, expired nor (for refresh tokens) spent.
    pub fn is_active(&self, now: i64) -> bool {
        !self.is_revoked() && !self.is_expired(now) && self.spent_at == 0
    }

    /// Encodes the record for the store.
    pub fn encode(&self) -> Vec<u8> {
        StoredRecord {
            version: RECORD_VERSION,
            token_id: self.token_id.clone(),
            kind: kind_to_i32(self.kind),
            subject: self.subject.clone(),
            scopes: self.scopes.as_slice().to_vec(),
            client_id: self.client_id.clone(),
            grant_id: self.grant_id.clone(),
            name: self.name.clone(),
            resource: self.resource.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            last_used_at: self.last_used_at,
            revoked_at: self.revoked_at,
            spent_at: self.spent_at,
            hash: self.hash.0.to_vec(),
        }
        .encode_to_vec()
    }

    /// Decodes a stored record.
    ///
    /// # Errors
    /// When the bytes are not a record this version understands.
    pub fn decode(bytes: &[u8]) -> Result<Self, CorruptRecord> {
        let s = StoredRecord::decode(bytes).map_err(|e| CorruptRecord(e.to_string()))?;
        if s.version != RECORD_VERSION {
            return Err(CorruptRecord(format!(
                "unknown record version {}",
                s.version
            )));
        }
        let kind =
            kind_from_i32(s.kind).ok_or_else(|| CorruptRecord(format!("kind {}", s.kind)))?;
        let hash = TokenHash::from_slice(&s.hash).ok_or_else(|| CorruptRecord("hash".into()))?;
        Ok(TokenRecord {
            hash,
            token_id: s.token_id,
            kind,
            subject: s.subject,
            scopes: ScopeSet::from_stored(s.scopes),
            client_id: s.client_id,
            grant_id: s.grant_id,
            name: s.name,
            resource: s.resource,
            created_at: s.created_at,
            expires_at: s.expires_at,
            last_used_at: s.last_used_at,
            revoked_at: s.revoked_at,
            spent_at: s.spent_at,
        })
    }
}

fn kind_to_i32(k: TokenKind) -> i32 {
    match k {
        TokenKind::ApiKey => 1,
        TokenKind::OAuthAccess => 2,
        TokenKind::OAuthRefresh => 3,
    }
}

fn kind_from_i32(v: i32) -> Option<TokenKind> {
    match v {
        1 => Some(TokenKind::ApiKey),
        2 => Some(TokenKind::OAuthAccess),
        3 => Some(TokenKind::OAuthRefresh),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> TokenRecord {
        TokenRecord {
            hash: TokenHash([7; 32]),
            token_id: "tok_abc".into(),
            kind: TokenKind::OAuthAccess,
            subject: "alice".into(),
            scopes: ScopeSet::parse(&["mcp:read"]).unwrap(),
            client_id: "claude".into(),
            grant_id: "grt_x".into(),
            name: String::new(),
            resource: "https://mcp.example.com".into(),
            created_at: 100,
            expires_at: 200,
            last_used_at: 0,
            revoked_at: 0,
            spent_at: 0,
        }
    }

    #[test]
    fn round_trips() {
        let r = sample();
        assert_eq!(TokenRecord::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn expiry_is_inclusive_of_the_deadline() {
        let r = sample();
        assert!(!r.is_expired(199));
        assert!(r.is_expired(200));
        let never = TokenRecord {
            expires_at: 0,
            ..sample()
        };
        assert!(!never.is_expired(i64::MAX));
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        assert!(TokenRecord::decode(&[0xff, 0xff, 0xff]).is_err());
        assert!(TokenRecord::decode(&[]).is_err());
    }
}
