//! Notifications for one recipient: created by the API or by the job rules,
//! marked read one by one or all at once; each change is an event on `user:<sub>`.

use super::{to_json, to_raw, NewNotification, Reply, WriteError};
use crate::model::ids::new_id;
use crate::model::topic::user_topic;
use crate::model::{EventType, Notification};
use crate::store::{NewEvent, WriteTx};

pub fn create(
    tx: &mut dyn WriteTx,
    tenant: &str,
    n: NewNotification,
    job_id: Option<&str>,
) -> Result<Notification, WriteError> {
    let notification = Notification {
        id: new_id(),
        recipient: n.recipient,
        level: n.level,
        title: n.title,
        body: n.body,
        link: n.link,
        job_id: job_id.map(str::to_string),
        read: false,
        created_at: tx.now(),
        read_at: None,
    };
    let doc = to_json(&notification)?;
    tx.insert_notification(tenant, &notification, &doc)?;
    announce(tx, tenant, EventType::NotificationCreated, &notification, doc)?;
    Ok(notification)
}

fn announce(
    tx: &mut dyn WriteTx,
    tenant: &str,
    kind: EventType,
    n: &Notification,
    doc: String,
) -> Result<(), WriteError> {
    tx.append(tenant, NewEvent { kind, job: None, topics: vec![user_topic(&n.recipient)], data: doc })?;
    Ok(())
}

pub fn mark_read(tx: &mut dyn WriteTx, tenant: &str, recipient: &str, id: &str) -> Result<Reply, WriteError> {
    let mut n =
        tx.notification(tenant, recipient, id)?.ok_or_else(|| WriteError::NotFound(format!("notification {id}")))?;
    if !n.read {
        set_read(tx, tenant, &mut n)?;
    }
    Ok(Reply { created: false, body: to_raw(&n)? })
}

fn set_read(tx: &mut dyn WriteTx, tenant: &str, n: &mut Notification) -> Result<(), WriteError> {
    n.read = true;
    n.read_at = Some(tx.now());
    let doc = to_json(&*n)?;
    tx.update_notification(tenant, n, &doc)?;
    announce(tx, tenant, EventType::NotificationRead, n, doc)
}

pub fn mark_all_read(tx: &mut dyn WriteTx, tenant: &str, recipient: &str) -> Result<Reply, WriteError> {
    let unread = tx.unread_notifications(tenant, recipient)?;
    let count = unread.len();
    for mut n in unread {
        set_read(tx, tenant, &mut n)?;
    }
    Ok(Reply { created: false, body: to_raw(&serde_json::json!({ "marked_read": count }))? })
}
