//! The blake3 hash that names chunks and manifests.
//!
//! One type for both, printed and parsed in one spelling (64 lowercase hex digits) everywhere: in
//! logs, on disk (chunk file names), in JSON and on the wire. Parsing accepts only that spelling,
//! so a hash has exactly one text form and string comparisons agree with hash comparisons.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// blake3 hash of a chunk's bytes or of a manifest's canonical encoding.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash(pub [u8; 32]);

/// Length of a hash in hex digits.
const HEX_LEN: usize = 64;
/// Length of [`Hash::short`], enough to tell chunks apart in logs.
const SHORT_HEX_LEN: usize = 12;

impl Hash {
    /// blake3 of `data`.
    pub fn of(data: &[u8]) -> Hash {
        Hash(*blake3::hash(data).as_bytes())
    }

    /// The 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 12 hex digits, for logs and messages read by people.
    pub fn short(&self) -> String {
        let mut s = self.to_hex();
        s.truncate(SHORT_HEX_LEN);
        s
    }
}

impl From<blake3::Hash> for Hash {
    fn from(h: blake3::Hash) -> Self {
        Hash(*h.as_bytes())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Full hex: a shortened Debug would make two different hashes look equal in a failed
        // assert_eq!.
        write!(f, "Hash({})", self.to_hex())
    }
}

/// A string that is not a hash: says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseHashError {
    #[error("a blake3 hash is 64 hex digits, got {len} characters")]
    Length { len: usize },
    #[error("a blake3 hash is 64 lowercase hex digits (0-9, a-f), found {found:?}")]
    NotLowercaseHex { found: char },
}

impl FromStr for Hash {
    type Err = ParseHashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != HEX_LEN {
            return Err(ParseHashError::Length {
                len: s.chars().count(),
            });
        }
        if let Some(found) = s.chars().find(|c| !matches!(c, '0'..='9' | 'a'..='f')) {
            return Err(ParseHashError::NotLowercaseHex { found });
        }
        let mut out = [0u8; 32];
        // Cannot fail after the checks above; map the error anyway rather than unwrap.
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseHashError::Length { len: s.len() })?;
        Ok(Hash(out))
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let h = Hash::of(b"quiver");
        let hex = h.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(hex, blake3::hash(b"quiver").to_hex().as_str());
        assert_eq!(hex.parse::<Hash>(), Ok(h));
        assert_eq!(h.to_string(), hex);
        assert_eq!(format!("{h:?}"), format!("Hash({hex})"));
        assert_eq!(h.short(), hex[..12]);
    }

    #[test]
    fn parse_rejects_wrong_length_and_non_lowercase_hex() {
        let hex = Hash::of(b"x").to_hex();
        assert_eq!(
            hex[..63].parse::<Hash>(),
            Err(ParseHashError::Length { len: 63 })
        );
        assert_eq!(
            format!("{hex}0").parse::<Hash>(),
            Err(ParseHashError::Length { len: 65 })
        );
        let upper = format!("A{}", &hex[1..]);
        assert_eq!(
            upper.parse::<Hash>(),
            Err(ParseHashError::NotLowercaseHex { found: 'A' })
        );
        let non_hex = format!("{}g", &hex[..63]);
        assert_eq!(
            non_hex.parse::<Hash>(),
            Err(ParseHashError::NotLowercaseHex { found: 'g' })
        );
        // A multi-byte character must not be mistaken for two hex digits.
        let multibyte = format!("é{}", &hex[2..]);
        assert_eq!(
            multibyte.parse::<Hash>(),
            Err(ParseHashError::NotLowercaseHex { found: 'é' })
        );
    }

    #[test]
    fn serde_is_a_hex_string() {
        let h = Hash::of(b"serde");
        let json = serde_json::to_string(&h).expect("serialize");
        assert_eq!(json, format!("\"{}\"", h.to_hex()));
        let back: Hash = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, h);
        let err = serde_json::from_str::<Hash>("\"abc\"").expect_err("short hash must fail");
        assert!(err.to_string().contains("64 hex digits"), "{err}");
    }

    #[test]
    fn order_follows_bytes() {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        a[0] = 1;
        b[31] = 2;
        assert!(Hash(b) < Hash(a));
        assert!(Hash(b).to_hex() < Hash(a).to_hex());
    }
}
