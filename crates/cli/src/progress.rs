//! What the training commands share: the Ctrl-C flag and the one renderer of training events (an
//! indicatif bar on a terminal, plain log lines otherwise), for pretraining and fine-tuning alike.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use tritium_train::{Event, StartData};

/// A flag a Ctrl-C sets: the loop checkpoints and returns at the next step boundary. A second
/// Ctrl-C while the checkpoint is written leaves at once (checkpoints are atomic, so the last good
/// one survives).
pub fn stop_on_ctrl_c() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    })
    .context("installing the Ctrl-C handler")?;
    Ok(stop)
}

/// Renders training events.
pub struct Progress {
    bar: Option<ProgressBar>,
    tty: bool,
    out: PathBuf,
    log_every: usize,
    /// What an evaluation measures: next-token loss on held-out text, or the response loss of
    /// held-out examples.
    eval_label: &'static str,
}

impl Progress {
    pub fn new(out: PathBuf) -> Self {
        Self {
            bar: None,
            tty: std::io::stderr().is_terminal(),
            out,
            log_every: 10,
            eval_label: "validation loss",
        }
    }

    fn line(&self, s: String) {
        match &self.bar {
            Some(b) => b.println(s),
            None => eprintln!("{s}"),
        }
    }

    pub fn event(&mut self, e: Event) {
        match e {
            Event::Prepared {
                dir,
                tokens,
                seconds,
                text_bytes,
            } => self.line(format!(
                "prepared {} tokens into {} ({:.1} MB/s)",
                tokens,
                dir.display(),
                text_bytes as f64 / 1e6 / seconds
            )),
            Event::Start {
                first_step,
                max_steps,
                data,
                products,
            } => {
                self.start_lines(first_step, max_steps, &data);
                if let Some(p) = products {
                    self.line(format!("training products: {p}"));
                }
                if let StartData::Examples(_) = data {
                    self.eval_label = "held-out response loss";
                }
                self.log_every = (max_steps / 50).clamp(1, 100);
                if self.tty {
                    let bar = ProgressBar::new(max_steps as u64).with_style(
                        ProgressStyle::with_template(
                            "{bar:30} step {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
                        )
                        .expect("static template"),
                    );
                    bar.set_position(first_step as u64);
                    bar.reset_eta();
                    self.bar = Some(bar);
                }
            }
            Event::Step(r) => {
                let msg = format!(
                    "loss {:.4} | lr {:.2e} | grad {:.2} | {:.0} tok/s",
                    r.loss.unwrap_or(f64::NAN),
                    r.lr.unwrap_or(0.0),
                    r.grad_norm.unwrap_or(0.0),
                    r.tokens_per_s.unwrap_or(0.0)
                );
                match &self.bar {
                    Some(b) => {
                        b.set_position(r.step as u64);
                        b.set_message(msg);
                    }
                    None if r.step % self.log_every == 0 => eprintln!("step {} | {msg}", r.step),
                    None => {}
                }
            }
            Event::Eval {
                step,
                val_loss,
                sample,
            } => {
                self.line(format!("step {step} | {} {val_loss:.4}", self.eval_label));
                if let Some(s) = sample {
                    self.line(format!("  sample: {}", s.replace('\n', " ")));
                }
            }
            Event::Checkpoint { step, path } => {
                self.line(format!("step {step} | checkpoint {}", path.display()))
            }
            Event::Interrupted { step } => self.line(format!(
                "stopping at step {step} (Ctrl-C): checkpoint written"
            )),
        }
    }

    fn start_lines(&self, first_step: usize, max_steps: usize, data: &StartData) {
        match data {
            StartData::Corpus {
                tokens_per_step,
                params,
                train_tokens,
                val_tokens,
                unigram_entropy,
            } => self.line(format!(
                "{}: {:.2}M parameters, {} tokens/step, data {} train / {} val tokens (validation unigram entropy {:.3} nats), steps {}..{}",
                self.out.display(),
                *params as f64 / 1e6,
                tokens_per_step,
                train_tokens,
                val_tokens,
                unigram_entropy,
                first_step,
                max_steps
            )),
            StartData::Examples(s) => {
                self.line(format!(
                    "trainable params: {} || all params: {} || trainable%: {:.4}",
                    s.trainable_params,
                    s.total_params,
                    100.0 * s.trainable_params as f64 / s.total_params as f64
                ));
                self.line(format!(
                    "{} training examples{} / {} held-out; {} skipped, {} truncated to seq_len, {} dropped (no response left){}",
                    s.examples,
                    if s.rows != s.examples {
                        format!(" packed into {} rows", s.rows)
                    } else {
                        String::new()
                    },
                    s.held_out,
                    s.skipped,
                    s.truncated,
                    s.dropped_no_target,
                    if s.added_tokens.is_empty() {
                        String::new()
                    } else {
                        format!("; added tokens {:?}", s.added_tokens)
                    }
                ));
            }
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
