//! `extension import FILE.csv`: every row is checked before anything is written, and then all rows
//! are written in one transaction, so a bad file changes nothing and its report names every bad
//! line, not just the first.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;

use crate::store::{ExtensionKind, ExtensionSpec, StoreError, quote};

/// The columns of an import file; `kind` and `remote` may be left out or empty.
pub const HEADER: &str = "number,node,kind,remote";

/// One bad line of the file (1-based, header = line 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    pub message: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("the file is not usable CSV: {0}")]
    Unreadable(String),
    #[error("the header must be `{HEADER}` (kind and remote may be left out): {0}")]
    Header(String),
    #[error("{} bad row(s), nothing imported:\n{}", .0.len(), rows(.0))]
    Rows(Vec<RowError>),
    #[error("line {line}: {error}; nothing imported")]
    Store { line: u64, error: StoreError },
}

fn rows(errors: &[RowError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A row that passed every check, with the line it came from.
#[derive(Debug, Clone)]
pub struct ImportRow {
    pub line: u64,
    pub spec: ExtensionSpec,
}

/// Parses and checks the whole file against the nodes that exist.
pub fn parse(
    input: impl Read,
    known_nodes: &HashSet<String>,
) -> Result<Vec<ImportRow>, ImportError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(input);
    let header = reader
        .headers()
        .map_err(|e| ImportError::Unreadable(e.to_string()))?
        .clone();
    let column = |name: &str| header.iter().position(|h| h.eq_ignore_ascii_case(name));
    let (Some(number_col), Some(node_col)) = (column("number"), column("node")) else {
        return Err(ImportError::Header(format!(
            "found {}",
            quote(&header.iter().collect::<Vec<_>>().join(","))
        )));
    };
    if let Some(unknown) = header
        .iter()
        .find(|h| !["number", "node", "kind", "remote"].contains(&h.to_ascii_lowercase().as_str()))
    {
        return Err(ImportError::Header(format!(
            "unknown column {}",
            quote(unknown)
        )));
    }
    let (kind_col, remote_col) = (column("kind"), column("remote"));

    let mut accepted = Vec::new();
    let mut errors = Vec::new();
    let mut first_line_of: HashMap<String, u64> = HashMap::new();
    for record in reader.records() {
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                errors.push(RowError {
                    line,
                    message: e.to_string(),
                });
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        let field = |col: Option<usize>| col.and_then(|c| record.get(c)).unwrap_or("");
        let mut problems = Vec::new();

        let number = field(Some(number_col)).to_string();
        if !(1..=10).contains(&number.len()) || !number.bytes().all(|b| b.is_ascii_digit()) {
            problems.push(format!("number {} must be 1 to 10 digits", quote(&number)));
        } else if let Some(first) = first_line_of.insert(number.clone(), line) {
            problems.push(format!("number {number} is already on line {first}"));
        }
        let node = field(Some(node_col)).to_string();
        if !known_nodes.contains(&node) {
            problems.push(format!(
                "node {} does not exist (add it with `node add`)",
                quote(&node)
            ));
        }
        let kind = match field(kind_col) {
            "" => None,
            text => text
                .parse::<ExtensionKind>()
                .map_err(|_| {
                    problems.push(format!(
                        "unknown kind {}: use sip or sip-hot-desk",
                        quote(text)
                    ))
                })
                .ok(),
        };
        let use_remote_auth = match parse_switch(field(remote_col)) {
            Ok(value) => value,
            Err(e) => {
                problems.push(e);
                None
            }
        };
        if problems.is_empty() {
            accepted.push(ImportRow {
                line,
                spec: ExtensionSpec {
                    number,
                    node,
                    kind,
                    use_remote_auth,
                    sip_password: None,
                },
            });
        } else {
            errors.push(RowError {
                line,
                message: problems.join("; "),
            });
        }
    }
    if errors.is_empty() {
        Ok(accepted)
    } else {
        Err(ImportError::Rows(errors))
    }
}

/// `on`/`off` as the phone system's page says it, and the usual spellings of yes and no.
pub(crate) fn parse_switch(text: &str) -> Result<Option<bool>, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "" => Ok(None),
        "on" | "true" | "yes" | "1" => Ok(Some(true)),
        "off" | "false" | "no" | "0" => Ok(Some(false)),
        other => Err(format!("remote {} must be on or off", quote(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> HashSet<String> {
        ["pbx1".to_string(), "pbx2".to_string()].into()
    }

    #[test]
    fn accepts_a_good_file_with_optional_columns() {
        let csv =
            "number,node,kind,remote\n1001,pbx1,sip,on\n1002,pbx2,sip-hot-desk,\n1003,pbx1,,off\n";
        let rows = parse(csv.as_bytes(), &nodes()).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].line, 2);
        assert_eq!(rows[0].spec.use_remote_auth, Some(true));
        assert_eq!(rows[1].spec.kind, Some(ExtensionKind::SipHotDesk));
        assert_eq!(rows[1].spec.use_remote_auth, None);
        assert_eq!(rows[2].spec.kind, None);
        let short = parse("number,node\n2001,pbx2\n".as_bytes(), &nodes()).unwrap();
        assert_eq!(short[0].spec.node, "pbx2");
    }

    #[test]
    fn names_every_bad_line_and_why() {
        let csv = "number,node,kind,remote\n1001,pbx1,sip,on\n10x1,pbx1,sip,on\n1003,nowhere,sip,on\n1004,pbx1,fax,maybe\n1001,pbx2,sip,off\n";
        let ImportError::Rows(errors) = parse(csv.as_bytes(), &nodes()).unwrap_err() else {
            panic!("expected row errors");
        };
        let lines: Vec<u64> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![3, 4, 5, 6]);
        assert!(errors[0].message.contains("1 to 10 digits"));
        assert!(errors[1].message.contains("\"nowhere\" does not exist"));
        assert!(errors[2].message.contains("unknown kind \"fax\""));
        assert!(errors[2].message.contains("remote \"maybe\""));
        assert!(errors[3].message.contains("already on line 2"));
    }

    #[test]
    fn refuses_a_wrong_header_or_ragged_rows() {
        assert!(matches!(
            parse("ext,node\n1,pbx1\n".as_bytes(), &nodes()),
            Err(ImportError::Header(_))
        ));
        assert!(matches!(
            parse("number,node,colour\n1,pbx1,red\n".as_bytes(), &nodes()),
            Err(ImportError::Header(_))
        ));
        let ImportError::Rows(errors) =
            parse("number,node\n1,pbx1,extra\n".as_bytes(), &nodes()).unwrap_err()
        else {
            panic!("expected row errors");
        };
        assert_eq!(errors[0].line, 2);
    }
}
