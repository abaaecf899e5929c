//! Decoder of the messages of PostgreSQL's logical replication output plugin
//! `pgoutput`, protocol version 1 (PostgreSQL 15 docs, "Logical Replication
//! Message Formats"): the payload of each XLogData the change capture streams.
//!
//! Every read is bounds-checked and every count is checked against the bytes
//! left before anything is allocated, so no input can panic or make the
//! decoder reserve more memory than the message itself could fill.

/// A position in the write-ahead log.
pub type Lsn = u64;

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Begin {
        final_lsn: Lsn,
        commit_time_micros: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time_micros: i64,
    },
    Relation(Relation),
    Insert {
        relation: u32,
        new: Tuple,
    },
    /// `old` is the old row when the table's replica identity sends it ('O' full old tuple or 'K' key-only tuple)
    Update {
        relation: u32,
        old: Option<Tuple>,
        old_is_key_only: bool,
        new: Tuple,
    },
    Delete {
        relation: u32,
        old: Tuple,
        old_is_key_only: bool,
    },
    Truncate {
        relations: Vec<u32>,
        cascade: bool,
        restart_identity: bool,
    },
    /// Origin, Type, logical Message and anything else Herald does not act on: the tag byte.
    Other(u8),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub id: u32,
    pub schema: String,
    pub name: String,
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
    pub part_of_key: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// unchanged TOASTed value: not sent
    Unchanged,
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tuple(pub Vec<Value>);

impl Tuple {
    /// The new row of an UPDATE with each unchanged TOASTed value taken from
    /// the old row (sent whole under REPLICA IDENTITY FULL). A value `old`
    /// does not have stays `Unchanged`.
    pub fn merged_with(&self, old: &Tuple) -> Tuple {
        let merged = self.0.iter().enumerate().map(|(i, v)| match (v, old.0.get(i)) {
            (Value::Unchanged, Some(o)) => o.clone(),
            _ => v.clone(),
        });
        Tuple(merged.collect())
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("pgoutput message truncated: {0}")]
    Truncated(&'static str),
    #[error("pgoutput: {0}")]
    Invalid(String),
}

use DecodeError::{Invalid, Truncated};

/// Decodes one pgoutput message (protocol version 1). Values must be in text
/// format; a byte left over after the message is an error.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    let mut c = Cursor(bytes);
    let tag = c.u8("message tag")?;
    let message = match tag {
        b'B' => Message::Begin {
            final_lsn: c.u64("begin final LSN")?,
            commit_time_micros: c.i64("begin commit time")?,
            xid: c.u32("begin xid")?,
        },
        b'C' => {
            c.u8("commit flags")?; // unused in protocol 1
            Message::Commit {
                commit_lsn: c.u64("commit LSN")?,
                end_lsn: c.u64("commit end LSN")?,
                commit_time_micros: c.i64("commit time")?,
            }
        }
        b'R' => Message::Relation(relation(&mut c)?),
        b'I' => {
            let relation = c.u32("insert relation")?;
            c.expect(b'N', "insert new tuple marker")?;
            Message::Insert { relation, new: tuple(&mut c)? }
        }
        b'U' => {
            let relation = c.u32("update relation")?;
            let (old, old_is_key_only) = match c.u8("update tuple marker")? {
                b'N' => (None, false),
                marker @ (b'K' | b'O') => {
                    let old = tuple(&mut c)?;
                    c.expect(b'N', "update new tuple marker")?;
                    (Some(old), marker == b'K')
                }
                other => return Err(Invalid(format!("update tuple marker {}", show(other)))),
            };
            Message::Update { relation, old, old_is_key_only, new: tuple(&mut c)? }
        }
        b'D' => {
            let relation = c.u32("delete relation")?;
            let old_is_key_only = match c.u8("delete tuple marker")? {
                b'K' => true,
                b'O' => false,
                other => return Err(Invalid(format!("delete tuple marker {}", show(other)))),
            };
            Message::Delete { relation, old: tuple(&mut c)?, old_is_key_only }
        }
        b'T' => {
            let count = c.i32("truncate relation count")?;
            let options = c.u8("truncate options")?;
            let count = c.fits(count, 4, "truncate relation count", "truncate relations")?;
            let relations = (0..count).map(|_| c.u32("truncate relation")).collect::<Result<_, _>>()?;
            Message::Truncate { relations, cascade: options & 1 != 0, restart_identity: options & 2 != 0 }
        }
        // Read through, though ignored, so a malformed one is still an error.
        b'O' => {
            c.u64("origin LSN")?;
            c.cstr_bytes("origin name")?;
            Message::Other(tag)
        }
        b'Y' => {
            c.u32("type id")?;
            c.cstr_bytes("type schema")?;
            c.cstr_bytes("type name")?;
            Message::Other(tag)
        }
        b'M' => {
            c.u8("message flags")?;
            c.u64("message LSN")?;
            c.cstr_bytes("message prefix")?;
            let len = c.i32("message length")?;
            let len = c.fits(len, 1, "message length", "message content")?;
            c.bytes(len, "message content")?;
            Message::Other(tag)
        }
        // Not sent in protocol 1 (streaming, two-phase): the body is unknown.
        _ => return Ok(Message::Other(tag)),
    };
    if !c.0.is_empty() {
        return Err(Invalid(format!("{} trailing byte(s) after the {} message", c.0.len(), show(tag))));
    }
    Ok(message)
}

