//! Worker API keys: `hk_<id>_<secret>`. Only a SHA-256 of the secret is stored
//! (the secret is 256 random bits, so a slow hash adds nothing); comparison is
//! constant-time.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A key as shown once to its creator.
pub struct NewKey {
    pub id: String,
    pub token: String,
    pub hash: Vec<u8>,
}

/// Makes a new random key.
pub fn generate() -> NewKey {
    let mut rng = rand::thread_rng();
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let id = hex(&id);
    let secret = hex(&secret);
    NewKey { token: format!("hk_{id}_{secret}"), hash: digest(&secret), id }
}

/// Splits a presented key into (id, secret); `None` if it is not shaped like a key.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("hk_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 12 && secret.len() == 64).then_some((id, secret))
}

/// Whether `secret` matches the stored hash, in constant time.
pub fn matches(secret: &str, stored_hash: &[u8]) -> bool {
    digest(secret).ct_eq(stored_hash).into()
}

fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_keys_parse_and_match_only_themselves() {
        let k = super::generate();
        let (id, secret) = super::parse(&k.token).unwrap();
        assert_eq!(id, k.id);
        assert!(super::matches(secret, &k.hash));
        assert!(!super::matches(&"0".repeat(64), &k.hash));
        assert!(super::parse("hk_short_x").is_none());
    }
}
