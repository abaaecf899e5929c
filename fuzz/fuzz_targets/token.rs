//! Bearer tokens (HTTP `Authorization`, the native `auth`/`refresh` frames, the
//! SSE `token` parameter, Phoenix `access_token`): the first byte picks how the
//! rest is used. Even: the rest is the token as sent (a JWT or an API key).
//! Odd: the rest is a JWT's claims, signed here with the server's secret, so
//! the claims reader (`exp`/`nbf`/`iat`, tenant and role claims) sees them.

#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use herald::auth::jwt::MAX_TIME_CLAIM;
use herald::auth::{apikey, JwtConfig, JwtVerifier};
use herald::session::token::expiry_instant;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

const SECRET: &str = "fuzz-secret";

static VERIFIER: LazyLock<JwtVerifier> = LazyLock::new(|| {
    JwtVerifier::new(&JwtConfig {
        secret: Some(SECRET.into()),
        jwks_file: None,
        tenant_claim: "app_metadata.org_id".into(),
        role_claim: "role".into(),
        leeway_secs: 30,
    })
    .expect("an HS256 verifier")
});

fn signed(claims: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let message = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).expect("HS256 signs");
    format!("{message}.{signature}")
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let token = if first % 2 == 0 {
        let Ok(t) = std::str::from_utf8(rest) else { return };
        if let Some((id, secret)) = apikey::parse(t) {
            assert_eq!((id.len(), secret.len()), (12, 64));
        }
        t.to_string()
    } else {
        signed(rest)
    };
    let v = &*VERIFIER;
    if let Ok(p) = v.verify(&token) {
        assert!(!p.sub.is_empty());
        let exp = p.exp.expect("a JWT principal has an expiry");
        assert!(exp <= MAX_TIME_CLAIM);
        // What each socket arms its expiry timer with.
        let _ = expiry_instant(exp);
    }
    if let Ok(claims) = v.verify_claims(&token) {
        let _ = v.role_name(&claims);
        let _ = v.tenant_of(&claims);
    }
});