fn relation(c: &mut Cursor) -> Result<Relation, DecodeError> {
    let id = c.u32("relation id")?;
    let schema = c.cstr("relation schema")?;
    let name = c.cstr("relation name")?;
    let replica_identity = c.u8("relation replica identity")?;
    let count = c.i16("relation column count")?;
    // A column is at least flags, an empty name, a type and a modifier.
    let count = c.fits(count.into(), 10, "relation column count", "relation columns")?;
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        let flags = c.u8("column flags")?;
        columns.push(Column {
            name: c.cstr("column name")?,
            type_oid: c.u32("column type")?,
            type_modifier: c.i32("column type modifier")?,
            part_of_key: flags & 1 != 0,
        });
    }
    Ok(Relation { id, schema, name, replica_identity, columns })
}

fn tuple(c: &mut Cursor) -> Result<Tuple, DecodeError> {
    let count = c.i16("tuple column count")?;
    let count = c.fits(count.into(), 1, "tuple column count", "tuple columns")?;
    let mut values = Vec::with_capacity(count);
    for _ in 0..count {
        values.push(match c.u8("value kind")? {
            b'n' => Value::Null,
            b'u' => Value::Unchanged,
            b't' => {
                let len = c.i32("value length")?;
                let len = c.fits(len, 1, "value length", "value")?;
                let text = std::str::from_utf8(c.bytes(len, "value")?)
                    .map_err(|e| Invalid(format!("text value is not UTF-8: {e}")))?;
                Value::Text(text.to_owned())
            }
            b'b' => return Err(Invalid("binary value: Herald asks for text format".into())),
            other => return Err(Invalid(format!("value kind {}", show(other)))),
        });
    }
    Ok(Tuple(values))
}

/// A tag or marker for an error message: the letter when it is one.
fn show(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("'{}'", b as char)
    } else {
        format!("0x{b:02x}")
    }
}

