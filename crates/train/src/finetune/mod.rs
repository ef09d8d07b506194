//! `tritium finetune`: LoRA (or full) fine-tuning of a pretrained ternary checkpoint on
//! instruction data, with the loss on assistant tokens only.
//!
//! Flow: [`config`] → base checkpoint (+ chat markers added to the tokenizer and embedding if
//! missing) → examples rendered by the chat template and tokenized with a loss mask, optionally
//! packed several to a row ([`rows`]) → adapters on the chosen BitLinears, base frozen → the
//! shared optimizer step ([`crate::step`]) on the adapters, with held-out evaluation, metrics, a
//! loss plot and atomic checkpoints as in pretraining → the adapter (safetensors + JSON), a final
//! checkpoint, and with `merge` the adapter folded into a re-quantized checkpoint.

pub mod config;
mod rows;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use tritium_checkpoint::fsutil::write_atomic;
use tritium_checkpoint::{
    self as checkpoint, AdapterSet, Checkpoint, Contents, Origin, Provenance, RunLock, State,
    adapter::AdapterInfo,
};
use tritium_gguf::names::{CHAT_MARKERS, DEFAULT_CHAT_TEMPLATE};
use tritium_model::burn::module::Param;
use tritium_model::burn::prelude::*;
use tritium_model::{Backend, Transformer};

pub use config::{FinetuneConfig, Method, RunSpec, lora_param_count};
use rows::{Order, Sample, batch, pack, response_grads, response_loss, samples};

use crate::chat::Template;
use crate::data::splitmix64;
use crate::error::{TrainError, io};
use crate::event::{Event, StartData};
use crate::metrics::{self, Row};
use crate::optim::{self, AdamW, AdamWConfig};
use crate::schedule::{Decay, Schedule};
use crate::step::{StepParams, on_workers, train_step};
use crate::tokenizer::Tokenizer;

