"""Independent reference for tritium's Burn model: a 2-layer BitNet b1.58 decoder in plain PyTorch.

Writes JSON fixtures holding fixed weights, a fixed batch, the logits, the loss and every weight
gradient, which `crates/model/tests/reference.rs` compares against the Burn model (1e-4 relative).
The fixtures are committed, so CI needs no Python:

    python tests/reference/make_fixture.py          # rewrites tests/reference/*.json

The architecture is written from llama.cpp's `bitnet` graph (see README), not from our Rust code:
    h = rmsnorm(x)*attn_norm; q,k,v = BitLinear(h); RoPE (NEOX, rotate-half) on q,k; causal softmax
    attention with GQA; a = rmsnorm(a)*attn_sub_norm; x += Wo a; h = rmsnorm(x)*ffn_norm;
    g = act(Wgate h) * (Wup h); g = rmsnorm(g)*ffn_sub_norm; x += Wdown g;
    logits = rmsnorm(x)*output_norm @ tok_embd^T.

Quantization is discontinuous: an input within float noise of a rounding boundary could round one
way here and the other in Rust, and the fixture would test noise. So the script nudges weights away
from the ternary boundaries (|W/g| = 0.5) and searches seeds until every activation lands at least
MARGIN (in int8 steps) from a .5 boundary, and records the margin it got.
"""

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

MARGIN = 2e-3
HERE = Path(__file__).parent

CASES = {
    "ref_silu_gqa": dict(vocab_size=48, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=32,
                         ffn_act="silu", rope_theta=10000.0, norm_eps=1e-5, max_seq_len=8),
    "ref_relu2": dict(vocab_size=40, d_model=16, n_layers=2, n_heads=2, n_kv_heads=2, d_ff=24,
                      ffn_act="relu2", rope_theta=500.0, norm_eps=1e-6, max_seq_len=8),
}
BATCH, SEQ = 2, 5


class Recorder:
    """Collects the smallest distance of any quantizer input to a rounding boundary."""

    def __init__(self):
        self.min_act = math.inf

    def act(self, y):  # y = x * s, int8 units
        frac = (y.abs() - y.abs().floor() - 0.5).abs()
        # Values clamped at 127 do not matter; the row max lands on exactly 127.
        frac = torch.where(y.abs() >= 126.5, torch.ones_like(frac), frac)
        self.min_act = min(self.min_act, frac.min().item())


def weight_quant(w):
    g = w.abs().mean().clamp(min=1e-5)
    return (w / g).round().clamp(-1, 1) * g


def act_quant(x, rec):
    s = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    y = x * s
    rec.act(y.detach())
    return y.round().clamp(-128, 127) / s


def bitlinear(x, w, rec):
    wq = w + (weight_quant(w) - w).detach()
    xq = x + (act_quant(x, rec) - x).detach()
    return xq @ wq.t()


