//! Agent presence and the availability that follows it (SPEC "Presence and read receipts").
//!
//! - **Who is online.** An agent is online while at least one of its tenant sockets is
//!   open (on any node) and it has not set itself away. Each node writes its own agents to
//!   the store's presence set ([`confab_store::Store::presence_beat`]) when they connect,
//!   change status or leave, and renews them every [`BEAT_EVERY`]; an entry lives
//!   [`ENTRY_TTL_MS`] unless renewed, so the agents of a node that dies drop out within
//!   that time (plus one refresh).
//! - **Views, not messages.** Every node reads the presence set of the tenants it cares
//!   about (those with agents connected here, and those with `require_agent`) every
//!   [`REFRESH_EVERY`], and compares it with what it saw before: changes become `presence`
//!   frames to its own agents and, when the tenant's availability flips, `availability`
//!   frames to its own visitors. Nothing crosses the broker, so a lost pub/sub message
//!   cannot leave a view stale: the next read corrects it.
//! - **Local changes at once, in O(1) or one read.** An agent joining here is folded into
//!   the view directly (a team reconnecting together would otherwise cost a read per
//!   agent, O(n²)); a status change reads the set at once; agents leaving are read
//!   together, [`SETTLE`] after the first leaves.
//! - **Changes announced together.** A change does not go to the tenant's agents on its
//!   own: it waits in the tenant's announcement (the latest status per agent), and
//!   [`announce`] sends what is waiting at most every [`ANNOUNCE_EVERY`] (the first change
//!   after a quiet spell at once). A team connecting together makes O(n²) `presence`
//!   frames; sent one by one, each went to every socket in a write of its own once the
//!   sockets kept up, and a 5,000-agent ramp could take 2.5 times as long, most of it in
//!   the kernel. Sent together, each socket writes a whole announcement at once.
//! - **Availability.** `isAvailable` is the schedule (mode, hours) and, with
//!   `require_agent`, an online agent; `GET /v1/config` reads the same view (its cached
//!   part is dropped when availability flips).

use std::collections::BTreeMap;
use std::time::Duration;

use confab_protocol::frames;
use confab_protocol::model::{AgentPresence, PresenceStatus};
use confab_store::{Channel, PresenceEntry};
use dashmap::mapref::one::RefMut;
use dashmap::DashMap;
use tokio::sync::Notify;

use crate::settings::Tenant;
use crate::state::AppState;
use crate::ws::WireFrame;

/// How often a node renews its agents' entries.
pub const BEAT_EVERY: Duration = Duration::from_secs(5);
/// How long an entry lives without renewal: a dead node's agents are gone after this.
pub const ENTRY_TTL_MS: i64 = 20_000;
/// How often a node re-reads the presence of the tenants it cares about.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// After an agent leaves, how long the refresher waits for more to leave before reading.
pub const SETTLE: Duration = Duration::from_millis(50);
/// Least time between two announcements of presence changes (see the module's doc): how
/// late a change can reach the other agents while their team is busy changing.
pub const ANNOUNCE_EVERY: Duration = Duration::from_millis(50);

/// The node's presence state. One per node, in [`AppState`].
#[derive(Default)]
pub struct Presence {
    /// Agents with sockets on this node: (tenant, agent id) → their local state.
    local: DashMap<(String, String), Local>,
    /// The last view of each tenant this node cares about (every node's agents).
    views: DashMap<String, View>,
    /// Wakes the refresher after a local change.
    changed: Notify,
    /// Changes not yet announced: tenant → agent id → its latest presence.
    unannounced: parking_lot::Mutex<BTreeMap<String, BTreeMap<String, Known>>>,
    /// Wakes [`announce`] when a change starts waiting.
    to_announce: Notify,
}

impl Presence {
    /// Queues a change for the tenant's agents on this node (see [`announce`]); a later
    /// change of the same agent replaces it.
    fn tell_agents(&self, tenant: &str, change: Known) {
        let mut waiting = self.unannounced.lock();
        let first = waiting.is_empty();
        waiting
            .entry(tenant.to_owned())
            .or_default()
            .insert(change.presence.agent_id.clone(), change);
        drop(waiting);
        if first {
            self.to_announce.notify_one();
        }
    }
}

struct Local {
    name: Option<String>,
    sockets: usize,
    away: bool,
}

