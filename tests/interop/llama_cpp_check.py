"""Does upstream llama.cpp load and run a tritium GGUF?  (Not in CI: the PyPI llama-cpp-python
package compiles llama.cpp, ~15 minutes on 2 cores.)

    pip install llama-cpp-python==0.3.36 numpy
    python tests/interop/llama_cpp_check.py runs/tiny-tq2_0.gguf runs/data/tinystories-4k/val.bin

Prints a greedy generation, then the mean negative log-likelihood (nats/token) over the same
validation windows `tritium train` evaluates (16 batches × 8 rows of 128 tokens, evenly spaced), so
the figure sits next to the run's final validation loss.
"""

import math
import sys

import numpy as np
from llama_cpp import Llama

path, val = sys.argv[1], sys.argv[2]
seq, rows = 128, 16 * 8
llm = Llama(model_path=path, n_ctx=256, n_threads=2, logits_all=True, verbose=False)
out = llm("Once upon a time", max_tokens=40, temperature=0.0, top_k=1)
print("generation:", repr("Once upon a time" + out["choices"][0]["text"]))

tokens = np.fromfile(val, dtype=np.uint16).astype(np.int64)
stride = (len(tokens) - seq - 1) // rows
total, count = 0.0, 0
for i in range(rows):
    start = min(i * stride, len(tokens) - seq - 1)
    w = tokens[start:start + seq + 1].tolist()
    llm.reset()
    llm.eval(w[:seq])
    logits = np.array(llm.scores[:seq], dtype=np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    total -= logp[np.arange(seq), w[1:]].sum()
    count += seq
nll = total / count
print(f"llama.cpp mean NLL {nll:.4f} nats/token (perplexity {math.exp(nll):.2f}) over {rows} windows of {seq}")
