//! `tritium run` and `tritium bench` end to end on a small synthetic GGUF.

use std::path::Path;
use std::process::{Command, Output};

use tritium_engine::synthetic::{Spec, gguf};

fn tritium(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tritium"))
        .args(args)
        .output()
        .unwrap()
}

fn model(dir: &Path) -> String {
    let p = dir.join("m.gguf");
    std::fs::write(
        &p,
        gguf(&Spec {
            ctx: 64,
            ..Spec::default()
        }),
    )
    .unwrap();
    p.display().to_string()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn run_generates_reproducibly_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let greedy = tritium(&["run", &m, "-p", "the", "-n", "12", "--temp", "0", "-t", "2"]);
    let (out, err) = text(&greedy);
    assert!(greedy.status.success(), "{err}");
    assert!(out.starts_with("the") && out.len() > 4, "{out:?}");
    // Greedy is deterministic; sampling is deterministic for a seed.
    assert_eq!(
        tritium(&["run", &m, "-p", "the", "-n", "12", "--temp", "0"]).stdout,
        greedy.stdout
    );
    let a = tritium(&[
        "run", &m, "-p", "the", "-n", "12", "--temp", "1", "--seed", "5",
    ]);
    let b = tritium(&[
        "run", &m, "-p", "the", "-n", "12", "--temp", "1", "--seed", "5",
    ]);
    assert_eq!(a.stdout, b.stdout);
    // A stop string that occurs in the greedy output ends the text just before it.
    let generated = &out["the".len()..out.len() - 1];
    let stop: String = generated.chars().skip(2).take(1).collect();
    let cut = tritium(&[
        "run", &m, "-p", "the", "-n", "12", "--temp", "0", "--stop", &stop,
    ]);
    let (cut_out, _) = text(&cut);
    assert!(
        !cut_out["the".len()..].contains(&stop),
        "{cut_out:?} still holds {stop:?}"
    );
    assert!(generated.starts_with(cut_out["the".len()..].trim_end_matches('\n')));
}

#[test]
fn bench_reports_json() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let o = tritium(&[
        "bench", &m, "--pp", "16", "--tg", "8", "--reps", "1", "--json", "-t", "2",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    for k in [
        "pp_tokens_per_s",
        "tg_tokens_per_s",
        "first_token_seconds",
        "peak_rss_mib",
    ] {
        assert!(j[k].as_f64().unwrap() > 0.0, "{k}: {}", j[k]);
    }
    assert_eq!(j["weight_type"], "TQ2_0");
    assert_eq!(j["threads"], 2);
    // The f32 KV cache a decode step reads: one layer, 2 KV heads of 64, a key and a value of 4
    // bytes each, so 1024 bytes a position; the 8 timed steps after 16 prompt tokens attend to
    // 17..=24 positions, 20.5 on average.
    assert_eq!(j["kv_bytes_per_token"], 20992);
    assert_eq!(
        j["bytes_per_token"].as_u64().unwrap(),
        j["weight_bytes_per_token"].as_u64().unwrap() + 20992
    );
    // An f16 cache: 2 bytes a key or value, half of it.
    let o = tritium(&[
        "bench",
        &m,
        "--pp",
        "16",
        "--tg",
        "8",
        "--reps",
        "1",
        "--json",
        "--kv-cache",
        "f16",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (j["kv_cache"].as_str(), j["kv_bytes_per_token"].as_u64()),
        (Some("f16"), Some(10496))
    );
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    let long = "the ".repeat(40);
    for (args, want) in [
        (
            vec!["run", &m, "-p", &long, "--ctx", "8"],
            "context holds 8",
        ),
        (
            vec!["run", "/nonexistent/x.gguf", "-p", "hi"],
            "/nonexistent/x.gguf: No such file",
        ),
        (
            vec!["bench", &m, "--pp", "60", "--tg", "10"],
            "exceeds the model's context of 64",
        ),
        (
            vec!["run", dir.path().to_str().unwrap(), "-p", "hi"],
            "is a directory, not a GGUF file",
        ),
        // A checkpoint runs in Burn; an f16 cache would be silently not there.
        (
            vec![
                "eval",
                "--model",
                "runs/x",
                "--text",
                &m,
                "--kv-cache",
                "f16",
            ],
            "--kv-cache f16: a checkpoint runs in Burn",
        ),
    ] {
        let o = tritium(&args);
        let (_, err) = text(&o);
        assert!(
            !o.status.success() && err.contains(want) && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
    let bytes = std::fs::read(&m).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let o = tritium(&["run", cut.to_str().unwrap(), "-p", "hi"]);
    let (_, err) = text(&o);
    assert!(
        !o.status.success() && err.starts_with(&format!("error: {}: ", cut.display())),
        "{err}"
    );
}

/// Flag values out of range are refused before any work, with the flag named, and never with a
/// panic (exit 101); a thread count above the cores is capped with a warning.
#[test]
fn hostile_flag_values_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let m = model(dir.path());
    // (subcommand, flag, a value out of its range)
    #[rustfmt::skip]
    let cases = [
        ("bench", "--pp", "0"), ("bench", "--tg", "0"), ("bench", "--reps", "0"),
        ("run", "--temp", "nan"), ("run", "--temp", "-1"), ("run", "--top-p", "2"),
        ("run", "--top-p", "0"), ("run", "--min-p", "-1"), ("run", "--repeat-penalty", "-1"),
        ("run", "--repeat-penalty", "inf"), ("run", "--stop", ""), ("run", "--lora-scale", "nan"),
        ("eval", "--tasks", ""), ("eval", "--tasks", " , "), ("run", "--kv-cache", "bf16"),
        ("bench", "--kv-cache", "f8"), ("eval", "--kv-cache", "q8_0"),
    ];
    let command = |cmd: &str| -> Vec<&str> {
        match cmd {
            "run" => vec!["run", &m, "-p", "hi", "-n", "2"],
            // No other count flag: clap would refuse a repeated one for another reason.
            "bench" => vec!["bench", &m],
            _ => vec!["eval", "--model", &m],
        }
    };
    for (cmd, flag, value) in cases {
        let mut args = command(cmd);
        args.extend([flag, value]);
        let o = tritium(&args);
        let (_, err) = text(&o);
        assert!(
            !o.status.success() && o.status.code() != Some(101) && err.contains(flag),
            "{args:?}: exit {:?}: {err}",
            o.status.code()
        );
    }
    let o = tritium(&[
        "bench", &m, "--pp", "8", "--tg", "4", "--reps", "1", "-t", "1000",
    ]);
    let (_, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("-t 1000: using"), "{err}");
}
