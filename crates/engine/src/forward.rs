//! The forward pass of the `bitnet` architecture over a KV cache, for one token (decode) or many
//! at once (prompt processing, evaluation). It computes what training's eval-mode forward computes:
//! RMSNorm → int8-quantized activations × ternary Q/K/V → NEOX RoPE → causal attention → sub-norm →
//! ternary O; RMSNorm → ternary gate/up → SiLU or ReLU² → sub-norm → ternary down; tied LM head.

use crate::Error;
use crate::kernels;
use crate::lora::Lora;
use crate::model::{Act, Model};
use crate::quant::QuantActs;
use crate::runtime::Runtime;

/// Which positions need logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    Last,
    All,
}

/// Generation state: the KV cache and scratch buffers for one sequence.
pub struct Session<'m> {
    pub model: &'m Model,
    /// An adapter applied beside the ternary projections.
    pub lora: Option<&'m Lora>,
    /// Positions the cache can hold.
    pub ctx: usize,
    /// Tokens already in the cache.
    pub pos: usize,
    k_cache: Vec<f32>, // [L, KVH, hd, ctx]: transposed, so scores are vector FMAs over positions
    v_cache: Vec<f32>, // [L, KVH, ctx, hd]
    rope_cos: Vec<f32>, // [ctx, hd/2]
    rope_sin: Vec<f32>,
    acts: QuantActs,
    pub logits: Vec<f32>,
}