#[derive(Default)]
struct View {
    agents: BTreeMap<String, Known>,
    /// The availability last announced to visitors (`None`: never read).
    available: Option<bool>,
}

/// An agent as a view has it, with its `presence` frame encoded once: every agent socket
/// that opens is sent up to [`join`]'s `more` of them, and a team reconnecting together
/// would otherwise encode O(agents²) frames.
#[derive(Clone)]
struct Known {
    presence: AgentPresence,
    frame: WireFrame,
}

impl From<AgentPresence> for Known {
    fn from(presence: AgentPresence) -> Known {
        let frame = WireFrame::text(&frames::presence(&presence));
        Known { presence, frame }
    }
}

/// A tenant's team for a joining agent's `ready` (see [`join`]).
pub struct Team {
    /// Listed in `ready`: the joining agent first.
    pub listed: Vec<AgentPresence>,
    /// `presence` frames of the agents `listed` leaves out, to follow `ready`.
    pub more: Vec<WireFrame>,
    /// How many agents the tenant has online or away.
    pub total: usize,
}

/// Held by an agent's socket; dropping it takes the socket out of the agent's count.
pub struct Seat {
    state: AppState,
    key: (String, String),
}

impl Drop for Seat {
    fn drop(&mut self) {
        let last = {
            let mut gone = false;
            self.state.presence.local.remove_if_mut(&self.key, |_, l| {
                l.sockets -= 1;
                gone = l.sockets == 0;
                gone
            });
            gone
        };
        if last {
            let state = self.state.clone();
            let (tenant, agent) = self.key.clone();
            tokio::spawn(async move {
                if let Err(e) = state
                    .store
                    .presence_leave(&tenant, &agent, &state.node_id)
                    .await
                {
                    // The entry expires by itself.
                    tracing::debug!(error = %e, "presence not withdrawn");
                }
                state.presence.changed.notify_one();
            });
        }
    }
}

/// An agent socket opened: counts it, announces the agent (online, or away if it already
/// was on this node), and returns the tenant's current team for `ready` (see [`team`]:
/// at most `listed` agents, this one first, and `more` frames).
pub async fn join(
    state: &AppState,
    tenant: &Tenant,
    agent_id: &str,
    name: Option<&str>,
    listed: usize,
    more: usize,
) -> (Seat, Team) {
    let key = (tenant.cfg.id.clone(), agent_id.to_owned());
    let entry = {
        let mut l = state.presence.local.entry(key.clone()).or_insert(Local {
            name: name.map(str::to_owned),
            sockets: 0,
            away: false,
        });
        l.sockets += 1;
        if name.is_some() {
            l.name = name.map(str::to_owned);
        }
        entry_of(state, agent_id, &l)
    };
    beat(state, &tenant.cfg.id, std::slice::from_ref(&entry)).await;
    if !joined_view(state, tenant, &entry) {
        refresh(state, tenant).await;
    }
    let seat = Seat {
        state: state.clone(),
        key,
    };
    (seat, team(state, &tenant.cfg.id, agent_id, listed, more))
}

/// The agent set itself online or away (`offline` is not a choice: closing is).
pub async fn set_status(state: &AppState, tenant: &Tenant, agent_id: &str, away: bool) {
    let key = (tenant.cfg.id.clone(), agent_id.to_owned());
    let entry = match state.presence.local.get_mut(&key) {
        Some(mut l) => {
            l.away = away;
            entry_of(state, agent_id, &l)
        }
        None => return,
    };
    beat(state, &tenant.cfg.id, &[entry]).await;
    refresh(state, tenant).await;
}

/// The tenant's agents as this node last saw them (online and away): `first` (if there)
/// and then others, at most `listed` of them listed and the next `more` as frames. Bounded
/// because every agent socket that opens asks, and a team reconnecting at once (a node
/// restart) would otherwise copy the whole team once per agent.
fn team(state: &AppState, tenant: &str, first: &str, listed: usize, more: usize) -> Team {
    let Some(view) = state.presence.views.get(tenant) else {
        return Team {
            listed: Vec::new(),
            more: Vec::new(),
            total: 0,
        };
    };
    let me = view.agents.get(first);
    let others = view
        .agents
        .values()
        .filter(|a| a.presence.agent_id != first);
    let mut agents = me.into_iter().chain(others);
    Team {
        listed: agents
            .by_ref()
            .take(listed)
            .map(|a| a.presence.clone())
            .collect(),
        more: agents.take(more).map(|a| a.frame.clone()).collect(),
        total: view.agents.len(),
    }
}

