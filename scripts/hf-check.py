"""Checks tritium's Hugging Face exports with PyPI transformers (and peft), by hand:

    TORCHDYNAMO_DISABLE=1 python scripts/hf-check.py MODEL_DIR [--adapter PEFT_DIR]
        [--ref tests/hf/reference.json --key logits_bf16] [--tritium-logits FILE.json]

Loads MODEL_DIR (`tritium export --format safetensors`) as a `BitNetForCausalLM` in float32,
optionally wraps it with the PEFT adapter, and prints the logits' largest difference, relative
to the largest logit, from each reference given: a key of the transformers fixture's
reference.json (the logits transformers computed for the model that was imported), and/or a JSON
file of logits tritium computed (`{"ids": [...], "logits": [...]}`).
"""

import argparse
import json

import torch
from transformers import BitNetForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--adapter")
    ap.add_argument("--ref")
    ap.add_argument("--key", default="logits_bf16")
    ap.add_argument("--tritium-logits")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    model = BitNetForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    kinds = sorted({type(m).__name__ for m in model.modules() if "Bit" in type(m).__name__})
    if a.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, a.adapter)
    refs = []
    if a.ref:
        r = json.load(open(a.ref))
        refs.append((f"{a.ref}:{a.key}", r["ids"], r[a.key]))
    if a.tritium_logits:
        r = json.load(open(a.tritium_logits))
        refs.append((a.tritium_logits, r["ids"], r["logits"]))
    print(f"{a.model}: loaded as {kinds}" + (f" with PEFT adapter {a.adapter}" if a.adapter else ""))
    for name, ids, want in refs:
        got = model(torch.tensor([ids])).logits[0].flatten()
        want = torch.tensor(want)
        rel = ((got - want).abs().max() / want.abs().max()).item()
        print(f"  vs {name}: max |difference| / max |logit| = {rel:.2e}")


if __name__ == "__main__":
    main()
