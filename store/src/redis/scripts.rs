//! The Lua scripts, each prefixed with the shared helpers of `lib.lua`.
//!
//! They run with `EVALSHA` (`redis::Script` loads them again after a `NOSCRIPT`, e.g. once
//! after a Redis restart). Each script validates everything before its first write and
//! only then writes (the one exception, `load_conv` upgrading a hash of the old layout,
//! rewrites it into an equivalent one), so a script never stops half-way (Redis does not roll scripts back);
//! an OOM refusal hits the first write, before anything changed.
//!
//! The scripts that publish come in two flavours ([`Pair`]): `PUBLISH` for a single Redis,
//! `SPUBLISH` (sharded pub/sub, Redis ≥ 7) for a Redis Cluster, where a plain `PUBLISH`
//! would be broadcast to every node of the cluster. Their channels carry the tenant's hash
//! tag, so a script's `SPUBLISH` stays in the slot of its keys.

use std::sync::LazyLock;

use redis::Script;

/// One script with `PUB` bound to `PUBLISH` and to `SPUBLISH`.
pub(crate) struct Pair {
    plain: Script,
    sharded: Script,
}

impl Pair {
    fn new(body: &str) -> Pair {
        Pair {
            plain: Script::new(&format!("local PUB = 'PUBLISH'\n{body}")),
            sharded: Script::new(&format!("local PUB = 'SPUBLISH'\n{body}")),
        }
    }

    /// The flavour for a cluster (`sharded`) or a single Redis.
    pub(crate) fn of(&self, sharded: bool) -> &Script {
        if sharded {
            &self.sharded
        } else {
            &self.plain
        }
    }
}

macro_rules! script {
    ($file:literal) => {
        LazyLock::new(|| Pair::new(concat!(include_str!("lib.lua"), "\n", include_str!($file))))
    };
}

/// The shared helpers, GCRA (`gcra_fn.lua`: a message's rate limits are charged in its
/// commit), `append_fn.lua`'s `append_message`, then the script.
fn with_append(body: &str) -> Pair {
    Pair::new(&format!(
        "{}\n{}\n{}\n{body}",
        include_str!("lib.lua"),
        include_str!("gcra_fn.lua"),
        include_str!("append_fn.lua")
    ))
}

/// `start_conversation`.
pub(crate) static START: LazyLock<Pair> = script!("start.lua");
/// `append_message` and `append_message_limited`: the one-round-trip commit of a message
/// (with its rate limits).
pub(crate) static APPEND: LazyLock<Pair> =
    LazyLock::new(|| with_append(include_str!("append.lua")));
/// `complete_reply`: the lease check, the reply's commit and the record, in one script.
pub(crate) static COMPLETE: LazyLock<Pair> =
    LazyLock::new(|| with_append(include_str!("complete.lua")));
/// `claim_reply`.
pub(crate) static CLAIM: LazyLock<Pair> = script!("claim.lua");
/// `renew_reply`.
pub(crate) static RENEW: LazyLock<Pair> = script!("renew.lua");
/// `set_status` and `set_handler`.
pub(crate) static STATE: LazyLock<Pair> = script!("state.lua");
/// `mark_read`.
pub(crate) static READ: LazyLock<Pair> = script!("read.lua");
/// `update_profile` (optimistic: fails with `conflict` when the pieces changed meanwhile).
pub(crate) static PROFILE: LazyLock<Pair> = script!("profile.lua");
/// `append_event("conversation:qualified", Some(conversation))`.
pub(crate) static QUALIFY: LazyLock<Pair> = script!("qualify.lua");
/// `append_event` (custom events).
pub(crate) static EVENT: LazyLock<Pair> = script!("event.lua");
/// `maintain`: retention of one tenant log.
pub(crate) static TRIM: LazyLock<Pair> = script!("trim.lua");
/// `messages` with a time cursor.
pub(crate) static HISTORY: LazyLock<Pair> = script!("history.lua");
/// `save_webhook_state`: the offset only moves forward.
pub(crate) static WEBHOOK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local cur = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0') \
         if tonumber(ARGV[1]) > cur then redis.call('HSET', KEYS[1], 'offset', ARGV[1]) end \
         redis.call('HSET', KEYS[1], 'state', ARGV[2]) return 1",
    )
});
/// `lease`: take it when free or expired, renew it when ours.
pub(crate) static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local h = redis.call('GET', KEYS[1]) \
         if h == false or h == ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end \
         return 0",
    )
});
/// `delete_unsent_attachment`: deletes an upload only while no message has claimed it.
pub(crate) static DELETE_UNSENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local h = redis.call('HMGET', KEYS[1], 'r', 'msg') \
         if not h[1] or h[2] then return 0 end \
         redis.call('DEL', KEYS[1]) redis.call('ZREM', KEYS[2], ARGV[1]) return 1",
    )
});
/// `release_lease`: delete it only when ours.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 1",
    )
});
/// `presence`: drops expired entries (expiry ≤ now), returns the live ones' JSON.
pub(crate) static PRESENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1]) \
         if #dead > 0 then redis.call('ZREM', KEYS[1], unpack(dead)) redis.call('HDEL', KEYS[2], unpack(dead)) end \
         local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf') \
         if #live == 0 then return {} end \
         return redis.call('HMGET', KEYS[2], unpack(live))",
    )
});
/// `RateLimiter::check_all`: the GCRA of `gcra_fn.lua`, the same code the append script
/// charges a message's limits with.
pub(crate) static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("gcra_fn.lua"),
        "\n",
        include_str!("gcra.lua")
    ))
});
