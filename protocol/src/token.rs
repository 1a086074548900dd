//! Credential formats. All are verified without a store lookup; comparisons of MACs are
//! constant-time.
//!
//! - **Session token** `s1.<kid>.<payload>.<mac>`: binds (tenant, visitor, conversation)
//!   until `exp`. `kid` names the secret that signed it, so a deployment can rotate
//!   `session_secret` and keep accepting tokens signed by the previous one.
//! - **Init challenge** `c1.<kid>.<payload>.<mac>`: tenant, random nonce, expiry. Single
//!   use is enforced by the caller through the store's replay set (keyed by the nonce).
//! - **Agent JWT**: HS256 only, `sub`, `tenant`, `exp` required, `name` optional.
//! - **Visitor token** `vis_` + 192 random bits (base64url). Stored only as a SHA-256 hash.
//! - **Webhook signature** `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`:
//!   what Confab sends in `X-Confab-Signature` to a tenant's webhooks and bots (the scheme
//!   Stripe made familiar; the timestamp lets receivers refuse replays).
//!
//! MACs are HMAC-SHA256 over a domain tag plus the payload, so a token of one kind can
//! never be replayed as another.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Why a credential was refused (never shown in detail to clients).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    BadSignature,
    UnknownKey,
    Expired,
    /// `nbf` (not before) is still ahead, beyond [`NBF_LEEWAY_MS`].
    NotYetValid,
    WrongAlgorithm,
    MissingClaim(&'static str),
}

/// How far ahead an agent JWT's `nbf` may be and still count as reached: the clocks of the
/// tenant's backend (which signs) and of the gateway disagree by a little.
pub const NBF_LEEWAY_MS: i64 = 60_000;

/// The session/challenge signing keys: the current one signs, all verify.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Keyring").field("kids", &kids).finish()
    }
}

impl Keyring {
    /// `current` signs; `previous` keys are still accepted for verification.
    pub fn new(current: &[u8], previous: &[Vec<u8>]) -> Keyring {
        let mut keys = vec![(key_id(current), current.to_vec())];
        keys.extend(previous.iter().map(|k| (key_id(k), k.clone())));
        Keyring { keys }
    }

    fn current(&self) -> (&str, &[u8]) {
        (&self.keys[0].0, &self.keys[0].1)
    }

    fn find(&self, kid: &str) -> Option<&[u8]> {
        self.keys
            .iter()
            .find(|(k, _)| k == kid)
            .map(|(_, v)| v.as_slice())
    }

    fn sign(&self, prefix: &str, payload: &impl Serialize) -> String {
        let (kid, key) = self.current();
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(payload).unwrap_or_default());
        let mac = URL_SAFE_NO_PAD.encode(mac(key, prefix, &body));
        format!("{prefix}.{kid}.{body}.{mac}")
    }

    fn verify<T: for<'de> Deserialize<'de>>(
        &self,
        prefix: &str,
        token: &str,
    ) -> Result<T, TokenError> {
        if token.len() > 2048 {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(p), Some(kid), Some(body), Some(sig), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        if p != prefix {
            return Err(TokenError::Malformed);
        }
        let key = self.find(kid).ok_or(TokenError::UnknownKey)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| TokenError::Malformed)?;
        if !bool::from(mac(key, prefix, body).as_slice().ct_eq(&sig)) {
            return Err(TokenError::BadSignature);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed)?;
        serde_json::from_slice(&raw).map_err(|_| TokenError::Malformed)
    }
}

