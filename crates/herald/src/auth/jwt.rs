//! JWT verification (HS256 secret, RS256/ES256 keys from a JWKS file) and
//! minting of development tokens.

use super::{AuthError, Principal, Role};
use jsonwebtoken::{decode, decode_header, errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use std::sync::Arc;

/// How tokens are checked and read.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// HS256 shared secret.
    pub secret: Option<String>,
    /// Path of a JWKS file with RS256/ES256 public keys.
    pub jwks_file: Option<std::path::PathBuf>,
    /// Claim holding the tenant; a dotted path reaches into objects (`app_metadata.org_id`).
    pub tenant_claim: String,
    /// Claim holding the role.
    pub role_claim: String,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
}

#[derive(thiserror::Error, Debug)]
pub enum JwtSetupError {
    #[error("reading JWKS file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("parsing JWKS file {0}: {1}")]
    Parse(String, String),
    #[error("no JWT secret and no JWKS file configured")]
    NoKeys,
}

struct AsymmetricKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies bearer tokens; cheap to clone.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    hs: Option<(DecodingKey, EncodingKey)>,
    asymmetric: Vec<AsymmetricKey>,
    tenant_claim: Vec<String>,
    role_claim: Vec<String>,
    leeway: u64,
}

impl JwtVerifier {
    pub fn new(cfg: &JwtConfig) -> Result<Self, JwtSetupError> {
        let hs = cfg
            .secret
            .as_ref()
            .map(|s| (DecodingKey::from_secret(s.as_bytes()), EncodingKey::from_secret(s.as_bytes())));
        let mut asymmetric = Vec::new();
        if let Some(path) = &cfg.jwks_file {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| JwtSetupError::Read(shown.clone(), e))?;
            let set: jsonwebtoken::jwk::JwkSet =
                serde_json::from_str(&text).map_err(|e| JwtSetupError::Parse(shown.clone(), e.to_string()))?;
            for jwk in &set.keys {
                let key = DecodingKey::from_jwk(jwk).map_err(|e| JwtSetupError::Parse(shown.clone(), e.to_string()))?;
                let alg = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    _ => Algorithm::RS256,
                };
                asymmetric.push(AsymmetricKey { kid: jwk.common.key_id.clone(), alg, key });
            }
        }
        if hs.is_none() && asymmetric.is_empty() {
            return Err(JwtSetupError::NoKeys);
        }
        let path = |c: &str| c.split('.').map(str::to_string).collect();
        Ok(JwtVerifier {
            inner: Arc::new(Inner {
                hs,
                asymmetric,
                tenant_claim: path(&cfg.tenant_claim),
                role_claim: path(&cfg.role_claim),
                leeway: cfg.leeway_secs,
            }),
        })
    }

    /// Verifies a token and reads its principal.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let (claims, times) = self.decode(token)?;
        self.principal(&claims, times.exp)
    }

    /// Verifies a token's signature and time claims (`exp`, `nbf`, `iat`) and
    /// returns its claims, without mapping them to a principal (for roles
    /// Herald has no principal for, such as Supabase's `anon`).
    pub fn verify_claims(&self, token: &str) -> Result<Map<String, Value>, AuthError> {
        self.decode(token).map(|(claims, _)| claims)
    }

    /// Checks the signature, then reads and checks the time claims, once: every
    /// transport gets its expiry from here, so none can read it another way.
    fn decode(&self, token: &str) -> Result<(Map<String, Value>, TimeClaims), AuthError> {
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let key = match header.alg {
            Algorithm::HS256 => self.inner.hs.as_ref().map(|(d, _)| d),
            Algorithm::RS256 | Algorithm::ES256 => self
                .inner
                .asymmetric
                .iter()
                .find(|k| k.alg == header.alg && (header.kid.is_none() || k.kid == header.kid))
                .map(|k| &k.key),
            other => return Err(AuthError::Invalid(format!("algorithm {other:?} is not accepted"))),
        }
        .ok_or_else(|| AuthError::Invalid(format!("no key for algorithm {:?}", header.alg)))?;
        // The library checks the signature only. Its own time checks read
        // `exp` leniently (a float is rounded, a string is "missing"), which is
        // how a token could mean one expiry over HTTP and none over a socket.
        let mut validation = Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        // `sub` is required by `principal`, not here: Supabase anon keys have none.
        validation.set_required_spec_claims::<&str>(&[]);
        let data = decode::<Map<String, Value>>(token, key, &validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::MissingRequiredClaim(c) => AuthError::Invalid(format!("missing claim {c}")),
            _ => AuthError::Invalid(e.to_string()),
        })?;
        let now = crate::model::time::now_ms().max(0) as u64 / 1000;
        let times = TimeClaims::read(&data.claims)?;
        times.check(now, self.inner.leeway)?;
        Ok((data.claims, times))
    }

    /// The role claim of verified claims, as written in the token.
    pub fn role_name<'a>(&self, claims: &'a Map<String, Value>) -> Option<&'a str> {
        claim_path(claims, &self.inner.role_claim).and_then(Value::as_str)
    }

    /// The tenant claim of verified claims.
    pub fn tenant_of(&self, claims: &Map<String, Value>) -> Option<String> {
        claim_path(claims, &self.inner.tenant_claim).and_then(value_as_string)
    }

    fn principal(&self, claims: &Map<String, Value>, exp: u64) -> Result<Principal, AuthError> {
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| AuthError::Invalid("claim sub must be a non-empty string".into()))?;
        let tenant = claim_path(claims, &self.inner.tenant_claim)
            .and_then(value_as_string)
            .ok_or_else(|| AuthError::Invalid(format!("missing tenant claim {}", self.inner.tenant_claim.join("."))))?;
        let role_name = claim_path(claims, &self.inner.role_claim)
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::Invalid(format!("missing role claim {}", self.inner.role_claim.join("."))))?;
        let role = Role::parse(role_name).ok_or_else(|| AuthError::Invalid(format!("unknown role {role_name:?}")))?;
        Ok(Principal { sub: Arc::from(sub), tenant: Arc::from(tenant.as_str()), role, exp: Some(exp), key: None })
    }

    /// Mints an HS256 token (development and tests).
    pub fn mint(&self, sub: &str, tenant: &str, role: &str, ttl_secs: u64) -> Option<String> {
        let (_, enc) = self.inner.hs.as_ref()?;
        let now = crate::model::time::now_ms() as u64 / 1000;
        let mut claims = Map::new();
        claims.insert("sub".into(), sub.into());
        insert_path(&mut claims, &self.inner.tenant_claim, tenant.into());
        insert_path(&mut claims, &self.inner.role_claim, role.into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + ttl_secs).into());
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, enc).ok()
    }
}

