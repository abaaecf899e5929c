//! PostgREST's query string, the subset Herald serves: `select=*` or a list
//! of columns, `order=<col>.asc|desc[.nullsfirst|.nullslast],...`, `limit`,
//! `offset`, and every other parameter a filter `<column>=<op>.<value>` with
//! `eq`, `neq`, `gt`, `gte`, `lt`, `lte`, `in.(a,b)` or `is.null|not_null|true|false|unknown`.
//! Anything else is refused by name — never read as something it is not.

use crate::store::query::{Condition, IsValue, Op, OrderTerm, MAX_ROWS};

/// A query string PostgREST would parse but Herald does not serve, or one
/// that does not parse: answered as PostgREST's `PGRST100`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub message: String,
    /// The parameter as it was sent.
    pub details: String,
}

fn refuse(message: impl Into<String>, key: &str, value: &str) -> ParseError {
    ParseError { message: message.into(), details: format!("{key}={value}") }
}

/// What the query string asks for; columns are not checked against a table yet.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Parsed {
    /// `None`: every column (`select=*` or no `select`).
    pub select: Option<Vec<String>>,
    /// Values as sent (not yet read as the column's type).
    pub conditions: Vec<Condition>,
    pub order: Vec<OrderTerm>,
    /// At most [`MAX_ROWS`], which is also the default.
    pub limit: usize,
    pub offset: usize,
}

/// Operators PostgREST has and Herald does not serve.
const UNSUPPORTED_OPS: &[&str] = &[
    "like",
    "ilike",
    "match",
    "imatch",
    "fts",
    "plfts",
    "phfts",
    "wfts",
    "cs",
    "cd",
    "ov",
    "sl",
    "sr",
    "nxr",
    "nxl",
    "adj",
    "isdistinct",
];

const SERVED: &str = "Herald's /rest/v1 serves eq, neq, gt, gte, lt, lte, in and is";

/// Parses the decoded `(key, value)` pairs in order. `apikey` (a credential
/// some clients send in the query) is skipped.
pub fn parse(pairs: &[(String, String)]) -> Result<Parsed, ParseError> {
    let mut parsed = Parsed { limit: MAX_ROWS, ..Parsed::default() };
    for (key, value) in pairs {
        match key.as_str() {
            "apikey" => {}
            "select" => parsed.select = select(key, value)?,
            "order" => parsed.order = order(key, value)?,
            "limit" => parsed.limit = count(key, value)?.min(MAX_ROWS),
            "offset" => parsed.offset = count(key, value)?,
            "or" | "and" | "not.or" | "not.and" => {
                return Err(refuse(
                    format!("logical operator `{key}` is not supported; {SERVED}, all conditions joined by AND"),
                    key,
                    value,
                ))
            }
            "columns" | "on_conflict" | "limit_per" => {
                return Err(refuse(format!("parameter `{key}` is not supported on a read"), key, value))
            }
            _ => parsed.conditions.push(filter(key, value)?),
        }
    }
    Ok(parsed)
}

/// A column name as a parameter gives it: plain, no JSON path, no embedding.
fn column<'a>(name: &'a str, key: &str, value: &str) -> Result<&'a str, ParseError> {
    let name = name.trim();
    if name.contains("->") {
        return Err(refuse(format!("JSON paths (`{name}`) are not supported"), key, value));
    }
    if name.contains('.') || name.contains('(') || name.contains('!') {
        return Err(refuse(format!("embedded resources (`{name}`) are not supported"), key, value));
    }
    if name.contains(':') {
        return Err(refuse(format!("aliases and casts (`{name}`) are not supported"), key, value));
    }
    if name.is_empty() || name.contains(',') {
        return Err(refuse(format!("failed to parse `{key}`: a column name is empty"), key, value));
    }
    Ok(name)
}

