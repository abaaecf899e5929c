//! pgoutput logical replication messages (protocol 1) through
//! `store::postgres::pgoutput::decode`. A message that decodes is written
//! back by the encoder below and must decode to the same message; cut by its
//! last byte it must be reported truncated, and with a byte more, refused.

#![no_main]

use herald::store::postgres::pgoutput::{decode, DecodeError, Message, Tuple, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = decode(data) else { return };
    // Other: Origin, Type and Message are read through; an unknown tag is not.
    let known = !matches!(m, Message::Other(t) if !b"OYM".contains(&t));
    if known {
        let cut = decode(&data[..data.len() - 1]);
        assert!(matches!(cut, Err(DecodeError::Truncated(_))), "cut by one byte: {cut:?}");
        let longer = decode(&[data, b"\0"].concat());
        assert!(matches!(longer, Err(DecodeError::Invalid(_))), "a byte more: {longer:?}");
    }
    if let Some(bytes) = encode(&m) {
        assert_eq!(decode(&bytes).as_ref(), Ok(&m), "re-encoded as {bytes:02x?}");
    }
});

/// The message as the server would write it; `None` for `Other`, whose body is not kept.
fn encode(m: &Message) -> Option<Vec<u8>> {
    let mut b = Vec::new();
    let cstr = |b: &mut Vec<u8>, s: &str| {
        b.extend_from_slice(s.as_bytes());
        b.push(0);
    };
    let tuple = |b: &mut Vec<u8>, marker: u8, t: &Tuple| {
        b.push(marker);
        b.extend((t.0.len() as i16).to_be_bytes());
        for v in &t.0 {
            match v {
                Value::Null => b.push(b'n'),
                Value::Unchanged => b.push(b'u'),
                Value::Text(s) => {
                    b.push(b't');
                    b.extend((s.len() as i32).to_be_bytes());
                    b.extend_from_slice(s.as_bytes());
                }
            }
        }
    };
    let key_marker = |key_only: bool| if key_only { b'K' } else { b'O' };
    match m {
        Message::Begin { final_lsn, commit_time_micros, xid } => {
            b.push(b'B');
            b.extend(final_lsn.to_be_bytes());
            b.extend(commit_time_micros.to_be_bytes());
            b.extend(xid.to_be_bytes());
        }
        Message::Commit { commit_lsn, end_lsn, commit_time_micros } => {
            b.extend([b'C', 0]);
            b.extend(commit_lsn.to_be_bytes());
            b.extend(end_lsn.to_be_bytes());
            b.extend(commit_time_micros.to_be_bytes());
        }
        Message::Relation(r) => {
            b.push(b'R');
            b.extend(r.id.to_be_bytes());
            cstr(&mut b, &r.schema);
            cstr(&mut b, &r.name);
            b.push(r.replica_identity);
            b.extend((r.columns.len() as i16).to_be_bytes());
            for c in &r.columns {
                b.push(c.part_of_key.into());
                cstr(&mut b, &c.name);
                b.extend(c.type_oid.to_be_bytes());
                b.extend(c.type_modifier.to_be_bytes());
            }
        }
        Message::Insert { relation, new } => {
            b.push(b'I');
            b.extend(relation.to_be_bytes());
            tuple(&mut b, b'N', new);
        }
        Message::Update { relation, old, old_is_key_only, new } => {
            b.push(b'U');
            b.extend(relation.to_be_bytes());
            if let Some(old) = old {
                tuple(&mut b, key_marker(*old_is_key_only), old);
            }
            tuple(&mut b, b'N', new);
        }
        Message::Delete { relation, old, old_is_key_only } => {
            b.push(b'D');
            b.extend(relation.to_be_bytes());
            tuple(&mut b, key_marker(*old_is_key_only), old);
        }
        Message::Truncate { relations, cascade, restart_identity } => {
            b.push(b'T');
            b.extend((relations.len() as i32).to_be_bytes());
            b.push(u8::from(*cascade) | u8::from(*restart_identity) << 1);
            for r in relations {
                b.extend(r.to_be_bytes());
            }
        }
        Message::Other(_) => return None,
    }
    Some(b)
}
