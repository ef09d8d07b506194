//! The forward pass of the `bitnet` architecture over a KV cache, for one token (decode) or many
//! at once (prompt processing, evaluation). It computes what training's eval-mode forward computes:
//! RMSNorm → int8-quantized activations × ternary Q/K/V → NEOX RoPE → causal attention → sub-norm →
//! ternary O; RMSNorm → ternary gate/up → SiLU or ReLU² → sub-norm → ternary down; tied LM head.

use crate::Error;
use crate::kernels;
use crate::kv::{Cache, CacheElem, KvType};
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
    cache: Cache,
    rope_cos: Vec<f32>, // [ctx, hd/2]
    rope_sin: Vec<f32>,
    pub logits: Vec<f32>,
}

impl<'m> Session<'m> {
    /// A session with room for `ctx` tokens (at most the model's context length), caching f32.
    pub fn new(model: &'m Model, ctx: usize) -> Result<Session<'m>, Error> {
        Session::with_kv(model, ctx, KvType::F32)
    }

    /// A session whose KV cache holds `kv` values.
    pub fn with_kv(model: &'m Model, ctx: usize, kv: KvType) -> Result<Session<'m>, Error> {
        let c = &model.cfg;
        if ctx == 0 || ctx > c.ctx {
            return Err(Error::Context(format!(
                "context {ctx} must be between 1 and the model's {}",
                c.ctx
            )));
        }
        let (keys, values) = crate::kv::lens(c.n_layers, c.n_kv_heads, c.head_dim(), ctx);
        let bytes = (keys + values) as u128 * kv.bytes() as u128;
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
            cache: Cache::new(kv, c.n_layers, c.n_kv_heads, c.head_dim(), ctx),
            rope_cos,
            rope_sin,
            logits: Vec::new(),
        })
    }

    /// What the cache holds keys and values as.
    pub fn kv_type(&self) -> KvType {
        self.cache.kind()
    }

    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Runs `tokens` at positions `pos..pos + len`, appending them to the cache; returns the
    /// logits (`[V]` for `Last`, `[len, V]` for `All`).
    pub fn forward(&mut self, tokens: &[u32], which: Logits) -> Result<&[f32], Error> {
        forward_batch(&mut [Step {
            sess: &mut *self,
            tokens,
            logits: which,
        }])?;
        Ok(&self.logits)
    }

    /// Checks that `tokens` can run next in this session.
    fn check(&self, tokens: &[u32]) -> Result<(), Error> {
        let (nt, v) = (tokens.len(), self.model.cfg.vocab);
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
        Ok(())
    }

    /// Rotates the keys and queries of `qkv`'s rows (this session's new tokens) and appends
    /// their keys and values to layer `li`'s cache.
    fn rope_and_cache(&mut self, li: usize, qkv: &mut [f32]) {
        let c = &self.model.cfg;
        let (d, kv, hd) = (c.d_model, c.kv_dim(), c.head_dim());
        for (t, row) in qkv.chunks_exact_mut(d + 2 * kv).enumerate() {
            let pos = self.pos + t;
            let (q, rest) = row.split_at_mut(d);
            let (k, vv) = rest.split_at_mut(kv);
            let cs = &self.rope_cos[pos * hd / 2..(pos + 1) * hd / 2];
            let sn = &self.rope_sin[pos * hd / 2..(pos + 1) * hd / 2];
            for head in q.chunks_exact_mut(hd).chain(k.chunks_exact_mut(hd)) {
                rope(head, cs, sn);
            }
            for h in 0..c.n_kv_heads {
                let head = li * c.n_kv_heads + h;
                let (k, v) = (&k[h * hd..(h + 1) * hd], &vv[h * hd..(h + 1) * hd]);
                match &mut self.cache {
                    Cache::F32(s) => s.put(head, self.ctx, hd, pos, k, v),
                    Cache::F16(s) => s.put(head, self.ctx, hd, pos, k, v),
                }
            }
        }
    }

