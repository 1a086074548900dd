//! Key and channel names: one place that knows the layout described in the module doc.
//!
//! Everything of a tenant carries the hash tag `{t:TENANT}`, so in a Redis Cluster a
//! tenant's keys (and its sharded pub/sub channels) live in one slot and every script
//! touches a single slot.
//!
//! Names are built from *segments*: a tenant id or conversation id is used verbatim when it
//! is made of `[A-Za-z0-9_.-]` (our UUIDs and ordinary tenant ids), and hex-encoded behind
//! a `~` otherwise. `:`, `{`, `}` therefore never come from data, so a crafted
//! conversation id (they reach us from URLs) can neither collide with another key nor move
//! a key to another hash slot.

use std::borrow::Cow;
use std::fmt::Write;

use crate::Channel;

/// A tenant or conversation id made safe for a key name (see the module doc).
pub(crate) fn seg(id: &str) -> Cow<'_, str> {
    let plain = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if plain {
        return Cow::Borrowed(id);
    }
    let mut out = String::with_capacity(1 + 2 * id.len());
    out.push('~');
    for b in id.bytes() {
        let _ = write!(out, "{b:02x}");
    }
    Cow::Owned(out)
}

/// The generated session secret (`SET NX`, then `GET`).
pub(crate) const SECRET: &str = "confab:secret";
/// Tenants that ever had an event: what `maintain` walks.
pub(crate) const TENANTS: &str = "confab:tenants";

/// A used challenge nonce (`SET NX PX`; expires by itself).
pub(crate) fn nonce(nonce: &str) -> String {
    format!("confab:nonce:{nonce}")
}

/// A lease (`holder`, expiring with `PX`): see `Store::lease`.
pub(crate) fn lease(name: &str) -> String {
    format!("confab:lease:{}", seg(name))
}

/// A rate limiter key: the GCRA theoretical arrival time, in µs (expires at the TAT).
pub(crate) fn rate(key: &str) -> String {
    format!("confab:rl:{key}")
}

/// A rate limiter key on a Redis Cluster: `confab:rl:{t:TENANT}:KEY`, where `TENANT` is the
/// key's second `:`-separated segment (the gateway's keys are `PREFIX:TENANT:SUBJECT`), so
/// that the several limits one request checks at once (`check_all`, one script) share a
/// slot — the tenant's own slot, where the rest of the tenant lives: a tenant depends on
/// one shard only, and the failover of another shard never refuses its requests. A key
/// without that shape is its own tag (the unknown-key bucket `cfg-ip:?:IP` has the tag
/// `t:~3f`, which no tenant's escaped id can be).
pub(crate) fn rate_clustered(key: &str) -> String {
    let tag = key
        .split(':')
        .nth(1)
        .filter(|_| key.matches(':').count() >= 2);
    format!("confab:rl:{{t:{}}}:{key}", seg(tag.unwrap_or(key)))
}

/// The key of a rate limit as the Redis backend stores it: [`rate_clustered`] on a Redis
/// Cluster, [`rate`] on a single Redis. The limiter and the append script (a message's
/// limits charged in its commit) use the same keys, so they draw from the same allowance.
pub(crate) fn rate_key(key: &str, clustered: bool) -> String {
    if clustered {
        rate_clustered(key)
    } else {
        rate(key)
    }
}

