//! Lowercase hex, used for digests, tokens, nonces and generated ids.

/// Lowercase hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of an even-length hex string; `None` for anything else.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
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

    /// Round trip, and refusal of odd lengths and non-hex digits.
    #[test]
    fn round_trip_and_refusals() {
        assert_eq!(encode(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(decode("00abff"), Some(vec![0, 0xab, 0xff]));
        assert_eq!(decode("0"), None);
        assert_eq!(decode("zz"), None);
        assert_eq!(random::<8>().len(), 16);
    }
}
