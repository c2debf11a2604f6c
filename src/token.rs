//! Token format: generate, strip the `Bearer` scheme, parse, checksum and hash. No I/O, and the
//! reject path neither allocates nor hashes.
//!
//! A token is `PREFIX` (5 chars) + 32 base62 random chars + 6 base62 chars of CRC32 over the first
//! 37 chars, 43 chars in all. The checksum lets the hot path drop typos and garbage before any
//! SHA-256 or store lookup; it is not a secret and adds no security.

use std::fmt;

use sha2::{Digest, Sha256};

/// Length of every token, prefix included.
pub const TOKEN_LEN: usize = 43;
const PREFIX_LEN: usize = 5;
const BODY_LEN: usize = 32;
const CHECK_LEN: usize = 6;
const CHECKED_LEN: usize = PREFIX_LEN + BODY_LEN;
const _: () = assert!(CHECKED_LEN + CHECK_LEN == TOKEN_LEN);

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `BASE62[b]` is the digit value of byte `b`, or `INVALID`.
const INVALID: u8 = 0xff;
const BASE62: [u8; 256] = {
    let mut t = [INVALID; 256];
    let mut i = 0;
    while i < 62 {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// What a token is for; the prefix says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// `nops_`: created on the Settings page, rotated by hand.
    ApiKey,
    /// `nopo_`: short-lived OAuth access token.
    OAuthAccess,
    /// `nopr_`: single-use OAuth refresh token; never valid for `Validate`.
    OAuthRefresh,
}

impl TokenKind {
    /// The five-character prefix of this kind's tokens.
    pub const fn prefix(self) -> &'static str {
        match self {
            TokenKind::ApiKey => "nops_",
            TokenKind::OAuthAccess => "nopo_",
            TokenKind::OAuthRefresh => "nopr_",
        }
    }

    fn from_prefix(p: &[u8]) -> Option<Self> {
        match p {
            b"nops_" => Some(TokenKind::ApiKey),
            b"nopo_" => Some(TokenKind::OAuthAccess),
            b"nopr_" => Some(TokenKind::OAuthRefresh),
            _ => None,
        }
    }

    /// Stable name for logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            TokenKind::ApiKey => "api_key",
            TokenKind::OAuthAccess => "oauth_access",
            TokenKind::OAuthRefresh => "oauth_refresh",
        }
    }
}

/// Why a credential was rejected before any lookup. `Copy`, so the reject path never allocates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// No credential at all (empty, whitespace, or `Bearer` with nothing after it).
    Missing,
    /// An `Authorization` value with a scheme other than `Bearer` (e.g. `Basic`).
    WrongScheme,
    /// Not exactly [`TOKEN_LEN`] bytes.
    Length,
    /// A byte outside base62 (including NUL, non-ASCII and invalid UTF-8) or stray whitespace.
    Charset,
    /// Not one of the `nops_`, `nopo_`, `nopr_` prefixes.
    Prefix,
    /// The CRC32 check digits do not match: a typo or a forged token.
    Checksum,
}

/// A token that passed the format checks, borrowed from the request.
#[derive(Clone, Copy)]
pub struct ParsedToken<'a> {
    kind: TokenKind,
    text: &'a str,
}

impl<'a> ParsedToken<'a> {
    /// The token's kind, from its prefix.
    pub fn kind(&self) -> TokenKind {
        self.kind
    }

    /// SHA-256 of the whole token: the only form in which a token is ever stored.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(self.text)
    }
}

impl fmt::Debug for ParsedToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParsedToken({}…)", self.kind.prefix())
    }
}

/// Takes a raw token or a whole `Authorization` header value and returns the credential bytes.
///
/// Accepts `Bearer` in any letter case, any run of spaces or tabs between scheme and token, and
/// surrounding whitespace. A value with no space is taken as a bare token.
///
/// # Errors
/// [`Malformed::Missing`] when there is no credential, [`Malformed::WrongScheme`] for another
/// scheme.
pub fn strip_bearer(raw: &[u8]) -> Result<&[u8], Malformed> {
    let v = raw.trim_ascii();
    if v.is_empty() {
        return Err(Malformed::Missing);
    }
    match v.iter().position(|&b| b == b' ' || b == b'\t') {
        None if v.eq_ignore_ascii_case(b"bearer") => Err(Malformed::Missing),
        None => Ok(v),
        Some(sp) => {
            if !v[..sp].eq_ignore_ascii_case(b"bearer") {
                return Err(Malformed::WrongScheme);
            }
            let rest = v[sp..].trim_ascii_start();
            if rest.is_empty() {
                Err(Malformed::Missing)
            } else {
                Ok(rest)
            }
        }
    }
}