fn select(key: &str, value: &str) -> Result<Option<Vec<String>>, ParseError> {
    let mut columns = Vec::new();
    let mut all = value.trim().is_empty();
    for item in split_top(value) {
        let item = item.trim();
        if item == "*" {
            all = true;
        } else if item.contains('(') {
            return Err(refuse(format!("embedded resources (`{item}`) are not supported in select"), key, value));
        } else {
            columns.push(column(item, key, value)?.to_string());
        }
    }
    Ok(if all { None } else { Some(columns) })
}

fn order(key: &str, value: &str) -> Result<Vec<OrderTerm>, ParseError> {
    let mut terms = Vec::new();
    for term in value.split(',') {
        if term.contains("->") {
            return Err(refuse(format!("JSON paths in order (`{term}`) are not supported"), key, value));
        }
        let mut parts = term.trim().split('.');
        let name = column(parts.next().unwrap_or_default(), key, value)?;
        let mut t = OrderTerm { column: name.to_string(), descending: false, nulls_first: None };
        let (mut direction, mut nulls) = (false, false);
        for modifier in parts {
            match modifier {
                "asc" | "desc" if !direction && !nulls => {
                    direction = true;
                    t.descending = modifier == "desc";
                }
                "nullsfirst" | "nullslast" if !nulls => {
                    nulls = true;
                    t.nulls_first = Some(modifier == "nullsfirst");
                }
                _ => {
                    return Err(refuse(
                        format!(
                            "failed to parse order (`{term}`): expected <column>[.asc|.desc][.nullsfirst|.nullslast]"
                        ),
                        key,
                        value,
                    ))
                }
            }
        }
        terms.push(t);
    }
    Ok(terms)
}

fn count(key: &str, value: &str) -> Result<usize, ParseError> {
    value
        .trim()
        .parse::<usize>()
        .map_err(|_| refuse(format!("failed to parse `{key}`: expected a non-negative integer"), key, value))
}

fn filter(key: &str, value: &str) -> Result<Condition, ParseError> {
    let name = column(key, key, value)?;
    let Some((op, operand)) = value.split_once('.') else {
        return Err(refuse(
            format!("failed to parse filter `{key}`: expected <op>.<value>, e.g. {key}=eq.<value>"),
            key,
            value,
        ));
    };
    let bare = op.split('(').next().unwrap_or(op);
    let (op, values) = match op {
        "eq" => (Op::Eq, vec![operand.to_string()]),
        "neq" => (Op::Neq, vec![operand.to_string()]),
        "gt" => (Op::Gt, vec![operand.to_string()]),
        "gte" => (Op::Gte, vec![operand.to_string()]),
        "lt" => (Op::Lt, vec![operand.to_string()]),
        "lte" => (Op::Lte, vec![operand.to_string()]),
        "in" => (Op::In, list(key, value, operand)?),
        "is" => {
            let v = match operand {
                "null" => IsValue::Null,
                "not_null" => IsValue::NotNull,
                "true" => IsValue::True,
                "false" => IsValue::False,
                "unknown" => IsValue::Unknown,
                _ => {
                    return Err(refuse(
                        format!("failed to parse filter `{key}`: is takes null, not_null, true, false or unknown"),
                        key,
                        value,
                    ))
                }
            };
            (Op::Is(v), Vec::new())
        }
        "not" => return Err(refuse(format!("negation (`not.`) is not supported; {SERVED}"), key, value)),
        _ if op != bare && ["eq", "neq", "gt", "gte", "lt", "lte"].contains(&bare) => {
            return Err(refuse(format!("operator modifier `{op}` is not supported; {SERVED}"), key, value))
        }
        _ if UNSUPPORTED_OPS.contains(&bare) => {
            return Err(refuse(format!("operator `{bare}` is not supported; {SERVED}"), key, value))
        }
        _ => return Err(refuse(format!("unknown operator `{op}` in filter `{key}`; {SERVED}"), key, value)),
    };
    Ok(Condition { column: name.to_string(), op, values })
}

