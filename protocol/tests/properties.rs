//! Property tests of the protocol crate's pure functions: whatever a client sends, they
//! never panic, and what they accept satisfies the rules written on them.
//!
//! - validation (`validate`): message bodies, `clientMessageId`, e-mail, locale, variables,
//!   public keys, event types;
//! - credentials (`token`): session tokens, init challenges, agent JWTs — sign → verify
//!   round-trips; arbitrary strings and mutations of valid tokens never verify;
//! - timestamps (`time`): format → parse round-trips, arbitrary text never panics;
//! - WebSocket client frames (`frames::ClientFrame::parse`).
//!
//! The default 256 cases per property keep the whole file well under a second.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Text that leans towards what validation cares about: whitespace, zero-width and control
/// characters, `@`, `.`, `-`, ASCII, and now and then any scalar value.
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::range('a', 'z'),
        2 => proptest::char::range('0', '9'),
        2 => prop::sample::select(vec![
            ' ', '\t', '\n', '\r', '\u{A0}', '\u{3000}', '\u{200B}', '\u{200C}', '\u{200D}',
            '\u{2060}', '\u{FEFF}', '\u{0}', '\u{7F}', '\u{85}', '@', '.', '-', '_', '+', ':',
            'A', 'Z', 'ü', '😀', '\u{301}',
        ]),
        1 => any::<char>(),
    ]
}

fn tricky_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(tricky_char(), 0..max).prop_map(|v| v.into_iter().collect())
}

/// Any JSON value, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    json_value_sized(6, 32)
}