#[derive(Clone)]
pub struct FinetuneOptions {
    pub spec: RunSpec,
    pub out: PathBuf,
    /// Continue `out` from its latest checkpoint.
    pub resume: bool,
    /// Set by a Ctrl-C handler: checkpoint and return at the next step boundary.
    pub stop: Arc<AtomicBool>,
    pub device: Backend,
    /// Run the fused CPU ops (the default) or the plain tensor-op model.
    pub fused: bool,
    /// Refuse a run whose memory estimate exceeds what the machine has available.
    pub check_memory: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FinetuneSummary {
    pub examples: usize,
    pub held_out: usize,
    /// Training rows after packing (= `examples` without packing).
    pub rows: usize,
    /// Records that did not parse (with `skip_invalid`).
    pub skipped: usize,
    /// Examples cut at `seq_len`.
    pub truncated: usize,
    /// Examples with no response token left after the cut.
    pub dropped_no_target: usize,
    /// Parameters the optimizer updates (the adapters', for LoRA), as PEFT counts them.
    pub trainable_params: usize,
    /// Every parameter, adapters included.
    pub total_params: usize,
    /// Held-out response loss of the base.
    pub base_val_loss: f64,
    /// Held-out response loss after the run.
    pub final_val_loss: f64,
    /// Held-out loss after folding the adapter into the ternary weights (`merge`).
    pub merged_val_loss: Option<f64>,
    /// Chat markers the tokenizer (and embedding) gained.
    pub added_tokens: Vec<String>,
    /// The step the run stopped at; below `steps` when interrupted.
    pub step: usize,
    /// Stopped by Ctrl-C (a checkpoint was written).
    pub interrupted: bool,
    /// SHA-256 of the base's `model.bpk` that the adapter belongs to.
    pub base_hash: String,
    /// The checkpoint an adapter applies to (the given base, or `out/base` when tokens were added).
    pub adapter_base: PathBuf,
    pub seconds: f64,
}

/// Adds the chat markers the default template needs to the tokenizer and grows the embedding by
/// as many rows, each initialised to the mean embedding (a neutral start, as PEFT/HF's resize
/// does).
fn add_markers(
    tok: &mut Tokenizer,
    model: Transformer,
    state: &mut State,
    device: &Device,
) -> (Transformer, Vec<String>) {
    let missing: Vec<String> = CHAT_MARKERS
        .iter()
        .filter(|m| tok.inner.token_to_id(m).is_none())
        .map(|m| m.to_string())
        .collect();
    if missing.is_empty() {
        return (model, missing);
    }
    let added: Vec<tokenizers::AddedToken> = missing
        .iter()
        .map(|m| tokenizers::AddedToken::from(m.clone(), true))
        .collect();
    tok.inner.add_special_tokens(&added);
    let want = tok.vocab_size().max(state.model.vocab_size);
    let mut model = model;
    let w = model.tok_embd.weight.val();
    let [v, _] = w.dims();
    if want > v {
        let mean = w.clone().mean_dim(0); // [1, D]
        let extra = mean.repeat_dim(0, want - v);
        model.tok_embd.weight =
            Param::from_tensor(Tensor::cat(vec![w, extra], 0).detach().to_device(device));
        state.model.vocab_size = want;
    }
    (model, missing)
}

/// Fine-tuning's schedule: warm-up, then cosine to a tenth of `lr`.
fn schedule(c: &FinetuneConfig) -> Schedule {
    Schedule {
        decay: Decay::Cosine,
        lr: c.lr,
        min_lr: 0.1 * c.lr,
        lr2: None,
        warmup_steps: c.warmup_steps,
        max_steps: c.steps,
        weight_decay: c.weight_decay,
    }
}

pub fn finetune(
    o: FinetuneOptions,
    on_event: &mut dyn FnMut(Event),
) -> Result<(Transformer, State, FinetuneSummary), TrainError> {
    let start = std::time::Instant::now();
    let spec = &o.spec;
    let c = &spec.config;
    c.validate().map_err(TrainError::Config)?;
    if spec.merge && c.method != Method::Lora {
        return Err(TrainError::Config(
            "merge folds a LoRA adapter into the weights; method = \"full\" has none".into(),
        ));
    }
    let out = &o.out;
    let device = o.device.device()?.autodiff();
    let products = tritium_model::bitlinear::products(c.precision, o.fused, &device, o.device)?;
    tritium_model::device::seed(&device, c.seed);

    // Base model, tokenizer and template.
    let base = Checkpoint::open(&spec.base)?;
    if base.lora_layout()?.is_some() {
        return Err(TrainError::Config(format!(
            "{}: this checkpoint carries LoRA adapters; fine-tune from a plain (or merged) checkpoint",
            base.dir.display()
        )));
    }
    if c.seq_len > base.model_config().max_seq_len {
        return Err(TrainError::Config(format!(
            "[finetune].seq_len = {} exceeds the base model's max_seq_len of {} ({})",
            c.seq_len,
            base.model_config().max_seq_len,
            base.dir.display()
        )));
    }
    if o.check_memory && o.device.uses_host_memory() {
        // Full fine-tuning: the step as pretraining takes it. LoRA: the base packed (a quarter
        // byte a projection weight, the embedding and norms in f32, one projection dequantized
        // at a time for the backward pass), the adapters with gradients and moments, and the
        // activations. Checkpoints stream the model a tensor at a time and add nothing.
        let cfg = base.model_config();
        let mem = cfg.train_step_bytes_checkpointed(
            c.batch_size,
            c.seq_len,
            c.gradient_checkpointing.blocks(),
        );
        let need = match c.method {
            Method::Full => mem.total(),
            Method::Lora => {
                let count = cfg.param_count();
                let largest = cfg.d_ff.max(cfg.d_model) * cfg.d_model;
                [
                    mem.activations,
                    count.ternary / 4,
                    count.full_precision.saturating_mul(4),
                    lora_param_count(cfg, c.rank, &c.target).saturating_mul(16),
                    largest.saturating_mul(4),
                ]
                .into_iter()
                .fold(0usize, usize::saturating_add)
            }
        };
        tritium_model::memory::check(
            need,
            "fine-tuning this base at [finetune].batch_size × seq_len",
        )?;
    }
    // LoRA keeps the frozen base packed from the start (2 bits a weight, never the whole f32
    // model in memory); full fine-tuning trains the latent weights.
    let (model, packed_from) = match c.method {
        Method::Lora => {
            let (m, from) = base.load_packed(&device)?;
            (m, Some(from))
        }
        Method::Full => (base.load_model(&device)?, None),
    };
    let model = model.with_fused(o.fused).with_precision(c.precision);
    let mut state = base.state.clone();
    let mut tok = Tokenizer::load(&base.tokenizer_path()?)?;
    let tpl_text = c.template.as_deref().unwrap_or(DEFAULT_CHAT_TEMPLATE);
    let tpl = Template::new(tpl_text)
        .map_err(TrainError::Config)?
        .with_tokens(&tok);
    let (mut model, added) = if c.template.is_none() {
        add_markers(&mut tok, model, &mut state, &device)
    } else {
        (model, Vec::new())
    };

    // Data.
    if spec.data.is_empty() {
        return Err(TrainError::Config("no training data given".into()));
    }
    let mut train_set = crate::instruct::Loaded::default();
    for p in &spec.data {
        let l = crate::instruct::load(p, c.skip_invalid)?;
        train_set.examples.extend(l.examples);
        train_set.skipped.extend(l.skipped);
    }
    let mut skipped = train_set.skipped.len();
    let (mut train_ex, mut val_ex) = (Vec::new(), Vec::new());
    match &spec.eval_data {
        Some(p) => {
            let v = crate::instruct::load(p, c.skip_invalid)?;
            skipped += v.skipped.len();
            train_ex = train_set.examples;
            val_ex = v.examples;
        }
        None => {
            for (i, e) in train_set.examples.into_iter().enumerate() {
                if i % c.holdout_every == c.holdout_every - 1 {
                    val_ex.push(e)
                } else {
                    train_ex.push(e)
                }
            }
        }
    }
    let (mut truncated, mut dropped) = (0, 0);
    let train = samples(
        &tok,
        &tpl,
        &train_ex,
        c.seq_len,
        &mut truncated,
        &mut dropped,
    )?;
    let val = samples(&tok, &tpl, &val_ex, c.seq_len, &mut truncated, &mut dropped)?;
    if train.is_empty() || val.is_empty() {
        let held_out = match &spec.eval_data {
            Some(p) => format!("from {}", p.display()),
            None => format!(
                "every {}th of the data, [finetune].holdout_every; or give --eval-data",
                c.holdout_every
            ),
        };
        return Err(TrainError::Examples(format!(
            "{} training and {} held-out examples ({held_out}) after tokenization: need at least one of each",
            train.len(),
            val.len()
        )));
    }
    let n_examples = train.len();
    let train = if c.packing {
        pack(train, c.seq_len)
    } else {
        train
    };

    // Model: adapters on a frozen base, or everything trainable.
    let total_params = model.param_total();
    if c.method == Method::Lora {
        model.attach_lora(c.rank, c.alpha, c.dropout, &c.target, &device);
    }

    // The run directory: a fresh one, or the checkpoint to continue from.
    // Held until the run returns: a second writer of the same directory is refused.
    let _lock = RunLock::acquire(out)?;
    let metrics_path = out.join("metrics.jsonl");
    let (mut optim, first_step, resumed_tokens) = if o.resume {
        let ckpt = checkpoint::latest(out)?;
        let weights = ckpt.join(checkpoint::MODEL);
        model = if model.is_packed() {
            checkpoint::pack::load_into_packed(model, &weights)?
        } else {
            checkpoint::load_weights(model, &weights)?
        };
        let optim = optim::load_from_checkpoint(AdamWConfig::default(), &ckpt, &model, &device)?;
        let resumed = State::read(&ckpt)?;
        let step = resumed.step;
        metrics::truncate_after(&metrics_path, step).map_err(io(&metrics_path))?;
        (optim, step + 1, resumed.tokens)
    } else {
        checkpoint::ensure_fresh(out)?;
        // The run writes its tokenizer, checkpoints and merged model under `out`: none of the
        // base checkpoint or the data may lie there.
        let inputs: Vec<PathBuf> = std::iter::once(base.dir.clone())
            .chain(spec.data.iter().cloned())
            .chain(spec.eval_data.iter().cloned())
            .collect();
        checkpoint::fsutil::check_output_dir(out, &inputs).map_err(TrainError::Config)?;
        std::fs::create_dir_all(out).map_err(io(out))?;
        let _ = std::fs::remove_file(&metrics_path);
        let spec_path = out.join("finetune.json");
        write_atomic(
            &spec_path,
            serde_json::to_string_pretty(spec)
                .expect("spec serializes")
                .as_bytes(),
        )
        .map_err(io(&spec_path))?;
        (AdamW::new(AdamWConfig::default()), 1, 0)
    };
    if c.method == Method::Lora {
        model = model.freeze_base_packed();
    }
    // The tokenizer (with any added markers) travels with every checkpoint of this run.
    let tok_json = tok
        .inner
        .to_string(false)
        .map_err(|e| TrainError::Examples(e.to_string()))?;
    let tok_out = out.join(checkpoint::TOKENIZER);
    write_atomic(&tok_out, tok_json.as_bytes()).map_err(io(&tok_out))?;
    state.tokenizer_hash = checkpoint::sha256_hex(tok_json.as_bytes());
    state.best_val_loss = None;
    state.provenance = Provenance {
        run: serde_json::to_value(spec).unwrap_or_default(),
        ..Provenance::new(Origin::Finetune, Some(tok_out.clone()))
    };

    let trainable = match c.method {
        Method::Lora => lora_param_count(&state.model, c.rank, &c.target),
        Method::Full => total_params,
    };
    let pad = tok.eot_id;
    let eval_device = device.clone().inner();
    let evaluate =
        |m: &Transformer| response_loss(&m.valid(), &val, pad, &eval_device, c.batch_size);
    let logged_base = metrics::read(&metrics_path)
        .iter()
        .find(|r| r.step == 0)
        .and_then(|r| r.val_loss);
    let base_val = match logged_base {
        Some(v) => v,
        None => evaluate(&model),
    };
    let mut summary = FinetuneSummary {
        examples: n_examples,
        held_out: val.len(),
        rows: train.len(),
        skipped,
        truncated,
        dropped_no_target: dropped,
        trainable_params: trainable,
        total_params: total_params
            + if c.method == Method::Lora {
                trainable
            } else {
                0
            },
        base_val_loss: base_val,
        final_val_loss: f64::NAN,
        merged_val_loss: None,
        added_tokens: added,
        step: first_step - 1,
        interrupted: false,
        base_hash: base.model_hash()?,
        adapter_base: base.dir.clone(),
        seconds: 0.0,
    };
    on_event(Event::Start {
        first_step: first_step - 1,
        max_steps: c.steps,
        data: StartData::Examples(Box::new(summary.clone())),
        products: (c.precision != tritium_model::Precision::F32).then_some(products),
    });
    if logged_base.is_none() {
        metrics::append(&metrics_path, &Row::validation(0, 0, base_val))
            .map_err(io(&metrics_path))?;
        on_event(Event::Eval {
            step: 0,
            val_loss: base_val,
            sample: None,
        });
    }

    // Every checkpoint of the run carries its chat template, which export writes into the GGUF
    // as `tokenizer.chat_template`; LoRA checkpoints also carry their adapter layout.
    let template = (checkpoint::CHAT_TEMPLATE, tpl_text.as_bytes().to_vec());
    let mut extra = vec![template.clone()];
    if c.method == Method::Lora {
        extra.push((checkpoint::LORA, c.layout().to_json()));
    }
    let save_to = |run: &Path,
                   model: &Transformer,
                   optim: &AdamW,
                   state: &State,
                   extra: &[(&str, Vec<u8>)],
                   keep: usize| {
        let contents = Contents {
            model,
            state,
            optim: Some(&|p| optim.save(p)),
            tokenizer: Some(&tok_out),
            extra,
            packed_from: packed_from.as_ref(),
        };
        checkpoint::save(run, &contents, keep)
    };
    let save = |model: &Transformer, optim: &AdamW, state: &State| {
        save_to(out, model, optim, state, &extra, c.keep_checkpoints)
    };
    let sched = schedule(c);
    let mut order = Order::new(train.len(), c.seed);
    let mut tokens = resumed_tokens;
    let mut last_val = None;
    // The step whose checkpoint is on disk already (see the pretraining loop).
    let mut saved_at = o.resume.then_some(first_step - 1);
    for step in first_step..=c.steps {
        if o.stop.load(Ordering::SeqCst) {
            state.step = step - 1;
            state.tokens = tokens;
            if saved_at != Some(step - 1) {
                let path = save(&model, &optim, &state)?;
                on_event(Event::Checkpoint {
                    step: step - 1,
                    path,
                });
            }
            on_event(Event::Interrupted { step: step - 1 });
            summary.interrupted = true;
            summary.step = step - 1;
            summary.seconds = start.elapsed().as_secs_f64();
            return Ok((model, state, summary));
        }
        let step_start = std::time::Instant::now();
        // Dropout masks depend only on the step, so a resumed run continues bit for bit.
        device.seed(c.seed ^ splitmix64(step as u64));
        let picked: Vec<&Sample> = (0..c.batch_size)
            .map(|j| &train[order.at((step - 1) * c.batch_size + j)])
            .collect();
        // Steps count from 1 here (step 0 is the base model's evaluation).
        let lr = sched.lr_at(step - 1);
        let b = batch(&picked, pad, &device);
        let batch_tokens = b.tokens;
        tokens += batch_tokens as u64;
        let mut b = Some(b);
        let loss = |m: &Transformer, _: usize, scale: f32| {
            let b = b.take().expect("one micro-batch");
            response_grads(m, b, c.gradient_checkpointing.blocks(), scale)
        };
        let params = StepParams {
            lr,
            weight_decay: sched.weight_decay_at(step - 1),
            grad_clip: c.grad_clip,
        };
        let (next, out_) = on_workers(o.device.uses_host_memory(), || {
            train_step(model, &mut optim, 1, loss, params)
        })
        .map_err(|what| TrainError::NonFinite { step, what })?;
        model = next;
        let row = Row {
            step,
            tokens,
            loss: Some(out_.loss as f64),
            lr: Some(lr),
            grad_norm: Some(out_.grad_norm as f64),
            tokens_per_s: Some(batch_tokens as f64 / step_start.elapsed().as_secs_f64()),
            val_loss: None,
        };
        if step % c.log_every.max(1) == 0 || step == c.steps {
            metrics::append(&metrics_path, &row).map_err(io(&metrics_path))?;
        }
        on_event(Event::Step(row));
        if (c.eval_every > 0 && step % c.eval_every == 0) || step == c.steps {
            let v = evaluate(&model);
            last_val = Some(v);
            metrics::append(&metrics_path, &Row::validation(step, tokens, v))
                .map_err(io(&metrics_path))?;
            let svg = out.join("loss.svg");
            write_atomic(
                &svg,
                metrics::plot_svg(&metrics::read(&metrics_path)).as_bytes(),
            )
            .map_err(io(&svg))?;
            on_event(Event::Eval {
                step,
                val_loss: v,
                sample: None,
            });
        }
        if (c.checkpoint_every > 0 && step % c.checkpoint_every == 0) || step == c.steps {
            state.step = step;
            state.tokens = tokens;
            let path = save(&model, &optim, &state)?;
            on_event(Event::Checkpoint { step, path });
            saved_at = Some(step);
        }
    }
    summary.step = c.steps;
    summary.final_val_loss = match last_val {
        Some(v) => v,
        None => evaluate(&model), // resumed after the final step: nothing trained, measure again
    };

    // Outputs.
    if c.method == Method::Lora {
        let fresh = AdamW::new(AdamWConfig::default());
        if !summary.added_tokens.is_empty() {
            // The base gained token rows: save it, so it exports to the GGUF the adapter fits.
            let mut base_state = state.clone();
            base_state.step = 0;
            let p = save_to(
                &out.join("base"),
                &model.without_lora(),
                &fresh,
                &base_state,
                std::slice::from_ref(&template),
                1,
            )?;
            summary.base_hash = Checkpoint::open(&p)?.model_hash()?;
            summary.adapter_base = p;
        }
        let set = AdapterSet::from_model(&model, Some(summary.base_hash.clone()));
        let info = AdapterInfo {
            rank: c.rank,
            alpha: c.alpha,
            target: c.target.clone(),
            dropout: c.dropout,
            base: summary.adapter_base.clone(),
            base_hash: Some(summary.base_hash.clone()),
            tensors: set.adapters.len() * 2,
        };
        set.save(out, &info)?;
        if spec.merge {
            // A packed base has no latent weights to fold into: merge the final checkpoint's
            // model, which holds them (copied from the base file).
            let merged = if model.is_packed() {
                Checkpoint::open(&checkpoint::latest(out)?)?
                    .load_model(&device)?
                    .with_fused(o.fused)
            } else {
                model.clone()
            }
            .merge_lora();
            summary.merged_val_loss = Some(evaluate(&merged));
            let mut st = state.clone();
            st.step = c.steps;
            save_to(
                &out.join("merged"),
                &merged,
                &fresh,
                &st,
                std::slice::from_ref(&template),
                1,
            )?;
        }
    }
    summary.seconds = start.elapsed().as_secs_f64();
    let p = out.join("summary.json");
    write_atomic(
        &p,
        serde_json::to_string_pretty(&summary)
            .unwrap_or_default()
            .as_bytes(),
    )
    .map_err(io(&p))?;
    Ok((model, state, summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tritium_model::{FfnAct, ModelConfig, Quant};

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// A tiny base checkpoint with the bundled tokenizer.
    fn base(dir: &Path) -> PathBuf {
        let cfg = ModelConfig {
            vocab_size: 4096,
            d_model: 32,
            n_layers: 1,
            n_heads: 2,
            n_kv_heads: None,
            d_ff: 64,
            ffn_act: FfnAct::Silu,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            max_seq_len: 128,
            quant: Quant::Ternary,
            quant_warmup_steps: 0,
        };
        let dev = Backend::Flex.device().unwrap();
        dev.seed(1);
        let model = Transformer::new(&cfg, &dev);
        let tok = root().join("datasets/tinystories/tokenizer.json");
        checkpoint::save_initial(dir, &model, &cfg, &tok, Origin::Train).unwrap()
    }

    /// A fresh CPU run of the `[finetune]` table `config` on the bundled seed tasks, from a tiny
    /// base written in `dir/base`, into `dir/out`.
    fn options(dir: &Path, config: &str) -> FinetuneOptions {
        let cfg = dir.join("ft.toml");
        std::fs::write(&cfg, config).unwrap();
        FinetuneOptions {
            spec: RunSpec {
                config: FinetuneConfig::load(&cfg).unwrap(),
                base: base(&dir.join("base")),
                data: vec![root().join("datasets/instruct/seed_tasks.alpaca.jsonl")],
                eval_data: None,
                merge: false,
            },
            out: dir.join("out"),
            resume: false,
            stop: Default::default(),
            device: Backend::Flex,
            fused: true,
            check_memory: true,
        }
    }

    /// A run directory another process is writing (it holds the lock) is refused before any file
    /// in it is touched, and taken once the lock is let go.
    ///
    /// Fine-tuning runs the shared optimizer step, so a step whose loss or gradient is not finite
    /// stops the run with its step number before the update, keeping the last checkpoint (before
    /// the shared step, fine-tuning checked only the loss and not the gradient norm). An absurd
    /// learning rate blows the adapter up in the first update; the second step's loss is NaN.
    #[test]
    fn a_locked_directory_is_refused_and_a_non_finite_step_stops_through_the_shared_check() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(
            dir.path(),
            "[finetune]\nrank = 2\nsteps = 5\nbatch_size = 2\nseq_len = 64\nlr = 1e30\nwarmup_steps = 0\ngrad_clip = 0.0\ncheckpoint_every = 1\neval_every = 0\n",
        );
        let out = opts.out.clone();
        let held = RunLock::acquire(&out).unwrap();
        let e = finetune(opts.clone(), &mut |_| {}).expect_err("refused");
        assert!(e.to_string().contains("another tritium process"), "{e}");
        let files: Vec<_> = std::fs::read_dir(&out).unwrap().flatten().collect();
        assert_eq!(files.len(), 1, "only the lock file: {files:?}");
        drop(held);
        let mut steps = Vec::new();
        let e = finetune(opts, &mut |e| {
            if let Event::Step(r) = e {
                steps.push(r.step)
            }
        })
        .expect_err("the run stops");
        assert!(matches!(e, TrainError::NonFinite { step: 2, .. }), "{e}");
        assert!(
            e.to_string().contains("became") && e.to_string().contains("at step 2"),
            "{e}"
        );
        assert_eq!(steps, [1]);
        // Step 1's checkpoint is the last good one.
        assert!(checkpoint::latest(&out).unwrap().ends_with("step-1"));
    }
}
