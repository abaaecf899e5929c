//! Presence: who is in a room, with what metadata. Memory only; an entry lives
//! exactly as long as the connection that set it. In a cluster, each node
//! also keeps the entries other nodes announced (by their presence diffs and
//! snapshots), grouped by node, so a node that dies takes its entries with it.

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

/// An entry another node announced: its key and its meta as announced (with
/// its `phx_ref`, which is unique across nodes).
#[derive(Debug, Clone)]
struct RemoteEntry {
    key: String,
    presence_ref: String,
    meta: Value,
}

/// (tenant, room) → what one node announced there.
type RemoteRooms = HashMap<(String, String), Vec<RemoteEntry>>;

/// Room → entries.
pub struct Presence {
    rooms: Mutex<HashMap<(String, String), Vec<Entry>>>,
    /// Node → room → the entries that node announced.
    remote: Mutex<HashMap<String, RemoteRooms>>,
    next_ref: std::sync::atomic::AtomicU64,
    /// Makes `phx_ref`s unique across processes (nodes, restarts).
    ref_prefix: String,
}

impl Default for Presence {
    fn default() -> Self {
        let ref_prefix = format!("p{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        Presence { rooms: Mutex::default(), remote: Mutex::default(), next_ref: Default::default(), ref_prefix }
    }
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
        let entry = Entry { conn_id, key: key.to_string(), presence_ref: format!("{}{n}", self.ref_prefix), meta };
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

    /// Everyone in a room, on every node: `{key: {metas: [...]}}`.
    pub fn state(&self, tenant: &str, room: &str) -> Value {
        let k = (tenant.to_string(), room.to_string());
        let mut out = match self.rooms.lock().get(&k) {
            Some(list) => group(list.iter()),
            None => json!({}),
        };
        let remote = self.remote.lock();
        for rooms in remote.values() {
            for e in rooms.get(&k).into_iter().flatten() {
                let Value::Object(map) = &mut out else { break };
                let slot = map.entry(e.key.clone()).or_insert_with(|| json!({ "metas": [] }));
                if let Some(Value::Array(metas)) = slot.get_mut("metas") {
                    metas.push(e.meta.clone());
                }
            }
        }
        out
    }

    /// The rooms of `tenant` with anyone present, on any node, sorted.
    pub fn tenant_rooms(&self, tenant: &str) -> Vec<String> {
        let mut rooms: std::collections::BTreeSet<String> =
            self.rooms.lock().keys().filter(|(t, _)| t == tenant).map(|(_, r)| r.clone()).collect();
        for node in self.remote.lock().values() {
            rooms.extend(node.keys().filter(|(t, _)| t == tenant).map(|(_, r)| r.clone()));
        }
        rooms.into_iter().collect()
    }

    /// This node's own entries, room by room: what it tells a node that joins.
    pub fn local_rooms(&self) -> Vec<(String, String, Value)> {
        self.rooms.lock().iter().map(|((t, r), list)| (t.clone(), r.clone(), group(list.iter()))).collect()
    }

    /// Applies a diff another node announced (`{key: {metas: [{..., phx_ref}]}}`).
    pub fn apply_remote(&self, node: &str, tenant: &str, room: &str, joins: &Value, leaves: &Value) {
        let mut remote = self.remote.lock();
        let k = (tenant.to_string(), room.to_string());
        let rooms = remote.entry(node.to_string()).or_default();
        let list = rooms.entry(k.clone()).or_default();
        for (_, meta) in metas(leaves) {
            if let Some(r) = meta.get("phx_ref").and_then(Value::as_str) {
                list.retain(|e| e.presence_ref != r);
            }
        }
        for (key, meta) in metas(joins) {
            let Some(r) = meta.get("phx_ref").and_then(Value::as_str) else { continue };
            if !list.iter().any(|e| e.presence_ref == r) {
                list.push(RemoteEntry { key: key.to_string(), presence_ref: r.to_string(), meta: meta.clone() });
            }
        }
        if list.is_empty() {
            rooms.remove(&k);
        }
    }

    /// Replaces everything `node` announced with its snapshot; returns, per
    /// room, the diff that makes a subscriber's view match (ghosts of lost
    /// messages leave, missed entries join).
    pub fn replace_node(&self, node: &str, snapshot: Vec<(String, String, Value)>) -> Vec<(String, String, Diff)> {
        let mut fresh: RemoteRooms = HashMap::new();
        for (tenant, room, state) in snapshot {
            let list = fresh.entry((tenant, room)).or_default();
            for (key, meta) in metas(&state) {
                let Some(r) = meta.get("phx_ref").and_then(Value::as_str) else { continue };
                list.push(RemoteEntry { key: key.to_string(), presence_ref: r.to_string(), meta: meta.clone() });
            }
        }
        let old = {
            let mut remote = self.remote.lock();
            let old =
                if fresh.is_empty() { remote.remove(node) } else { remote.insert(node.to_string(), fresh.clone()) };
            old.unwrap_or_default()
        };
        let mut diffs = Vec::new();
        let rooms: std::collections::HashSet<&(String, String)> = old.keys().chain(fresh.keys()).collect();
        for k in rooms {
            let before = old.get(k).map(Vec::as_slice).unwrap_or_default();
            let after = fresh.get(k).map(Vec::as_slice).unwrap_or_default();
            let joins: Vec<&RemoteEntry> =
                after.iter().filter(|e| !before.iter().any(|b| b.presence_ref == e.presence_ref)).collect();
            let leaves: Vec<&RemoteEntry> =
                before.iter().filter(|e| !after.iter().any(|a| a.presence_ref == e.presence_ref)).collect();
            if !joins.is_empty() || !leaves.is_empty() {
                let diff = Diff { joins: group_remote(joins.into_iter()), leaves: group_remote(leaves.into_iter()) };
                diffs.push((k.0.clone(), k.1.clone(), diff));
            }
        }
        diffs
    }

    /// Forgets a node that stopped or went silent; returns the leaves to announce.
    pub fn drop_node(&self, node: &str) -> Vec<(String, String, Diff)> {
        self.replace_node(node, Vec::new())
    }
}

/// `(key, meta)` of each meta in a `{key: {metas: [...]}}` map.
fn metas(v: &Value) -> impl Iterator<Item = (&str, &Value)> {
    v.as_object().into_iter().flatten().flat_map(|(key, slot)| {
        slot.get("metas").and_then(Value::as_array).into_iter().flatten().map(move |m| (key.as_str(), m))
    })
}

fn group_remote<'a>(entries: impl Iterator<Item = &'a RemoteEntry>) -> Value {
    let mut out = Map::new();
    for e in entries {
        let slot = out.entry(e.key.clone()).or_insert_with(|| json!({ "metas": [] }));
        if let Some(Value::Array(metas)) = slot.get_mut("metas") {
            metas.push(e.meta.clone());
        }
    }
    Value::Object(out)
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

    #[test]
    fn remote_entries_merge_and_leave_with_their_node() {
        let a = Presence::default();
        let b = Presence::default();
        let on_a = a.track("t", "r", 1, "alice", json!({"at": "a"}));
        b.track("t", "r", 7, "bob", json!({"at": "b"}));
        // b hears a's diff: both in b's view; refs differ across nodes.
        b.apply_remote("A", "t", "r", &on_a.joins, &on_a.leaves);
        let state = b.state("t", "r");
        assert_eq!(state["alice"]["metas"][0]["at"], "a");
        assert_eq!(state["bob"]["metas"][0]["at"], "b");
        assert_ne!(state["alice"]["metas"][0]["phx_ref"], state["bob"]["metas"][0]["phx_ref"]);
        // The same diff twice is one entry.
        b.apply_remote("A", "t", "r", &on_a.joins, &on_a.leaves);
        assert_eq!(b.state("t", "r")["alice"]["metas"].as_array().unwrap().len(), 1);
        // A snapshot without alice (her leave was lost) makes her leave.
        let diffs = b.replace_node("A", vec![]);
        assert_eq!(diffs.len(), 1);
        assert_eq!(diffs[0].2.leaves["alice"]["metas"][0]["at"], "a");
        assert!(b.state("t", "r").get("alice").is_none());
        // A snapshot brings her back; a dead node takes her away again.
        let diffs = b.replace_node("A", a.local_rooms());
        assert_eq!(diffs[0].2.joins["alice"]["metas"][0]["at"], "a");
        assert_eq!(b.drop_node("A").len(), 1);
        assert!(b.drop_node("A").is_empty());
        assert!(b.state("t", "r").get("alice").is_none());
    }
}