    /// Causal attention of new query `t` (at position `pos + t`), head `head`, against the
    /// cache of layer `li`, into `out` (`hd` values).
    fn attend(
        &self,
        li: usize,
        q: &[f32],
        t: usize,
        head: usize,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let c = &self.model.cfg;
        let hd = c.head_dim();
        let group = c.n_heads / c.n_kv_heads;
        let kv_head = li * c.n_kv_heads + head / group;
        let n = self.pos + t + 1;
        let keys = kv_head * kernels::key_len(hd, self.ctx);
        let values = kv_head * self.ctx * hd;
        let (kr, vr) = (
            keys..keys + kernels::key_len(hd, n),
            values..values + n * hd,
        );
        let (isa, scale) = (self.model.rt.isa, 1.0 / (hd as f32).sqrt());
        let none = kernels::Trickle::default();
        match &self.cache {
            Cache::F32(s) => {
                kernels::attend(isa, q, &s.k[kr], n, &s.v[vr], scale, scores, out, none)
            }
            Cache::F16(s) => {
                kernels::attend(isa, q, &s.k[kr], n, &s.v[vr], scale, scores, out, none)
            }
        }
    }
}

/// One sequence's share of a batched forward: the tokens it appends to its session and which of
/// their logits it needs (left in `sess.logits`).
pub struct Step<'a, 'm> {
    pub sess: &'a mut Session<'m>,
    pub tokens: &'a [u32],
    pub logits: Logits,
}

/// Runs several sequences' new tokens as one batch: every projection and the LM head see all
/// their rows at once (one pass over the weights for the whole batch), while RoPE, the KV cache,
/// attention and the adapter stay per sequence. Activations are quantized per token, so a
/// sequence's logits are the same whatever shares its batch. The sessions must share a model.
pub fn forward_batch(steps: &mut [Step<'_, '_>]) -> Result<(), Error> {
    let Some(first) = steps.first() else {
        return Ok(());
    };
    let m: &Model = first.sess.model;
    for s in steps.iter() {
        if !std::ptr::eq(s.sess.model, m) {
            return Err(Error::Context("a batch must run one model".into()));
        }
        if s.sess.kv_type() != first.sess.kv_type() {
            return Err(Error::Context(
                "a batch must share one KV cache type".into(),
            ));
        }
        s.sess.check(s.tokens)?;
    }
    let c = &m.cfg;
    let (d, f, kv, v) = (c.d_model, c.d_ff, c.kv_dim(), c.vocab);
    let w = d + 2 * kv;
    // rows[i]: the batch rows of step i.
    let mut rows = Vec::with_capacity(steps.len());
    let mut nt = 0;
    for s in steps.iter() {
        rows.push(nt..nt + s.tokens.len());
        nt += s.tokens.len();
    }
    let rt = &m.rt;
    let isa = rt.isa;

    // x: [T, D], the embedding rows.
    let mut x = vec![0f32; nt * d];
    let embd = m.embedding();
    let tokens = steps.iter().flat_map(|s| s.tokens.iter());
    for (row, &tok) in x.chunks_exact_mut(d).zip(tokens) {
        embd.row_into(d, tok as usize, row);
    }

    let mut acts = QuantActs::default();
    let mut h = vec![0f32; nt * d];
    let mut qkv = vec![0f32; nt * w];
    let mut att = vec![0f32; nt * d];
    let mut tmp = vec![0f32; nt * d];
    let mut gu = vec![0f32; nt * 2 * f];
    let mut gn = vec![0f32; nt * f];
    // Adds each sequence's adapter branch for projection `p` to its own rows.
    let adapt = |steps: &[Step],
                 li: usize,
                 p: usize,
                 x: &[f32],
                 d_in: usize,
                 out: &mut [f32],
                 stride: usize,
                 offset: usize| {
        for (s, r) in steps.iter().zip(&rows) {
            if let Some(lo) = s.sess.lora {
                let (xs, os) = (
                    &x[r.start * d_in..r.end * d_in],
                    &mut out[r.start * stride..r.end * stride],
                );
                lo.apply(isa, li, p, xs, d_in, os, stride, offset);
            }
        }
    };
    let act = match c.act {
        Act::Silu => kernels::rows::Gate::Silu,
        Act::Relu2 => kernels::rows::Gate::Relu2,
    };
    for (li, l) in m.layers.iter().enumerate() {
        // Attention.
        norm_quantize(rt, &x, &l.attn_norm, c.eps, &mut h, &mut acts);
        l.wqkv.matmul(rt, &acts, &mut qkv);
        for (p, offset) in [(0, 0), (1, d), (2, d + kv)] {
            adapt(steps, li, p, &h, d, &mut qkv, w, offset);
        }
        if nt == steps.len() {
            match steps[0].sess.kv_type() {
                KvType::F32 => decode_attention::<f32>(rt, steps, li, &qkv, &mut att),
                KvType::F16 => decode_attention::<half::f16>(rt, steps, li, &qkv, &mut att),
            }
        } else {
            rope_and_cache(rt, steps, &rows, li, &mut qkv, w);
            attention(steps, &rows, li, &qkv, &mut att);
        }
        norm_quantize(rt, &att, &l.attn_sub_norm, c.eps, &mut h, &mut acts);
        l.wo.matmul(rt, &acts, &mut tmp);
        adapt(steps, li, 3, &h, d, &mut tmp, d, 0);
        add(&mut x, &tmp);

        // Feed-forward.
        norm_quantize(rt, &x, &l.ffn_norm, c.eps, &mut h, &mut acts);
        l.wgu.matmul(rt, &acts, &mut gu);
        adapt(steps, li, 4, &h, d, &mut gu, 2 * f, 0);
        adapt(steps, li, 5, &h, d, &mut gu, 2 * f, f);
        acts.prepare(&rt.pool, &mut gn, f, |t, row| {
            let (gate, up) = gu[t * 2 * f..(t + 1) * 2 * f].split_at(f);
            GATED.with(|g| {
                let mut g = g.borrow_mut();
                g.resize(f, 0.0);
                kernels::rows::gate_into(act, &mut g, gate, up);
                rmsnorm(&g, &l.ffn_sub_norm, c.eps, row);
            })
        });
        l.wdown.matmul(rt, &acts, &mut tmp);
        adapt(steps, li, 6, &gn, f, &mut tmp, d, 0);
        add(&mut x, &tmp);
    }

    // Final norm and LM head, for the positions asked for, all sequences at once.
    rmsnorm(&x, &m.output_norm, c.eps, &mut h);
    let mut xs: Vec<&[f32]> = Vec::new();
    for (s, r) in steps.iter().zip(&rows) {
        let first = match s.logits {
            Logits::Last => r.end - 1,
            Logits::All => r.start,
        };
        xs.extend(h[first * d..r.end * d].chunks_exact(d));
    }
    // Each sequence's logits buffer takes its rows straight from the LM head.
    for (s, r) in steps.iter_mut().zip(&rows) {
        let n = match s.logits {
            Logits::Last => 1,
            Logits::All => r.len(),
        };
        // The head writes every element, so a buffer already this long is not cleared first
        // (at 2B4T that was half a megabyte of memset a token).
        s.sess.logits.resize(n * v, 0.0);
        s.sess.pos += r.len();
    }
    let outs: Vec<&mut [f32]> = steps
        .iter_mut()
        .flat_map(|s| s.sess.logits.chunks_exact_mut(v))
        .collect();
    lm_head(rt, m.lm_head(), d, &xs, outs);
    Ok(())
}

