//! HS256 JSON Web Tokens for agents, signed by hand (hmac + sha2 + base64url) so the load
//! tool needs no JWT library. Agents authenticate on `GET /v1/tenant/ws` with these.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// `{"alg":"HS256","typ":"JWT"}`, the only header the gateway accepts.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Signs `payload_json` (already-serialised claims) with `secret`: `header.payload.sig`.
pub fn sign_hs256(secret: &[u8], payload_json: &str) -> String {
    let mut token = String::with_capacity(64 + payload_json.len() * 2);
    token.push_str(&URL_SAFE_NO_PAD.encode(HEADER));
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(payload_json));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(token.as_bytes());
    let sig = mac.finalize().into_bytes();
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(sig));
    token
}

/// An agent token with the claims the gateway requires (`sub`, `tenant`, `exp`) and `name`.
pub fn agent_token(
    secret: &str,
    tenant: &str,
    agent_id: &str,
    name: &str,
    exp_unix: u64,
) -> String {
    let claims = serde_json::json!({
        "sub": agent_id,
        "tenant": tenant,
        "exp": exp_unix,
        "name": name,
    });
    sign_hs256(secret.as_bytes(), &claims.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_rfc_style_reference_token() {
        // The well-known example from jwt.io, whose header is byte-for-byte ours.
        let token = sign_hs256(
            b"your-256-bit-secret",
            r#"{"sub":"1234567890","name":"John Doe","iat":1516239022}"#,
        );
        assert_eq!(
            token,
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
             eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.\
             SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
        );
    }

    #[test]
    fn agent_token_carries_the_claims() {
        let token = agent_token("s", "demo", "a1", "Agent 1", 42);
        let payload = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(claims["sub"], "a1");
        assert_eq!(claims["tenant"], "demo");
        assert_eq!(claims["exp"], 42);
        assert_eq!(claims["name"], "Agent 1");
    }
}