/// The latest time a time claim may name: 9999-12-31T23:59:59Z. A larger
/// number is not a time but a mistake or an attack, and would overflow the
/// timers that count down to it.
pub const MAX_TIME_CLAIM: u64 = 253_402_300_799;

/// A token's registered time claims that Herald acts on, each a whole number
/// of seconds since the epoch (`iat` is checked for its form only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TimeClaims {
    exp: u64,
    nbf: Option<u64>,
}

impl TimeClaims {
    /// Reads `exp` (required), `nbf` and `iat`; anything but an integer from 0
    /// to [`MAX_TIME_CLAIM`] is refused: a fraction (`1.5`), a float
    /// (`1.7e9`), a negative number, a string, `null`.
    fn read(claims: &Map<String, Value>) -> Result<TimeClaims, AuthError> {
        let exp = time_claim(claims, "exp")?.ok_or_else(|| AuthError::Invalid("missing claim exp".into()))?;
        let nbf = time_claim(claims, "nbf")?;
        time_claim(claims, "iat")?;
        Ok(TimeClaims { exp, nbf })
    }

    /// Expired once `now` reaches `exp` (RFC 7519 §4.1.4), not valid before `nbf`,
    /// each with `leeway` seconds of clock skew.
    fn check(&self, now: u64, leeway: u64) -> Result<(), AuthError> {
        if now >= self.exp.saturating_add(leeway) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = self.nbf {
            if now.saturating_add(leeway) < nbf {
                return Err(AuthError::Invalid(format!(
                    "token is not valid before {nbf} (claim nbf); it is now {now}"
                )));
            }
        }
        Ok(())
    }
}

