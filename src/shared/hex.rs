//! Lowercase hex, used for digests, tokens, nonces and generated ids; strict decoding (the `hex`
//! crate: exactly `[0-9a-fA-F]`, no sign, no whitespace, no `0x`).

/// Lowercase hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// The bytes of an even-length hex string; `None` for anything else.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok()
}

/// Exactly `N` bytes written as `2 * N` hex digits; `None` for any other length or character.
pub fn decode_exact<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// `N` bytes from the system RNG, as hex.
pub fn random<const N: usize>() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system RNG works");
    encode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round trip, and refusal of odd lengths, non-hex digits, signs, whitespace and prefixes.
    #[test]
    fn round_trip_and_refusals() {
        assert_eq!(encode(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(decode("00abff"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(decode("00ABff"), Some(vec![0, 0xab, 0xff]));
        for bad in ["0", "zz", "+f", "-f", " f", "f ", "0x", "+0ff", "\u{e9}0"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        assert_eq!(decode_exact::<2>("0aff"), Some([0x0a, 0xff]));
        for bad in ["0aff00", "0af", "+aff", "0a+f", "0aff\n"] {
            assert_eq!(decode_exact::<2>(bad), None, "{bad:?}");
        }
        assert_eq!(random::<8>().len(), 16);
    }
}