/// The unread rest of a message; reads are big-endian, as on the wire.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let Some((head, rest)) = self.0.split_at_checked(n) else { return Err(Truncated(what)) };
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        self.bytes(N, what)?.try_into().map_err(|_| Truncated(what))
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        self.array(what).map(i16::from_be_bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.array(what).map(u32::from_be_bytes)
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        self.array(what).map(i32::from_be_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.array(what).map(u64::from_be_bytes)
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        self.array(what).map(i64::from_be_bytes)
    }

    fn expect(&mut self, want: u8, what: &'static str) -> Result<(), DecodeError> {
        match self.u8(what)? {
            b if b == want => Ok(()),
            other => Err(Invalid(format!("{what}: {} where {} belongs", show(other), show(want)))),
        }
    }

    /// A NUL-terminated string, without its NUL; no NUL at all means the message was cut.
    fn cstr_bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self.0.iter().position(|&b| b == 0).ok_or(Truncated(what))?;
        let s = self.bytes(end, what)?;
        self.bytes(1, what)?;
        Ok(s)
    }

    fn cstr(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let s = self.cstr_bytes(what)?;
        let s = std::str::from_utf8(s).map_err(|e| Invalid(format!("{what} is not UTF-8: {e}")))?;
        Ok(s.to_owned())
    }

    /// A count (or length) read from the message, refused when negative and
    /// when `count` items of at least `min_size` bytes cannot fit in what is left.
    fn fits(&self, count: i32, min_size: usize, what: &'static str, items: &'static str) -> Result<usize, DecodeError> {
        let n = usize::try_from(count).map_err(|_| Invalid(format!("{what} is negative: {count}")))?;
        match n.checked_mul(min_size) {
            Some(need) if need <= self.0.len() => Ok(n),
            _ => Err(Truncated(items)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a message byte by byte, as the server writes it.
    struct B(Vec<u8>);

    impl B {
        fn tag(t: u8) -> B {
            B(vec![t])
        }
        fn u8(mut self, v: u8) -> B {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> B {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> B {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> B {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> B {
            self.0.extend(v.to_be_bytes());
            self
        }
        fn raw(mut self, v: &[u8]) -> B {
            self.0.extend_from_slice(v);
            self
        }
        fn s(self, v: &str) -> B {
            self.raw(v.as_bytes()).u8(0)
        }
        fn text(self, v: &str) -> B {
            self.u8(b't').i32(v.len() as i32).raw(v.as_bytes())
        }
    }

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn begin() -> Vec<u8> {
        B::tag(b'B').u64(0x0000_0001_0000_0a28).u64(0xffff_ffff_ffff_fff0).u32(0xdead_beef).0
    }

    fn commit() -> Vec<u8> {
        B::tag(b'C').u8(0).u64(0x16b_3748).u64(0x16b_3778).u64(758_000_000_123_456).0
    }

    fn relation() -> Vec<u8> {
        B::tag(b'R')
            .u32(16385)
            .s("public")
            .s("jobs")
            .u8(b'd')
            .i16(2)
            // id int4 in the key, then note varchar(20): typmod is 20 + 4
            .u8(1)
            .s("id")
            .u32(23)
            .i32(-1)
            .u8(0)
            .s("note")
            .u32(1043)
            .i32(24)
            .0
    }

    /// Three columns: NULL, an unchanged TOASTed value, a text with non-ASCII letters.
    fn tuple3(b: B) -> B {
        b.i16(3).u8(b'n').u8(b'u').text("héllo ✓")
    }

    fn insert() -> Vec<u8> {
        tuple3(B::tag(b'I').u32(16385).u8(b'N')).0
    }

    fn update_old(marker: u8) -> Vec<u8> {
        let b = B::tag(b'U').u32(16385).u8(marker).i16(3).text("1").text("").u8(b'n').u8(b'N');
        tuple3(b).0
    }

    fn update_new_only() -> Vec<u8> {
        tuple3(B::tag(b'U').u32(16385).u8(b'N')).0
    }

    fn delete(marker: u8) -> Vec<u8> {
        B::tag(b'D').u32(7).u8(marker).i16(2).text("42").u8(b'n').0
    }

    fn truncate(options: u8) -> Vec<u8> {
        B::tag(b'T').i32(2).u8(options).u32(16385).u32(16390).0
    }

    fn origin() -> Vec<u8> {
        B::tag(b'O').u64(0x10).s("upstream").0
    }

    fn type_message() -> Vec<u8> {
        B::tag(b'Y').u32(16400).s("public").s("mood").0
    }

    fn logical_message() -> Vec<u8> {
        B::tag(b'M').u8(1).u64(0x20).s("herald").i32(3).raw(&[0xff, 0, 1]).0
    }

    /// Every well-formed sample message, with what it decodes to.
    fn samples() -> Vec<(Vec<u8>, Message)> {
        let t3 = Tuple(vec![Value::Null, Value::Unchanged, text("héllo ✓")]);
        let old = Tuple(vec![text("1"), text(""), Value::Null]);
        let mut out = vec![
            (begin(), Message::Begin { final_lsn: 0x1_0000_0a28, commit_time_micros: -16, xid: 0xdead_beef }),
            (
                commit(),
                Message::Commit {
                    commit_lsn: 0x16b_3748,
                    end_lsn: 0x16b_3778,
                    commit_time_micros: 758_000_000_123_456,
                },
            ),
            (
                relation(),
                Message::Relation(Relation {
                    id: 16385,
                    schema: "public".into(),
                    name: "jobs".into(),
                    replica_identity: b'd',
                    columns: vec![
                        Column { name: "id".into(), type_oid: 23, type_modifier: -1, part_of_key: true },
                        Column { name: "note".into(), type_oid: 1043, type_modifier: 24, part_of_key: false },
                    ],
                }),
            ),
            (insert(), Message::Insert { relation: 16385, new: t3.clone() }),
            (
                update_old(b'O'),
                Message::Update { relation: 16385, old: Some(old.clone()), old_is_key_only: false, new: t3.clone() },
            ),
            (
                update_old(b'K'),
                Message::Update { relation: 16385, old: Some(old), old_is_key_only: true, new: t3.clone() },
            ),
            (update_new_only(), Message::Update { relation: 16385, old: None, old_is_key_only: false, new: t3 }),
            (
                delete(b'K'),
                Message::Delete { relation: 7, old: Tuple(vec![text("42"), Value::Null]), old_is_key_only: true },
            ),
            (
                delete(b'O'),
                Message::Delete { relation: 7, old: Tuple(vec![text("42"), Value::Null]), old_is_key_only: false },
            ),
            (origin(), Message::Other(b'O')),
            (type_message(), Message::Other(b'Y')),
            (logical_message(), Message::Other(b'M')),
            // A relation of no columns and a row of no values are well formed.
            (
                B::tag(b'R').u32(1).s("").s("t").u8(b'n').i16(0).0,
                Message::Relation(Relation {
                    id: 1,
                    schema: String::new(),
                    name: "t".into(),
                    replica_identity: b'n',
                    columns: vec![],
                }),
            ),
            (B::tag(b'I').u32(1).u8(b'N').i16(0).0, Message::Insert { relation: 1, new: Tuple::default() }),
            (
                B::tag(b'T').i32(0).u8(0).0,
                Message::Truncate { relations: vec![], cascade: false, restart_identity: false },
            ),
        ];
        for (options, cascade, restart_identity) in
            [(0, false, false), (1, true, false), (2, false, true), (3, true, true)]
        {
            out.push((
                truncate(options),
                Message::Truncate { relations: vec![16385, 16390], cascade, restart_identity },
            ));
        }
        out
    }

    #[test]
    fn decodes_every_message_type() {
        for (bytes, want) in samples() {
            assert_eq!(decode(&bytes), Ok(want), "{bytes:02x?}");
        }
    }

    #[test]
    fn every_cut_of_a_message_is_truncated() {
        for (bytes, _) in samples() {
            for cut in 0..bytes.len() {
                let got = decode(&bytes[..cut]);
                assert!(matches!(got, Err(Truncated(_))), "cut at {cut} of {bytes:02x?}: {got:?}");
            }
        }
    }

    #[test]
    fn a_trailing_byte_is_invalid() {
        for (mut bytes, _) in samples() {
            bytes.push(0);
            let got = decode(&bytes);
            assert!(matches!(&got, Err(Invalid(m)) if m.contains("trailing")), "{bytes:02x?}: {got:?}");
        }
    }

    #[test]
    fn an_unknown_tag_is_other_whatever_follows() {
        assert_eq!(decode(b"S"), Ok(Message::Other(b'S')));
        assert_eq!(decode(b"S\x00\x00\x00\x07\x01"), Ok(Message::Other(b'S')));
        assert_eq!(decode(b""), Err(Truncated("message tag")));
    }

    fn invalid(bytes: &[u8], needle: &str) {
        match decode(bytes) {
            Err(Invalid(m)) => assert!(m.contains(needle), "{m:?} should contain {needle:?}"),
            other => panic!("{bytes:02x?}: {other:?}, not Invalid({needle:?})"),
        }
    }

    #[test]
    fn refuses_malformed_messages() {
        let ins = || B::tag(b'I').u32(1).u8(b'N').i16(1);
        invalid(&ins().u8(b'b').i32(1).u8(7).0, "binary");
        invalid(&ins().u8(b't').i32(2).raw(&[0xc3, 0x28]).0, "UTF-8");
        invalid(&ins().u8(b't').i32(-1).0, "negative");
        invalid(&ins().u8(b'x').0, "value kind 'x'");
        invalid(&B::tag(b'I').u32(1).u8(b'N').i16(-1).0, "negative");
        invalid(&B::tag(b'I').u32(1).u8(b'O').i16(0).0, "'O' where 'N' belongs");
        invalid(&B::tag(b'U').u32(1).u8(b'X').0, "update tuple marker 'X'");
        invalid(&B::tag(b'U').u32(1).u8(b'K').i16(0).u8(b'K').i16(0).0, "'K' where 'N' belongs");
        invalid(&B::tag(b'D').u32(1).u8(b'N').i16(0).0, "delete tuple marker 'N'");
        invalid(&B::tag(b'D').u32(1).u8(0).0, "0x00");
        invalid(&B::tag(b'T').i32(-2).u8(0).0, "negative");
        invalid(&B::tag(b'R').u32(1).s("public").raw(&[0xff]).s("").u8(b'd').i16(0).0, "relation name is not UTF-8");
        invalid(&B::tag(b'R').u32(1).s("").s("t").u8(b'd').i16(i16::MIN).0, "negative");
        invalid(&B::tag(b'M').u8(0).u64(0).s("p").i32(-1).0, "negative");
    }

    #[test]
    fn lengths_larger_than_the_message_are_truncated_before_any_allocation() {
        let huge_value = B::tag(b'I').u32(1).u8(b'N').i16(1).u8(b't').i32(i32::MAX).raw(b"abc").0;
        assert_eq!(decode(&huge_value), Err(Truncated("value")));
        let many_values = B::tag(b'I').u32(1).u8(b'N').i16(i16::MAX).u8(b'n').0;
        assert_eq!(decode(&many_values), Err(Truncated("tuple columns")));
        let many_columns = B::tag(b'R').u32(1).s("").s("t").u8(b'd').i16(2).raw(&[0; 19]).0;
        assert_eq!(decode(&many_columns), Err(Truncated("relation columns")));
        let many_relations = B::tag(b'T').i32(i32::MAX).u8(0).u32(1).0;
        assert_eq!(decode(&many_relations), Err(Truncated("truncate relations")));
        let huge_content = B::tag(b'M').u8(0).u64(0).s("p").i32(i32::MAX).0;
        assert_eq!(decode(&huge_content), Err(Truncated("message content")));
    }

    #[test]
    fn merged_with_fills_unchanged_values_from_the_old_row() {
        let new = Tuple(vec![text("2"), Value::Unchanged, Value::Null, Value::Unchanged]);
        let old = Tuple(vec![text("1"), text("big"), text("was"), Value::Null]);
        assert_eq!(new.merged_with(&old), Tuple(vec![text("2"), text("big"), Value::Null, Value::Null]));
        // What the old row lacks stays unchanged.
        let short = Tuple(vec![text("1")]);
        assert_eq!(new.merged_with(&short), Tuple(vec![text("2"), Value::Unchanged, Value::Null, Value::Unchanged]));
        assert_eq!(new.merged_with(&Tuple::default()), new);
        assert_eq!(Tuple::default().merged_with(&old), Tuple::default());
    }

    #[test]
    fn errors_say_what_was_cut() {
        assert_eq!(decode(&begin()[..9]).unwrap_err().to_string(), "pgoutput message truncated: begin commit time");
        assert_eq!(
            decode(&B::tag(b'I').u32(1).u8(b'N').i16(1).u8(b'b').0).unwrap_err().to_string(),
            "pgoutput: binary value: Herald asks for text format"
        );
    }
}

/// Against the local PostgreSQL 15 (`PGHOST`/`PGUSER`, default 127.0.0.1 and
/// postgres; `scripts/pg-setup.sh` turns logical replication on): real changes
/// read from a pgoutput slot, decoded and compared value by value.
#[cfg(test)]
mod live {
    use super::*;
    use postgres::{Client, NoTls};

    fn connect(db: &str) -> Client {
        let host = std::env::var("PGHOST").unwrap_or_else(|_| "127.0.0.1".into());
        let user = std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into());
        Client::connect(&format!("host={host} user={user} dbname={db}"), NoTls)
            .unwrap_or_else(|e| panic!("PostgreSQL at {host} as {user} (scripts/pg-setup.sh starts it): {e}"))
    }

    /// The test's database, slot and replication origin, all named `name`,
    /// dropped even when the test fails: the slot first (it keeps its database
    /// from being dropped), then the database (ending the test's sessions, which
    /// free the origin), then the origin.
    struct Scratch {
        admin: Client,
        name: String,
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let n = &self.name;
            let slot = "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1";
            let origin = "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin WHERE roname = $1";
            let results = [
                self.admin.execute(slot, &[n]).map(drop),
                self.admin.batch_execute(&format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)")),
                self.admin.execute(origin, &[n]).map(drop),
            ];
            for e in results.into_iter().filter_map(Result::err) {
                eprintln!("cleaning up {n}: {e}");
            }
        }
    }

    /// Runs `sql` in one transaction and returns its xid.
    fn transaction(db: &mut Client, sql: &str) -> u32 {
        let mut tx = db.transaction().expect("begin");
        tx.batch_execute(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        let xid: i64 = tx.query_one("SELECT txid_current()", &[]).expect("xid").get(0);
        tx.commit().expect("commit");
        xid as u32 // the 32-bit xid is the low half of the epoch-qualified one
    }

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn col(name: &str, type_oid: u32, part_of_key: bool) -> Column {
        Column { name: name.into(), type_oid, type_modifier: -1, part_of_key }
    }

    /// What is stored in `wide` for `id` (a row without NULLs), each column
    /// printed by its type's output function as pgoutput does: `format`'s `%s`
    /// does that, where a cast may not (`true::text` is 'true', pgoutput sends 't').
    fn stored(db: &mut Client, id: i32) -> Tuple {
        let sql = "SELECT format('%s', id), format('%s', label), format('%s', doc), format('%s', flag),
                          format('%s', score), format('%s', big), format('%s', body) FROM wide WHERE id = $1";
        let row = db.query_one(sql, &[&id]).expect("stored row");
        Tuple((0..7).map(|i| Value::Text(row.get(i))).collect())
    }

    /// A Write-Ahead Log position as PostgreSQL prints it, `16/B374D848`.
    fn lsn(s: &str) -> Lsn {
        let (hi, lo) = s.split_once('/').expect("an LSN");
        (u64::from_str_radix(hi, 16).expect("LSN") << 32) | u64::from_str_radix(lo, 16).expect("LSN")
    }

    #[test]
    fn decodes_what_postgresql_sends() {
        let name = format!("herald_test_pgoutput_{}", std::process::id());
        let mut admin = connect("postgres");
        admin.batch_execute(&format!("CREATE DATABASE {name}")).expect("create database");
        let _scratch = Scratch { admin, name: name.clone() };
        let mut db = connect(&name);
        db.batch_execute(
            "CREATE TABLE wide (id int, label text, doc jsonb, flag bool, score float8, big bigint, body text);
             -- EXTERNAL: out of line and uncompressed, so the long body is TOASTed whatever it holds
             ALTER TABLE wide ALTER COLUMN body SET STORAGE EXTERNAL;
             ALTER TABLE wide REPLICA IDENTITY FULL;
             CREATE TABLE keyed (id int PRIMARY KEY, note text);
             CREATE PUBLICATION herald_pub FOR TABLE wide, keyed;",
        )
        .expect("schema");
        db.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&name]).expect("slot");
        let mut oid =
            |table: &str| -> u32 { db.query_one("SELECT $1::text::regclass::oid", &[&table]).expect("oid").get(0) };
        let (wide, keyed) = (oid("wide"), oid("keyed"));

        // 6000 letters and digits, as different as a small generator makes them.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let body: String = (0..6000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[(x % 62) as usize] as char
            })
            .collect();
        let xid_insert = transaction(
            &mut db,
            &format!(
                "INSERT INTO wide VALUES (1, 'héllo ✓', '{{\"b\": null, \"a\": [1, 2.50]}}', true, 1.5, 9007199254740993, '{body}');
                 INSERT INTO wide VALUES (2, NULL, NULL, NULL, NULL, NULL, NULL);"
            ),
        );
        let inserted = stored(&mut db, 1);
        let xid_update = transaction(&mut db, "UPDATE wide SET flag = false WHERE id = 1");
        let updated = stored(&mut db, 1);
        let xid_delete = transaction(&mut db, "DELETE FROM wide WHERE id = 1");
        let xid_keyed = transaction(
            &mut db,
            "INSERT INTO keyed VALUES (10, 'a');
             UPDATE keyed SET note = 'b' WHERE id = 10;
             UPDATE keyed SET id = 11 WHERE id = 10;
             DELETE FROM keyed WHERE id = 11;
             SELECT pg_logical_emit_message(true, 'herald_test', 'hi');",
        );
        // A transaction replayed from elsewhere carries its origin's name.
        db.execute("SELECT pg_replication_origin_create($1)", &[&name]).expect("origin");
        db.execute("SELECT pg_replication_origin_session_setup($1)", &[&name]).expect("origin session");
        let xid_origin = transaction(&mut db, "INSERT INTO keyed VALUES (20, 'from elsewhere')");
        db.execute("SELECT pg_replication_origin_session_reset()", &[]).expect("origin reset");
        let xid_truncate = transaction(&mut db, "TRUNCATE wide, keyed RESTART IDENTITY CASCADE");

        let rows = db
            .query(
                "SELECT lsn::text, xid::text, data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL,
                   'proto_version', '1', 'publication_names', 'herald_pub', 'messages', 'true')",
                &[&name],
            )
            .expect("changes");
        let dump = std::env::var_os("HERALD_PGOUTPUT_DUMP");
        let mut got = Vec::new();
        let mut commit_rows = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let (lsn_text, xid, data): (String, String, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
            if let Some(dir) = &dump {
                // Seeds for the fuzz target: HERALD_PGOUTPUT_DUMP=fuzz/corpus/pgoutput
                let file =
                    std::path::Path::new(dir).join(format!("real-{i:02}-{}", data.first().map_or('_', |&t| t as char)));
                std::fs::write(file, &data).expect("dump");
            }
            let m = decode(&data).unwrap_or_else(|e| panic!("row {i} ({data:02x?}): {e}"));
            if let Message::Commit { end_lsn, .. } = m {
                commit_rows.push((lsn(&lsn_text), end_lsn));
            }
            got.push((xid.parse::<u32>().expect("xid"), m));
        }

        // LSNs and times: checked here, then zeroed for the comparison below.
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock");
        let now_micros = now.as_micros() as i64 - 946_684_800_000_000; // PostgreSQL counts from 2000-01-01
        let (mut open, mut last_end) = (None, 0);
        for (row_xid, m) in &mut got {
            match m {
                Message::Begin { final_lsn, commit_time_micros, xid } => {
                    assert_eq!(open, None, "Begin inside a transaction");
                    assert_eq!(row_xid, xid, "the slot's xid column");
                    assert!(*final_lsn > last_end, "transactions come in LSN order");
                    assert!((now_micros - *commit_time_micros).abs() < 300_000_000, "commit time {commit_time_micros}");
                    open = Some((*final_lsn, *commit_time_micros));
                    (*final_lsn, *commit_time_micros) = (0, 0);
                }
                Message::Commit { commit_lsn, end_lsn, commit_time_micros } => {
                    assert_eq!(open.take(), Some((*commit_lsn, *commit_time_micros)), "Commit matches its Begin");
                    assert!(end_lsn > commit_lsn);
                    last_end = *end_lsn;
                    (*commit_lsn, *end_lsn, *commit_time_micros) = (0, 0, 0);
                }
                _ => assert!(open.is_some(), "{m:?} outside a transaction"),
            }
        }
        let mut got: Vec<Message> = got.into_iter().map(|(_, m)| m).collect();
        // The slot's lsn column of a Commit is the end of the transaction.
        assert!(commit_rows.iter().all(|(row, end)| row == end), "{commit_rows:x?}");

        let begin = |xid| Message::Begin { final_lsn: 0, commit_time_micros: 0, xid };
        let commit = Message::Commit { commit_lsn: 0, end_lsn: 0, commit_time_micros: 0 };
        let wide_relation = Message::Relation(Relation {
            id: wide,
            schema: "public".into(),
            name: "wide".into(),
            replica_identity: b'f',
            // Under REPLICA IDENTITY FULL every column is part of the key.
            columns: vec![
                col("id", 23, true),
                col("label", 25, true),
                col("doc", 3802, true),
                col("flag", 16, true),
                col("score", 701, true),
                col("big", 20, true),
                col("body", 25, true),
            ],
        });
        let keyed_relation = Message::Relation(Relation {
            id: keyed,
            schema: "public".into(),
            name: "keyed".into(),
            replica_identity: b'd',
            columns: vec![col("id", 23, true), col("note", 25, false)],
        });
        let row1 = Tuple(vec![
            text("1"),
            text("héllo ✓"),
            text(r#"{"a": [1, 2.50], "b": null}"#),
            text("t"),
            text("1.5"),
            text("9007199254740993"),
            Value::Text(body.clone()),
        ]);
        assert_eq!(inserted, row1, "what was stored");
        let mut row1_updated = row1.clone();
        row1_updated.0[3] = text("f");
        assert_eq!(updated, row1_updated, "what was stored");
        // The UPDATE did not touch the TOASTed body: the new row does not carry it.
        let mut update_new = row1_updated.clone();
        update_new.0[6] = Value::Unchanged;
        let mut row2 = Tuple(vec![Value::Null; 7]);
        row2.0[0] = text("2");
        let keyed_row = |id: &str, note: &str| Tuple(vec![text(id), text(note)]);
        let keyed_key = |id: &str| Tuple(vec![text(id), Value::Null]);
        let mut want = vec![
            begin(xid_insert),
            wide_relation.clone(),
            Message::Insert { relation: wide, new: row1.clone() },
            Message::Insert { relation: wide, new: row2 },
            commit.clone(),
            begin(xid_update),
            Message::Update {
                relation: wide,
                old: Some(row1.clone()),
                old_is_key_only: false,
                new: update_new.clone(),
            },
            commit.clone(),
            begin(xid_delete),
            Message::Delete { relation: wide, old: row1_updated.clone(), old_is_key_only: false },
            commit.clone(),
            begin(xid_keyed),
            keyed_relation.clone(),
            Message::Insert { relation: keyed, new: keyed_row("10", "a") },
            // The key did not change: no old row.
            Message::Update { relation: keyed, old: None, old_is_key_only: false, new: keyed_row("10", "b") },
            Message::Update {
                relation: keyed,
                old: Some(keyed_key("10")),
                old_is_key_only: true,
                new: keyed_row("11", "b"),
            },
            Message::Delete { relation: keyed, old: keyed_key("11"), old_is_key_only: true },
            Message::Other(b'M'),
            commit.clone(),
            begin(xid_origin),
            Message::Other(b'O'),
            Message::Insert { relation: keyed, new: keyed_row("20", "from elsewhere") },
            commit.clone(),
            begin(xid_truncate),
            // TRUNCATE gives the tables new files; the relcache invalidation makes pgoutput send their Relation again.
            wide_relation,
            keyed_relation,
            Message::Truncate { relations: vec![wide, keyed], cascade: true, restart_identity: true },
            commit,
        ];
        if let Some(Message::Update { old: Some(old), new, .. }) = got.get(6) {
            assert_eq!(new.merged_with(old), updated, "the merged new row is what was stored");
        }
        // The body, compared, then shortened so that a failure prints readably.
        let mut elide = |t: &mut Tuple| {
            for v in t.0.iter_mut().filter(|v| matches!(v, Value::Text(s) if *s == body)) {
                *v = text("<the 6000-character body>");
            }
        };
        for m in got.iter_mut().chain(want.iter_mut()) {
            match m {
                Message::Insert { new, .. } => elide(new),
                Message::Update { old, new, .. } => {
                    old.iter_mut().for_each(&mut elide);
                    elide(new);
                }
                Message::Delete { old, .. } => elide(old),
                _ => {}
            }
        }
        for i in 0..got.len().max(want.len()) {
            assert_eq!(got.get(i), want.get(i), "message {i}; all of them: {got:?}");
        }
    }
}
