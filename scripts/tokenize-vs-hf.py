#!/usr/bin/env python3
"""The HF `tokenizers` Python package (PyPI) as the reference for `tritium data prepare`.

Splits plain-text files into documents as tritium does (a line holding only <|endoftext|> ends a
document; without such lines, blank lines do; a document's lines are joined with newlines and its
trailing whitespace dropped; blank documents are skipped), encodes them all with one
`encode_batch_fast` call (the package's parallel batch path), and reports its MB/s. Given
tritium's output directory, it rebuilds the train and validation streams tritium must have
written (every `val_every`-th document to validation, each document's ids then the end-of-text id)
and compares them with the shard files token by token.

    python3 scripts/tokenize-vs-hf.py TOKENIZER.json OUT_DIR FILE.txt [FILE.txt ...]
"""
import json
import sys
import time
from array import array
from pathlib import Path

from tokenizers import Tokenizer

MARKER = "<|endoftext|>"


def documents(path):
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line starts no line of its own
    lines = [l[:-1] if l.endswith("\r") else l for l in lines]
    has_marker = any(l.strip() == MARKER for l in lines)
    docs, cur = [], []
    for line in lines:
        boundary = line.strip() == MARKER if has_marker else line.strip() == ""
        if boundary:
            docs.append(cur)
            cur = []
        else:
            cur.append(line)
    docs.append(cur)
    out = []
    for d in docs:
        text = ("\n".join(d) + "\n").rstrip() if d else ""
        if text.strip():
            out.append(text)
    return out


def shards(out_dir, split, token_bytes):
    code = {2: "H", 4: "I"}[token_bytes]
    tokens = array(code)
    for f in sorted(Path(out_dir).glob(f"{split}-*.bin")):
        tokens.frombytes(f.read_bytes())
    if sys.byteorder != "little":
        tokens.byteswap()
    return tokens


def main():
    tok_path, out_dir, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    tok = Tokenizer.from_file(tok_path)
    docs = [d for f in files for d in documents(f)]
    size = sum(len(d.encode("utf-8")) for d in docs)
    t0 = time.perf_counter()
    encs = tok.encode_batch_fast(docs, add_special_tokens=False)
    dt = time.perf_counter() - t0
    ntok = sum(len(e.ids) for e in encs)
    print(f"HF tokenizers {tokenizers_version()}: {len(docs)} documents, {size / 1e6:.1f} MB of "
          f"document text, {ntok} tokens in {dt:.2f} s = {size / 1e6 / dt:.2f} MB/s")

    meta = json.loads((Path(out_dir) / "meta.json").read_text())
    eot, every = meta["eot_id"], meta["val_every"]
    want = {"train": array("I"), "val": array("I")}
    for i, e in enumerate(encs):
        split = "val" if i % every == every - 1 else "train"
        want[split].extend(e.ids)
        want[split].append(eot)
    ok = True
    for split in ("train", "val"):
        got = shards(out_dir, split, meta["token_bytes"])
        w = want[split]
        if len(got) == len(w) and all(a == b for a, b in zip(got, w)):
            print(f"{split}: all {len(w)} tokens equal HF's")
            continue
        ok = False
        first = next((i for i, (a, b) in enumerate(zip(got, w)) if a != b), min(len(got), len(w)))
        print(f"{split}: DIFFERENT: {len(got)} tokens against HF's {len(w)}, first difference at {first}")
    sys.exit(0 if ok else 1)


def tokenizers_version():
    import tokenizers

    return tokenizers.__version__


if __name__ == "__main__":
    main()
