//! `metrics.jsonl` (one JSON object per logged step or evaluation) and `loss.svg`, the loss curve
//! redrawn from it.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One line of `metrics.jsonl`: a training row (loss, lr, …) or a validation row (val_loss).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Row {
    pub step: usize,
    pub tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grad_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tokens_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_loss: Option<f64>,
}

impl Row {
    /// A held-out evaluation at `step`.
    pub fn validation(step: usize, tokens: u64, val_loss: f64) -> Row {
        Row {
            step,
            tokens,
            loss: None,
            lr: None,
            grad_norm: None,
            tokens_per_s: None,
            val_loss: Some(val_loss),
        }
    }
}

/// The rows of a metrics file (lines that are not rows, or not UTF-8, are passed over).
pub fn read(path: &Path) -> Vec<Row> {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default())
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub fn append(path: &Path, row: &Row) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{}", serde_json::to_string(row).expect("row serializes"))
}

/// Drops rows after `step` (written after the checkpoint a resumed run restarts from). Every
/// other line stays byte for byte, one that is not a row included; only an unfinished last line
/// (an append cut short) goes. A file that cannot be read is an error, never an empty rewrite.
pub fn truncate_after(path: &Path, step: usize) -> std::io::Result<()> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut kept = Vec::with_capacity(bytes.len());
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let whole = line.ends_with(b"\n");
        let later = serde_json::from_slice::<Row>(line).is_ok_and(|r| r.step > step);
        if whole && !later {
            kept.extend_from_slice(line);
        }
    }
    tritium_checkpoint::fsutil::write_atomic(path, &kept)
}

/// An SVG line chart of training loss (blue) and validation loss (orange) against step.
pub fn plot_svg(rows: &[Row]) -> String {
    let train: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r.step as f64, r.loss?)))
        .collect();
    let val: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r.step as f64, r.val_loss?)))
        .collect();
    let all = train.iter().chain(&val);
    let (mut x1, mut y0, mut y1) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all {
        x1 = x1.max(x);
        if y.is_finite() {
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    if y1 - y0 < 1e-9 {
        y1 = y0 + 1.0;
    }
    let (w, h, m) = (800.0, 480.0, 60.0);
    let px = |x: f64| m + x / x1 * (w - 2.0 * m);
    let py = |y: f64| h - m - (y - y0) / (y1 - y0) * (h - 2.0 * m);
    let line = |pts: &[(f64, f64)], color: &str| {
        let d: Vec<String> = pts
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
            d.join(" ")
        )
    };
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n"
    );
    s += &format!("<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n");
    s += &format!(
        "<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - m,
        w - m,
        h - m
    );
    s += &format!(
        "<line x1=\"{m}\" y1=\"{m}\" x2=\"{m}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - m
    );
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * i as f64 / 4.0;
        s += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{y:.2}</text>\n",
            m - 6.0,
            py(y) + 4.0
        );
        let x = x1 * i as f64 / 4.0;
        s += &format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{x:.0}</text>\n",
            px(x),
            h - m + 18.0
        );
    }
    s += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">step</text>\n",
        w / 2.0,
        h - 15.0
    );
    s += &format!(
        "<text x=\"15\" y=\"{}\" transform=\"rotate(-90 15 {})\" text-anchor=\"middle\">loss (nats/token)</text>\n",
        h / 2.0,
        h / 2.0
    );
    s += &line(&train, "#1f77b4");
    s += &line(&val, "#ff7f0e");
    s += &format!(
        "<text x=\"{}\" y=\"30\" fill=\"#1f77b4\">train</text><text x=\"{}\" y=\"30\" fill=\"#ff7f0e\">validation</text>\n",
        w - 200.0,
        w - 140.0
    );
    s + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: usize, loss: Option<f64>, val: Option<f64>) -> Row {
        Row {
            step,
            tokens: step as u64 * 10,
            loss,
            lr: None,
            grad_norm: None,
            tokens_per_s: None,
            val_loss: val,
        }
    }

    #[test]
    fn truncate_keeps_rows_up_to_the_checkpoint() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.jsonl");
        for s in 1..=5 {
            append(&p, &row(s, Some(1.0 / s as f64), None)).unwrap();
        }
        append(&p, &row(4, None, Some(0.3))).unwrap();
        // A line of something else (kept as it is) and an append cut short (dropped).
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"note\": \"caf\xc3\xa9 \xff\"}\n{\"step\": 6, \"tok")
            .unwrap();
        drop(f);
        truncate_after(&p, 3).unwrap();
        let rows = read(&p);
        assert_eq!(
            rows.iter().map(|r| r.step).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let bytes = std::fs::read(&p).unwrap();
        assert!(bytes.ends_with(b"{\"note\": \"caf\xc3\xa9 \xff\"}\n"));
        // A metrics path that cannot be read is an error, and nothing is written.
        let dir_path = d.path().join("a-dir");
        std::fs::create_dir(&dir_path).unwrap();
        assert!(truncate_after(&dir_path, 3).is_err());
    }

    #[test]
    fn svg_has_both_curves() {
        let rows = vec![
            row(1, Some(5.0), None),
            row(2, Some(4.0), Some(4.5)),
            row(3, Some(3.0), Some(3.5)),
        ];
        let s = plot_svg(&rows);
        assert_eq!(s.matches("<polyline").count(), 2);
        // The highest loss (5.0) sits at the top of the plot area (y = 60), step 1 of 3 at x = 60 + 680/3.
        assert!(s.contains("286.7,60.0"), "{s}");
    }
}
