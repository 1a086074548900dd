//! HS256 JSON Web Tokens for agents, signed through `confab_protocol::token` (the
//! workspace's one signer). Agents authenticate on `GET /v1/tenant/ws` with these.

use confab_protocol::token::{sign_hs256, HS256_HEADER};

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
    sign_hs256(secret.as_bytes(), HS256_HEADER, &claims.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    #[test]
    fn matches_the_rfc_style_reference_token() {
        // The well-known example from jwt.io, whose header is byte-for-byte ours.
        let token = sign_hs256(
            b"your-256-bit-secret",
            HS256_HEADER,
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