/// A short, stable, non-secret name for a key.
pub fn key_id(key: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(b"confab-key-id\0")
        .chain_update(key)
        .finalize();
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

fn mac(key: &[u8], domain: &str, body: &str) -> Vec<u8> {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(domain.as_bytes());
    m.update(b"\0");
    m.update(body.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// What a session token binds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SessionClaims {
    #[serde(rename = "t")]
    pub tenant: String,
    #[serde(rename = "v")]
    pub visitor_id: String,
    #[serde(rename = "c")]
    pub conversation_id: String,
    /// Expiry, epoch milliseconds.
    #[serde(rename = "e")]
    pub expires_ms: i64,
}

pub fn sign_session(keys: &Keyring, claims: &SessionClaims) -> String {
    keys.sign("s1", claims)
}

pub fn verify_session(
    keys: &Keyring,
    token: &str,
    now_ms: i64,
) -> Result<SessionClaims, TokenError> {
    let claims: SessionClaims = keys.verify("s1", token)?;
    if claims.expires_ms <= now_ms {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// The `sig` of an attachment link: HMAC-SHA256 with the session secret over (tenant, id,
/// expiry in unix seconds), URL-safe base64. The tenant is covered because the link names
/// it (`t=`): the store keeps uploads per tenant.
pub fn sign_attachment_link(keys: &Keyring, tenant: &str, id: &str, exp_secs: i64) -> String {
    let (_, key) = keys.current();
    URL_SAFE_NO_PAD.encode(mac(
        key,
        "confab-attachment",
        &format!("{tenant}\0{id}\0{exp_secs}"),
    ))
}

/// Whether `sig` is a link signature of (tenant, id, exp) by any key of the ring and
/// `exp` has not passed at `now_ms`.
pub fn verify_attachment_link(
    keys: &Keyring,
    tenant: &str,
    id: &str,
    exp_secs: i64,
    sig: &str,
    now_ms: i64,
) -> bool {
    if exp_secs.saturating_mul(1000) <= now_ms {
        return false;
    }
    let Ok(given) = URL_SAFE_NO_PAD.decode(sig) else {
        return false;
    };
    let body = format!("{tenant}\0{id}\0{exp_secs}");
    keys.keys.iter().any(|(_, key)| {
        bool::from(
            mac(key, "confab-attachment", &body)
                .as_slice()
                .ct_eq(given.as_slice()),
        )
    })
}

/// What an init challenge carries.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ChallengeClaims {
    #[serde(rename = "t")]
    pub tenant: String,
    /// 128 random bits, hex: the key of the replay set.
    #[serde(rename = "n")]
    pub nonce: String,
    #[serde(rename = "e")]
    pub expires_ms: i64,
}

/// Issues a fresh challenge for `tenant`, valid for `ttl_ms`.
pub fn issue_challenge(
    keys: &Keyring,
    tenant: &str,
    now_ms: i64,
    ttl_ms: i64,
) -> (String, ChallengeClaims) {
    let mut nonce = [0u8; 16];
    rand::rng().fill_bytes(&mut nonce);
    let claims = ChallengeClaims {
        tenant: tenant.to_owned(),
        nonce: nonce.iter().map(|b| format!("{b:02x}")).collect(),
        expires_ms: now_ms + ttl_ms,
    };
    (keys.sign("c1", &claims), claims)
}

/// Checks signature, expiry and tenant binding. Single use is the caller's job.
pub fn verify_challenge(
    keys: &Keyring,
    token: &str,
    tenant: &str,
    now_ms: i64,
) -> Result<ChallengeClaims, TokenError> {
    let claims: ChallengeClaims = keys.verify("c1", token)?;
    if claims.expires_ms <= now_ms {
        return Err(TokenError::Expired);
    }
    if claims.tenant != tenant {
        return Err(TokenError::BadSignature);
    }
    Ok(claims)
}

/// A new visitor token: `vis_` + 192 random bits, URL-safe.
pub fn new_visitor_token() -> String {
    let mut b = [0u8; 24];
    rand::rng().fill_bytes(&mut b);
    format!("vis_{}", URL_SAFE_NO_PAD.encode(b))
}

/// What the store keeps instead of the visitor token itself.
pub fn hash_visitor_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Random URL-safe id with `bits` of entropy (rounded up to bytes).
pub fn random_id(prefix: &str, bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(b))
}

/// The claims of a verified agent JWT.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AgentClaims {
    pub sub: String,
    pub tenant: String,
    /// Expiry, seconds since the epoch (JWT `NumericDate`).
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Deserialize)]
struct JwtHeader {
    alg: String,
}

