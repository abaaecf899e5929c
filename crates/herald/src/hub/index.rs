//! Equality filters through an index: a subscriber that wants only the rows of
//! a captured table whose column equals a value subscribes to the index topic
//! `table:<schema>.<table>|<column>=<value>`. The hub counts, per table topic,
//! which columns have such subscribers, and routes each event of that table to
//! the one index topic per indexed column its row names — work per event and
//! indexed column, never per subscriber.

use crate::model::Event;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The index topic of rows of `base` (a `table:` topic) whose `column` is `value`.
pub fn index_topic(base: &str, column: &str, value: &str) -> String {
    format!("{base}|{column}={value}")
}

/// `(base, column)` of an index topic.
pub fn parse_index_topic(topic: &str) -> Option<(&str, &str)> {
    let (base, rest) = topic.split_once('|')?;
    let (column, _) = rest.split_once('=')?;
    Some((base, column))
}

/// The log topic an index topic's events are read from on resume.
pub fn log_topic(topic: &str) -> &str {
    parse_index_topic(topic).map_or(topic, |(base, _)| base)
}

/// Index subscriptions of one table topic of one tenant, by column.
type ColumnCounts = HashMap<String, usize>;

/// Subscriptions on index topics, by tenant and base topic, then column.
#[derive(Default)]
pub struct Indexes {
    columns: Mutex<HashMap<(Arc<str>, String), ColumnCounts>>,
    /// Index subscriptions in all: none means nothing to look up per event.
    total: AtomicUsize,
}

impl Indexes {
    /// Counts a subscription of `topic` in `tenant` if it is an index topic.
    pub fn added(&self, tenant: &Arc<str>, topic: &str) {
        let Some((base, column)) = parse_index_topic(topic) else { return };
        let mut columns = self.columns.lock();
        *columns.entry((Arc::clone(tenant), base.to_string())).or_default().entry(column.to_string()).or_default() += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets one subscription of `topic` in `tenant`.
    pub fn removed(&self, tenant: &Arc<str>, topic: &str) {
        let Some((base, column)) = parse_index_topic(topic) else { return };
        let mut columns = self.columns.lock();
        let key = (Arc::clone(tenant), base.to_string());
        let Some(by_column) = columns.get_mut(&key) else { return };
        if let Some(n) = by_column.get_mut(column) {
            *n -= 1;
            if *n == 0 {
                by_column.remove(column);
            }
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
        if by_column.is_empty() {
            columns.remove(&key);
        }
    }

    /// The index topics `event` goes to besides its own topics.
    pub fn topics_of(&self, event: &Event) -> Vec<String> {
        if self.total.load(Ordering::Relaxed) == 0 || event.table.is_none() {
            return Vec::new();
        }
        let Some(base) = event.topics.first() else { return Vec::new() };
        let wanted: Vec<String> = {
            let columns = self.columns.lock();
            match columns.get(&(Arc::clone(&event.tenant), base.clone())) {
                Some(by_column) => by_column.keys().cloned().collect(),
                None => return Vec::new(),
            }
        };
        let row = event.row();
        wanted
            .iter()
            .filter_map(|column| crate::model::table::key_text(row.get(column)?).map(|v| index_topic(base, column, &v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventType, Position};

    fn event(tenant: &str, row: &str) -> Event {
        Event {
            position: Position::from_u64(1),
            tenant: Arc::from(tenant),
            kind: EventType::RowInserted,
            topics: vec!["table:public.t".into()],
            job_id: None,
            owner: None,
            data: Arc::from(serde_json::value::RawValue::from_string(row.into()).unwrap()),
            old: None,
            table: Some(Arc::from("public.t")),
            time: 0,
            row: Default::default(),
        }
    }

    #[test]
    fn events_reach_the_index_topics_of_their_values_while_someone_listens() {
        let idx = Indexes::default();
        let acme: Arc<str> = Arc::from("acme");
        let e = event("acme", r#"{"agent": 7, "name": "x", "meta": {}}"#);
        assert!(idx.topics_of(&e).is_empty(), "no index subscriber, no lookup");
        idx.added(&acme, "table:public.t|agent=3");
        idx.added(&acme, "table:public.t|agent=7");
        idx.added(&acme, "table:public.t|meta=x");
        idx.added(&acme, "table:public.t");
        let mut got = idx.topics_of(&e);
        got.sort();
        assert_eq!(got, ["table:public.t|agent=7"], "one topic per indexed column, by the row's value");
        assert!(idx.topics_of(&event("globex", r#"{"agent": 7}"#)).is_empty(), "per tenant");
        idx.removed(&acme, "table:public.t|agent=3");
        assert_eq!(idx.topics_of(&e), ["table:public.t|agent=7"]);
        idx.removed(&acme, "table:public.t|agent=7");
        idx.removed(&acme, "table:public.t|meta=x");
        assert!(idx.topics_of(&e).is_empty());
        assert_eq!(log_topic("table:public.t|agent=7"), "table:public.t");
        assert_eq!(log_topic("job:x"), "job:x");
    }
}
