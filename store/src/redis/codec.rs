//! What the scripts splice together, and what travels over pub/sub.
//!
//! **JSON templates.** A message's `id` and `createdAt` are only known inside the append
//! script (the sequence number and `max(now, last createdAt)` are decided atomically
//! there), and a conversation's `status`, `updatedAt`, `qualified` and `lastMessage` change
//! inside scripts too. Yet the bytes must be exactly what serde produces for the SQLite
//! backend. So Rust serializes the value with serde — the one encoder — with unguessable
//! placeholder values in the variable slots, and cuts the result into the constant pieces
//! around them; the script only concatenates `piece .. value .. piece`. Nothing is
//! re-encoded in Lua (cjson would reformat numbers and escape `/`). The values the script
//! inserts are digits, our own timestamps, `open`/`closed`, `true`/`false`, or JSON that
//! was itself produced this way, so no escaping is ever needed. Every template is checked
//! against serde's output before use ([`message_template`], [`conversation_template`]):
//! if the wire types ever change shape, the store reports an internal error instead of
//! storing different bytes.
//!
//! **Pub/sub payloads** (one byte of kind, then `|`-separated fields, the JSON last):
//! - `m|SEQ|MESSAGE_JSON` — a stored message (conversation channel);
//! - `u|CONVERSATION_JSON` — the conversation changed (conversation channel);
//! - `r|READ_JSON` — a read cursor moved (conversation channel);
//! - `e|OFFSET|CREATED_MS|TYPE_LEN|TYPE DATA` — a tenant event (tenant channel); the type
//!   is length-prefixed so that any string can be a type;
//! - `y|FRAME` — typing, ephemeral (either channel);
//! - `p|N` — the node's liveness canary (node channel).

use confab_protocol::model::{Conversation, Handler, Message, Status};

use crate::domain::{new_message, to_json};
use crate::{NewMessage, StoreError};

/// A random placeholder nobody can put into user content.
fn placeholder(what: &str) -> String {
    format!("@@confab-{what}-{:032x}@@", rand::random::<u128>())
}

fn template_err(what: &str) -> StoreError {
    StoreError::Internal(format!(
        "the {what} JSON no longer has the shape the Redis templates assume"
    ))
}

/// A message's JSON as `[p0, p1, p2]`: `p0 + SEQ + p1 + CREATED_AT + p2` (the id's
/// conversation prefix is part of `p0`).
pub(crate) fn message_template(new: &NewMessage) -> crate::Result<[String; 3]> {
    let (id, created) = (placeholder("id"), placeholder("created"));
    let mut m = new_message(new, 0, 0);
    m.id = format!("{}{id}", crate::message_id_prefix(&new.conversation_id));
    m.created_at = created.clone();
    let s = to_json(&m);
    // `id` is the first field: nothing the user wrote precedes it.
    let i = s.find(&id).ok_or_else(|| template_err("message"))?;
    let c = s[i + id.len()..]
        .find(&created)
        .ok_or_else(|| template_err("message"))?
        + i
        + id.len();
    let parts = [
        s[..i].to_owned(),
        s[i + id.len()..c].to_owned(),
        s[c + created.len()..].to_owned(),
    ];
    // Checked against serde with real values.
    let probe = new_message(new, 1, 1_700_000_000_123);
    if fill_message(&parts, 1, &probe.created_at) != to_json(&probe) {
        return Err(template_err("message"));
    }
    Ok(parts)
}

/// What the append script does with a message template.
pub(crate) fn fill_message(parts: &[String; 3], seq: u64, created_at: &str) -> String {
    format!("{}{seq}{}{created_at}{}", parts[0], parts[1], parts[2])
}

/// The mutable slots of a conversation, as the scripts store them, in JSON order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConvSlots {
    /// `open` | `closed`.
    pub status: String,
    /// The formatted `updatedAt`.
    pub updated_at: String,
    /// `true` | `false`.
    pub qualified: String,
    /// The last message's JSON, or `null`.
    pub last: String,
    /// `human` | `bot`.
    pub handler: String,
    /// `visitorLastReadId` as JSON: `null` or `"id"`.
    pub visitor_read: String,
    /// `agentLastReadId` as JSON.
    pub agent_read: String,
    /// `unreadByAgent`, digits.
    pub unread: String,
}

/// Number of constant pieces around the slots.
pub(crate) const PIECES: usize = 9;

