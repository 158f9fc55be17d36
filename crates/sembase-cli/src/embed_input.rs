//! Reading texts to embed: one per line, or JSONL objects with `text` and an optional `id`.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// One text to embed and the caller's id for it.
#[derive(Debug, Clone, PartialEq)]
pub struct InputText {
    pub id: Option<String>,
    pub text: String,
}

/// How the input is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// One text per line.
    Text,
    /// One JSON object per line: `{"text": ..., "id": ...}`.
    Jsonl,
}

impl InputFormat {
    /// JSONL for `.jsonl`/`.ndjson` files, plain text otherwise.
    pub fn guess(path: Option<&Path>) -> Self {
        match path.and_then(|p| p.extension()).and_then(|e| e.to_str()) {
            Some("jsonl" | "ndjson") => Self::Jsonl,
            _ => Self::Text,
        }
    }
}

/// Reads all inputs from `path` (stdin when `None`).
pub fn read_inputs(path: Option<&Path>, format: InputFormat) -> Result<Vec<InputText>> {
    let mut bytes = Vec::new();
    match path {
        Some(p) => {
            bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
        }
        None => {
            std::io::stdin().read_to_end(&mut bytes).context("reading stdin")?;
        }
    }
    let source = path.map_or_else(|| "stdin".to_string(), |p| p.display().to_string());
    parse_inputs(&bytes, format).with_context(|| format!("in {source}"))
}

/// Parses the bytes of an input file; errors name the 1-based line.
pub fn parse_inputs(bytes: &[u8], format: InputFormat) -> Result<Vec<InputText>> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let mut inputs = Vec::new();
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw).map_err(|e| {
            anyhow::anyhow!("line {line_no}: not valid UTF-8 (at byte {})", e.valid_up_to())
        })?;
        let input = match format {
            InputFormat::Text => InputText { id: None, text: line.to_string() },
            InputFormat::Jsonl if line.trim().is_empty() => continue,
            InputFormat::Jsonl => {
                parse_json_line(line).with_context(|| format!("line {line_no}"))?
            }
        };
        if input.text.trim().is_empty() {
            bail!("line {line_no}: empty text");
        }
        inputs.push(input);
    }
    Ok(inputs)
}

fn parse_json_line(line: &str) -> Result<InputText> {
    let value: serde_json::Value = serde_json::from_str(line).context("malformed JSON")?;
    let text = match value.get("text") {
        Some(serde_json::Value::String(s)) => s.clone(),
        _ => bail!("no \"text\" string field"),
    };
    let id = match value.get("id").or_else(|| value.get("_id")) {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(_) => bail!("\"id\" must be a string or a number"),
    };
    Ok(InputText { id, text })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_lines_with_crlf_and_final_newline() {
        let inputs = parse_inputs(b"one\r\ntwo\n", InputFormat::Text).unwrap();
        assert_eq!(inputs.iter().map(|i| i.text.as_str()).collect::<Vec<_>>(), ["one", "two"]);
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let err = parse_inputs(b"fine\nbad \xff here\n", InputFormat::Text).unwrap_err();
        assert!(format!("{err:#}").contains("line 2: not valid UTF-8"), "{err:#}");
    }

    #[test]
    fn empty_text_line_is_refused() {
        let err = parse_inputs(b"a\n\nb\n", InputFormat::Text).unwrap_err();
        assert!(format!("{err:#}").contains("line 2: empty text"), "{err:#}");
    }

    #[test]
    fn jsonl_ids_and_errors() {
        let inputs = parse_inputs(
            b"{\"id\": 7, \"text\": \"x\"}\n\n{\"text\": \"y\"}\n",
            InputFormat::Jsonl,
        )
        .unwrap();
        assert_eq!(inputs[0], InputText { id: Some("7".into()), text: "x".into() });
        assert_eq!(inputs[1].id, None);
        let err =
            parse_inputs(b"{\"text\": \"ok\"}\n{\"text\": 3}\n", InputFormat::Jsonl).unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
        let err = parse_inputs(b"{oops\n", InputFormat::Jsonl).unwrap_err();
        assert!(format!("{err:#}").contains("line 1: malformed JSON"), "{err:#}");
    }
}
