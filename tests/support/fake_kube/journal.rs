//! The fake's change history, as etcd and the API server's watch cache keep it: every change of a
//! stored object becomes an event (ADDED, MODIFIED, DELETED) at its `resourceVersion`, so watches
//! can resume from any version still in the window and paginated lists can serve every page from
//! one consistent snapshot. Events older than the window are compacted away: a watch or a
//! `continue` token from before the window gets 410 Gone `Expired`, as from a real server.
//!
//! The journal learns of changes by comparing the stored objects with what it last saw (their
//! `resourceVersion`s), so every way the fake changes an object is covered without each one
//! reporting it; a deletion gets a fresh resourceVersion, as the API server gives it.
use super::State;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};

/// (resource, namespace, name), as the fake keys its objects.
pub type Key = (String, String, String);

/// Events kept before the oldest is compacted (a real etcd keeps about five minutes).
pub const JOURNAL_WINDOW_EVENTS: usize = 20_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Added,
    Modified,
    Deleted,
}

impl Change {
    pub fn wire(self) -> &'static str {
        match self {
            Change::Added => "ADDED",
            Change::Modified => "MODIFIED",
            Change::Deleted => "DELETED",
        }
    }
}

/// One change of one object.
#[derive(Clone, Debug)]
pub struct Event {
    pub rv: u64,
    pub change: Change,
    pub key: Key,
    /// The object after the change (for DELETED: as it was, at the deletion's version).
    pub object: Value,
    /// The object before the change (`None` for ADDED).
    pub previous: Option<Value>,
}

#[derive(Default)]
pub struct Journal {
    /// Every object as of the last sync (the newest state the journal knows).
    seen: BTreeMap<Key, Value>,
    events: VecDeque<Event>,
    /// The objects as of `compacted_rv` (the state before the oldest kept event).
    base: BTreeMap<Key, Value>,
    /// Versions at or below this are compacted: history before it is gone.
    pub compacted_rv: u64,
    /// Bumped to end every open watch stream.
    pub watch_epoch: u64,
    /// `State::resource_version` and object count at the last sync (nothing changed since when
    /// both still match).
    synced: (u64, usize),
}

pub fn rv_of(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Brings the journal up to date with the stored objects.
pub fn sync(state: &mut State) {
    if state.journal.synced == (state.resource_version, state.objects.len()) {
        return;
    }
    let journal = &mut state.journal;
    let mut changed: Vec<Event> = Vec::new();
    for (key, object) in &state.objects {
        let previous = journal.seen.get(key);
        if previous.is_some_and(|p| rv_of(p) == rv_of(object)) {
            continue;
        }
        changed.push(Event {
            rv: rv_of(object),
            change: if previous.is_some() {
                Change::Modified
            } else {
                Change::Added
            },
            key: key.clone(),
            object: object.clone(),
            previous: previous.cloned(),
        });
    }
    changed.sort_by_key(|e| e.rv);
    let gone: Vec<Key> = journal
        .seen
        .keys()
        .filter(|k| !state.objects.contains_key(*k))
        .cloned()
        .collect();
    for key in gone {
        state.resource_version += 1;
        let previous = journal.seen.get(&key).cloned().unwrap_or(Value::Null);
        let mut object = previous.clone();
        object["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
        changed.push(Event {
            rv: state.resource_version,
            change: Change::Deleted,
            key,
            object,
            previous: Some(previous),
        });
    }
    for event in changed {
        match event.change {
            Change::Deleted => journal.seen.remove(&event.key),
            _ => journal.seen.insert(event.key.clone(), event.object.clone()),
        };
        journal.events.push_back(event);
    }
    while journal.events.len() > JOURNAL_WINDOW_EVENTS {
        let oldest = journal.events.pop_front().unwrap();
        journal.compacted_rv = oldest.rv;
        apply(&mut journal.base, &oldest);
    }
    journal.synced = (state.resource_version, state.objects.len());
}

fn apply(objects: &mut BTreeMap<Key, Value>, event: &Event) {
    match event.change {
        Change::Deleted => objects.remove(&event.key),
        _ => objects.insert(event.key.clone(), event.object.clone()),
    };
}

/// Drops all history up to now: any watch or continue token from before answers 410 Expired.
pub fn compact(state: &mut State) {
    sync(state);
    let journal = &mut state.journal;
    while let Some(oldest) = journal.events.pop_front() {
        apply(&mut journal.base, &oldest);
    }
    journal.compacted_rv = state.resource_version;
}

/// The events after `rv`, oldest first; `Err(compacted)` when history since `rv` is gone.
pub fn since(state: &State, rv: u64) -> Result<Vec<Event>, u64> {
    if rv < state.journal.compacted_rv {
        return Err(state.journal.compacted_rv);
    }
    Ok(state
        .journal
        .events
        .iter()
        .filter(|e| e.rv > rv)
        .cloned()
        .collect())
}

/// The objects as they were at `rv` (synced state assumed); `Err(compacted)` when too old.
pub fn snapshot_at(state: &State, rv: u64) -> Result<BTreeMap<Key, Value>, u64> {
    if rv < state.journal.compacted_rv {
        return Err(state.journal.compacted_rv);
    }
    let mut objects = state.journal.base.clone();
    for event in state.journal.events.iter().take_while(|e| e.rv <= rv) {
        apply(&mut objects, event);
    }
    Ok(objects)
}
