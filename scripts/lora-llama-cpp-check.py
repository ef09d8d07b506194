#!/usr/bin/env python3
"""A fine-tuned LoRA adapter in llama.cpp (llama-cpp-python) against tritium, on the same files.

    scripts/lora-llama-cpp-check.py BASE.gguf ADAPTER.gguf DATA.jsonl [--prompt P] [--tritium BIN]
        [--lora-scale S]

Prints (1) 32 greedy tokens after PROMPT from llama.cpp and from `tritium run --lora --temp 0`,
and whether the texts agree, and (2) llama.cpp's mean NLL on the held-out responses of DATA
(question/answer JSONL rendered with ChatML as `tritium finetune` renders it: a document-start
token, then the user turn, then the assistant turn, the loss on the assistant's tokens and its end
marker, rows cut at 257 tokens), to hold against the `final_val_loss` of the run's summary.json.
Needs `pip install llama-cpp-python`; nothing in the test suite depends on it.
"""
import argparse
import json
import subprocess

import numpy as np
from llama_cpp import Llama

ap = argparse.ArgumentParser()
ap.add_argument("base")
ap.add_argument("adapter")
ap.add_argument("data")
ap.add_argument("--prompt", default="<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
ap.add_argument("--tritium", default="target/release/tritium")
ap.add_argument("--seq", type=int, default=256)
ap.add_argument("--lora-scale", type=float, default=1.0, help="llama.cpp's --lora-scaled, tritium's --lora-scale")
a = ap.parse_args()

llm = Llama(model_path=a.base, lora_path=a.adapter, lora_scale=a.lora_scale, n_ctx=1024,
            logits_all=True, n_threads=2, n_batch=512, verbose=False)


def tok(text):
    return llm.tokenize(text.encode(), add_bos=False, special=True)


# (1) Greedy tokens, argmax of llama.cpp's own logits.
ids = tok(a.prompt)
llm.reset()
llm.eval(ids)
out = []
for _ in range(32):
    nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    out.append(nxt)
    llm.eval([nxt])
ours = llm.detokenize(out).decode("utf-8", "replace")
t = subprocess.run([a.tritium, "run", a.base, "--lora", a.adapter, "-p", a.prompt, "-n", "32",
                    "--temp", "0", "-t", "2", "--lora-scale", str(a.lora_scale)], capture_output=True, text=True, check=True)
theirs = t.stdout[len(a.prompt):].rstrip("\n")
print("llama.cpp:", repr(ours))
print("tritium:  ", repr(theirs))
same = ours == theirs or (len(theirs) < len(ours) and ours.startswith(theirs))
print("greedy 32 tokens agree:", same)

# (2) Mean NLL of the held-out responses.
eot = tok("<|endoftext|>")
nll, n = 0.0, 0
for line in open(a.data):
    r = json.loads(line)
    before = f"<|im_start|>user\n{r['question']}<|im_end|>\n<|im_start|>assistant\n"
    reply = f"{r['answer']}<|im_end|>\n"
    seq = eot + tok(before) + tok(reply)
    mask = [False] * (len(eot) + len(tok(before))) + [True] * len(tok(reply))
    seq, mask = seq[: a.seq + 1], mask[: a.seq + 1]
    llm.reset()
    llm.eval(seq[:-1])
    logits = np.asarray(llm.scores[: len(seq) - 1], dtype=np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) - logits.max(1, keepdims=True)
    for i in range(len(seq) - 1):
        if mask[i + 1]:
            nll -= logp[i, seq[i + 1]]
            n += 1
print(f"llama.cpp held-out response NLL: {nll / n:.5f} over {n} tokens")