fn time_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, AuthError> {
    let Some(v) = claims.get(name) else { return Ok(None) };
    match v.as_u64() {
        // `as_u64` is None for floats, negative numbers and non-numbers.
        Some(t) if t <= MAX_TIME_CLAIM => Ok(Some(t)),
        _ => Err(AuthError::Invalid(format!(
            "claim {name} must be a whole number of seconds since 1970 from 0 to {MAX_TIME_CLAIM}, got {}",
            describe(v)
        ))),
    }
}

/// A short description of a claim's value for an error message.
fn describe(v: &Value) -> String {
    match v {
        Value::Number(n) => {
            let s = n.to_string();
            if s.len() > 32 {
                format!("{}…", &s[..32])
            } else {
                s
            }
        }
        Value::String(_) => "a string".into(),
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn claim_path<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first)?;
    for p in rest {
        v = v.get(p)?;
    }
    Some(v)
}

fn insert_path(claims: &mut Map<String, Value>, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            claims.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = claims.entry(first.clone()).or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = entry {
                insert_path(m, rest, value);
            }
        }
    }
}

fn value_as_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(claim: &str) -> JwtVerifier {
        JwtVerifier::new(&JwtConfig {
            secret: Some("s3cret".into()),
            jwks_file: None,
            tenant_claim: claim.into(),
            role_claim: "role".into(),
            leeway_secs: 0,
        })
        .unwrap()
    }

    #[test]
    fn minted_tokens_verify_with_nested_tenant_claims() {
        let v = verifier("app_metadata.org_id");
        let t = v.mint("u1", "acme", "staff", 60).unwrap();
        let p = v.verify(&t).unwrap();
        assert_eq!((&*p.sub, &*p.tenant, p.role), ("u1", "acme", Role::Staff));
    }

    #[test]
    fn wrong_secret_and_garbage_are_invalid() {
        let t = verifier("tenant").mint("u1", "acme", "staff", 60).unwrap();
        let other = JwtVerifier::new(&JwtConfig {
            secret: Some("other".into()),
            jwks_file: None,
            tenant_claim: "tenant".into(),
            role_claim: "role".into(),
            leeway_secs: 0,
        })
        .unwrap();
        assert_eq!(other.verify(&t).unwrap_err().code(), "invalid_token");
        assert_eq!(other.verify("nope").unwrap_err().code(), "invalid_token");
    }

    /// RS256 and ES256 tokens verify against the matching key of a JWKS file,
    /// chosen by `kid`; a token signed by a key not in the set does not.
    #[test]
    fn jwks_keys_verify_rs256_and_es256() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let v = JwtVerifier::new(&JwtConfig {
            secret: None,
            jwks_file: Some(fixtures.join("jwks.json")),
            tenant_claim: "org_id".into(),
            role_claim: "role".into(),
            leeway_secs: 0,
        })
        .unwrap();
        let exp = crate::model::time::now_ms() as u64 / 1000 + 60;
        let claims = serde_json::json!({"sub": "svc", "org_id": "acme", "role": "service_role", "exp": exp});
        for (alg, kid, file) in [(Algorithm::RS256, "rsa-1", "rs256.pem"), (Algorithm::ES256, "ec-1", "es256.pem")] {
            let pem = std::fs::read(fixtures.join(file)).unwrap();
            let key = match alg {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
                _ => EncodingKey::from_ec_pem(&pem).unwrap(),
            };
            let mut header = Header::new(alg);
            header.kid = Some(kid.into());
            let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
            let p = v.verify(&token).unwrap();
            assert_eq!((&*p.tenant, p.role), ("acme", Role::Service));
            // The same token claiming the other key's id is refused.
            let mut wrong = Header::new(alg);
            wrong.kid = Some("nope".into());
            let token = jsonwebtoken::encode(&wrong, &claims, &key).unwrap();
            assert_eq!(v.verify(&token).unwrap_err().code(), "invalid_token");
        }
        // HS256 is refused when only asymmetric keys are configured.
        let hs = jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(b"x")).unwrap();
        assert_eq!(v.verify(&hs).unwrap_err().code(), "invalid_token");
    }

    fn sign(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(b"s3cret")).unwrap()
    }

    /// `exp`, `nbf` and `iat` are whole seconds in range or the token is
    /// invalid; `nbf` is enforced with the leeway; every caller gets the same `exp`.
    #[test]
    fn time_claims_are_integers_in_range_and_nbf_is_enforced() {
        let v = verifier("tenant");
        let now = crate::model::time::now_ms() as u64 / 1000;
        let base = serde_json::json!({"sub": "u1", "tenant": "acme", "role": "staff"});
        let with = |pairs: &[(&str, serde_json::Value)]| {
            let mut c = base.clone();
            for (k, val) in pairs {
                c[*k] = val.clone();
            }
            sign(c)
        };
        let ok = v.verify(&with(&[("exp", (now + 60).into())])).unwrap();
        assert_eq!(ok.exp, Some(now + 60));
        for bad in [
            serde_json::json!((now + 60) as f64 + 0.5),
            serde_json::json!(1.9e9),
            serde_json::json!(10_000_000_000_000_000_000u64),
            serde_json::json!(1e19),
            serde_json::json!(-5),
            serde_json::json!((now + 60).to_string()),
            serde_json::Value::Null,
        ] {
            for claim in ["exp", "nbf", "iat"] {
                let mut pairs = vec![("exp", serde_json::json!(now + 60))];
                pairs.push((claim, bad.clone()));
                let err = v.verify(&with(&pairs)).unwrap_err();
                assert_eq!(err.code(), "invalid_token", "{claim} = {bad}: {err}");
                assert!(err.to_string().contains(claim), "{err}");
                assert!(v.verify_claims(&with(&pairs)).is_err(), "{claim} = {bad}");
            }
        }
        let missing = v.verify(&sign(base.clone())).unwrap_err();
        assert_eq!((missing.code(), missing.to_string().contains("exp")), ("invalid_token", true));
        // Expired once the clock reaches exp.
        assert_eq!(v.verify(&with(&[("exp", now.into())])).unwrap_err(), AuthError::Expired);
        // Not valid before nbf; a past nbf is fine.
        let early = v.verify(&with(&[("exp", (now + 600).into()), ("nbf", (now + 300).into())])).unwrap_err();
        assert_eq!(early.code(), "invalid_token");
        assert!(early.to_string().contains("nbf"), "{early}");
        v.verify(&with(&[("exp", (now + 600).into()), ("nbf", (now - 10).into()), ("iat", (now - 10).into())]))
            .unwrap();
        // The leeway forgives that much skew on both ends.
        let lenient = JwtVerifier::new(&JwtConfig {
            secret: Some("s3cret".into()),
            jwks_file: None,
            tenant_claim: "tenant".into(),
            role_claim: "role".into(),
            leeway_secs: 30,
        })
        .unwrap();
        lenient.verify(&with(&[("exp", (now - 10).into()), ("nbf", (now + 10).into())])).unwrap();
        assert!(lenient.verify(&with(&[("exp", (now + 600).into()), ("nbf", (now + 60).into())])).is_err());
    }
}