/// The pieces t5..t9 of every conversation stored before the handler and read receipts
/// existed (their t5 was `}`): no assistant, handler `human`, nothing read. `lib.lua`
/// upgrades such a hash with the same constants (checked by a test).
pub(crate) const LEGACY_TAIL: [&str; 5] = [
    ",\"assistantId\":null,\"handler\":\"",
    "\",\"visitorLastReadId\":",
    ",\"agentLastReadId\":",
    ",\"unreadByAgent\":",
    "}",
];

impl ConvSlots {
    pub(crate) fn of(c: &Conversation) -> ConvSlots {
        let id = |v: &Option<String>| v.as_ref().map(to_json).unwrap_or_else(|| "null".into());
        ConvSlots {
            status: c.status.as_str().to_owned(),
            updated_at: c.updated_at.clone(),
            qualified: c.qualified.to_string(),
            last: c
                .last_message
                .as_ref()
                .map(to_json)
                .unwrap_or_else(|| "null".to_owned()),
            handler: c.handler.as_str().to_owned(),
            visitor_read: id(&c.visitor_last_read_id),
            agent_read: id(&c.agent_last_read_id),
            unread: c.unread_by_agent.to_string(),
        }
    }

    fn values(&self) -> [&str; PIECES - 1] {
        [
            &self.status,
            &self.updated_at,
            &self.qualified,
            &self.last,
            &self.handler,
            &self.visitor_read,
            &self.agent_read,
            &self.unread,
        ]
    }
}

/// A conversation's JSON as nine constant pieces around the slots of [`ConvSlots`]:
/// `t1 STATUS t2 UPDATED_AT t3 QUALIFIED t4 LAST_MESSAGE t5 HANDLER t6 VISITOR_READ t7
/// AGENT_READ t8 UNREAD t9` (the scripts' `conv_json`).
pub(crate) fn conversation_template(c: &Conversation) -> crate::Result<[String; PIECES]> {
    let updated = placeholder("updated");
    let mut t = c.clone();
    t.status = Status::Open;
    t.updated_at = updated.clone();
    t.qualified = false;
    t.last_message = None;
    t.handler = Handler::Human;
    t.visitor_last_read_id = None;
    t.agent_last_read_id = None;
    t.unread_by_agent = 0;
    let s = to_json(&t);
    let err = || template_err("conversation");
    // `status` precedes every field a user controls, so its first occurrence is the field;
    // `qualified` and `lastMessage` follow all of them, so their last occurrence is; and
    // after `lastMessage` (null here) only fields of ours follow, so a plain search from
    // there finds each of the rest.
    let mut cuts: Vec<(usize, usize)> = Vec::with_capacity(PIECES - 1);
    let status = s.find("\"status\":\"open\"").ok_or_else(err)? + "\"status\":\"".len();
    cuts.push((status, status + "open".len()));
    let u = s[status..].find(&updated).ok_or_else(err)? + status;
    cuts.push((u, u + updated.len()));
    for (key, value) in [("\"qualified\":", "false"), ("\"lastMessage\":", "null")] {
        let at = s.rfind(&format!("{key}{value}")).ok_or_else(err)? + key.len();
        cuts.push((at, at + value.len()));
    }
    for (key, value) in [
        ("\"handler\":\"", "human"),
        ("\"visitorLastReadId\":", "null"),
        ("\"agentLastReadId\":", "null"),
        ("\"unreadByAgent\":", "0"),
    ] {
        let from = cuts.last().map_or(0, |c| c.1);
        let at = s[from..].find(&format!("{key}{value}")).ok_or_else(err)? + from + key.len();
        cuts.push((at, at + value.len()));
    }
    if cuts.windows(2).any(|w| w[0].1 > w[1].0) {
        return Err(err());
    }
    let mut parts: [String; PIECES] = Default::default();
    let mut from = 0;
    for (i, (start, end)) in cuts.iter().enumerate() {
        parts[i] = s[from..*start].to_owned();
        from = *end;
    }
    parts[PIECES - 1] = s[from..].to_owned();
    if fill_conversation(&parts, &ConvSlots::of(c)) != to_json(c) {
        return Err(err());
    }
    Ok(parts)
}

