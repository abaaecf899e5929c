//! `[[capture]]`: application tables whose changes Herald streams. At start
//! each entry is checked against the database (the table and the columns it
//! names must exist), its replica identity is made FULL where Herald may (so a
//! DELETE carries the old row and an UPDATE the old values), and the
//! publication is set to Herald's own tables plus these.

use super::schema::{OWN_TABLES, PUBLICATION};
use crate::config::CaptureSpec;
use crate::model::table::{CapturedTable, TableColumn};
use crate::store::{StoreError, StoreErrorKind};

/// `"name"`, with inner quotes doubled: a safe SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn refused(message: String) -> StoreError {
    StoreError::new(StoreErrorKind::Invalid, message)
}

/// Checks every entry and prepares its table; the publication follows the list.
pub fn prepare(client: &mut postgres::Client, specs: &[CaptureSpec]) -> Result<Vec<CapturedTable>, StoreError> {
    let mut tables = Vec::with_capacity(specs.len());
    for spec in specs {
        let Some((schema, name)) = spec.parts() else {
            return Err(refused(format!("[[capture]] table {:?}: name it as schema.table", spec.table)));
        };
        let columns: Vec<TableColumn> = client
            .query(
                "SELECT a.attname::text, t.typname::text FROM pg_attribute a
                 JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                 JOIN pg_type t ON t.oid = a.atttypid
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
                   AND a.attnum > 0 AND NOT a.attisdropped
                 ORDER BY a.attnum",
                &[&schema, &name],
            )?
            .iter()
            .map(|r| TableColumn { name: r.get(0), type_name: r.get(1) })
            .collect();
        if columns.is_empty() {
            return Err(refused(format!("[[capture]] table {schema}.{name} does not exist")));
        }
        let table = CapturedTable {
            schema: schema.to_string(),
            name: name.to_string(),
            columns,
            tenant_column: spec.tenant_column.clone(),
            default_tenant: spec.default_tenant.clone(),
            owner_column: spec.owner_column.clone(),
        };
        for (what, column) in [("tenant_column", &table.tenant_column), ("owner_column", &table.owner_column)] {
            if let Some(column) = column {
                if !table.has_column(column) {
                    return Err(refused(format!(
                        "[[capture]] table {schema}.{name}: {what} {column:?} is not a column of the table"
                    )));
                }
            }
        }
        full_replica_identity(client, &table)?;
        tables.push(table);
    }
    let mut members: Vec<String> = OWN_TABLES.iter().map(|t| format!("herald.{}", quote_ident(t))).collect();
    members.extend(tables.iter().map(|t| format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name))));
    client.batch_execute(&format!("ALTER PUBLICATION {PUBLICATION} SET TABLE {}", members.join(", ")))?;
    Ok(tables)
}

fn full_replica_identity(client: &mut postgres::Client, table: &CapturedTable) -> Result<(), StoreError> {
    let identity: i8 = client
        .query_one(
            "SELECT c.relreplident::\"char\" FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&table.schema, &table.name],
        )?
        .get(0);
    if identity as u8 == b'f' {
        return Ok(());
    }
    let sql = format!("ALTER TABLE {}.{} REPLICA IDENTITY FULL", quote_ident(&table.schema), quote_ident(&table.name));
    match client.batch_execute(&sql) {
        Ok(()) => {
            tracing::info!(table = %table.qualified(), "set REPLICA IDENTITY FULL, so changes carry the old row");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(
                table = %table.qualified(), error = %e,
                "cannot set REPLICA IDENTITY FULL (is Herald's role the table's owner?): DELETE events carry \
                 only the replica identity's columns, and rows whose tenant column is not among them are not announced"
            );
            Ok(())
        }
    }
}
