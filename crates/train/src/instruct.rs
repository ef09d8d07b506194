//! Instruction data for fine-tuning: JSON arrays or JSONL in the common shapes — Alpaca
//! (`instruction`, optional `input`, `output`), chat (`messages: [{role, content}]`), and
//! prompt/completion pairs (also `question`/`answer`, as GSM8K has them) — normalised to a list of
//! chat messages. Bad records are errors naming `file:line` and the field, or, with `skip_invalid`,
//! counted skips; nothing is dropped silently.

use std::path::{Path, PathBuf};

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub messages: Vec<Message>,
    /// Where it came from, for messages: `file:line` (JSONL) or `file: item N` (JSON array).
    pub origin: String,
}

#[derive(Debug, thiserror::Error)]
pub enum InstructError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not UTF-8 (line {line}, byte {byte})")]
    Utf8 {
        path: PathBuf,
        line: usize,
        byte: usize,
    },
    #[error("{at}: {msg}")]
    Record { at: String, msg: String },
    #[error("{path}: no examples")]
    Empty { path: PathBuf },
}

#[derive(Debug, Default)]
pub struct Loaded {
    pub examples: Vec<Example>,
    /// `(origin, reason)` of every record skipped under `skip_invalid`.
    pub skipped: Vec<(String, String)>,
}