/// The hash slot of a key or sharded channel (CRC16/XMODEM of its hash tag, mod 16384), as
/// Redis Cluster computes it: which shard owns it.
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let close = bytes[open + 1..].iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &bytes[open + 1..open + 1 + close])
    });
    crc16(tagged.unwrap_or(bytes)) % 16384
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The keys of one tenant (all in the tenant's hash slot).
pub(crate) struct TenantKeys {
    /// `confab:{t:TENANT}`.
    base: String,
}

impl TenantKeys {
    pub(crate) fn new(tenant: &str) -> TenantKeys {
        TenantKeys {
            base: format!("confab:{{t:{}}}", seg(tenant)),
        }
    }

    /// HASH visitor token hash → `"VISITOR_ID CONVERSATION_ID"`.
    pub(crate) fn visitors(&self) -> String {
        format!("{}:visitors", self.base)
    }

    /// HASH `offset` (last tenant offset), `pruned` (highest offset dropped by retention).
    pub(crate) fn meta(&self) -> String {
        format!("{}:meta", self.base)
    }

    /// STREAM of tenant events, entry id `OFFSET-CREATED_MS`, fields `k` (type), `d` (data).
    pub(crate) fn log(&self) -> String {
        format!("{}:log", self.base)
    }

    /// ZSET (all scores 0) of the tenant's conversations with this status, member
    /// `UPDATED_MS(20 digits):ID`, so that lexical order is the list order.
    pub(crate) fn list(&self, status: &str) -> String {
        format!("{}:list:{status}", self.base)
    }

    /// HASH holding one conversation (template pieces and mutable fields).
    pub(crate) fn conversation(&self, id: &str) -> String {
        format!("{}:conv:{}", self.base, seg(id))
    }

    /// STREAM of a conversation's messages, entry id `SEQ-CREATED_MS`, field `m` (JSON).
    pub(crate) fn messages(&self, id: &str) -> String {
        format!("{}:msgs:{}", self.base, seg(id))
    }

    /// HASH clientMessageId → seq of the first message that carried it.
    pub(crate) fn idempotency(&self, id: &str) -> String {
        format!("{}:idem:{}", self.base, seg(id))
    }

    /// HASH conversation id → `THROUGH_SEQ|HOLDER` of each owed assistant reply.
    pub(crate) fn owed(&self) -> String {
        format!("{}:owed", self.base)
    }

    /// ZSET of the owed replies, score = the end of the holder's lease (0: free).
    pub(crate) fn owed_due(&self) -> String {
        format!("{}:owed:due", self.base)
    }

    /// HASH of one upload: `r` (the record's JSON as uploaded), `conv` (its conversation),
    /// `msg` (the id of the message that sent it; absent while unsent).
    pub(crate) fn attachment(&self, id: &str) -> String {
        format!("{}:att:{}", self.base, seg(id))
    }

    /// ZSET of the tenant's unsent uploads, member id, score = created (epoch ms): what
    /// the 24 h sweep reads.
    pub(crate) fn unsent_attachments(&self) -> String {
        format!("{}:att-unsent", self.base)
    }

    /// ZSET of presence entries, member `NODE|AGENT`, score = expiry (epoch ms).
    pub(crate) fn presence(&self) -> String {
        format!("{}:presence", self.base)
    }

    /// HASH member (as in [`presence`](Self::presence)) → the entry's JSON.
    pub(crate) fn presence_info(&self) -> String {
        format!("{}:presence:info", self.base)
    }

    /// STRING written before a `WAIT` that follows a read-only answer (a duplicate): it
    /// moves the connection's replication offset past everything stored before, so the
    /// `WAIT` covers the write the duplicate refers to.
    pub(crate) fn sync(&self) -> String {
        format!("{}:sync", self.base)
    }

    /// HASH `offset` (forward only), `state` (the rest of `WebhookState`, JSON) of one
    /// webhook.
    pub(crate) fn webhook(&self, webhook: &str) -> String {
        format!("{}:webhook:{}", self.base, seg(webhook))
    }
}

/// Pub/sub channel names. Redis pub/sub ignores `SELECT`, so the names carry the database
/// number: two deployments on two databases of one server do not hear each other.
#[derive(Clone)]
pub(crate) struct Channels {
    /// `confab:DB:`.
    prefix: String,
}

impl Channels {
    pub(crate) fn new(db: i64) -> Channels {
        Channels {
            prefix: format!("confab:{db}:"),
        }
    }

    /// Everything a conversation's visitors see.
    pub(crate) fn conversation(&self, tenant: &str, id: &str) -> String {
        format!("{}{{t:{}}}:conv:{}", self.prefix, seg(tenant), seg(id))
    }

    /// Everything a tenant's agents see.
    pub(crate) fn tenant(&self, tenant: &str) -> String {
        format!("{}{{t:{}}}:events", self.prefix, seg(tenant))
    }

    /// One node's canary channel on a Redis Cluster shard: `k` is chosen so that the hash
    /// tag lands in a slot the shard owns (sharded pub/sub stays on one shard).
    pub(crate) fn node_on_shard(&self, node: &str, k: u32) -> String {
        format!("{}{{n:{node}:{k}}}", self.prefix)
    }

    /// One node's own channel: its liveness canary.
    pub(crate) fn node(&self, node: &str) -> String {
        format!("{}node:{node}", self.prefix)
    }

    pub(crate) fn of(&self, channel: &Channel) -> String {
        match channel {
            Channel::Conversation {
                tenant,
                conversation_id,
            } => self.conversation(tenant, conversation_id),
            Channel::Tenant { tenant } => self.tenant(tenant),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_kept_and_others_escaped() {
        assert_eq!(seg("demo"), "demo");
        assert_eq!(
            seg("0b8e1c7e-2f0a-4b8e-9a57-3f2b1c0d9e8f"),
            "0b8e1c7e-2f0a-4b8e-9a57-3f2b1c0d9e8f"
        );
        assert_eq!(seg("a}b"), "~617d62");
        assert_eq!(seg(""), "~");
        assert_ne!(seg("~61"), "~61", "an escaped form cannot be forged");
    }

    #[test]
    fn tenant_keys_share_one_hash_tag() {
        let k = TenantKeys::new("demo");
        for key in [
            k.visitors(),
            k.meta(),
            k.log(),
            k.list("open"),
            k.conversation("x"),
            k.messages("x:y}"),
            k.webhook("w"),
            k.presence(),
            k.presence_info(),
            k.attachment("att_x"),
            k.unsent_attachments(),
        ] {
            assert!(key.starts_with("confab:{t:demo}:"), "{key}");
            assert_eq!(key.matches('{').count(), 1);
        }
        assert_eq!(k.messages("x:y}"), "confab:{t:demo}:msgs:~783a797d");
    }

    #[test]
    fn slots_match_redis_cluster() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("123456789"), 12739);
        assert_eq!(slot("confab:{t:demo}:meta"), slot("t:demo"));
        assert_eq!(
            slot("a{}b"),
            slot("a{}b"),
            "an empty tag hashes the whole key"
        );
        let k = TenantKeys::new("demo");
        let ch = Channels::new(0);
        assert_eq!(slot(&k.log()), slot(&ch.tenant("demo")));
        assert_eq!(slot(&k.log()), slot(&ch.conversation("demo", "c1")));
    }

    #[test]
    fn a_requests_limits_share_a_slot_on_a_cluster() {
        let a = rate_clustered("msg:demo:v_1");
        let b = rate_clustered("ip:demo:10.0.0.1");
        assert_eq!(slot(&a), slot(&b));
        assert_eq!(a, "confab:rl:{t:demo}:msg:demo:v_1");
        // On the tenant's own shard.
        assert_eq!(slot(&a), slot(&TenantKeys::new("demo").log()));
        assert_eq!(
            rate_clustered("cfg-ip:?:1.2.3.4"),
            "confab:rl:{t:~3f}:cfg-ip:?:1.2.3.4"
        );
        assert_eq!(rate_clustered("plain"), "confab:rl:{t:plain}:plain");
    }
}