/// `(a,b,"c,d")`: values split on commas outside double quotes; inside them a
/// backslash escapes the next character.
fn list(key: &str, value: &str, operand: &str) -> Result<Vec<String>, ParseError> {
    let Some(inner) = operand.strip_prefix('(').and_then(|v| v.strip_suffix(')')) else {
        return Err(refuse(format!("failed to parse filter `{key}`: in takes a list, in.(a,b,c)"), key, value));
    };
    if inner.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut values = Vec::new();
    let (mut current, mut quoted, mut escaped, mut was_quoted) = (String::new(), false, false, false);
    for c in inner.chars() {
        match c {
            _ if escaped => {
                current.push(c);
                escaped = false;
            }
            '\\' if quoted => escaped = true,
            '"' => {
                quoted = !quoted;
                was_quoted = true;
            }
            ',' if !quoted => {
                values.push(if was_quoted { std::mem::take(&mut current) } else { current.trim().to_string() });
                current.clear();
                was_quoted = false;
            }
            _ => current.push(c),
        }
    }
    if quoted {
        return Err(refuse(format!("failed to parse filter `{key}`: an unclosed quote"), key, value));
    }
    values.push(if was_quoted { current } else { current.trim().to_string() });
    Ok(values)
}

/// Splits on commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Result<Parsed, ParseError> {
        let pairs: Vec<(String, String)> = s
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        parse(&pairs)
    }

    #[test]
    fn what_supabase_js_sends_parses() {
        let p = q("select=*&status=eq.running&order=updated_at.desc&limit=5").unwrap();
        assert_eq!(p.select, None);
        assert_eq!(p.conditions, [Condition { column: "status".into(), op: Op::Eq, values: vec!["running".into()] }]);
        assert_eq!(p.order, [OrderTerm { column: "updated_at".into(), descending: true, nulls_first: None }]);
        assert_eq!((p.limit, p.offset), (5, 0));

        let p = q("select=id,title&id=in.(a,\"b,c\",\"d\\\"e\")&order=a.asc.nullsfirst,b.nullslast&offset=10").unwrap();
        assert_eq!(p.select, Some(vec!["id".to_string(), "title".to_string()]));
        assert_eq!(p.conditions[0].values, ["a", "b,c", "d\"e"]);
        assert_eq!(p.order[0], OrderTerm { column: "a".into(), descending: false, nulls_first: Some(true) });
        assert_eq!(p.order[1], OrderTerm { column: "b".into(), descending: false, nulls_first: Some(false) });
        assert_eq!((p.limit, p.offset), (MAX_ROWS, 10));
        assert_eq!(q("limit=5000").unwrap().limit, MAX_ROWS, "the limit is capped");
        assert!(q("id=in.()").unwrap().conditions[0].values.is_empty());
        assert_eq!(q("read=is.false").unwrap().conditions[0].op, Op::Is(IsValue::False));
        assert_eq!(q("a=eq.x.y").unwrap().conditions[0].values, ["x.y"], "a value may hold dots");
    }

    #[test]
    fn what_herald_does_not_serve_is_refused_by_name() {
        for (query, named) in [
            ("title=like.*a*", "`like`"),
            ("title=ilike.*a*", "`ilike`"),
            ("title=fts.a", "`fts`"),
            ("or=(a.eq.1,b.eq.2)", "`or`"),
            ("and=(a.eq.1)", "`and`"),
            ("id=not.eq.1", "`not.`"),
            ("id=eq(any).{1,2}", "`eq(any)`"),
            ("id=between.1", "`between`"),
            ("id=1", "`id`"),
            ("select=*,tasks(*)", "`tasks(*)`"),
            ("select=meta->a", "`meta->a`"),
            ("select=x:id", "`x:id`"),
            ("tasks.status=eq.x", "`tasks.status`"),
            ("order=a.up", "`a.up`"),
            ("limit=-1", "`limit`"),
            ("offset=x", "`offset`"),
            ("id=in.1,2", "in.(a,b,c)"),
            ("read=is.maybe", "is takes"),
            ("columns=a", "`columns`"),
        ] {
            let e = q(query).expect_err(query);
            assert!(e.message.contains(named), "{query}: {}", e.message);
        }
    }
}
