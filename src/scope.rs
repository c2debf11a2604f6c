//! Scopes: RFC 6749 §3.3 scope tokens, and the set a token holds.
//!
//! A scope token is 1*( %x21 / %x23-5B / %x5D-7E ): printable ASCII without space, `"` or `\`.
//! That rule is also what makes a scope safe to place inside a quoted `WWW-Authenticate`
//! parameter, so every scope that reaches a challenge has passed [`check`].

use std::fmt;

/// The product's read scope: an API key created as "Read".
pub const MCP_READ: &str = "mcp:read";
/// The product's write scope: an API key created as "Read + Write" holds both.
pub const MCP_WRITE: &str = "mcp:write";

/// Longest accepted scope token.
pub const MAX_SCOPE_LEN: usize = 128;
/// Most scopes one token may hold or one request may require.
pub const MAX_SCOPES: usize = 64;

/// Why a scope list was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// An empty scope string.
    #[error("a scope is empty")]
    Empty,
    /// Longer than [`MAX_SCOPE_LEN`].
    #[error("a scope is longer than {MAX_SCOPE_LEN} characters")]
    TooLong,
    /// A character RFC 6749 does not allow (space, `"`, `\`, control or non-ASCII).
    #[error(
        "a scope contains a character RFC 6749 does not allow (space, quote, backslash, control or non-ASCII)"
    )]
    Charset,
    /// More than [`MAX_SCOPES`].
    #[error("more than {MAX_SCOPES} scopes")]
    TooMany,
}

/// Checks one scope token.
///
/// # Errors
/// The rule it breaks.
pub fn check(s: &str) -> Result<(), ScopeError> {
    if s.is_empty() {
        return Err(ScopeError::Empty);
    }
    if s.len() > MAX_SCOPE_LEN {
        return Err(ScopeError::TooLong);
    }
    if !s
        .bytes()
        .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
    {
        return Err(ScopeError::Charset);
    }
    Ok(())
}

/// Checks a list of scopes as a request gives them.
///
/// # Errors
/// The first rule broken.
pub fn check_all<S: AsRef<str>>(scopes: &[S]) -> Result<(), ScopeError> {
    if scopes.len() > MAX_SCOPES {
        return Err(ScopeError::TooMany);
    }
    scopes.iter().try_for_each(|s| check(s.as_ref()))
}

/// The scopes a token holds: sorted, without duplicates.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(Vec<String>);

impl ScopeSet {
    /// Builds a set from scope strings; a string may itself hold several space-separated scopes
    /// (the OAuth `scope` parameter form).
    ///
    /// # Errors
    /// When a scope breaks RFC 6749 or there are too many.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, ScopeError> {
        let mut v: Vec<String> = Vec::new();
        for item in items {
            for s in item.as_ref().split([' ', ',']).filter(|s| !s.is_empty()) {
                check(s)?;
                v.push(s.to_owned());
            }
        }
        v.sort_unstable();
        v.dedup();
        if v.len() > MAX_SCOPES {
            return Err(ScopeError::TooMany);
        }
        Ok(ScopeSet(v))
    }

    /// Rebuilds a set from stored, already checked scopes.
    pub fn from_stored(mut v: Vec<String>) -> Self {
        v.sort_unstable();
        v.dedup();
        ScopeSet(v)
    }

    /// Whether the set holds `scope`.
    pub fn contains(&self, scope: &str) -> bool {
        self.0.binary_search_by(|s| s.as_str().cmp(scope)).is_ok()
    }

    /// Whether the set holds every scope of `required`.
    pub fn contains_all<S: AsRef<str>>(&self, required: &[S]) -> bool {
        required.iter().all(|r| self.contains(r.as_ref()))
    }

    /// Whether every scope of `self` is in `other`.
    pub fn is_subset_of(&self, other: &ScopeSet) -> bool {
        self.0.iter().all(|s| other.contains(s))
    }

    /// The scopes, sorted.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Into the sorted scope strings.
    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}

impl fmt::Display for ScopeSet {
    /// The OAuth `scope` form: space-separated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.0).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6749_scope_tokens() {
        assert!(check("mcp:read").is_ok());
        assert!(check("https://api.example.com/read!#$%&'()*+,-./").is_ok());
        assert_eq!(check(""), Err(ScopeError::Empty));
        assert_eq!(check("a b"), Err(ScopeError::Charset));
        assert_eq!(check("a\"b"), Err(ScopeError::Charset));
        assert_eq!(check("a\\b"), Err(ScopeError::Charset));
        assert_eq!(check("caf\u{e9}"), Err(ScopeError::Charset));
        assert_eq!(check("a\0"), Err(ScopeError::Charset));
        assert_eq!(check(&"a".repeat(129)), Err(ScopeError::TooLong));
    }

    #[test]
    fn set_parses_space_and_comma_separated_and_dedups() {
        let s = ScopeSet::parse(&["mcp:write mcp:read", "mcp:read,custom"]).unwrap();
        assert_eq!(s.as_slice(), ["custom", "mcp:read", "mcp:write"]);
        assert!(s.contains_all(&["mcp:read", "mcp:write"]));
        assert!(!s.contains_all(&["mcp:admin"]));
        assert!(s.contains_all::<&str>(&[]));
        assert_eq!(s.to_string(), "custom mcp:read mcp:write");
    }

    #[test]
    fn subset() {
        let all = ScopeSet::parse(&["mcp:read mcp:write"]).unwrap();
        let read = ScopeSet::parse(&["mcp:read"]).unwrap();
        assert!(read.is_subset_of(&all));
        assert!(!all.is_subset_of(&read));
    }
}
