"""LoRA at 2B4T's shape: the usual PyTorch recipe, timed beside `tritium finetune`.

    pip install torch transformers peft      # checked with torch 2.x, transformers 5.x, peft 0.x
    TORCHDYNAMO_DISABLE=1 python scripts/lora-2b.py make runs/2b4t-hf     # random weights, bf16
    tritium import --from runs/2b4t-hf --out runs/2b4t
    TORCHDYNAMO_DISABLE=1 python scripts/lora-2b.py torch runs/2b4t-hf --seq 512 --steps 3
    tritium finetune --config configs/lora-2b.toml --base runs/2b4t --data ... --out runs/2b4t-lora

`make` writes a Hugging Face `BitNetForCausalLM` directory of Microsoft's 2B4T shape (hidden 2560,
30 layers, 20 query and 5 key/value heads, d_ff 6912, relu², vocabulary 128256, tied embedding)
with random bf16 master weights and online quantization, and the small byte-level tokenizer of
`tests/hf/` (the embedding keeps 128256 rows; only the first ids are ever used).

`torch` runs the recipe people use: the model in bf16 master weights (`AutoBitLinear` fake-quantizes
them in every forward), PEFT LoRA r 32, alpha 64 on q/k/v/o/gate/up/down, AdamW on the adapters,
rows of `--seq` random tokens, batch 1. It prints one JSON line: seconds and tokens/s for each step
after the first (warm-up), and the process's peak RSS.
"""

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def make(out: Path):
    sys.path.insert(0, str(ROOT / "tests/hf"))
    from make_bitnet_fixture import ONLINE, bitnet_config
    from transformers import BitNetForCausalLM

    # hidden 2560, d_ff 6912, 30 layers, 20/5 heads, 128256 tokens, rope θ 500000
    cfg = bitnet_config(128256, 2560, 6912, 30, 20, 5, 4096, 500000.0)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    model = BitNetForCausalLM(cfg)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(out)
    c = json.loads((out / "config.json").read_text())
    c["quantization_config"] = dict(ONLINE)
    (out / "config.json").write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(ROOT / "tests/hf/bitnet-bf16" / f, out / f)
    print(json.dumps({"out": str(out), "peak_rss_gib": round(peak_rss_gib(), 2)}))


def bench(hf: Path, seq: int, steps: int):
    from peft import LoraConfig, get_peft_model
    from transformers import BitNetForCausalLM

    torch.set_num_threads(torch.get_num_threads())
    model = BitNetForCausalLM.from_pretrained(hf, dtype=torch.bfloat16)
    lora = LoraConfig(
        r=32,
        lora_alpha=64,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    g = torch.Generator().manual_seed(0)
    times = []
    for step in range(steps):
        ids = torch.randint(0, 320, (1, seq), generator=g)
        t0 = time.perf_counter()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        print(f"step {step + 1}: {times[-1]:.1f} s, loss {out.loss.item():.4f}", file=sys.stderr, flush=True)
    timed = times[1:] or times
    secs = sorted(timed)[len(timed) // 2]
    print(
        json.dumps(
            {
                "recipe": "torch+peft bf16",
                "seq": seq,
                "threads": torch.get_num_threads(),
                "step_seconds": [round(t, 2) for t in times],
                "median_tokens_per_s": round(seq / secs, 2),
                "peak_rss_gib": round(peak_rss_gib(), 2),
                "torch": torch.__version__,
            }
        )
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("out", type=Path)
    b = sub.add_parser("torch")
    b.add_argument("hf", type=Path)
    b.add_argument("--seq", type=int, default=512)
    b.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    if a.cmd == "make":
        make(a.out)
    else:
        bench(a.hf, a.seq, a.steps)


if __name__ == "__main__":
    main()
