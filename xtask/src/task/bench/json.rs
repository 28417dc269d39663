//! Just enough JSON for the bench: building and printing the results document, and reading a
//! number out of criterion's estimate files (xtask keeps no JSON dependency).

use std::fmt::Write as _;

/// A JSON value.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// An object from `(key, value)` pairs, in order.
    pub fn object<K: Into<String>>(fields: impl IntoIterator<Item = (K, Json)>) -> Json {
        Json::Object(fields.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    pub fn str(text: impl Into<String>) -> Json {
        Json::String(text.into())
    }

    /// A number, or null when it is not finite.
    pub fn num(value: impl Into<f64>) -> Json {
        let value = value.into();
        if value.is_finite() {
            Json::Number(value)
        } else {
            Json::Null
        }
    }

    pub fn opt(value: Option<f64>) -> Json {
        value.map_or(Json::Null, Json::num)
    }

    /// Pretty-printed with two-space indentation.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out.push('\n');
        out
    }

    fn write(&self, out: &mut String, depth: usize) {
        let indent = |out: &mut String, depth: usize| {
            out.push('\n');
            out.push_str(&"  ".repeat(depth));
        };
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => {
                if n.fract() == 0.0 && n.abs() < 1e15 {
                    let _ = write!(out, "{}", *n as i64);
                } else {
                    let _ = write!(out, "{n}");
                }
            }
            Json::String(s) => write_string(out, s),
            Json::Array(items) if items.is_empty() => out.push_str("[]"),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    indent(out, depth + 1);
                    item.write(out, depth + 1);
                }
                indent(out, depth);
                out.push(']');
            }
            Json::Object(fields) if fields.is_empty() => out.push_str("{}"),
            Json::Object(fields) => {
                out.push('{');
                for (i, (key, value)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    indent(out, depth + 1);
                    write_string(out, key);
                    out.push_str(": ");
                    value.write(out, depth + 1);
                }
                indent(out, depth);
                out.push('}');
            }
        }
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The number after the keys `path` found in order in `text` (`["mean", "point_estimate"]`
/// finds the mean's point estimate in criterion's `estimates.json`).
pub fn number_at(text: &str, path: &[&str]) -> Option<f64> {
    let mut at = 0;
    for key in path {
        let quoted = format!("\"{key}\"");
        at += text.get(at..)?.find(&quoted)? + quoted.len();
    }
    let rest = text.get(at..)?.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
        .unwrap_or(rest.len());
    rest.get(..end)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_nested_documents() {
        let doc = Json::object([
            ("name", Json::str("a \"b\"\n")),
            ("n", Json::num(3.0)),
            ("x", Json::num(0.25)),
            ("nan", Json::num(f64::NAN)),
            ("list", Json::Array(vec![Json::Bool(true), Json::Null])),
            ("empty", Json::object(Vec::<(String, Json)>::new())),
        ]);
        let text = doc.render();
        assert!(text.contains("\"name\": \"a \\\"b\\\"\\n\""), "{text}");
        assert!(text.contains("\"n\": 3,"), "{text}");
        assert!(text.contains("\"x\": 0.25"), "{text}");
        assert!(text.contains("\"nan\": null"), "{text}");
        assert!(text.contains("\"empty\": {}"), "{text}");
    }

    #[test]
    fn finds_numbers_by_key_path() {
        let text = r#"{"mean":{"confidence_interval":{"lower_bound":1.5},"point_estimate":2.5e6},
                      "median":{"point_estimate":7},"throughput":{"Elements":4096}}"#;
        assert_eq!(number_at(text, &["mean", "point_estimate"]), Some(2.5e6));
        assert_eq!(number_at(text, &["median", "point_estimate"]), Some(7.0));
        assert_eq!(number_at(text, &["throughput", "Elements"]), Some(4096.0));
        assert_eq!(number_at(text, &["missing"]), None);
    }
}
