//! Application tables Herald captures (PostgreSQL only): which table, which
//! column names the row's tenant and owner, and the columns it has — enough to
//! route each change and to check a subscriber's filter without a query.

use std::collections::HashMap;
use std::sync::Arc;

/// One column of a captured table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableColumn {
    pub name: String,
    /// The type as PostgreSQL names it (`int8`, `text`, `timestamptz`, ...).
    pub type_name: String,
}

/// A captured application table.
#[derive(Debug, Clone)]
pub struct CapturedTable {
    pub schema: String,
    pub name: String,
    pub columns: Vec<TableColumn>,
    /// The column holding the row's tenant; `None`: every row is `default_tenant`'s.
    pub tenant_column: Option<String>,
    pub default_tenant: Option<String>,
    /// With it, customers read only rows whose column equals their sub.
    pub owner_column: Option<String>,
}

impl CapturedTable {
    /// `schema.name`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    pub fn has_column(&self, name: &str) -> bool {
        self.columns.iter().any(|c| c.name == name)
    }

    pub fn column(&self, name: &str) -> Option<&TableColumn> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The topic of every change of the table (in the row's tenant).
    pub fn topic(&self) -> String {
        format!("table:{}.{}", self.schema, self.name)
    }

    /// The topic of the changes of rows owned by `sub`.
    pub fn owner_topic(&self, sub: &str) -> String {
        format!("table:{}.{}:owner:{sub}", self.schema, self.name)
    }
}

/// A row's value as the text routing compares: strings as they are, numbers
/// and booleans as written; NULL, arrays and objects route nowhere.
pub fn key_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Column types whose text form is one value per row value, so an equality
/// filter can be routed by text (floats and timestamps have many spellings).
pub fn exact_text_type(type_name: &str) -> bool {
    matches!(type_name, "text" | "varchar" | "bpchar" | "name" | "uuid" | "int2" | "int4" | "int8" | "bool")
}

/// Every captured table, by `schema.name`.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    tables: HashMap<String, Arc<CapturedTable>>,
}

impl Catalog {
    pub fn new(tables: Vec<CapturedTable>) -> Catalog {
        Catalog { tables: tables.into_iter().map(|t| (t.qualified(), Arc::new(t))).collect() }
    }

    pub fn get(&self, schema: &str, name: &str) -> Option<&Arc<CapturedTable>> {
        self.tables.get(&format!("{schema}.{name}"))
    }

    pub fn tables(&self) -> impl Iterator<Item = &Arc<CapturedTable>> {
        self.tables.values()
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
}
