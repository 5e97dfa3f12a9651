//! GitHub App JWTs (`Authorization: Bearer <jwt>` on `/app/...` endpoints).
//!
//! The payload is always decoded and checked like GitHub does: `iss` names a registered app
//! (integer or numeric string), `exp` lies in the future but at most ten minutes ahead, `iat`
//! is not in the future (60 s of drift allowed), and the header says `RS256`. The RS256
//! signature is verified only for apps registered with a public key
//! ([`Sandbox::add_app_with_key`](crate::Sandbox::add_app_with_key)).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

const UNDECODABLE: &str = "A JSON web token could not be decoded";
const BAD_EXP: &str = "'Expiration time' claim ('exp') must be a numeric value representing the future time at which the assertion expires";

/// The claims GitHub looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Claims {
    pub iss: u64,
    pub iat: i64,
    pub exp: i64,
}

/// Decodes header and payload (no signature check).
pub(crate) fn decode(jwt: &str) -> Result<Claims, String> {
    let mut parts = jwt.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(UNDECODABLE.to_string());
    };
    let header = decode_part(header)?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(format!("{UNDECODABLE}: the algorithm must be RS256"));
    }
    let payload = decode_part(payload)?;
    let iss = match payload.get("iss") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| "'Issuer' claim ('iss') must be an Integer".to_string())?;
    let exp = payload
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or_else(|| BAD_EXP.to_string())?;
    let iat = payload.get("iat").and_then(Value::as_i64).ok_or_else(|| {
        "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued".to_string()
    })?;
    Ok(Claims { iss, iat, exp })
}

fn decode_part(part: &str) -> Result<Value, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| UNDECODABLE.to_string())?;
    serde_json::from_slice(&bytes).map_err(|_| UNDECODABLE.to_string())
}

/// GitHub's time rules, against `now` in unix seconds.
pub(crate) fn check_times(claims: &Claims, now: u64) -> Result<(), String> {
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    if claims.exp <= now {
        return Err(BAD_EXP.to_string());
    }
    if claims.exp > now + 600 + 30 {
        return Err("'Expiration time' claim ('exp') is too far in the future".to_string());
    }
    if claims.iat > now + 60 {
        return Err(
            "'Issued at' claim ('iat') must be an Integer representing the time that the assertion was issued"
                .to_string(),
        );
    }
    Ok(())
}

/// Checks that the PEM is an RSA public key `jsonwebtoken` can use.
pub(crate) fn check_public_key(pem: &[u8]) -> Result<(), String> {
    DecodingKey::from_rsa_pem(pem)
        .map(|_| ())
        .map_err(|e| format!("not an RSA public key in PEM form: {e}"))
}

/// Verifies the RS256 signature with the app's public key.
pub(crate) fn verify_signature(jwt: &str, public_key_pem: &[u8]) -> Result<(), String> {
    let key = DecodingKey::from_rsa_pem(public_key_pem).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::RS256);
    // Times were checked by `check_times`, with GitHub's rules.
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(jwt, &key, &validation)
        .map(|_| ())
        .map_err(|_| format!("{UNDECODABLE}: the signature does not match the app's key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(header: &str, payload: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn decodes_numeric_and_string_issuers() {
        let h = r#"{"alg":"RS256","typ":"JWT"}"#;
        let c = decode(&token(h, r#"{"iss":42,"iat":1,"exp":2}"#)).unwrap();
        assert_eq!(
            c,
            Claims {
                iss: 42,
                iat: 1,
                exp: 2
            }
        );
        let c = decode(&token(h, r#"{"iss":"42","iat":1,"exp":2}"#)).unwrap();
        assert_eq!(c.iss, 42);
    }

    #[test]
    fn rejects_garbage_and_wrong_algorithms() {
        assert!(decode("a.b.c").is_err());
        assert!(decode("only-one-part").is_err());
        assert!(decode(&token(r#"{"alg":"none"}"#, r#"{"iss":1,"iat":1,"exp":2}"#)).is_err());
        assert!(
            decode(&token(
                r#"{"alg":"RS256"}"#,
                r#"{"iss":"x","iat":1,"exp":2}"#
            ))
            .is_err()
        );
    }

    #[test]
    fn applies_github_time_rules() {
        let now = 1_000_000;
        let ok = Claims {
            iss: 1,
            iat: 999_940,
            exp: 1_000_540,
        };
        assert!(check_times(&ok, now).is_ok());
        assert!(check_times(&Claims { exp: 999_999, ..ok }, now).is_err());
        assert!(
            check_times(
                &Claims {
                    exp: 1_003_600,
                    ..ok
                },
                now
            )
            .is_err()
        );
        assert!(
            check_times(
                &Claims {
                    iat: 1_000_200,
                    ..ok
                },
                now
            )
            .is_err()
        );
    }
}
