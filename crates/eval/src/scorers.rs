//! The two [`Scorer`]s: a Burn checkpoint (the model as trained) and a GGUF run by the engine (the
//! model as deployed).

use std::path::Path;

use tritium_engine::{KvType, Logits, Model, Runtime, Session};
use tritium_model::Transformer;
use tritium_model::burn::prelude::*;

use tritium_checkpoint::Checkpoint;
use tritium_train::tokenizer::Tokenizer;

use crate::{EvalError, Request, Scorer, TokenScores, token_score};

pub struct BurnScorer {
    model: Transformer,
    device: Device,
    tok: Tokenizer,
    max_len: usize,
    /// Sequences per forward pass.
    pub batch: usize,
}

impl BurnScorer {
    pub fn load(ckpt: &Path, device: &Device) -> Result<BurnScorer, EvalError> {
        let err = |e: &dyn std::fmt::Display| EvalError::Model(e.to_string());
        let ckpt = Checkpoint::open(ckpt).map_err(|e| err(&e))?;
        let model = ckpt.load_model(device).map_err(|e| err(&e))?;
        let tok =
            Tokenizer::load(&ckpt.tokenizer_path().map_err(|e| err(&e))?).map_err(|e| err(&e))?;
        Ok(BurnScorer {
            model,
            device: device.clone(),
            tok,
            max_len: ckpt.model_config().max_seq_len,
            batch: 16,
        })
    }
}

impl BurnScorer {
    /// Runs the fused CPU ops (the default) or the plain tensor-op model.
    pub fn with_fused(mut self, on: bool) -> Self {
        self.model.set_fused(on);
        self
    }
}

impl Scorer for BurnScorer {
    fn max_len(&self) -> usize {
        self.max_len
    }
    fn encode(&self, text: &str) -> Result<Vec<u32>, EvalError> {
        self.tok
            .encode(text)
            .map_err(|e| EvalError::Model(e.to_string()))
    }
    fn bos(&self) -> u32 {
        self.tok.doc_start()
    }
    fn prefix(&self) -> Option<u32> {
        self.tok.bos_id
    }
    fn score(&mut self, ctx: &[u32], conts: &[Vec<u32>]) -> Result<Vec<TokenScores>, EvalError> {
        let pairs: Vec<(&[u32], &[u32])> = conts.iter().map(|c| (ctx, c.as_slice())).collect();
        self.score_pairs(&pairs)
    }

    fn score_batch(&mut self, reqs: &[Request]) -> Result<Vec<Vec<TokenScores>>, EvalError> {
        // Every (context, continuation) of every request goes into shared forward passes.
        let pairs: Vec<(&[u32], &[u32])> = reqs
            .iter()
            .flat_map(|r| r.conts.iter().map(|c| (r.ctx.as_slice(), c.as_slice())))
            .collect();
        let mut flat = self.score_pairs(&pairs)?.into_iter();
        Ok(reqs
            .iter()
            .map(|r| flat.by_ref().take(r.conts.len()).collect())
            .collect())
    }
}

impl BurnScorer {
    fn score_pairs(&mut self, pairs: &[(&[u32], &[u32])]) -> Result<Vec<TokenScores>, EvalError> {
        let mut out = Vec::with_capacity(pairs.len());
        for group in pairs.chunks(self.batch.max(1)) {
            // Right-padded batch; the padding sits after every position read.
            let t = group
                .iter()
                .map(|(x, c)| x.len() + c.len() - 1)
                .max()
                .unwrap_or(1)
                .max(1);
            let mut ids = vec![0i64; group.len() * t];
            for (b, (x, c)) in group.iter().enumerate() {
                for (i, &tok) in x.iter().chain(c.iter()).take(t).enumerate() {
                    ids[b * t + i] = tok as i64;
                }
            }
            let x =
                Tensor::<1, Int>::from_ints(ids.as_slice(), &self.device).reshape([group.len(), t]);
            let h = self.model.hidden(x, 1.0);
            let d = h.dims()[2];
            // The LM head only at the positions scored: token i of a continuation is predicted
            // at position len(context) − 1 + i.
            let rows: Vec<i64> = group
                .iter()
                .enumerate()
                .flat_map(|(b, (x, c))| (0..c.len()).map(move |i| (b * t + x.len() - 1 + i) as i64))
                .collect();
            let idx = Tensor::<1, Int>::from_ints(rows.as_slice(), &self.device);
            let logits = self
                .model
                .head(h.reshape([group.len() * t, d]).select(0, idx));
            let v = logits.dims()[1];
            let logits: Vec<f32> = logits.into_data().convert::<f32>().iter::<f32>().collect();
            let mut at = 0;
            for (_, c) in group {
                out.push(
                    c.iter()
                        .map(|&tok| {
                            let s = token_score(&logits[at * v..(at + 1) * v], tok);
                            at += 1;
                            s
                        })
                        .collect(),
                );
            }
        }
        Ok(out)
    }
}

pub struct GgufScorer {
    model: &'static Model,
    sess: Session<'static>,
}

impl GgufScorer {
    /// The GGUF at `path`, its KV cache holding `kv` values.
    pub fn load(path: &Path, rt: &Runtime, kv: KvType) -> Result<GgufScorer, EvalError> {
        let model = Model::load(path, rt).map_err(|e| EvalError::Model(e.to_string()))?;
        // The scorer lives as long as the command; leaking the model lets the session borrow it.
        let model: &'static Model = Box::leak(Box::new(model));
        let sess = Session::with_kv(model, model.cfg.ctx, kv)
            .map_err(|e| EvalError::Model(e.to_string()))?;
        Ok(GgufScorer { model, sess })
    }
}

impl Scorer for GgufScorer {
    fn max_len(&self) -> usize {
        self.model.cfg.ctx
    }
    fn encode(&self, text: &str) -> Result<Vec<u32>, EvalError> {
        self.model
            .tokenizer
            .encode_text(text)
            .map_err(EvalError::Model)
    }
    fn bos(&self) -> u32 {
        self.model.tokenizer.doc_start().unwrap_or(0)
    }
    fn prefix(&self) -> Option<u32> {
        self.model.tokenizer.prompt_bos()
    }
    fn score(&mut self, ctx: &[u32], conts: &[Vec<u32>]) -> Result<Vec<TokenScores>, EvalError> {
        let err = |e: tritium_engine::Error| EvalError::Model(e.to_string());
        let v = self.model.cfg.vocab;
        // The context runs once; each continuation restarts from the cached context.
        self.sess.reset();
        let first = self.sess.forward(ctx, Logits::Last).map_err(err)?.to_vec();
        let mut out = Vec::with_capacity(conts.len());
        for c in conts {
            let mut scores = vec![token_score(&first, c[0])];
            if c.len() > 1 {
                self.sess.pos = ctx.len();
                let l = self
                    .sess
                    .forward(&c[..c.len() - 1], Logits::All)
                    .map_err(err)?;
                // Each row's log-softmax is tens of thousands of f64 exponentials, which left
                // the second thread idle for about a fifth of a perplexity run: spread them.
                let mut rest = vec![(0f64, false); c.len() - 1];
                const ROWS: usize = 8;
                self.model
                    .rt
                    .pool
                    .for_each_chunk(&mut rest, ROWS, |k, part| {
                        for (j, s) in part.iter_mut().enumerate() {
                            let i = k * ROWS + j;
                            *s = token_score(&l[i * v..(i + 1) * v], c[1 + i]);
                        }
                    });
                scores.extend(rest);
            }
            out.push(scores);
        }
        Ok(out)
    }
}