/// What the scripts' `conv_json` does.
pub(crate) fn fill_conversation<S: AsRef<str>>(t: &[S; PIECES], v: &ConvSlots) -> String {
    let values = v.values();
    let len = t.iter().map(|p| p.as_ref().len()).sum::<usize>()
        + values.iter().map(|v| v.len()).sum::<usize>();
    let mut out = String::with_capacity(len);
    out.push_str(t[0].as_ref());
    for (value, piece) in values.iter().zip(&t[1..]) {
        out.push_str(value);
        out.push_str(piece.as_ref());
    }
    out
}

/// A decoded pub/sub payload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Payload<'a> {
    Message {
        seq: u64,
        json: &'a str,
    },
    Updated {
        json: &'a str,
    },
    Read {
        json: &'a str,
    },
    Event {
        offset: u64,
        created_ms: i64,
        kind: &'a str,
        data: &'a str,
    },
    Typing {
        frame: &'a str,
    },
    Canary,
}

/// Decodes a payload; `None` when it is not one of ours.
pub(crate) fn decode(payload: &[u8]) -> Option<Payload<'_>> {
    let s = std::str::from_utf8(payload).ok()?;
    let (kind, rest) = s.split_once('|')?;
    Some(match kind {
        "m" => {
            let (seq, json) = rest.split_once('|')?;
            Payload::Message {
                seq: seq.parse().ok()?,
                json,
            }
        }
        "u" => Payload::Updated { json: rest },
        "r" => Payload::Read { json: rest },
        "e" => {
            let mut it = rest.splitn(4, '|');
            let offset = it.next()?.parse().ok()?;
            let created_ms = it.next()?.parse().ok()?;
            let len: usize = it.next()?.parse().ok()?;
            let tail = it.next()?;
            if len > tail.len() || !tail.is_char_boundary(len) {
                return None;
            }
            let (kind, data) = tail.split_at(len);
            Payload::Event {
                offset,
                created_ms,
                kind,
                data,
            }
        }
        "y" => Payload::Typing { frame: rest },
        "p" => Payload::Canary,
        _ => return None,
    })
}

/// The typing payload (the only one encoded in Rust: the others come from the scripts).
pub(crate) fn encode_typing(frame: &str) -> String {
    format!("y|{frame}")
}

/// A message parsed back from its stored JSON (duplicates, conversation reads).
pub(crate) fn parse_message(json: &str) -> crate::Result<Message> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Internal(format!("corrupt message JSON in Redis: {e}")))
}

/// A conversation parsed back from its assembled JSON.
pub(crate) fn parse_conversation(json: &str) -> crate::Result<Conversation> {
    serde_json::from_str(json)
        .map_err(|e| StoreError::Internal(format!("corrupt conversation JSON in Redis: {e}")))
}

#[cfg(test)]
mod tests {
    use confab_protocol::model::{Author, AuthorKind, Contact, Direction};
    use serde_json::json;

    use super::*;
    use crate::domain::{new_conversation, record_message};
    use crate::NewConversation;
    use confab_protocol::time::format_ms;

    fn msg(body: &str, cmid: Option<&str>, meta: Option<serde_json::Value>) -> NewMessage {
        NewMessage {
            tenant: "t".into(),
            conversation_id: "c-1".into(),
            direction: Direction::Outbound,
            author: Author {
                kind: AuthorKind::Agent,
                id: "a/1".into(),
                name: Some("Ann \"the\" agent".into()),
            },
            body: body.into(),
            client_message_id: cmid.map(str::to_owned),
            meta,
            intent: None,
            handler: None,
            attachments: Vec::new(),
        }
    }

    #[test]
    fn message_template_matches_serde() {
        let cases = [
            msg("hi", None, None),
            msg(
                "\"id\":\"x\" </script> \u{1F600} \\ \n",
                Some("c/1"),
                Some(json!({"mode": "ai", "n": 1.5})),
            ),
            msg("", Some(""), Some(json!(null))),
        ];
        for new in cases {
            let t = message_template(&new).unwrap();
            for (seq, ms) in [
                (1u64, 0i64),
                (42, 1_795_000_000_123),
                (u64::MAX, 253_402_300_799_999),
            ] {
                let expected = to_json(&new_message(&new, seq, ms));
                assert_eq!(fill_message(&t, seq, &format_ms(ms)), expected);
            }
        }
    }