/// Whether the tenant's chat is available now: its schedule and, with `require_agent`, an
/// online agent (as this node last saw it).
pub fn is_available(state: &AppState, tenant: &Tenant) -> bool {
    tenant
        .schedule
        .is_available_with(state.now_ms(), agent_online(state, &tenant.cfg.id))
}

fn agent_online(state: &AppState, tenant: &str) -> bool {
    state.presence.views.get(tenant).is_some_and(|v| {
        v.agents
            .values()
            .any(|a| a.presence.status == PresenceStatus::Online)
    })
}

fn entry_of(state: &AppState, agent_id: &str, l: &Local) -> PresenceEntry {
    PresenceEntry {
        agent_id: agent_id.to_owned(),
        node: state.node_id.clone(),
        name: l.name.clone(),
        away: l.away,
    }
}

async fn beat(state: &AppState, tenant: &str, entries: &[PresenceEntry]) {
    let expires = state.now_ms() + ENTRY_TTL_MS;
    if let Err(e) = state.store.presence_beat(tenant, entries, expires).await {
        tracing::debug!(error = %e, tenant, "presence not written; retried at the next beat");
    }
}

/// Announces presence changes and keeps the views fresh (see [`refresh_loop`]); until
/// shutdown.
pub async fn run(state: AppState) {
    tokio::join!(announce(state.clone()), refresh_loop(state));
}

/// Sends the changes waiting for each tenant's agents on this node as one burst of
/// `presence` frames: nothing yields in between, so each socket's writer finds them all
/// queued and writes them at once. Then waits [`ANNOUNCE_EVERY`] before the next burst,
/// while changes gather.
async fn announce(state: AppState) {
    loop {
        tokio::select! {
            _ = state.presence.to_announce.notified() => {}
            _ = state.shutdown.cancelled() => return,
        }
        announce_now(&state);
        tokio::select! {
            _ = tokio::time::sleep(ANNOUNCE_EVERY) => {}
            _ = state.shutdown.cancelled() => return,
        }
    }
}

/// Sends every waiting change to the tenant's agents on this node.
fn announce_now(state: &AppState) {
    let waiting = std::mem::take(&mut *state.presence.unannounced.lock());
    for (tenant, changes) in waiting {
        let channel = Channel::Tenant {
            tenant: tenant.into(),
        };
        for change in changes.into_values() {
            state.hub.local_ephemeral_frame(&channel, change.frame);
        }
    }
}

/// Renews this node's agents, then refreshes the tenants it cares about; until shutdown.
async fn refresh_loop(state: AppState) {
    let mut next_beat = tokio::time::Instant::now() + BEAT_EVERY;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REFRESH_EVERY) => {}
            _ = state.presence.changed.notified() => {
                // Agents leaving together (a dashboard fleet closing, a network blip) make
                // one read, not one each: every read is O(team), n leaves would be O(n²).
                tokio::select! {
                    _ = tokio::time::sleep(SETTLE) => {}
                    _ = state.shutdown.cancelled() => return,
                }
            }
            _ = state.shutdown.cancelled() => return,
        }
        // This node's agents, by tenant: renewed when due, and their tenants refreshed.
        let mut local: BTreeMap<String, Vec<PresenceEntry>> = BTreeMap::new();
        for l in state.presence.local.iter() {
            let (tenant, agent) = l.key();
            local
                .entry(tenant.clone())
                .or_default()
                .push(entry_of(&state, agent, l.value()));
        }
        if tokio::time::Instant::now() >= next_beat {
            next_beat = tokio::time::Instant::now() + BEAT_EVERY;
            for (tenant, entries) in &local {
                beat(&state, tenant, entries).await;
            }
        }
        for tenant in state.tenants.all() {
            let id = &tenant.cfg.id;
            let cares = tenant.schedule.require_agent
                || state.presence.views.contains_key(id)
                || local.contains_key(id);
            if cares {
                refresh(&state, tenant).await;
            }
        }
    }
}

