//! What the writer keeps of the rows every message touches.
//!
//! **Conversation rows** ([`Rows`]): a message re-reads its conversation (to number the
//! message and record it as the last one), and reading that row is a B-tree lookup plus a
//! JSON parse of the whole conversation, per message. The writer thread is the database's
//! only writer, so a cache it owns and updates with every save is exact — as long as it
//! never keeps what a rollback undid: the writer empties it when a write's savepoint rolls
//! back and when a commit fails ([`super::writer`]).
//!
//! **Log heads** ([`Heads`]): each event takes the next offset of its tenant's log. An
//! upsert of `tenant_logs` per event was a good part of a message's cost; the writer
//! counts here instead and writes each changed head once, before the commit — and before
//! any write with a savepoint (which may read them, as pruning does), so that a savepoint
//! that rolls back only has to forget the counts.
//!
//! Rows are bounded by two generations of at most [`GENERATION`] rows: a row read or saved goes
//! into the young one; when that is full it becomes the old one (the previous old one is
//! dropped), and a row found in the old generation moves back to the young one. Rows in
//! use stay; rows untouched for a generation go.

use std::collections::HashMap;

use confab_protocol::model::Conversation;
use rusqlite::{params, Connection, OptionalExtension};

use super::db_err;
use crate::Result;

/// Rows per generation (the cache holds at most twice this many).
const GENERATION: usize = 4096;

/// A conversation row as the writer last wrote or read it.
#[derive(Clone)]
pub(super) struct Row {
    pub conversation: Conversation,
    pub last_seq: u64,
    pub last_created_ms: i64,
}

#[derive(Default)]
pub(super) struct Rows {
    young: HashMap<String, Row>,
    old: HashMap<String, Row>,
}

impl Rows {
    /// The cached row of conversation `id`, moved out of the cache (put it back with
    /// [`Rows::put`] once saved).
    pub fn take(&mut self, id: &str) -> Option<Row> {
        self.young.remove(id).or_else(|| self.old.remove(id))
    }

    /// A copy of the cached row of conversation `id`.
    pub fn get(&mut self, id: &str) -> Option<Row> {
        if let Some(row) = self.young.get(id) {
            return Some(row.clone());
        }
        let row = self.old.remove(id)?;
        self.put(row.clone());
        Some(row)
    }

    /// Caches `row` as its conversation's row in the database.
    pub fn put(&mut self, row: Row) {
        let id = &row.conversation.id;
        // An older copy in the old generation must not outlive this one.
        self.old.remove(id);
        if self.young.len() >= GENERATION && !self.young.contains_key(id) {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(id.clone(), row);
    }

    /// Forgets every row: the database may no longer hold what the cache says.
    pub fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }
}

/// The last offset of each tenant's log as the writer's transaction has it (module doc).
#[derive(Default)]
pub(super) struct Heads {
    last: HashMap<String, i64>,
    /// Tenants whose head is ahead of `tenant_logs`.
    dirty: Vec<String>,
    /// Offsets handed out so far (a write can tell whether it took one).
    pub taken: u64,
}

impl Heads {
    /// Takes the next offset of `tenant`'s log.
    pub fn next(&mut self, conn: &Connection, tenant: &str) -> Result<i64> {
        let last = match self.last.get_mut(tenant) {
            Some(last) => last,
            None => {
                let stored: i64 = conn
                    .prepare_cached("SELECT last_offset FROM tenant_logs WHERE tenant = ?1")
                    .map_err(db_err)?
                    .query_row(params![tenant], |r| r.get(0))
                    .optional()
                    .map_err(db_err)?
                    .unwrap_or(0);
                self.last.entry(tenant.to_owned()).or_insert(stored)
            }
        };
        *last += 1;
        if !self.dirty.iter().any(|t| t == tenant) {
            self.dirty.push(tenant.to_owned());
        }
        self.taken += 1;
        Ok(*last)
    }

    /// Writes the heads that moved into `tenant_logs`.
    pub fn flush(&mut self, conn: &Connection) -> Result<()> {
        for tenant in self.dirty.drain(..) {
            let Some(last) = self.last.get(&tenant) else {
                continue;
            };
            conn.prepare_cached(
                "INSERT INTO tenant_logs (tenant, last_offset, pruned_through) VALUES (?1, ?2, 0)
                 ON CONFLICT (tenant) DO UPDATE SET last_offset = excluded.last_offset",
            )
            .map_err(db_err)?
            .execute(params![tenant, last])
            .map_err(db_err)?;
        }
        if self.last.len() > GENERATION {
            self.last.clear();
        }
        Ok(())
    }

    /// Forgets every head (those not written yet included: the transaction rolled back).
    pub fn clear(&mut self) {
        self.last.clear();
        self.dirty.clear();
    }
}