/// Any JSON value up to `depth` levels and about `size` nodes.
fn json_value_sized(depth: u32, size: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // NaN and infinities become null
        tricky_string(12).prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, size, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(tricky_string(8), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

mod validation {
    use super::*;
    use confab_protocol::validate::*;

    fn variable_key_ok(k: &str) -> bool {
        let b = k.as_bytes();
        !b.is_empty()
            && b.len() <= 64
            && b[0].is_ascii_lowercase()
            && b[1..]
                .iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
    }

    fn depth(v: &Value) -> usize {
        match v {
            Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    proptest! {
        /// Accepted exactly when something visible is left and it fits; the answer is the
        /// trimmed text.
        #[test]
        fn message_bodies(text in tricky_string(40), max in 1usize..30) {
            let trimmed = text.trim();
            let visible = trimmed.chars().any(|c| !is_invisible(c));
            match message_body("message", &text, max) {
                Ok(body) => {
                    prop_assert_eq!(body.as_str(), trimmed);
                    prop_assert!(visible, "accepted an empty message {:?}", text);
                    prop_assert!(chars(&body) <= max);
                }
                Err(e) => {
                    prop_assert_eq!(e.field.as_deref(), Some("message"));
                    prop_assert!(!visible || chars(trimmed) > max, "refused {:?}", text);
                }
            }
        }

        /// 1 to 64 characters, none of them a control character.
        #[test]
        fn client_message_ids(id in tricky_string(80)) {
            let rule = (1..=MAX_CLIENT_MESSAGE_ID_CHARS).contains(&chars(&id))
                && !id.chars().any(char::is_control);
            prop_assert_eq!(client_message_id(&id).is_ok(), rule, "{:?}", id);
        }

        #[test]
        fn accepted_emails_are_local_at_domain(s in tricky_string(40)) {
            if is_email(&s) {
                prop_assert!(s.len() <= 254);
                prop_assert!(!s.chars().any(|c| c.is_whitespace() || c.is_control()));
                let (local, domain) = s.split_once('@').expect("an @");
                prop_assert!(!domain.contains('@'), "one @ only: {:?}", s);
                prop_assert!(!local.is_empty() && local.len() <= 64);
                let labels: Vec<&str> = domain.split('.').collect();
                prop_assert!(labels.len() >= 2, "{:?}", s);
                for l in &labels {
                    prop_assert!(!l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-'));
                }
                let tld = labels.last().unwrap();
                prop_assert!(tld.len() >= 2 && !tld.chars().all(|c| c.is_ascii_digit()));
            }
        }

        #[test]
        fn ordinary_emails_are_accepted(
            local in "[a-z0-9]([a-z0-9._+-]{0,20}[a-z0-9])?",
            labels in prop::collection::vec("[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", 1..4),
            tld in "[a-z]{2,8}",
        ) {
            let email = format!("{local}@{}.{tld}", labels.join("."));
            prop_assert!(is_email(&email), "{}", email);
        }

        #[test]
        fn accepted_locales_are_bcp47_shaped(s in tricky_string(20)) {
            if is_locale(&s) {
                prop_assert!(!s.is_empty() && s.len() <= MAX_LOCALE_CHARS);
                let mut parts = s.split('-');
                let lang = parts.next().unwrap();
                prop_assert!(
                    ((2..=8).contains(&lang.len()) && lang.bytes().all(|b| b.is_ascii_alphabetic()))
                        || lang.eq_ignore_ascii_case("x") || lang.eq_ignore_ascii_case("i"),
                    "{:?}", s
                );
                for p in parts {
                    prop_assert!((1..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()), "{:?}", s);
                }
            }
        }

        #[test]
        fn ordinary_locales_are_accepted(s in "[a-z]{2,3}(-[A-Z]{2})?(-[0-9]{3})?") {
            prop_assert!(is_locale(&s), "{}", s);
        }

    }

    proptest! {
        // Up to 60 keys of nested values make a case ~20× dearer than the others: fewer cases.
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the map, accepted variables follow seed 004's rules.
        #[test]
        fn accepted_variables_follow_the_rules(
            vars in prop::collection::btree_map(
                prop_oneof!["[a-z][a-z0-9_]{0,8}", tricky_string(8)], json_value_sized(6, 8), 0..60),
        ) {
            let vars: Map<String, Value> = vars.into_iter().collect();
            if variables(&vars).is_ok() {
                prop_assert!(vars.len() <= MAX_VARIABLES);
                prop_assert!(serde_json::to_string(&vars).unwrap().len() <= MAX_VARIABLES_BYTES);
                for (k, v) in &vars {
                    prop_assert!(variable_key_ok(k), "key {:?}", k);
                    prop_assert!(!v.to_string().contains('{'), "an object in {:?}", v);
                    prop_assert!(depth(v) <= MAX_VARIABLE_DEPTH, "too deep: {:?}", v);
                }
            }
        }

    }

    proptest! {
        /// Valid variables (snake_case keys, scalars and shallow arrays) are accepted.
        #[test]
        fn valid_variables_are_accepted(
            vars in prop::collection::btree_map(
                "[a-z][a-z0-9_]{0,10}",
                prop_oneof![
                    Just(Value::Null),
                    any::<i32>().prop_map(Value::from),
                    "[ -~]{0,20}".prop_map(Value::String),
                    prop::collection::vec(any::<bool>().prop_map(Value::Bool), 0..4).prop_map(|v| json!([v])),
                ],
                0..20),
        ) {
            let vars: Map<String, Value> = vars.into_iter().collect();
            prop_assert!(variables(&vars).is_ok(), "{:?}", vars);
        }

        #[test]
        fn public_keys_and_event_types_never_panic(s in tricky_string(50)) {
            if is_public_key(&s) {
                prop_assert!(s.len() == 40 && s.starts_with("pk_live_"));
                prop_assert!(s[8..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            }
            if is_event_type(&s) {
                prop_assert!(s.len() <= 64 && s.matches(':').count() == 1);
                prop_assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b':'));
            }
        }
    }
}

mod tokens {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use confab_protocol::token::*;

    fn ring() -> Keyring {
        Keyring::new(b"property-secret", &[b"older-secret".to_vec()])
    }

    fn session_claims() -> impl Strategy<Value = SessionClaims> {
        (
            tricky_string(20),
            tricky_string(20),
            tricky_string(20),
            any::<i64>(),
        )
            .prop_map(
                |(tenant, visitor_id, conversation_id, expires_ms)| SessionClaims {
                    tenant,
                    visitor_id,
                    conversation_id,
                    expires_ms,
                },
            )
    }

    fn agent_claims() -> impl Strategy<Value = AgentClaims> {
        (
            tricky_string(20),
            tricky_string(20),
            1i64..i64::MAX,
            prop::option::of(tricky_string(20)),
        )
            .prop_map(|(sub, tenant, exp, name)| AgentClaims {
                sub,
                tenant,
                exp,
                name,
            })
            // An empty `sub` or `tenant` is refused (see `jwt_nbf_ahead_and_empty_ids_are_refused`).
            .prop_filter("agent and tenant ids are not empty", |c| {
                !c.sub.trim().is_empty() && !c.tenant.trim().is_empty()
            })
    }

    /// One edit of a token: replace, insert or delete a character, cut it, or append.
    #[derive(Debug, Clone)]
    enum Mutation {
        Replace(usize, char),
        Insert(usize, char),
        Delete(usize),
        Truncate(usize),
        Append(String),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let c = prop_oneof![
            4 => prop::sample::select(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/"
                    .chars()
                    .collect::<Vec<_>>()
            ),
            1 => any::<char>(),
        ];
        prop_oneof![
            (any::<usize>(), c.clone()).prop_map(|(i, c)| Mutation::Replace(i, c)),
            (any::<usize>(), c).prop_map(|(i, c)| Mutation::Insert(i, c)),
            any::<usize>().prop_map(Mutation::Delete),
            any::<usize>().prop_map(Mutation::Truncate),
            tricky_string(4).prop_map(Mutation::Append),
        ]
    }

    fn mutate(token: &str, m: &Mutation) -> String {
        let mut chars: Vec<char> = token.chars().collect();
        let n = chars.len();
        match m {
            Mutation::Replace(i, c) => chars[i % n] = *c,
            Mutation::Insert(i, c) => chars.insert(i % (n + 1), *c),
            Mutation::Delete(i) => {
                chars.remove(i % n);
            }
            Mutation::Truncate(i) => chars.truncate(i % n),
            Mutation::Append(s) => chars.extend(s.chars()),
        }
        chars.into_iter().collect()
    }

    /// A claims object with each claim of any JSON type (or missing), or any JSON at all.
    fn jwt_claims() -> impl Strategy<Value = Value> {
        let claim = || {
            prop::option::of(prop_oneof![
                json_value(),
                "[a-z]{1,8}".prop_map(Value::String),
                (-1e12f64..1e12).prop_map(Value::from)
            ])
        };
        prop_oneof![
            (claim(), claim(), claim(), claim()).prop_map(|(sub, tenant, exp, name)| {
                let mut o = Map::new();
                for (k, v) in [
                    ("sub", sub),
                    ("tenant", tenant),
                    ("exp", exp),
                    ("name", name),
                ] {
                    if let Some(v) = v {
                        o.insert(k.into(), v);
                    }
                }
                Value::Object(o)
            }),
            json_value(),
        ]
    }

    proptest! {
        #[test]
        fn sessions_round_trip(c in session_claims(), before in 1i64..1_000_000) {
            let tok = sign_session(&ring(), &c);
            let now = c.expires_ms.saturating_sub(before);
            prop_assume!(now < c.expires_ms);
            prop_assert_eq!(verify_session(&ring(), &tok, now), Ok(c.clone()));
            prop_assert_eq!(verify_session(&ring(), &tok, c.expires_ms), Err(TokenError::Expired));
            // Signed with the previous key, still accepted after a rotation.
            let rotated = Keyring::new(b"newer-secret", &[b"property-secret".to_vec()]);
            prop_assert_eq!(verify_session(&rotated, &tok, now), Ok(c.clone()));
            // Not by a keyring without that key.
            prop_assert!(verify_session(&Keyring::new(b"other", &[]), &tok, now).is_err());
        }

        #[test]
        fn mutated_sessions_never_verify(c in session_claims(), m in mutation()) {
            let tok = sign_session(&ring(), &c);
            let bad = mutate(&tok, &m);
            prop_assume!(bad != tok);
            prop_assert!(verify_session(&ring(), &bad, i64::MIN).is_err(), "{} verified", bad);
            prop_assert!(verify_challenge(&ring(), &bad, &c.tenant, i64::MIN).is_err());
        }

        #[test]
        fn challenges_round_trip(tenant in tricky_string(20), other in tricky_string(20),
                                 now in -1_000_000_000_000i64..4_000_000_000_000, ttl in 1i64..1_000_000_000) {
            let (tok, claims) = issue_challenge(&ring(), &tenant, now, ttl);
            prop_assert_eq!(claims.nonce.len(), 32);
            prop_assert_eq!(verify_challenge(&ring(), &tok, &tenant, now), Ok(claims.clone()));
            prop_assert_eq!(verify_challenge(&ring(), &tok, &tenant, now + ttl), Err(TokenError::Expired));
            if other != tenant {
                prop_assert!(verify_challenge(&ring(), &tok, &other, now).is_err());
            }
            // A challenge is never a session, whatever its fields.
            prop_assert!(verify_session(&ring(), &tok, now).is_err());
            prop_assert!(verify_session(&ring(), &tok.replacen("c1", "s1", 1), now).is_err());
        }

        #[test]
        fn mutated_challenges_never_verify(tenant in tricky_string(20), m in mutation()) {
            let (tok, _) = issue_challenge(&ring(), &tenant, 0, 1_000);
            let bad = mutate(&tok, &m);
            prop_assume!(bad != tok);
            prop_assert!(verify_challenge(&ring(), &bad, &tenant, 0).is_err(), "{} verified", bad);
        }

        #[test]
        fn agent_jwts_round_trip(c in agent_claims(), secret in prop::collection::vec(any::<u8>(), 0..40)) {
            let tok = sign_agent_jwt(&secret, &c);
            prop_assert_eq!(peek_jwt_tenant(&tok), Some(c.tenant.clone()));
            let now_ms = c.exp.saturating_mul(1000).saturating_sub(1);
            prop_assert_eq!(verify_agent_jwt(&tok, &secret, now_ms), Ok(c.clone()));
            prop_assert_eq!(verify_agent_jwt(&tok, &secret, c.exp.saturating_mul(1000)), Err(TokenError::Expired));
            let mut other = secret.clone();
            other.push(1);
            prop_assert_eq!(verify_agent_jwt(&tok, &other, now_ms), Err(TokenError::BadSignature));
        }

        #[test]
        fn mutated_agent_jwts_never_verify(c in agent_claims(), m in mutation()) {
            let tok = sign_agent_jwt(b"jwt-secret", &c);
            let bad = mutate(&tok, &m);
            prop_assume!(bad != tok);
            let _ = peek_jwt_tenant(&bad);
            prop_assert!(verify_agent_jwt(&bad, b"jwt-secret", 0).is_err(), "{} verified", bad);
        }

        /// Arbitrary text, and text shaped like each token (the right prefix, key id and
        /// part count, base64url parts), never verifies and never panics.
        #[test]
        fn arbitrary_strings_never_verify(
            s in tricky_string(60),
            parts in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 2..3),
            garbage in "[A-Za-z0-9_-]{0,40}",
        ) {
            let kid = key_id(b"property-secret");
            let b64 = |b: &Vec<u8>| URL_SAFE_NO_PAD.encode(b);
            let shaped = [
                s.clone(),
                format!("s1.{kid}.{}.{}", b64(&parts[0]), b64(&parts[1])),
                format!("c1.{kid}.{}.{garbage}", b64(&parts[0])),
                format!("{}.{}.{garbage}", URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#), b64(&parts[0])),
                format!("{}.{}.{}", b64(&parts[0]), b64(&parts[1]), garbage),
            ];
            for t in &shaped {
                prop_assert!(verify_session(&ring(), t, i64::MIN).is_err());
                prop_assert!(verify_challenge(&ring(), t, "", i64::MIN).is_err());
                prop_assert!(verify_agent_jwt(t, b"jwt-secret", i64::MIN).is_err());
                prop_assert!(verify_agent_jwt(t, b"", i64::MIN).is_err());
                let _ = peek_jwt_tenant(t);
            }
        }

        /// A correctly signed JWT whose claims have any JSON shape: never a panic, and only
        /// string `sub`/`tenant` with a numeric `exp` pass.
        #[test]
        fn signed_jwts_with_any_claims(claims in jwt_claims(), alg in prop_oneof![Just("HS256"), Just("none"), Just("HS512")]) {
            let header = json!({"alg": alg, "typ": "JWT"}).to_string();
            let tok = sign_hs256(b"k", &header, &claims.to_string());
            if let Ok(c) = verify_agent_jwt(&tok, b"k", i64::MIN) {
                prop_assert_eq!(alg, "HS256");
                prop_assert_eq!(claims["sub"].as_str(), Some(c.sub.as_str()));
                prop_assert_eq!(claims["tenant"].as_str(), Some(c.tenant.as_str()));
                prop_assert!(claims["exp"].is_number());
            }
        }
    }
}

mod timestamps {
    use super::*;
    use confab_protocol::time::*;
    use jiff::tz::{Offset, TimeZone};
    use jiff::Timestamp;

    /// Milliseconds from year 0000 (RFC 3339 has no negative years) to the end of jiff's
    /// `Timestamp` range, a day short of 9999-12-31 (`format_ms` writes the epoch past it;
    /// the gateway only formats times it stamps itself).
    fn rfc3339_ms() -> impl Strategy<Value = i64> {
        -62_167_219_200_000i64..=Timestamp::MAX.as_millisecond()
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(ms in rfc3339_ms()) {
            let text = format_ms(ms);
            prop_assert_eq!(text.len(), 24, "{}", text);
            prop_assert!(text.ends_with('Z') && text.as_bytes()[19] == b'.', "{}", text);
            prop_assert_eq!(parse_ms(&text), Some(ms), "{}", text);
        }

        /// The same instant written with any offset and extra sub-millisecond digits parses
        /// to the same millisecond (sub-millisecond digits are cut, not rounded).
        #[test]
        fn offsets_and_precision(ms in rfc3339_ms(), offset_min in -(23 * 60 + 59)..=(23 * 60 + 59i32),
                                 extra in "[0-9]{0,6}") {
            let ts = Timestamp::from_millisecond(ms).unwrap();
            let tz = TimeZone::fixed(Offset::from_seconds(offset_min * 60).unwrap());
            let local = ts.to_zoned(tz);
            let text = format!("{}{extra}{}", local.strftime("%Y-%m-%dT%H:%M:%S%.3f"), local.strftime("%:z"));
            prop_assume!((0..=9999).contains(&local.year())); // RFC 3339 years have four digits
            prop_assert_eq!(parse_ms(&text), Some(ms), "{}", text);
        }

        #[test]
        fn any_text_parses_or_not_without_panicking(s in tricky_string(40), ms in any::<i64>()) {
            if let Some(ms) = parse_ms(&s) {
                prop_assert_eq!(parse_ms(&format_ms(ms)), Some(ms), "{:?}", s);
            }
            let _ = format_ms(ms);
            let spliced = format!("{}{s}", &format_ms(0)[..10]);
            let _ = parse_ms(&spliced);
        }
    }
}

mod frames {
    use super::*;
    use confab_protocol::frames::ClientFrame;
    use confab_protocol::model::PresenceStatus;

    fn opt_string() -> impl Strategy<Value = Option<String>> {
        prop::option::of(tricky_string(20))
    }

    fn client_frame() -> impl Strategy<Value = ClientFrame> {
        prop_oneof![
            (tricky_string(30), opt_string())
                .prop_map(|(token, after)| ClientFrame::Auth { token, after }),
            (
                tricky_string(30),
                opt_string(),
                opt_string(),
                prop::collection::vec(tricky_string(10), 0..3)
            )
                .prop_map(|(message, client_message_id, intent, attachments)| {
                    ClientFrame::Message {
                        message,
                        client_message_id,
                        intent,
                        attachments,
                    }
                }),
            opt_string().prop_map(|conversation_id| ClientFrame::Typing { conversation_id }),
            Just(ClientFrame::Ping),
            (
                tricky_string(20),
                tricky_string(30),
                opt_string(),
                prop::collection::vec(tricky_string(10), 0..3)
            )
                .prop_map(
                    |(conversation_id, message, client_message_id, attachments)| {
                        ClientFrame::Reply {
                            conversation_id,
                            message,
                            client_message_id,
                            attachments,
                        }
                    }
                ),
            tricky_string(20).prop_map(|conversation_id| ClientFrame::Close { conversation_id }),
            prop::sample::select(vec![
                PresenceStatus::Online,
                PresenceStatus::Away,
                PresenceStatus::Offline
            ])
            .prop_map(|status| ClientFrame::Presence { status }),
            (opt_string(), tricky_string(30)).prop_map(|(conversation_id, message_id)| {
                ClientFrame::Read {
                    conversation_id,
                    message_id,
                }
            }),
        ]
    }

    /// The frame as a client writes it (optional fields left out or `null`).
    fn encode(f: &ClientFrame, nulls: bool) -> Value {
        let mut v = match f {
            ClientFrame::Auth { token, after } => {
                json!({"type": "auth", "token": token, "after": after})
            }
            ClientFrame::Message {
                message,
                client_message_id,
                intent,
                attachments,
            } => {
                json!({"type": "message", "message": message, "clientMessageId": client_message_id, "intent": intent, "attachments": attachments})
            }
            ClientFrame::Typing { conversation_id } => {
                json!({"type": "typing", "conversationId": conversation_id})
            }
            ClientFrame::Ping => json!({"type": "ping"}),
            ClientFrame::Reply {
                conversation_id,
                message,
                client_message_id,
                attachments,
            } => {
                json!({"type": "reply", "conversationId": conversation_id, "message": message, "clientMessageId": client_message_id, "attachments": attachments})
            }
            ClientFrame::Close { conversation_id } => {
                json!({"type": "close", "conversationId": conversation_id})
            }
            ClientFrame::Presence { status } => json!({"type": "presence", "status": status}),
            ClientFrame::Read {
                conversation_id,
                message_id,
            } => {
                json!({"type": "read", "conversationId": conversation_id, "messageId": message_id})
            }
        };
        if !nulls {
            v.as_object_mut().unwrap().retain(|_, x| !x.is_null());
        }
        // `attachments` defaults to `[]`: a client leaves an empty list out.
        if v.get("attachments")
            .is_some_and(|a| a.as_array().is_some_and(|a| a.is_empty()))
        {
            v.as_object_mut().unwrap().remove("attachments");
        }
        v
    }

    proptest! {
        #[test]
        fn valid_frames_round_trip(f in client_frame(), nulls in any::<bool>(), extra in json_value()) {
            let mut v = encode(&f, nulls);
            prop_assert_eq!(ClientFrame::parse(&v.to_string()), Ok(f.clone()));
            // Fields a newer client adds are ignored.
            v["someFutureField"] = extra;
            prop_assert_eq!(ClientFrame::parse(&v.to_string()), Ok(f));
        }

        #[test]
        fn arbitrary_text_never_panics(s in tricky_string(60)) {
            let _ = ClientFrame::parse(&s);
        }

        /// Any JSON, also with a known `type` and the right field names carrying any value.
        #[test]
        fn arbitrary_json_never_panics(
            v in json_value(),
            ty in prop::sample::select(vec!["auth", "message", "typing", "ping", "reply", "close", "AUTH", ""]),
            fields in prop::collection::vec((prop::sample::select(vec!["token", "after", "message", "clientMessageId", "conversationId", "type"]), json_value()), 0..5),
        ) {
            let _ = ClientFrame::parse(&v.to_string());
            let mut o = Map::new();
            o.insert("type".into(), json!(ty));
            for (k, x) in fields {
                o.insert(k.into(), x);
            }
            if let Ok(f) = ClientFrame::parse(&Value::Object(o.clone()).to_string()) {
                // What parsed is what was sent: every field of the frame has the value given.
                for (k, x) in encode(&f, false).as_object().unwrap() {
                    prop_assert_eq!(Some(x), o.get(k), "{}", k);
                }
            }
        }

        /// Deep nesting is refused by the parser's recursion limit, not by a stack overflow.
        #[test]
        fn deep_nesting(depth in 0usize..5000, open in prop::sample::select(vec!["[", "{\"a\":"])) {
            let text = format!(r#"{{"type":"auth","token":{}"#, open.repeat(depth));
            prop_assert!(ClientFrame::parse(&text).is_err());
        }
    }
}