/// Folds an agent joining on this node into the tenant's view at once, without re-reading
/// everyone: a team connecting together (a node restart brings every dashboard back) would
/// otherwise read the whole presence set once per agent, O(n²). Online here is online
/// anywhere, so the view needs nothing from other nodes for this; their own changes come
/// with the next refresh. `false` when the node has no view of the tenant yet (then the
/// caller reads it whole, so that `ready` lists the agents of other nodes too).
fn joined_view(state: &AppState, tenant: &Tenant, entry: &PresenceEntry) -> bool {
    let id = &tenant.cfg.id;
    let Some(mut view) = state.presence.views.get_mut(id) else {
        return false;
    };
    let before = view.agents.get(&entry.agent_id).map(|a| &a.presence);
    let now = AgentPresence {
        agent_id: entry.agent_id.clone(),
        name: before
            .and_then(|a| a.name.clone())
            .or_else(|| entry.name.clone()),
        status: match before {
            // Away here and known already: the view has it (and online elsewhere stays so).
            Some(a) if entry.away => a.status,
            _ if entry.away => PresenceStatus::Away,
            _ => PresenceStatus::Online,
        },
    };
    if before != Some(&now) {
        let now = Known::from(now);
        state.presence.tell_agents(id, now.clone());
        view.agents.insert(entry.agent_id.clone(), now);
    }
    let online = view
        .agents
        .values()
        .any(|a| a.presence.status == PresenceStatus::Online);
    settle_availability(state, tenant, view, online);
    true
}

/// Re-reads a tenant's presence; tells this node's agents what changed and its visitors
/// when availability flipped.
async fn refresh(state: &AppState, tenant: &Tenant) {
    let id = &tenant.cfg.id;
    let entries = match state.store.presence(id, state.now_ms()).await {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(error = %e, tenant = id, "presence not read");
            return;
        }
    };
    let mut now: BTreeMap<String, AgentPresence> = BTreeMap::new();
    for e in entries {
        let status = if e.away {
            PresenceStatus::Away
        } else {
            PresenceStatus::Online
        };
        let a = now.entry(e.agent_id.clone()).or_insert(AgentPresence {
            agent_id: e.agent_id,
            name: e.name.clone(),
            status,
        });
        // Online on any node is online.
        if status == PresenceStatus::Online {
            a.status = PresenceStatus::Online;
        }
        if a.name.is_none() {
            a.name = e.name;
        }
    }
    let mut view = state.presence.views.entry(id.clone()).or_default();
    // An agent with a socket on this node is there, whatever a read says that started
    // before its entry was written (its join was folded into the view meanwhile, see
    // `joined_view`): without this, it would be announced offline, then online again at
    // the next read.
    for (agent, a) in &view.agents {
        if !now.contains_key(agent)
            && state
                .presence
                .local
                .contains_key(&(id.clone(), agent.clone()))
        {
            now.insert(agent.clone(), a.presence.clone());
        }
    }
    // Unchanged agents keep their encoded frame; what is left of `before` has gone.
    let mut before = std::mem::take(&mut view.agents);
    for (agent, a) in now {
        let known = match before.remove(&agent) {
            Some(k) if k.presence == a => k,
            _ => {
                let changed = Known::from(a);
                state.presence.tell_agents(id, changed.clone());
                changed
            }
        };
        view.agents.insert(agent, known);
    }
    for gone in before.into_values() {
        let offline = AgentPresence {
            status: PresenceStatus::Offline,
            ..gone.presence
        };
        state.presence.tell_agents(id, offline.into());
    }
    let online = view
        .agents
        .values()
        .any(|a| a.presence.status == PresenceStatus::Online);
    settle_availability(state, tenant, view, online);
}

