//! Password hashes (argon2id, PHC strings) and API token secrets (random,
//! stored as SHA-256: a 256-bit random secret needs no slow hash).

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use base64::Engine as _;

pub fn hash(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash a password: {e}"))
}

pub fn verify(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Does the work of a verification against a fixed hash, for unknown users.
pub fn burn(password: &str) {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let phc = DUMMY.get_or_init(|| hash("not a password of anyone").unwrap_or_default());
    let _ = verify(password, phc);
}

/// 32 random bytes, base64url without padding (43 characters).
pub fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn digest(secret: &str) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes())
        .as_ref()
        .to_vec()
}

/// Compares a stored digest with a presented secret in constant time.
pub fn same_digest(stored: &[u8], secret: &str) -> bool {
    let d = digest(secret);
    stored.len() == d.len() && stored.iter().zip(&d).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let a = hash("open sesame").unwrap();
        let b = hash("open sesame").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b);
        assert!(verify("open sesame", &a));
        assert!(!verify("open sesame!", &a));
        assert!(!verify("open sesame", "not a hash"));
    }

    #[test]
    fn secrets_and_digests() {
        let s = random_secret();
        assert_eq!(s.len(), 43);
        assert_ne!(s, random_secret());
        assert!(same_digest(&digest(&s), &s));
        assert!(!same_digest(&digest(&s), "other"));
        assert!(!same_digest(&[], &s));
    }
}