/// Each sequence's [`Session::rope_and_cache`] on its own rows of `qkv` (`w` wide), the sequences
/// spread over the team: writing a token's keys touches one cache line per key value (the blocked
/// layout), so a batch's writes are worth two threads' worth of outstanding misses.
fn rope_and_cache(
    rt: &Runtime,
    steps: &mut [Step],
    rows: &[std::ops::Range<usize>],
    li: usize,
    qkv: &mut [f32],
    w: usize,
) {
    if let [one] = steps {
        // One sequence (a prompt): nothing to spread, nothing to allocate.
        return one.sess.rope_and_cache(li, qkv);
    }
    let mut parts: Vec<(&mut Step, &mut [f32])> = Vec::with_capacity(steps.len());
    let mut rest = qkv;
    for (s, r) in steps.iter_mut().zip(rows) {
        let (mine, tail) = std::mem::take(&mut rest).split_at_mut(r.len() * w);
        parts.push((s, mine));
        rest = tail;
    }
    rt.pool.for_each_chunk(&mut parts, 1, |_, part| {
        let (s, rows) = &mut part[0];
        s.sess.rope_and_cache(li, rows);
    });
}

/// Decoding, one new token in every sequence: one task per (sequence, KV head) rotates the
/// token's key, appends key and value to the cache and attends with its head group's queries.
/// Appending a key touches one cache line per dimension (the blocked layout), lines the attention
/// reads next: here each is fetched once, by the thread that reads it, instead of once by
/// [`rope_and_cache`] and again by [`attention`]. The arithmetic is theirs, so are the bits.
fn decode_attention<T: CacheElem>(
    rt: &Runtime,
    steps: &mut [Step],
    li: usize,
    qkv: &[f32],
    att: &mut [f32],
) {
    let c = &steps[0].sess.model.cfg;
    let (d, kv, hd, kvh) = (c.d_model, c.kv_dim(), c.head_dim(), c.n_kv_heads);
    let (group, w, isa) = (c.n_heads / kvh, d + 2 * kv, rt.isa);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut tasks = Vec::with_capacity(steps.len() * kvh);
    let mut positions = 0;
    for ((s, row), out) in steps
        .iter_mut()
        .zip(qkv.chunks_exact(w))
        .zip(att.chunks_exact_mut(d))
    {
        let sess = &mut *s.sess;
        let (pos, ctx) = (sess.pos, sess.ctx);
        positions += pos + 1;
        let per_head = kernels::key_len(hd, ctx);
        let store = T::store_mut(&mut sess.cache).expect("forward_batch checked the types");
        let keys =
            store.k[li * kvh * per_head..(li + 1) * kvh * per_head].chunks_exact_mut(per_head);
        let values =
            store.v[li * kvh * ctx * hd..(li + 1) * kvh * ctx * hd].chunks_exact_mut(ctx * hd);
        let (cos, sin) = (
            &sess.rope_cos[pos * hd / 2..(pos + 1) * hd / 2],
            &sess.rope_sin[pos * hd / 2..(pos + 1) * hd / 2],
        );
        let (q, rest) = row.split_at(d);
        let (k, v) = rest.split_at(kv);
        let heads = keys.zip(values).zip(out.chunks_exact_mut(group * hd));
        for (h, ((keys, values), out)) in heads.enumerate() {
            tasks.push(HeadGroup {
                keys,
                values,
                q: &q[h * group * hd..(h + 1) * group * hd],
                k: &k[h * hd..(h + 1) * hd],
                v: &v[h * hd..(h + 1) * hd],
                cos,
                sin,
                pos,
                out,
            });
        }
    }
    // Each task's cache as it will read it: a task brings in the one its thread most likely
    // takes next (threads claim tasks in turn) while it works, so that one does not start cold.
    // Measured on Zen 4, eight f16 caches at 96 positions, DRAM-resident: 1.9-2.1 ms of
    // attention a step became 1.2-1.5 ms (prefetching the very next task instead: 1.45-1.57).
    // Each thread's first task still starts cold (125m, one sequence: 6-9 µs against 3.4 for
    // the others). Fetching those two during the QKV matvec made attention ~20% faster but the
    // whole token 0.5-1% slower (per-token A/B in one process, 16 reps): decode is bound by the
    // bytes a token moves, and this only moved some earlier.
    let reads: Vec<kernels::Trickle> = tasks
        .iter()
        .map(|t| {
            let n = t.pos + 1;
            kernels::Trickle::of(&t.keys[..kernels::key_len(hd, n)], &t.values[..n * hd])
        })
        .collect();
    let work = |scratch: &mut Scratch, t: &mut HeadGroup<T>, mut next: kernels::Trickle| {
        let n = t.pos + 1;
        let Scratch { scores, head } = scratch;
        head.clear();
        head.extend_from_slice(t.k);
        rope(head, t.cos, t.sin);
        crate::kv::put_head(t.keys, t.values, hd, t.pos, head, t.v);
        let (keys, values) = (&t.keys[..kernels::key_len(hd, n)], &t.values[..n * hd]);
        for (q, out) in t.q.chunks_exact(hd).zip(t.out.chunks_exact_mut(hd)) {
            head.clear();
            head.extend_from_slice(q);
            rope(head, t.cos, t.sin);
            kernels::attend(isa, head, keys, n, values, scale, scores, out, next);
            next = kernels::Trickle::default();
        }
    };
    thread_local! {
        static SCRATCH: std::cell::RefCell<Scratch> = const {
            std::cell::RefCell::new(Scratch { scores: Vec::new(), head: Vec::new() })
        };
    }
    // Threads pay off once there is real work (as in `attention`).
    let ahead = |i: usize, step: usize| reads.get(i + step).copied().unwrap_or_default();
    if positions * c.n_heads < 512 {
        SCRATCH.with(|s| {
            for (i, t) in tasks.iter_mut().enumerate() {
                work(&mut s.borrow_mut(), t, ahead(i, 1));
            }
        });
    } else {
        let step = rt.pool.threads();
        rt.pool.for_each_chunk(&mut tasks, 1, |i, t| {
            SCRATCH.with(|s| work(&mut s.borrow_mut(), &mut t[0], ahead(i, step)))
        });
    }
}

