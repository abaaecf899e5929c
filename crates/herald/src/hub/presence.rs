//! Presence: who is in a room, with what metadata. Memory only; an entry lives
//! exactly as long as the connection that set it.

use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// One connection's entry in a room.
#[derive(Debug, Clone)]
struct Entry {
    conn_id: u64,
    /// Groups entries: the user's `sub`, or a key the client chose.
    key: String,
    /// Unique per entry, so clients can tell a re-track from a second tab.
    presence_ref: String,
    meta: Value,
}

/// Room → entries.
#[derive(Default)]
pub struct Presence {
    rooms: Mutex<HashMap<(String, String), Vec<Entry>>>,
    next_ref: std::sync::atomic::AtomicU64,
}

/// A change to announce: `{key: {metas: [...]}}` maps for joins and leaves.
pub struct Diff {
    pub joins: Value,
    pub leaves: Value,
}

fn meta_with_ref(e: &Entry) -> Value {
    let mut m = match &e.meta {
        Value::Object(m) => m.clone(),
        other => {
            let mut m = Map::new();
            m.insert("value".into(), other.clone());
            m
        }
    };
    m.insert("phx_ref".into(), Value::String(e.presence_ref.clone()));
    Value::Object(m)
}

fn group<'a>(entries: impl Iterator<Item = &'a Entry>) -> Value {
    let mut out = Map::new();
    for e in entries {
        let slot = out.entry(e.key.clone()).or_insert_with(|| json!({ "metas": [] }));
        if let Some(Value::Array(metas)) = slot.get_mut("metas") {
            metas.push(meta_with_ref(e));
        }
    }
    Value::Object(out)
}

impl Presence {
    /// Sets connection `conn_id`'s meta in a room (replacing its previous one).
    pub fn track(&self, tenant: &str, room: &str, conn_id: u64, key: &str, meta: Value) -> Diff {
        let n = self.next_ref.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let entry = Entry { conn_id, key: key.to_string(), presence_ref: format!("p{n}"), meta };
        let mut rooms = self.rooms.lock();
        let list = rooms.entry((tenant.to_string(), room.to_string())).or_default();
        let old: Vec<Entry> = list.iter().filter(|e| e.conn_id == conn_id).cloned().collect();
        list.retain(|e| e.conn_id != conn_id);
        list.push(entry.clone());
        Diff { joins: group(std::iter::once(&entry)), leaves: group(old.iter()) }
    }

    /// Removes connection `conn_id` from a room; `None` if it was not there.
    pub fn untrack(&self, tenant: &str, room: &str, conn_id: u64) -> Option<Diff> {
        let mut rooms = self.rooms.lock();
        let k = (tenant.to_string(), room.to_string());
        let list = rooms.get_mut(&k)?;
        let old: Vec<Entry> = list.iter().filter(|e| e.conn_id == conn_id).cloned().collect();
        if old.is_empty() {
            return None;
        }
        list.retain(|e| e.conn_id != conn_id);
        if list.is_empty() {
            rooms.remove(&k);
        }
        Some(Diff { joins: json!({}), leaves: group(old.iter()) })
    }

    /// Everyone in a room: `{key: {metas: [...]}}`.
    pub fn state(&self, tenant: &str, room: &str) -> Value {
        let rooms = self.rooms.lock();
        match rooms.get(&(tenant.to_string(), room.to_string())) {
            Some(list) => group(list.iter()),
            None => json!({}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_replaces_and_untrack_leaves() {
        let p = Presence::default();
        p.track("t", "r", 1, "alice", json!({"status": "online"}));
        let d = p.track("t", "r", 1, "alice", json!({"status": "away"}));
        assert_eq!(d.leaves["alice"]["metas"][0]["status"], "online");
        assert_eq!(d.joins["alice"]["metas"][0]["status"], "away");
        p.track("t", "r", 2, "bob", json!({}));
        assert_eq!(p.state("t", "r").as_object().unwrap().len(), 2);
        assert!(p.state("other", "r").as_object().unwrap().is_empty());
        let d = p.untrack("t", "r", 1).unwrap();
        assert_eq!(d.leaves["alice"]["metas"][0]["status"], "away");
        assert!(p.untrack("t", "r", 1).is_none());
    }
}