/// Checks length, charset, prefix and checksum, in that order, without allocating.
///
/// # Errors
/// The first check that fails, as a [`Malformed`] reason.
pub fn parse(credential: &[u8]) -> Result<ParsedToken<'_>, Malformed> {
    let Ok(t) = <&[u8; TOKEN_LEN]>::try_from(credential) else {
        return Err(Malformed::Length);
    };
    let kind = TokenKind::from_prefix(&t[..PREFIX_LEN]).ok_or(Malformed::Prefix)?;
    // Branch-free range checks over a fixed-size array: the compiler turns this into a few
    // vector compares instead of 38 table lookups with early exits.
    let mut ok = true;
    for &b in &t[PREFIX_LEN..] {
        ok &= b.wrapping_sub(b'0') < 10 || b.wrapping_sub(b'A') < 26 || b.wrapping_sub(b'a') < 26;
    }
    if !ok {
        return Err(Malformed::Charset);
    }
    let check = t[CHECKED_LEN..]
        .iter()
        .fold(0u64, |acc, &b| acc * 62 + u64::from(BASE62[usize::from(b)]));
    if check != u64::from(crc32fast::hash(&t[..CHECKED_LEN])) {
        return Err(Malformed::Checksum);
    }
    // Every byte is ASCII (prefix matched, the rest is base62), so this cannot fail.
    let text = std::str::from_utf8(credential).map_err(|_| Malformed::Charset)?;
    Ok(ParsedToken { kind, text })
}

/// SHA-256 of a token string. The store key; never reversible to the token.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// Hashes a token's full text.
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Rebuilds a hash from stored bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        b.try_into().ok().map(TokenHash)
    }

    /// Lowercase hex, for store keys that must be text.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        s
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first 8 bytes are enough to tell entries apart in a debug print.
        write!(f, "TokenHash({}…)", &self.to_hex()[..16])
    }
}

/// A freshly generated plaintext token. Its `Debug` and `Display` never show the secret: call
/// [`SecretToken::expose`] at the one place that hands it to the caller.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(String);

impl SecretToken {
    /// The plaintext, for the single answer that shows it once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Consumes the secret into its plaintext.
    pub fn into_exposed(self) -> String {
        self.0
    }

    /// The store key for this token.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SecretToken({}…redacted)",
            &self.0[..PREFIX_LEN.min(self.0.len())]
        )
    }
}

/// Fills `out` with uniformly random base62 characters from the OS CSPRNG (rejection sampling,
/// so there is no modulo bias).
///
/// # Errors
/// When the OS random source fails, which on Linux means the process cannot be trusted to make
/// secrets at all.
pub fn random_base62(out: &mut [u8]) -> Result<(), getrandom::Error> {
    let mut filled = 0;
    let mut buf = [0u8; 64];
    while filled < out.len() {
        getrandom::fill(&mut buf)?;
        for &b in &buf {
            // 248 = 4 * 62: values at or above it would bias the low digits.
            if b < 248 && filled < out.len() {
                out[filled] = ALPHABET[usize::from(b % 62)];
                filled += 1;
            }
        }
    }
    Ok(())
}

/// Generates a new token of `kind`.
///
/// # Errors
/// When the OS random source fails.
pub fn generate(kind: TokenKind) -> Result<SecretToken, getrandom::Error> {
    let mut t = [0u8; TOKEN_LEN];
    t[..PREFIX_LEN].copy_from_slice(kind.prefix().as_bytes());
    random_base62(&mut t[PREFIX_LEN..CHECKED_LEN])?;
    encode_check(crc32fast::hash(&t[..CHECKED_LEN]), &mut t[CHECKED_LEN..]);
    let s = std::str::from_utf8(&t).map(str::to_owned);
    // Every byte written above is ASCII.
    Ok(SecretToken(s.unwrap_or_default()))
}

/// Generates a public identifier such as `tok_4fT9…`: random, unrelated to any secret.
///
/// # Errors
/// When the OS random source fails.
pub fn random_id(prefix: &str, len: usize) -> Result<String, getrandom::Error> {
    let mut body = vec![0u8; len];
    random_base62(&mut body)?;
    let mut s = String::with_capacity(prefix.len() + len);
    s.push_str(prefix);
    s.extend(body.iter().map(|&b| char::from(b)));
    Ok(s)
}