def rmsnorm(x, g, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g


def rope(x, theta):  # x: (B, H, T, hd), rotate-half pairs (i, i + hd/2)
    t, hd = x.shape[-2], x.shape[-1]
    inv = theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.outer(torch.arange(t, dtype=torch.float64), inv)
    cos, sin = ang.cos().float(), ang.sin().float()
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def forward(p, c, tokens, rec):
    B, T = tokens.shape
    d, nh, nkv = c["d_model"], c["n_heads"], c["n_kv_heads"]
    hd = d // nh
    x = p["tok_embd.weight"][tokens]
    for i in range(c["n_layers"]):
        P = lambda n: p[f"blocks.{i}.{n}"]
        h = rmsnorm(x, P("attn_norm.gamma"), c["norm_eps"])
        q = bitlinear(h, P("attn.wq.weight"), rec).view(B, T, nh, hd).transpose(1, 2)
        k = bitlinear(h, P("attn.wk.weight"), rec).view(B, T, nkv, hd).transpose(1, 2)
        v = bitlinear(h, P("attn.wv.weight"), rec).view(B, T, nkv, hd).transpose(1, 2)
        q, k = rope(q, c["rope_theta"]), rope(k, c["rope_theta"])
        k = k.repeat_interleave(nh // nkv, dim=1)  # query head j reads kv head j // n_rep
        v = v.repeat_interleave(nh // nkv, dim=1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        a = (att @ v).transpose(1, 2).reshape(B, T, d)
        a = rmsnorm(a, P("attn.sub_norm.gamma"), c["norm_eps"])
        x = x + bitlinear(a, P("attn.wo.weight"), rec)
        h = rmsnorm(x, P("ffn_norm.gamma"), c["norm_eps"])
        gate = bitlinear(h, P("ffn.gate.weight"), rec)
        gate = F.silu(gate) if c["ffn_act"] == "silu" else F.relu(gate) ** 2
        g = gate * bitlinear(h, P("ffn.up.weight"), rec)
        g = rmsnorm(g, P("ffn.sub_norm.gamma"), c["norm_eps"])
        x = x + bitlinear(g, P("ffn.down.weight"), rec)
    x = rmsnorm(x, p["output_norm.gamma"], c["norm_eps"])
    return x @ p["tok_embd.weight"].t()


def away_from_ternary_boundary(w):
    """Moves any |W/g| within 0.02 of 0.5 to 0.45 or 0.55 (re-checking, since g moves too)."""
    for _ in range(20):
        g = w.abs().mean()
        r = w / g
        near = ((r.abs() - 0.5).abs() < 0.02)
        if not near.any():
            return w
        target = torch.where(r.abs() < 0.5, 0.45, 0.55) * r.sign() * g
        w = torch.where(near, target, w)
    raise RuntimeError("weights did not settle")


def make_params(c, gen):
    d, f, v = c["d_model"], c["d_ff"], c["vocab_size"]
    kv = c["n_kv_heads"] * (d // c["n_heads"])
    lin = lambda o, i: away_from_ternary_boundary(torch.randn(o, i, generator=gen) * 0.3)
    gain = lambda n: 1.0 + 0.2 * torch.randn(n, generator=gen)
    p = {"tok_embd.weight": torch.randn(v, d, generator=gen)}
    for i in range(c["n_layers"]):
        b = f"blocks.{i}."
        p[b + "attn_norm.gamma"] = gain(d)
        p[b + "attn.wq.weight"] = lin(d, d)
        p[b + "attn.wk.weight"] = lin(kv, d)
        p[b + "attn.wv.weight"] = lin(kv, d)
        p[b + "attn.sub_norm.gamma"] = gain(d)
        p[b + "attn.wo.weight"] = lin(d, d)
        p[b + "ffn_norm.gamma"] = gain(d)
        p[b + "ffn.gate.weight"] = lin(f, d)
        p[b + "ffn.up.weight"] = lin(f, d)
        p[b + "ffn.sub_norm.gamma"] = gain(f)
        p[b + "ffn.down.weight"] = lin(d, f)
    p["output_norm.gamma"] = gain(d)
    return p


def tensor_json(t):
    return {"shape": list(t.shape), "data": [float(x) for x in t.detach().reshape(-1).tolist()]}


def build(name, c):
    for seed in range(10_000):
        gen = torch.Generator().manual_seed(seed)
        p = {k: t.requires_grad_(True) for k, t in make_params(c, gen).items()}
        tokens = torch.randint(0, c["vocab_size"], (BATCH, SEQ + 1), generator=gen)
        inp, tgt = tokens[:, :-1], tokens[:, 1:]
        rec = Recorder()
        logits = forward(p, c, inp, rec)
        if rec.min_act < MARGIN:
            continue
        loss = F.cross_entropy(logits.reshape(-1, c["vocab_size"]), tgt.reshape(-1))
        loss.backward()
        out = {
            "about": "written by tests/reference/make_fixture.py (PyTorch %s); do not edit" % torch.__version__,
            "seed": seed,
            "min_activation_margin": rec.min_act,
            "config": c,
            "tokens": inp.tolist(),
            "targets": tgt.tolist(),
            "params": {k: tensor_json(t) for k, t in p.items()},
            "logits": tensor_json(logits),
            "loss": loss.item(),
            "grads": {k: tensor_json(t.grad) for k, t in p.items()},
        }
        (HERE / f"{name}.json").write_text(json.dumps(out))
        print(f"{name}: seed {seed}, margin {rec.min_act:.4f}, loss {loss.item():.6f}")
        return
    raise RuntimeError(f"{name}: no seed kept every activation {MARGIN} away from a boundary")


if __name__ == "__main__":
    torch.manual_seed(0)
    for name, c in CASES.items():
        build(name, c)