#[derive(Deserialize)]
struct LooseClaims {
    sub: Option<serde_json::Value>,
    tenant: Option<serde_json::Value>,
    exp: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
    name: Option<serde_json::Value>,
}

/// The JWT header of every token Confab signs, and the only one it accepts.
pub const HS256_HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Signs a JWS in compact form — `b64(header).b64(payload).b64(HMAC-SHA256)` — over
/// already-serialised JSON. The one HS256 signer of the workspace: agent tokens here, the
/// load tool's tokens, and tests' deliberately odd headers.
pub fn sign_hs256(secret: &[u8], header_json: &str, payload_json: &str) -> String {
    let mut token = String::with_capacity(64 + (header_json.len() + payload_json.len()) * 4 / 3);
    token.push_str(&URL_SAFE_NO_PAD.encode(header_json));
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(payload_json));
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(m.finalize().into_bytes()));
    token
}

/// The `X-Confab-Signature` value for `body` sent at `unix_secs`.
pub fn sign_webhook(secret: &[u8], unix_secs: i64, body: &[u8]) -> String {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(unix_secs.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    let mac = m.finalize().into_bytes();
    let mut out = format!("t={unix_secs},v1=");
    for b in mac {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// What a receiver does with `X-Confab-Signature`: true when one `v1` entry is the
/// HMAC of `"<t>.<body>"` under `secret` and `t` is within `tolerance_secs` of `now_secs`.
pub fn verify_webhook(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_secs: i64,
    tolerance_secs: i64,
) -> bool {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => sigs.push(v),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if (now_secs - t).abs() > tolerance_secs {
        return false;
    }
    let expected = sign_webhook(secret, t, body);
    let expected = &expected[expected.len() - 64..];
    sigs.iter()
        .any(|s| bool::from(s.as_bytes().ct_eq(expected.as_bytes())))
}

/// Signs an agent JWT (what a tenant's backend does; also used by the demo and tests).
pub fn sign_agent_jwt(secret: &[u8], claims: &AgentClaims) -> String {
    let payload = serde_json::to_string(claims).unwrap_or_default();
    sign_hs256(secret, HS256_HEADER, &payload)
}

/// Reads the `tenant` claim *without* verifying anything, to pick the key to verify with.
pub fn peek_jwt_tenant(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let raw = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: LooseClaims = serde_json::from_slice(&raw).ok()?;
    claims.tenant?.as_str().map(str::to_owned)
}

/// Verifies an HS256 agent JWT: algorithm exactly HS256, valid signature, `sub` and
/// `tenant` (non-empty strings) and `exp` (number, in the future) present, and `nbf`, if
/// present, a number not ahead of `now_ms` by more than [`NBF_LEEWAY_MS`].
pub fn verify_agent_jwt(
    token: &str,
    secret: &[u8],
    now_ms: i64,
) -> Result<AgentClaims, TokenError> {
    if token.len() > 4096 {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header: JwtHeader = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|raw| serde_json::from_slice(&raw).ok())
        .ok_or(TokenError::Malformed)?;
    if header.alg != "HS256" {
        return Err(TokenError::WrongAlgorithm);
    }
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| TokenError::Malformed)?;
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(h.as_bytes());
    m.update(b".");
    m.update(p.as_bytes());
    m.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
    let raw = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| TokenError::Malformed)?;
    let loose: LooseClaims = serde_json::from_slice(&raw).map_err(|_| TokenError::Malformed)?;
    let sub = loose
        .sub
        .as_ref()
        .and_then(|v| v.as_str())
        .filter(|s| !s.trim().is_empty())
        .ok_or(TokenError::MissingClaim("sub"))?;
    let tenant = loose
        .tenant
        .as_ref()
        .and_then(|v| v.as_str())
        .filter(|s| !s.trim().is_empty())
        .ok_or(TokenError::MissingClaim("tenant"))?;
    let exp = loose
        .exp
        .as_ref()
        .filter(|v| v.is_number())
        .ok_or(TokenError::MissingClaim("exp"))?;
    // An integer stays exact (an f64 drops digits past 2^53); a fraction (NumericDate
    // allows one) or an integer beyond i64 goes through f64, whose casts saturate.
    let (exp, exp_ms) = match exp.as_i64() {
        Some(secs) => (secs, secs.saturating_mul(1000)),
        None => {
            let secs = exp.as_f64().unwrap_or(f64::MAX);
            (secs as i64, (secs * 1000.0) as i64)
        }
    };
    if exp_ms <= now_ms {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = &loose.nbf {
        let nbf_secs = nbf.as_f64().ok_or(TokenError::Malformed)?;
        if nbf_secs * 1000.0 > (now_ms + NBF_LEEWAY_MS) as f64 {
            return Err(TokenError::NotYetValid);
        }
    }
    Ok(AgentClaims {
        sub: sub.to_owned(),
        tenant: tenant.to_owned(),
        exp,
        name: loose.name.and_then(|v| v.as_str().map(str::to_owned)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::new(b"secret-one", &[])
    }

    #[test]
    fn webhook_signature_matches_an_independent_hmac() {
        // Python: hmac.new(b"whsec_0123456789abcdef", b'1700000000.{"a":1}', sha256).hexdigest()
        let sig = sign_webhook(b"whsec_0123456789abcdef", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            sig,
            "t=1700000000,v1=9f5e37cdc7ea587c7c02062d93283cad000d66a831b2a1676418696db47ed6c2"
        );
        let secret = b"whsec_0123456789abcdef";
        assert!(verify_webhook(
            secret,
            &sig,
            br#"{"a":1}"#,
            1_700_000_100,
            300
        ));
        assert!(!verify_webhook(
            secret,
            &sig,
            br#"{"a":2}"#,
            1_700_000_100,
            300
        ));
        assert!(!verify_webhook(
            b"other",
            &sig,
            br#"{"a":1}"#,
            1_700_000_100,
            300
        ));
        assert!(!verify_webhook(
            secret,
            &sig,
            br#"{"a":1}"#,
            1_700_001_000,
            300
        ));
        assert!(!verify_webhook(
            secret,
            "v1=00",
            br#"{"a":1}"#,
            1_700_000_000,
            300
        ));
    }

    #[test]
    fn session_round_trip_and_expiry() {
        let c = SessionClaims {
            tenant: "t".into(),
            visitor_id: "v".into(),
            conversation_id: "c".into(),
            expires_ms: 1000,
        };
        let tok = sign_session(&ring(), &c);
        assert_eq!(verify_session(&ring(), &tok, 999).unwrap(), c);
        assert_eq!(
            verify_session(&ring(), &tok, 1000),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn tampering_is_detected() {
        let c = SessionClaims {
            tenant: "t".into(),
            visitor_id: "v".into(),
            conversation_id: "c".into(),
            expires_ms: 1000,
        };
        let tok = sign_session(&ring(), &c);
        let forged = SessionClaims {
            tenant: "other".into(),
            ..c
        };
        let forged_body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let mut parts: Vec<&str> = tok.split('.').collect();
        parts[2] = &forged_body;
        assert_eq!(
            verify_session(&ring(), &parts.join("."), 0),
            Err(TokenError::BadSignature)
        );
        assert!(verify_session(&ring(), "garbage", 0).is_err());
        assert!(verify_session(&Keyring::new(b"other", &[]), &tok, 0).is_err());
    }

    #[test]
    fn rotation_keeps_old_tokens_valid() {
        let c = SessionClaims {
            tenant: "t".into(),
            visitor_id: "v".into(),
            conversation_id: "c".into(),
            expires_ms: 1000,
        };
        let tok = sign_session(&ring(), &c);
        let rotated = Keyring::new(b"secret-two", &[b"secret-one".to_vec()]);
        assert!(verify_session(&rotated, &tok, 0).is_ok());
    }

    #[test]
    fn challenge_is_not_a_session() {
        let (tok, _) = issue_challenge(&ring(), "t", 0, 1000);
        assert!(verify_challenge(&ring(), &tok, "t", 10).is_ok());
        assert!(verify_challenge(&ring(), &tok, "u", 10).is_err());
        assert_eq!(
            verify_challenge(&ring(), &tok, "t", 1000),
            Err(TokenError::Expired)
        );
        let as_session = tok.replacen("c1", "s1", 1);
        assert!(verify_session(&ring(), &as_session, 0).is_err());
    }

    #[test]
    fn jwt_rules() {
        let claims = AgentClaims {
            sub: "a1".into(),
            tenant: "demo".into(),
            exp: 2_000_000_000,
            name: Some("Ann".into()),
        };
        let tok = sign_agent_jwt(b"k", &claims);
        assert_eq!(peek_jwt_tenant(&tok).as_deref(), Some("demo"));
        assert_eq!(verify_agent_jwt(&tok, b"k", 0).unwrap(), claims);
        assert_eq!(
            verify_agent_jwt(&tok, b"wrong", 0),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify_agent_jwt(&tok, b"k", 2_000_000_000_000),
            Err(TokenError::Expired)
        );
        // alg none and alg HS512 are refused even with a "valid" signature part.
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let payload = tok.split('.').nth(1).unwrap();
        assert_eq!(
            verify_agent_jwt(&format!("{none_header}.{payload}."), b"k", 0),
            Err(TokenError::WrongAlgorithm)
        );
        // exp is required.
        let no_exp = URL_SAFE_NO_PAD.encode(br#"{"sub":"a","tenant":"demo"}"#);
        let h = tok.split('.').next().unwrap();
        let mut m = HmacSha256::new_from_slice(b"k").unwrap();
        m.update(format!("{h}.{no_exp}").as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(m.finalize().into_bytes());
        assert_eq!(
            verify_agent_jwt(&format!("{h}.{no_exp}.{sig}"), b"k", 0),
            Err(TokenError::MissingClaim("exp"))
        );
    }

    #[test]
    fn jwt_nbf_ahead_and_empty_ids_are_refused() {
        let signed = |payload: &str| sign_hs256(b"k", HS256_HEADER, payload);
        let now_ms = 1_000_000_000_000;
        let at = |nbf: &str| {
            signed(&format!(
                r#"{{"sub":"a","tenant":"t","exp":2000000000,"nbf":{nbf}}}"#
            ))
        };
        assert!(verify_agent_jwt(&at("1000000000"), b"k", now_ms).is_ok());
        // Within the leeway for clock skew, then beyond it.
        assert!(verify_agent_jwt(&at("1000000060"), b"k", now_ms).is_ok());
        assert_eq!(
            verify_agent_jwt(&at("1000000061"), b"k", now_ms),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(
            verify_agent_jwt(&at(r#""soon""#), b"k", now_ms),
            Err(TokenError::Malformed)
        );
        for (payload, claim) in [
            (r#"{"sub":"","tenant":"t","exp":2000000000}"#, "sub"),
            (r#"{"sub":"a","tenant":"","exp":2000000000}"#, "tenant"),
            (r#"{"sub":"  ","tenant":"t","exp":2000000000}"#, "sub"),
        ] {
            assert_eq!(
                verify_agent_jwt(&signed(payload), b"k", now_ms),
                Err(TokenError::MissingClaim(claim))
            );
        }
    }

    #[test]
    fn jwt_exp_stays_exact() {
        // Past 2^53 an f64 drops digits (found by a property test).
        let claims = AgentClaims {
            sub: "a".into(),
            tenant: "t".into(),
            exp: 17_002_751_011_703_349,
            name: None,
        };
        let tok = sign_agent_jwt(b"k", &claims);
        assert_eq!(verify_agent_jwt(&tok, b"k", 0).unwrap().exp, claims.exp);
    }

    #[test]
    fn visitor_tokens_are_long_and_url_safe() {
        let t = new_visitor_token();
        assert!(t.starts_with("vis_") && t.len() >= 4 + 22);
        assert!(t[4..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(t, new_visitor_token());
        assert_eq!(hash_visitor_token(&t).len(), 64);
    }
}
