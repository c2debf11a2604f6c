//! RFC 6750 error codes and ready-to-send `WWW-Authenticate` values for every denial, with the
//! `resource_metadata` parameter the MCP authorization spec asks for (RFC 9728).

use std::fmt::Write as _;

use crate::token::Malformed;

/// Why a token was not allowed. `Copy`: the deny path builds no strings until the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Allowed.
    Ok,
    /// Rejected on format alone, before any lookup.
    Malformed(Malformed),
    /// A refresh token presented as an access token.
    RefreshToken,
    /// Well-formed but unknown.
    Unknown,
    /// Past its `expires_at`.
    Expired,
    /// Revoked (alone, with its grant, or with its subject).
    Revoked,
    /// Bound to another RFC 8707 resource.
    WrongResource,
    /// Valid, but without a required scope.
    InsufficientScope,
}

impl Reason {
    /// A short stable name for logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Ok => "ok",
            Reason::Malformed(Malformed::Missing) => "missing",
            Reason::Malformed(Malformed::WrongScheme) => "wrong_scheme",
            Reason::Malformed(Malformed::Length) => "bad_length",
            Reason::Malformed(Malformed::Charset) => "bad_charset",
            Reason::Malformed(Malformed::Prefix) => "bad_prefix",
            Reason::Malformed(Malformed::Checksum) => "bad_checksum",
            Reason::RefreshToken => "refresh_token",
            Reason::Unknown => "unknown",
            Reason::Expired => "expired",
            Reason::Revoked => "revoked",
            Reason::WrongResource => "wrong_resource",
            Reason::InsufficientScope => "insufficient_scope",
        }
    }

    /// The RFC 6750 `error` code; empty when no credential was presented (RFC 6750 §3.1 says
    /// not to send one then).
    pub const fn error_code(self) -> &'static str {
        match self {
            Reason::Ok | Reason::Malformed(Malformed::Missing | Malformed::WrongScheme) => "",
            Reason::InsufficientScope => "insufficient_scope",
            _ => "invalid_token",
        }
    }

    /// A human-readable description for developers. Never names the token.
    pub const fn description(self) -> &'static str {
        match self {
            Reason::Ok => "",
            Reason::Malformed(Malformed::Missing) => "No bearer token was presented",
            Reason::Malformed(Malformed::WrongScheme) => "The Authorization scheme is not Bearer",
            Reason::Malformed(Malformed::Checksum) => {
                "The token is malformed (checksum mismatch: check it was copied whole)"
            }
            Reason::Malformed(_) => "The token is malformed",
            Reason::RefreshToken => "A refresh token cannot be used as an access token",
            Reason::Unknown => "The token is not recognized",
            Reason::Expired => "The token has expired",
            Reason::Revoked => "The token has been revoked",
            Reason::WrongResource => "The token was not issued for this resource",
            Reason::InsufficientScope => "The token does not hold a scope this request requires",
        }
    }
}

/// Builds challenges; holds the optional protected-resource metadata URL.
#[derive(Clone, Debug, Default)]
pub struct Challenges {
    resource_metadata: Option<String>,
}

/// Why a resource metadata URL was refused.
#[derive(Debug, thiserror::Error)]
#[error("must be an absolute http(s) URL without spaces, quotes or backslashes")]
pub struct BadMetadataUrl;

impl Challenges {
    /// Challenges that point clients at `resource_metadata` (RFC 9728), when given.
    ///
    /// # Errors
    /// When the URL could not be placed safely in a quoted header parameter.
    pub fn new(resource_metadata: Option<String>) -> Result<Self, BadMetadataUrl> {
        if let Some(url) = &resource_metadata {
            let ok_scheme = url.starts_with("https://") || url.starts_with("http://");
            let ok_chars = url
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
            if !ok_scheme || !ok_chars || url.len() > 2048 {
                return Err(BadMetadataUrl);
            }
        }
        Ok(Challenges { resource_metadata })
    }

    /// The `WWW-Authenticate` value for a denial; empty for [`Reason::Ok`].
    ///
    /// `required_scopes` must have passed [`crate::scope::check`], which keeps them safe inside
    /// a quoted parameter.
    pub fn www_authenticate<S: AsRef<str>>(&self, reason: Reason, required_scopes: &[S]) -> String {
        if reason == Reason::Ok {
            return String::new();
        }
        let mut params: Vec<(&str, String)> = Vec::with_capacity(4);
        let code = reason.error_code();
        if !code.is_empty() {
            params.push(("error", code.to_owned()));
        }
        let scope = required_scopes
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(" ");
        // insufficient_scope says which scopes would do (RFC 6750 §3); a challenge without a
        // token tells the client what to ask for (MCP authorization, 2025-11-25).
        let with_scope = matches!(
            reason,
            Reason::InsufficientScope
                | Reason::Malformed(Malformed::Missing | Malformed::WrongScheme)
        );
        if with_scope && !scope.is_empty() {
            params.push(("scope", scope));
        }
        if let Some(url) = &self.resource_metadata {
            params.push(("resource_metadata", url.clone()));
        }
        if !code.is_empty() {
            params.push(("error_description", reason.description().to_owned()));
        }
        let mut out = String::from("Bearer");
        for (i, (k, v)) in params.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            let _ = write!(out, "{sep}{k}=\"{v}\"");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insufficient_scope_names_the_scope() {
        let c = Challenges::new(None).unwrap();
        assert_eq!(
            c.www_authenticate(Reason::InsufficientScope, &["mcp:write"]),
            "Bearer error=\"insufficient_scope\", scope=\"mcp:write\", error_description=\"The token does not hold a scope this request requires\""
        );
    }

    #[test]
    fn missing_token_has_no_error_code_but_points_at_metadata() {
        let c = Challenges::new(Some(
            "https://mcp.example.com/.well-known/oauth-protected-resource".into(),
        ))
        .unwrap();
        assert_eq!(
            c.www_authenticate::<&str>(Reason::Malformed(Malformed::Missing), &[]),
            "Bearer resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource\""
        );
        assert_eq!(
            c.www_authenticate::<&str>(Reason::Malformed(Malformed::Missing), &[])
                .matches("error")
                .count(),
            0
        );
    }

    #[test]
    fn invalid_token_challenge() {
        let c = Challenges::new(Some("https://x.example/meta".into())).unwrap();
        assert_eq!(
            c.www_authenticate(Reason::Revoked, &["mcp:read"]),
            "Bearer error=\"invalid_token\", resource_metadata=\"https://x.example/meta\", error_description=\"The token has been revoked\""
        );
    }

    #[test]
    fn unsafe_metadata_urls_are_refused() {
        assert!(Challenges::new(Some("ftp://x".into())).is_err());
        assert!(Challenges::new(Some("https://x\"y".into())).is_err());
        assert!(Challenges::new(Some("https://x y".into())).is_err());
    }
}
