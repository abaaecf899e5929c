//! Identifier rules shared by every entry point: caller-chosen ids must be safe
//! to embed in topics, URLs and SQL parameters.

/// Longest id a caller may choose.
pub const MAX_ID_LEN: usize = 128;

/// Checks a caller-chosen id: 1..=128 characters of `A-Z a-z 0-9 _ - . :`.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!("must be at most {MAX_ID_LEN} characters"));
    }
    if let Some(c) = id.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))) {
        return Err(format!("contains {c:?}; allowed are letters, digits and _ - . :"));
    }
    Ok(())
}

/// A new time-ordered id (UUIDv7).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::validate_id;

    #[test]
    fn accepts_uuids_and_slugs_and_rejects_the_rest() {
        assert!(validate_id("0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b").is_ok());
        assert!(validate_id("job-123.v2:a_b").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("a/b").is_err());
        assert!(validate_id("a b").is_err());
        assert!(validate_id(&"x".repeat(129)).is_err());
    }
}