pub fn load(path: &Path, skip_invalid: bool) -> Result<Loaded, InstructError> {
    let bytes = std::fs::read(path).map_err(|source| InstructError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    from_bytes(path, &bytes, skip_invalid)
}

/// As [`load`], from the bytes of the file at `path` (named in messages).
pub fn from_bytes(path: &Path, bytes: &[u8], skip_invalid: bool) -> Result<Loaded, InstructError> {
    let name = path.display();
    // A UTF-8 byte-order mark (Windows editors write one) is not JSON.
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let mut records: Vec<(String, Result<Value, String>)> = Vec::new();
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        // One JSON document: it must be text as a whole.
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let byte = e.valid_up_to();
            InstructError::Utf8 {
                path: path.to_path_buf(),
                line: bytes[..byte].iter().filter(|&&b| b == b'\n').count() + 1,
                byte,
            }
        })?;
        match serde_json::from_str::<Vec<Value>>(text) {
            Ok(items) => records.extend(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (format!("{name}: item {}", i + 1), Ok(v))),
            ),
            Err(e) => {
                return Err(InstructError::Record {
                    at: format!("{name}:{}", e.line()),
                    msg: format!("not a JSON array: {e}"),
                });
            }
        }
    } else {
        // JSONL: each line on its own, so a line that is not UTF-8 is one bad record (skipped and
        // counted with --skip-invalid), not a bad file.
        let mut start = 0;
        for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
            let at = format!("{name}:{}", i + 1);
            match std::str::from_utf8(line) {
                Err(e) => records.push((
                    at,
                    Err(format!(
                        "not UTF-8 (line {}, byte {})",
                        i + 1,
                        start + e.valid_up_to()
                    )),
                )),
                Ok(l) if !l.trim().is_empty() => records.push((
                    at,
                    serde_json::from_str(l).map_err(|e| format!("not JSON: {e}")),
                )),
                Ok(_) => {}
            }
            start += line.len() + 1;
        }
    }
    let mut out = Loaded::default();
    for (at, rec) in records {
        match rec.and_then(|v| parse(&v)) {
            Ok(messages) => out.examples.push(Example {
                messages,
                origin: at,
            }),
            Err(msg) if skip_invalid => out.skipped.push((at, msg)),
            Err(msg) => return Err(InstructError::Record { at, msg }),
        }
    }
    if out.examples.is_empty() {
        return Err(InstructError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

fn text_field(v: &Value, key: &str) -> Result<Option<String>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("field {key:?} is {}, not a string", kind(other))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn response(s: Option<String>, key: &str) -> Result<String, String> {
    match s {
        Some(s) if !s.trim().is_empty() => Ok(s),
        Some(_) => Err(format!("field {key:?} (the response) is empty")),
        None => Err(format!("field {key:?} (the response) is missing")),
    }
}

/// One record → chat messages.
fn parse(v: &Value) -> Result<Vec<Message>, String> {
    if !v.is_object() {
        return Err(format!("a record must be a JSON object, not {}", kind(v)));
    }
    let msg = |role, content| Message { role, content };
    if let Some(ms) = v.get("messages") {
        let ms = ms.as_array().ok_or("field \"messages\" is not an array")?;
        let mut out = Vec::new();
        for (i, m) in ms.iter().enumerate() {
            let role = match m.get("role").and_then(Value::as_str) {
                Some("system") => Role::System,
                Some("user") => Role::User,
                Some("assistant") => Role::Assistant,
                Some(r) => {
                    return Err(format!(
                        "messages[{i}].role {r:?} is not system, user or assistant"
                    ));
                }
                None => return Err(format!("messages[{i}].role is missing or not a string")),
            };
            let content = m
                .get("content")
                .and_then(Value::as_str)
                .ok_or(format!("messages[{i}].content is missing or not a string"))?;
            if role == Role::Assistant && content.trim().is_empty() {
                return Err(format!(
                    "messages[{i}].content (an assistant response) is empty"
                ));
            }
            out.push(msg(role, content.to_string()));
        }
        if !out.iter().any(|m| m.role == Role::Assistant) {
            return Err("\"messages\" has no assistant message to learn from".into());
        }
        return Ok(out);
    }
    if let Some(instruction) = text_field(v, "instruction")? {
        let input = text_field(v, "input")?.unwrap_or_default();
        let user = if input.trim().is_empty() {
            instruction
        } else {
            format!("{instruction}\n\n{input}")
        };
        return Ok(vec![
            msg(Role::User, user),
            msg(
                Role::Assistant,
                response(text_field(v, "output")?, "output")?,
            ),
        ]);
    }
    for (p, c) in [("prompt", "completion"), ("question", "answer")] {
        if let Some(prompt) = text_field(v, p)? {
            return Ok(vec![
                msg(Role::User, prompt),
                msg(Role::Assistant, response(text_field(v, c)?, c)?),
            ]);
        }
    }
    Err("none of the known shapes: {instruction, input?, output}, {messages: [{role, content}]}, {prompt, completion}, {question, answer}".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn every_shape_from_jsonl_and_json_arrays() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "a.jsonl",
            br#"{"instruction": "Add.", "input": "2 and 3", "output": "5"}
{"instruction": "Say hi.", "output": "hi"}

{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
{"prompt": "1+1=", "completion": "2"}
{"question": "2+2?", "answer": "4"}
"#,
        );
        let l = load(&p, false).unwrap();
        assert_eq!(l.examples.len(), 5);
        // A JSON array behind a byte-order mark is still an array.
        let bom = write(
            dir.path(),
            "b.json",
            b"\xef\xbb\xbf[{\"prompt\": \"1+1=\", \"completion\": \"2\"}]",
        );
        assert_eq!(load(&bom, false).unwrap().examples.len(), 1);
        assert_eq!(l.examples[0].messages[0].content, "Add.\n\n2 and 3");
        assert_eq!(l.examples[1].messages[0].content, "Say hi.");
        assert_eq!(l.examples[2].messages.len(), 3);
        assert_eq!(l.examples[2].origin, format!("{}:4", p.display()));
        assert_eq!(
            l.examples[4].messages[1],
            Message {
                role: Role::Assistant,
                content: "4".into()
            }
        );
        let arr = write(
            dir.path(),
            "b.json",
            br#"[{"prompt": "a", "completion": "b"}, {"instruction": "x", "output": "y"}]"#,
        );
        let l = load(&arr, false).unwrap();
        assert_eq!(l.examples.len(), 2);
        assert!(l.examples[1].origin.ends_with("b.json: item 2"));
    }

    #[test]
    fn bad_records_name_the_line_and_field_or_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        for (line, want) in [
            ("{not json", "not JSON"),
            (r#"{"text": "hello"}"#, "none of the known shapes"),
            (
                r#"{"instruction": "x", "output": "  "}"#,
                "\"output\" (the response) is empty",
            ),
            (
                r#"{"instruction": "x"}"#,
                "\"output\" (the response) is missing",
            ),
            (
                r#"{"messages": [{"role": "robot", "content": "beep"}]}"#,
                "messages[0].role \"robot\"",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "hi"}]}"#,
                "no assistant message",
            ),
            (
                r#"{"instruction": 5, "output": "y"}"#,
                "\"instruction\" is a number",
            ),
            ("[1, 2]", "must be a JSON object"),
        ] {
            let p = write(
                dir.path(),
                "c.jsonl",
                format!("{{\"prompt\": \"a\", \"completion\": \"b\"}}\n{line}\n").as_bytes(),
            );
            let e = load(&p, false).unwrap_err().to_string();
            assert!(e.contains("c.jsonl:2:") && e.contains(want), "{e}");
            let l = load(&p, true).unwrap();
            assert_eq!((l.examples.len(), l.skipped.len()), (1, 1), "{line}");
            assert!(l.skipped[0].1.contains(want));
        }
        let p = write(
            dir.path(),
            "d.jsonl",
            b"{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"\xff\"}\n",
        );
        let e = load(&p, false).unwrap_err().to_string();
        assert!(e.contains("not UTF-8 (line 2"), "{e}");
        let l = load(&p, true).unwrap();
        assert_eq!(
            (l.examples.len(), l.skipped.len()),
            (1, 1),
            "the bad line is skipped"
        );
        let p = write(dir.path(), "e.jsonl", b"\n\n");
        assert!(
            load(&p, false)
                .unwrap_err()
                .to_string()
                .contains("no examples")
        );
    }
}