fn encode_check(mut v: u32, out: &mut [u8]) {
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(v % 62) as usize];
        v /= 62;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds() -> [TokenKind; 3] {
        [
            TokenKind::ApiKey,
            TokenKind::OAuthAccess,
            TokenKind::OAuthRefresh,
        ]
    }

    #[test]
    fn generated_tokens_have_the_documented_shape() {
        for kind in kinds() {
            let t = generate(kind).unwrap();
            let s = t.expose();
            assert_eq!(s.len(), TOKEN_LEN);
            assert!(s.starts_with(kind.prefix()));
            assert!(s[PREFIX_LEN..].bytes().all(|b| b.is_ascii_alphanumeric()));
            assert_eq!(parse(s.as_bytes()).unwrap().kind(), kind);
        }
    }

    #[test]
    fn tokens_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(generate(TokenKind::ApiKey).unwrap().into_exposed()));
        }
    }

    /// Property: every generated token parses, and every change of one character to any other
    /// byte value (all 255 of them, at all 43 positions) is rejected.
    #[test]
    fn every_single_character_change_is_rejected() {
        for round in 0..200 {
            let t = generate(kinds()[round % 3]).unwrap();
            let original = t.expose().as_bytes().to_vec();
            assert!(parse(&original).is_ok());
            for pos in 0..TOKEN_LEN {
                for b in 0..=255u8 {
                    if b == original[pos] {
                        continue;
                    }
                    let mut m = original.clone();
                    m[pos] = b;
                    assert!(
                        parse(&m).is_err(),
                        "accepted a change at {pos} to byte {b} (round {round})"
                    );
                }
            }
        }
    }

    #[test]
    fn rejects_in_order_length_prefix_charset_checksum() {
        let t = generate(TokenKind::ApiKey).unwrap().into_exposed();
        assert_eq!(parse(b"").unwrap_err(), Malformed::Length);
        assert_eq!(parse(&t.as_bytes()[..42]).unwrap_err(), Malformed::Length);
        let mut long = t.clone().into_bytes();
        long.push(b'a');
        assert_eq!(parse(&long).unwrap_err(), Malformed::Length);
        let wrong_prefix = format!("nopx_{}", &t[5..]);
        assert_eq!(
            parse(wrong_prefix.as_bytes()).unwrap_err(),
            Malformed::Prefix
        );
        let mut nul = t.clone().into_bytes();
        nul[20] = 0;
        assert_eq!(parse(&nul).unwrap_err(), Malformed::Charset);
        let mut utf8 = t.clone().into_bytes();
        utf8[20] = 0xc3;
        assert_eq!(parse(&utf8).unwrap_err(), Malformed::Charset);
        let mut sum = t.into_bytes();
        sum[42] = if sum[42] == b'0' { b'1' } else { b'0' };
        assert_eq!(parse(&sum).unwrap_err(), Malformed::Checksum);
    }

    #[test]
    fn strip_bearer_accepts_any_case_and_spacing() {
        assert_eq!(strip_bearer(b"Bearer abc"), Ok(&b"abc"[..]));
        assert_eq!(strip_bearer(b"bearer abc"), Ok(&b"abc"[..]));
        assert_eq!(strip_bearer(b"BEARER   abc  "), Ok(&b"abc"[..]));
        assert_eq!(strip_bearer(b" \tBeArEr\tabc"), Ok(&b"abc"[..]));
        assert_eq!(strip_bearer(b"abc"), Ok(&b"abc"[..]));
        assert_eq!(strip_bearer(b""), Err(Malformed::Missing));
        assert_eq!(strip_bearer(b"   "), Err(Malformed::Missing));
        assert_eq!(strip_bearer(b"Bearer"), Err(Malformed::Missing));
        assert_eq!(strip_bearer(b"Bearer   "), Err(Malformed::Missing));
        assert_eq!(
            strip_bearer(b"Basic dXNlcjpwYXNz"),
            Err(Malformed::WrongScheme)
        );
        // Two credentials after the scheme: the second part makes the token malformed.
        let two = strip_bearer(b"Bearer a b").unwrap();
        assert_eq!(parse(two).unwrap_err(), Malformed::Length);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let t = generate(TokenKind::ApiKey).unwrap();
        let dbg = format!("{t:?}");
        assert!(!dbg.contains(&t.expose()[5..]));
        let parsed = parse(t.expose().as_bytes()).unwrap();
        assert!(!format!("{parsed:?}").contains(&t.expose()[5..]));
    }

    #[test]
    fn hash_is_sha256_of_the_text() {
        let h = TokenHash::of("abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn random_ids_use_base62() {
        let id = random_id("tok_", 16).unwrap();
        assert_eq!(id.len(), 20);
        assert!(id[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
