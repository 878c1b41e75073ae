#!/usr/bin/env python3
"""HF tokenizers encode throughput on the same corpus, single thread: hf_tokenizer_bench.py TOKENIZER_JSON CORPUS [IDS_OUT]"""
import os, sys, time
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"
from tokenizers import Tokenizer

tok = Tokenizer.from_file(sys.argv[1])
text = open(sys.argv[2], encoding="utf-8").read()
mb = len(text.encode()) / 1e6
for name in ("cold", "warm"):
    t0 = time.perf_counter()
    ids = tok.encode(text, add_special_tokens=False).ids
    s = time.perf_counter() - t0
    print(f"hf-tokenizers {name} pass: {mb:.2f} MB in {s:.3f} s = {mb / s:.2f} MB/s ({len(ids)} tokens)")
if len(sys.argv) > 3:
    open(sys.argv[3], "w").write(" ".join(map(str, ids)) + "\n")