impl<'m> Session<'m> {
    /// A session with room for `ctx` tokens (at most the model's context length).
    pub fn new(model: &'m Model, ctx: usize) -> Result<Session<'m>, Error> {
        let c = &model.cfg;
        if ctx == 0 || ctx > c.ctx {
            return Err(Error::Context(format!(
                "context {ctx} must be between 1 and the model's {}",
                c.ctx
            )));
        }
        let cache = c.n_layers * ctx * c.kv_dim();
        let bytes = cache as u128 * 8;
        if bytes > 64 << 30 {
            return Err(Error::Context(format!(
                "a KV cache for {ctx} tokens would take {} GiB; pass a smaller --ctx",
                bytes >> 30
            )));
        }
        // The same tables as training.
        let (rope_cos, rope_sin) =
            crate::kernels::attention::rope_tables(0, ctx, c.head_dim(), c.rope_theta);
        Ok(Session {
            model,
            lora: None,
            ctx,
            pos: 0,
            k_cache: vec![0.0; cache],
            v_cache: vec![0.0; cache],
            rope_cos,
            rope_sin,
            acts: QuantActs::default(),
            logits: Vec::new(),
        })
    }

    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Runs `tokens` at positions `pos..pos + len`, appending them to the cache; returns the
    /// logits (`[V]` for `Last`, `[len, V]` for `All`).
    pub fn forward(&mut self, tokens: &[u32], which: Logits) -> Result<&[f32], Error> {
        let m = self.model;
        let c = &m.cfg;
        let (d, f, kv, hd, v) = (c.d_model, c.d_ff, c.kv_dim(), c.head_dim(), c.vocab);
        let nt = tokens.len();
        if nt == 0 {
            return Err(Error::Context("no tokens to run".into()));
        }
        if self.pos + nt > self.ctx {
            return Err(Error::Context(format!(
                "{} tokens in the cache plus {nt} new ones exceed the context of {}",
                self.pos, self.ctx
            )));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= v) {
            return Err(Error::Context(format!(
                "token id {bad} is outside the vocabulary of {v}"
            )));
        }
        let rt = &m.rt;
        let isa = rt.isa;
        let p0 = self.pos;

        // x: [T, D], the embedding rows.
        let mut x = vec![0f32; nt * d];
        let embd = m.embedding();
        for (t, &tok) in tokens.iter().enumerate() {
            let row = &mut x[t * d..(t + 1) * d];
            match embd {
                kernels::FloatRows::F32(e) => {
                    row.copy_from_slice(&e[tok as usize * d..(tok as usize + 1) * d])
                }
                kernels::FloatRows::F16(e) => {
                    for (o, &b) in row
                        .iter_mut()
                        .zip(&e[tok as usize * d..(tok as usize + 1) * d])
                    {
                        *o = half::f16::from_bits(b).to_f32();
                    }
                }
            }
        }

        let mut h = vec![0f32; nt * d];
        let mut qkv = vec![0f32; nt * (d + 2 * kv)];
        let mut att = vec![0f32; nt * d];
        let mut tmp = vec![0f32; nt * d];
        let mut gu = vec![0f32; nt * 2 * f];
        let mut g = vec![0f32; nt * f];
        for (li, l) in m.layers.iter().enumerate() {
            // Attention.
            rmsnorm(&x, &l.attn_norm, c.eps, &mut h);
            self.acts.quantize(&h, d);
            l.wqkv.matmul(rt, &self.acts, &mut qkv);
            if let Some(lo) = self.lora {
                for (p, offset) in [(0, 0), (1, d), (2, d + kv)] {
                    lo.apply(isa, li, p, &h, d, &mut qkv, d + 2 * kv, offset);
                }
            }
            for t in 0..nt {
                let pos = p0 + t;
                let row = &mut qkv[t * (d + 2 * kv)..(t + 1) * (d + 2 * kv)];
                let (q, rest) = row.split_at_mut(d);
                let (k, vv) = rest.split_at_mut(kv);
                let cs = &self.rope_cos[pos * hd / 2..(pos + 1) * hd / 2];
                let sn = &self.rope_sin[pos * hd / 2..(pos + 1) * hd / 2];
                for head in q.chunks_exact_mut(hd).chain(k.chunks_exact_mut(hd)) {
                    rope(head, cs, sn);
                }
                for h in 0..c.n_kv_heads {
                    let base = (li * c.n_kv_heads + h) * self.ctx * hd;
                    for j in 0..hd {
                        self.k_cache[base + j * self.ctx + pos] = k[h * hd + j];
                    }
                    let at = base + pos * hd;
                    self.v_cache[at..at + hd].copy_from_slice(&vv[h * hd..(h + 1) * hd]);
                }
            }
            self.attention(li, &qkv, nt, &mut att);
            rmsnorm(&att, &l.attn_sub_norm, c.eps, &mut h);
            self.acts.quantize(&h, d);
            l.wo.matmul(rt, &self.acts, &mut tmp);
            if let Some(lo) = self.lora {
                lo.apply(isa, li, 3, &h, d, &mut tmp, d, 0);
            }
            add(&mut x, &tmp);

            // Feed-forward.
            rmsnorm(&x, &l.ffn_norm, c.eps, &mut h);
            self.acts.quantize(&h, d);
            l.wgu.matmul(rt, &self.acts, &mut gu);
            if let Some(lo) = self.lora {
                lo.apply(isa, li, 4, &h, d, &mut gu, 2 * f, 0);
                lo.apply(isa, li, 5, &h, d, &mut gu, 2 * f, f);
            }
            for t in 0..nt {
                let (gate, up) = gu[t * 2 * f..(t + 1) * 2 * f].split_at(f);
                for ((o, &a), &b) in g[t * f..(t + 1) * f].iter_mut().zip(gate).zip(up) {
                    *o = match c.act {
                        Act::Silu => a / (1.0 + (-a).exp()) * b,
                        Act::Relu2 => {
                            let r = a.max(0.0);
                            r * r * b
                        }
                    };
                }
            }
            let mut gn = vec![0f32; nt * f];
            rmsnorm(&g, &l.ffn_sub_norm, c.eps, &mut gn);
            self.acts.quantize(&gn, f);
            l.wdown.matmul(rt, &self.acts, &mut tmp);
            if let Some(lo) = self.lora {
                lo.apply(isa, li, 6, &gn, f, &mut tmp, d, 0);
            }
            add(&mut x, &tmp);
        }
        self.pos += nt;

        // Final norm and LM head, for the positions asked for.
        rmsnorm(&x, &m.output_norm, c.eps, &mut h);
        let first = match which {
            Logits::Last => nt - 1,
            Logits::All => 0,
        };
        let xs: Vec<&[f32]> = h[first * d..].chunks_exact(d).collect();
        self.logits.clear();
        self.logits.resize(xs.len() * v, 0.0);
        lm_head(rt, m.lm_head(), d, v, &xs, &mut self.logits);
        Ok(&self.logits)
    }

    /// Causal attention of the `nt` new queries in `qkv` against the cache of layer `li`.
    fn attention(&self, li: usize, qkv: &[f32], nt: usize, out: &mut [f32]) {
        let c = &self.model.cfg;
        let (d, kv, hd) = (c.d_model, c.kv_dim(), c.head_dim());
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let p0 = self.pos;
        let isa = self.model.rt.isa;
        let per_head = self.ctx * hd;
        // One task per (token, head): each writes its own hd-wide slice of `out`.
        let work = |scores: &mut Vec<f32>, (i, o): (usize, &mut [f32])| {
            let (t, head) = (i / c.n_heads, i % c.n_heads);
            let q = &qkv[t * (d + 2 * kv) + head * hd..][..hd];
            let at = (li * c.n_kv_heads + head / group) * per_head;
            let n = p0 + t + 1;
            let keys = &self.k_cache[at..at + per_head];
            kernels::attend(
                isa,
                q,
                keys,
                self.ctx,
                n,
                &self.v_cache[at..at + n * hd],
                scale,
                scores,
                o,
            );
        };
        // Threads pay off once there is real work: positions × heads × tokens.
        if nt * (p0 + nt) * c.n_heads < 512 {
            let mut scores = Vec::new();
            out.chunks_exact_mut(hd)
                .enumerate()
                .for_each(|x| work(&mut scores, x));
        } else {
            self.model
                .rt
                .pool
                .for_each_chunk(out, hd, |i, o| work(&mut Vec::new(), (i, o)));
        }
    }
}

/// `out = x / √(mean(x²) + eps) · gain`, row by row.
pub fn rmsnorm(x: &[f32], gain: &[f32], eps: f32, out: &mut [f32]) {
    let n = gain.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let ms = kernels::dot_body(xr, xr) / n as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(gain) {
            *o = v * r * g;
        }
    }
}

/// NEOX rotation of one head: pairs `(x[i], x[i + hd/2])`.
fn rope(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    for i in 0..half {
        let (a, b) = (x[i], x[i + half]);
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i] + a * sin[i];
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `out[t·V + r] = head[r] · xs[t]`, threaded over vocabulary rows.
fn lm_head(
    rt: &Runtime,
    w: kernels::FloatRows,
    d: usize,
    v: usize,
    xs: &[&[f32]],
    out: &mut [f32],
) {
    let (isa, nt) = (rt.isa, xs.len());
    let chunk = 256;
    let mut tmp = vec![0f32; v * nt]; // [row][token]
    rt.pool.for_each_chunk(&mut tmp, chunk * nt, |c, dst| {
        let r0 = c * chunk;
        let rows = r0..r0 + dst.len() / nt;
        if d.is_multiple_of(16) {
            kernels::float_dots(isa, w, d, rows, xs, dst);
        } else {
            kernels::scalar::float_dots_any(w, d, rows, xs, dst);
        }
    });
    for r in 0..v {
        for t in 0..nt {
            out[t * v + r] = tmp[r * nt + t];
        }
    }
}