/// One task of [`decode_attention`]: a sequence's new token, one KV head and its query group.
struct HeadGroup<'a, T> {
    /// This layer's blocked keys and position-major values of the KV head.
    keys: &'a mut [T],
    values: &'a mut [T],
    /// The group's queries and the head's key and value, before RoPE.
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    cos: &'a [f32],
    sin: &'a [f32],
    pos: usize,
    /// The group's attention outputs.
    out: &'a mut [f32],
}

/// A thread's buffers for [`decode_attention`].
struct Scratch {
    scores: Vec<f32>,
    head: Vec<f32>,
}

/// Causal attention of every sequence's new queries against its own cache of layer `li`.
fn attention(
    steps: &[Step],
    rows: &[std::ops::Range<usize>],
    li: usize,
    qkv: &[f32],
    out: &mut [f32],
) {
    let m = steps[0].sess.model;
    let c = &m.cfg;
    let (d, kv, hd, nh) = (c.d_model, c.kv_dim(), c.head_dim(), c.n_heads);
    // owner[row] = (step, token within it).
    let owner: Vec<(usize, usize)> = rows
        .iter()
        .enumerate()
        .flat_map(|(i, r)| (0..r.len()).map(move |t| (i, t)))
        .collect();
    // One task per (row, head): each writes its own hd-wide slice of `out`.
    let work = |scores: &mut Vec<f32>, (i, o): (usize, &mut [f32])| {
        let (row, head) = (i / nh, i % nh);
        let (s, t) = owner[row];
        let q = &qkv[row * (d + 2 * kv) + head * hd..][..hd];
        steps[s].sess.attend(li, q, t, head, scores, o);
    };
    // Threads pay off once there is real work: positions × heads over the batch.
    let positions: usize = owner.iter().map(|&(s, t)| steps[s].sess.pos + t + 1).sum();
    if positions * nh < 512 {
        let mut scores = Vec::new();
        out.chunks_exact_mut(hd)
            .enumerate()
            .for_each(|x| work(&mut scores, x));
    } else {
        // Each pool thread keeps one scores buffer for all its tasks.
        thread_local! {
            static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        m.rt.pool.for_each_chunk(out, hd, |i, o| {
            SCORES.with(|s| work(&mut s.borrow_mut(), (i, o)))
        });
    }
}

thread_local! {
    /// A thread's gated row (the feed-forward's gate ⊙ up before its sub-norm).
    static GATED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// RMSNorm of `x`'s rows into `h`, and their int8 quantization into `acts`, rows spread over the
/// team.
fn norm_quantize(
    rt: &Runtime,
    x: &[f32],
    gain: &[f32],
    eps: f32,
    h: &mut [f32],
    acts: &mut QuantActs,
) {
    let k = gain.len();
    acts.prepare(&rt.pool, h, k, |t, row| {
        rmsnorm(&x[t * k..(t + 1) * k], gain, eps, row)
    });
}

/// `out = x / √(mean(x²) + eps) · gain`, row by row, as training rounds it.
pub fn rmsnorm(x: &[f32], gain: &[f32], eps: f32, out: &mut [f32]) {
    kernels::rows::rms_norm_into(out, x, gain, eps);
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

/// `outs[t][r] = head[r] · xs[t]`, threaded over vocabulary rows. Always front to back: walking
/// the head in 4 or 16 segments, last to first on every other token so that the tail a token
/// left in the L3 would be read first by the next, was slower (125m decode, f16 cache, Zen 4:
/// 406–446 against 417–525 tok/s, 4 alternating rounds; 4 segments 412–470 against 475–494).
/// Nor can the ternary rows be kept in L3 by evicting the head's lines as it goes (`clflushopt`
/// a line after use): in a two-thread C model of the step (21 MB of rows, then 50 MB flushed),
/// the rows came back at DRAM speed all the same and the flushes added 0.5 ms a pass.
fn lm_head(rt: &Runtime, w: kernels::FloatRows, d: usize, xs: &[&[f32]], outs: Vec<&mut [f32]>) {
    let isa = rt.isa;
    // The rows on cache lines: every vector load of them then reads one line.
    let mut rows = kernels::Aligned::filled(xs.len() * d, 0f32);
    for (dst, x) in rows.chunks_exact_mut(d).zip(xs) {
        dst.copy_from_slice(x);
    }
    let xs: Vec<&[f32]> = rows.chunks_exact(d).collect();
    let xs = &xs[..];
    rt.pool.for_each_row_range(outs, 256, |rows, buf| {
        if d.is_multiple_of(16) {
            kernels::float_dots(isa, w, d, rows, xs, buf);
        } else {
            kernels::scalar::float_dots_any(w, d, rows, xs, buf);
        }
    });
}
