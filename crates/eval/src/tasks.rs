//! Zero-shot task files (MosaicML ICL JSONL, as bundled in `datasets/eval/`): parsing with
//! `file:line` errors, and turning each item into log-likelihood requests.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The tasks tritium knows, with their file stems and shapes.
pub const TASKS: [&str; 8] = [
    "arc_easy",
    "arc_challenge",
    "piqa",
    "boolq",
    "copa",
    "openbook_qa",
    "winogrande",
    "lambada_openai",
];

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// One context, several continuations (ARC, PIQA, BoolQ, COPA, OpenBookQA).
    Choice {
        query: String,
        choices: Vec<String>,
        gold: usize,
    },
    /// Several contexts, one continuation (WinoGrande's partial scoring).
    Context {
        contexts: Vec<String>,
        continuation: String,
        gold: usize,
    },
    /// Predict the continuation (LAMBADA): accuracy is every token greedy.
    Cloze {
        context: String,
        continuation: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("unknown task {0:?}; known: {known}", known = TASKS.join(", "))]
    Unknown(String),
    #[error("{path}:{line}: {msg}")]
    Line {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
}

/// The task file for `name` in `dir` (`NAME.jsonl` or `NAME.jsonl.gz`).
pub fn task_file(dir: &Path, name: &str) -> Result<PathBuf, TaskError> {
    if !TASKS.contains(&name) {
        return Err(TaskError::Unknown(name.to_string()));
    }
    for ext in ["jsonl", "jsonl.gz"] {
        let p = dir.join(format!("{name}.{ext}"));
        if p.exists() {
            return Ok(p);
        }
    }
    Err(TaskError::File {
        path: dir.join(format!("{name}.jsonl")),
        msg: "no such task file (.jsonl or .jsonl.gz)".into(),
    })
}

pub fn load(path: &Path, limit: Option<usize>) -> Result<Vec<Item>, TaskError> {
    let text = tritium_train::text::read_text(path).map_err(|e| TaskError::File {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if limit.is_some_and(|l| items.len() >= l) {
            break;
        }
        let bad = |msg: String| TaskError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            msg,
        };
        let v: Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let item = parse(&v).map_err(bad)?;
        // A task's metrics are either a cloze task's (accuracy and perplexity of the
        // continuation) or multiple choice's; one file cannot be both.
        let is_cloze = |i: &Item| matches!(i, Item::Cloze { .. });
        if items
            .first()
            .is_some_and(|f| is_cloze(f) != is_cloze(&item))
        {
            return Err(bad(
                "a cloze item ({context, continuation}) among multiple-choice items, or the \
                 other way round: their scores do not combine; keep them in separate tasks"
                    .into(),
            ));
        }
        items.push(item);
    }
    if items.is_empty() {
        return Err(TaskError::File {
            path: path.to_path_buf(),
            msg: "no items".into(),
        });
    }
    Ok(items)
}

fn string(v: &Value, key: &str) -> Result<String, String> {
    v[key]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("field {key:?} is missing or not a string"))
}

fn strings(v: &Value, key: &str) -> Result<Vec<String>, String> {
    let a = v[key]
        .as_array()
        .ok_or_else(|| format!("field {key:?} is missing or not an array"))?;
    if a.len() < 2 {
        return Err(format!("field {key:?} needs at least two entries"));
    }
    a.iter()
        .enumerate()
        .map(|(i, s)| {
            s.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("{key}[{i}] is not a string"))
        })
        .collect()
}

fn gold(v: &Value, n: usize) -> Result<usize, String> {
    let g = v["gold"]
        .as_u64()
        .ok_or("field \"gold\" is missing or not a non-negative integer")? as usize;
    if g >= n {
        return Err(format!("gold = {g} but there are only {n} options"));
    }
    Ok(g)
}

fn parse(v: &Value) -> Result<Item, String> {
    if v.get("choices").is_some() {
        let choices = strings(v, "choices")?;
        let gold = gold(v, choices.len())?;
        Ok(Item::Choice {
            query: string(v, "query")?,
            choices,
            gold,
        })
    } else if v.get("context_options").is_some() {
        let contexts = strings(v, "context_options")?;
        let gold = gold(v, contexts.len())?;
        Ok(Item::Context {
            contexts,
            continuation: string(v, "continuation")?,
            gold,
        })
    } else if v.get("context").is_some() {
        Ok(Item::Cloze {
            context: string(v, "context")?,
            continuation: string(v, "continuation")?,
        })
    } else {
        Err("none of the known shapes: {query, choices, gold}, {context_options, continuation, gold}, {context, continuation}".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_and_every_error_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("copa.jsonl");
        std::fs::write(
            &p,
            "{\"query\": \"q\", \"choices\": [\"a\", \"b\"], \"gold\": 1}\n\n{\"context_options\": [\"x\", \"y\"], \"continuation\": \"c\", \"gold\": 0}\n",
        )
        .unwrap();
        let items = load(&p, None).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[0],
            Item::Choice {
                query: "q".into(),
                choices: vec!["a".into(), "b".into()],
                gold: 1
            }
        );
        assert_eq!(load(&p, Some(1)).unwrap().len(), 1);
        for (line, want) in [
            (
                "{\"query\": \"q\", \"choices\": [\"a\", \"b\"], \"gold\": 2}",
                "gold = 2",
            ),
            (
                "{\"query\": \"q\", \"choices\": [\"a\"], \"gold\": 0}",
                "at least two",
            ),
            ("{\"choices\": [\"a\", \"b\"], \"gold\": 0}", "\"query\""),
            ("{\"text\": \"hello\"}", "none of the known shapes"),
            ("{not json", "not JSON"),
            (
                "{\"query\": \"q\", \"choices\": [\"a\", \"b\"], \"gold\": 0}",
                "cloze item",
            ),
        ] {
            std::fs::write(
                &p,
                format!("{{\"context\": \"k\", \"continuation\": \"w\"}}\n{line}\n"),
            )
            .unwrap();
            let e = load(&p, None).unwrap_err().to_string();
            assert!(e.contains("copa.jsonl:2:") && e.contains(want), "{e}");
        }
        assert!(
            task_file(dir.path(), "hellaswag")
                .unwrap_err()
                .to_string()
                .contains("unknown task")
        );
    }
}