/// Records the tenant's availability given whether an agent is `online`, then releases the
/// view; when availability flipped, tells this node's visitors (outside the view's lock:
/// `GET /v1/config` reads the view).
fn settle_availability(
    state: &AppState,
    tenant: &Tenant,
    mut view: RefMut<'_, String, View>,
    online: bool,
) {
    let now_ms = state.now_ms();
    let available = tenant.schedule.is_available_with(now_ms, online);
    // Before the first read, visitors were told what an empty view gives: nobody online.
    let was = view
        .available
        .unwrap_or_else(|| tenant.schedule.is_available_with(now_ms, false));
    view.available = Some(available);
    drop(view);
    if was != available {
        let id = &tenant.cfg.id;
        // `GET /v1/config` caches its tenant part for 60 s: not past a change.
        state.config_cache.remove(id);
        let frame = frames::availability(available, tenant.schedule.mode.as_str());
        for ch in state.hub.conversation_channels(id) {
            state.hub.local_ephemeral(&ch, &frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Clock;

    /// The next `presence` frame's data on `sub`, if one is waiting, once the waiting
    /// changes are announced.
    fn next_presence(
        state: &AppState,
        sub: &crate::hub::Subscription,
    ) -> Option<serde_json::Value> {
        announce_now(state);
        let out = sub.try_recv()?;
        let v: serde_json::Value = serde_json::from_str(out.frame.as_text()).unwrap();
        assert_eq!(v["type"], "presence", "{v}");
        Some(v["data"].clone())
    }

    /// A subscription to the demo tenant's channel, as an agent socket has.
    fn demo_agents(state: &AppState) -> crate::hub::Subscription {
        let channel = Channel::Tenant {
            tenant: "demo".into(),
        };
        state.hub.subscribe(&state.broker, channel, 100, false)
    }

    /// A read of the presence set that misses an agent connected here (it started before
    /// the agent's entry was written, or the entry lapsed) does not announce it offline:
    /// its join was folded into the view, and it is there while its socket is open.
    #[tokio::test]
    async fn a_read_that_missed_a_connected_agent_does_not_take_it_offline() {
        let state = AppState::for_tests(Clock::system()).await;
        let tenant = state.tenants.by_id("demo").unwrap().clone();
        let (_ann, _) = join(&state, &tenant, "ann", Some("Ann"), 10, 0).await;
        announce_now(&state);
        let sub = demo_agents(&state);
        let (bob, then) = join(&state, &tenant, "bob", Some("Bob"), 1, 10).await;
        assert_eq!((then.listed.len(), then.more.len(), then.total), (1, 1, 2));
        assert_eq!(then.listed[0].agent_id, "bob", "the joining agent first");
        assert!(then.more[0].as_text().contains(r#""agentId":"ann""#));
        let joined = next_presence(&state, &sub).expect("bob announced");
        assert_eq!(joined["agentId"], "bob");
        assert_eq!(joined["status"], "online");

        // The read that does not see Bob's entry.
        state
            .store
            .presence_leave("demo", "bob", &state.node_id)
            .await
            .unwrap();
        refresh(&state, &tenant).await;
        assert_eq!(
            next_presence(&state, &sub),
            None,
            "nothing changed for the agents"
        );
        let listed = team(&state, "demo", "bob", 1, 0).listed;
        assert!(listed[0].agent_id == "bob" && listed[0].status == PresenceStatus::Online);

        // Once his socket is gone, the same read takes him offline.
        drop(bob);
        refresh(&state, &tenant).await;
        let left = next_presence(&state, &sub).expect("bob gone");
        assert_eq!(left["agentId"], "bob");
        assert_eq!(left["status"], "offline");
    }

    /// Changes wait for the next announcement, which names each agent once, with its
    /// latest status.
    #[tokio::test]
    async fn an_announcement_carries_each_agents_latest_status_once() {
        let state = AppState::for_tests(Clock::system()).await;
        let tenant = state.tenants.by_id("demo").unwrap().clone();
        let sub = demo_agents(&state);
        let (_ann, _) = join(&state, &tenant, "ann", Some("Ann"), 10, 0).await;
        let (_bob, _) = join(&state, &tenant, "bob", Some("Bob"), 10, 0).await;
        set_status(&state, &tenant, "ann", true).await;
        assert!(sub.try_recv().is_none(), "nothing before the announcement");

        let ann = next_presence(&state, &sub).expect("ann announced");
        assert_eq!(
            (ann["agentId"].as_str(), ann["status"].as_str()),
            (Some("ann"), Some("away"))
        );
        let bob = next_presence(&state, &sub).expect("bob announced");
        assert_eq!(
            (bob["agentId"].as_str(), bob["status"].as_str()),
            (Some("bob"), Some("online"))
        );
        assert_eq!(
            next_presence(&state, &sub),
            None,
            "ann's earlier status is not announced"
        );
    }
}
