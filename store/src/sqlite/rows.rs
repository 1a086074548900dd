//! The writer's cache of conversation rows: a message re-reads its conversation (to number
//! the message and record it as the last one), and reading that row is a B-tree lookup
//! plus a JSON parse of the whole conversation, per message. The writer thread is the
//! database's only writer, so a cache it owns and updates with every save is exact — as
//! long as it never keeps what a rollback undid: the writer empties it when a write's
//! savepoint rolls back and when a commit fails ([`super::writer`]).
//!
//! Bounded by two generations of at most [`GENERATION`] rows: a row read or saved goes
//! into the young one; when that is full it becomes the old one (the previous old one is
//! dropped), and a row found in the old generation moves back to the young one. Rows in
//! use stay; rows untouched for a generation go.

use std::collections::HashMap;

use confab_protocol::model::Conversation;

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