    #[test]
    fn conversation_template_matches_serde() {
        let tricky = NewConversation {
            tenant: "t".into(),
            token_hash: "h".into(),
            customer_id: Some("\"status\":\"open\"".into()),
            locale: None,
            contact: Contact {
                name: Some("\"qualified\":false".into()),
                email: Some("a@b.c".into()),
            },
            variables:
                json!({"status": "open", "qualified": false, "lastMessage": null, "u": "ü/"})
                    .as_object()
                    .cloned()
                    .unwrap(),
            visitor_context: json!({"lastMessage": null}).as_object().cloned().unwrap(),
            assistant_id: None,
            handler: Handler::Human,
        };
        let mut c = new_conversation(&tricky, "id-1".into(), "v_1".into(), 1_795_000_000_000);
        let t = conversation_template(&c).unwrap();
        assert_eq!(fill_conversation(&t, &ConvSlots::of(&c)), to_json(&c));
        // The slots vary independently of the pieces.
        let m = new_message(&msg("hello", Some("k"), None), 7, 1_795_000_000_500);
        c.status = Status::Closed;
        record_message(&mut c, &m, Some(Handler::Bot));
        c.qualified = true;
        assert_eq!(fill_conversation(&t, &ConvSlots::of(&c)), to_json(&c));
        c.status = Status::Closed;
        c.visitor_last_read_id = Some(m.id.clone());
        c.agent_last_read_id = Some(m.id.clone());
        c.unread_by_agent = u64::MAX;
        assert_eq!(fill_conversation(&t, &ConvSlots::of(&c)), to_json(&c));
        // An assistant id is part of the constant pieces.
        let mut with_bot = tricky.clone();
        with_bot.assistant_id = Some("ava-1".into());
        with_bot.handler = Handler::Bot;
        let c = new_conversation(&with_bot, "id-2".into(), "v_2".into(), 1_795_000_000_000);
        let t = conversation_template(&c).unwrap();
        assert_eq!(fill_conversation(&t, &ConvSlots::of(&c)), to_json(&c));
    }

    /// A hash written before the handler and read receipts existed ended with `t5 = "}"`;
    /// the tail both `lib.lua` and `assemble` give it is what serde produces now.
    #[test]
    fn legacy_tail_matches_serde() {
        let new = NewConversation {
            tenant: "t".into(),
            token_hash: "h".into(),
            customer_id: None,
            locale: None,
            contact: Contact::default(),
            variables: Default::default(),
            visitor_context: Default::default(),
            assistant_id: None,
            handler: Handler::Human,
        };
        let c = new_conversation(&new, "id-1".into(), "v_1".into(), 1_795_000_000_000);
        let t = conversation_template(&c).unwrap();
        assert_eq!(
            t[4..].iter().map(String::as_str).collect::<Vec<_>>(),
            LEGACY_TAIL
        );
        let lua = include_str!("lib.lua");
        let lua_tail: Vec<String> = LEGACY_TAIL.iter().map(|p| format!("'{p}'")).collect();
        assert!(
            lua.contains(&format!(
                "local LEGACY_TAIL = {{{}",
                lua_tail[..3].join(", ")
            )),
            "lib.lua's LEGACY_TAIL differs from codec.rs's"
        );
        assert!(lua.contains(&lua_tail[3..].join(", ")));
    }

    #[test]
    fn payloads_decode() {
        assert_eq!(
            decode(b"m|12|{\"a\":\"|\"}"),
            Some(Payload::Message {
                seq: 12,
                json: "{\"a\":\"|\"}"
            })
        );
        assert_eq!(decode(b"u|{}"), Some(Payload::Updated { json: "{}" }));
        assert_eq!(
            decode("e|5|1700|6|a|b:ü{\"x\":1}".as_bytes()),
            Some(Payload::Event {
                offset: 5,
                created_ms: 1700,
                kind: "a|b:ü",
                data: "{\"x\":1}"
            })
        );
        assert_eq!(decode(b"e|5|1700|99|ab"), None);
        assert_eq!(
            decode("e|5|1700|1|ü".as_bytes()),
            None,
            "a length inside a character is rejected"
        );
        assert_eq!(
            decode(encode_typing("{\"type\":\"typing\"}").as_bytes()),
            Some(Payload::Typing {
                frame: "{\"type\":\"typing\"}"
            })
        );
        assert_eq!(decode(b"p|3"), Some(Payload::Canary));
        assert_eq!(decode(b"zzz"), None);
        assert_eq!(decode(b"m|x|{}"), None);
    }
}
