#!/usr/bin/env python3
"""Writes a deterministic mixed corpus (English prose, Chinese, code) for the tokenizer benchmark.

English: the license texts in /usr/share/common-licenses. Code: Python's standard library sources.
Chinese: runs of Chinese words taken from the Qwen2 tokenizer's vocabulary (seeded), with Chinese
punctuation. Usage: make_corpus.py TOKENIZER_JSON OUT [MEGABYTES]
"""
import glob, json, os, random, sys, sysconfig

tok_json, out = sys.argv[1], sys.argv[2]
mb = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
target = int(mb * 1e6 / 3)
rng = random.Random(1234)

def take(paths, limit):
    parts, n = [], 0
    for p in paths:
        try:
            t = open(p, encoding="utf-8").read()
        except (UnicodeDecodeError, OSError):
            continue
        parts.append(t)
        n += len(t.encode())
        if n >= limit:
            break
    return "".join(parts)[: limit]

english = take(sorted(glob.glob("/usr/share/common-licenses/*")) * 20, target)
code = take(sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))), target)
byte_dec = {}
n = 0
for b in list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100)):
    byte_dec[chr(b)] = b
for b in range(256):
    if b not in byte_dec.values():
        byte_dec[chr(256 + n)] = b
        n += 1
vocab = json.load(open(tok_json, encoding="utf-8"))["model"]["vocab"]
words = []
for tok in vocab:
    try:
        w = bytes(byte_dec[c] for c in tok).decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        continue
    if w and all("\u4e00" <= c <= "\u9fff" for c in w):
        words.append(w)
words.sort()
chinese, size = [], 0
while size < target:
    sent = "".join(rng.choice(words) for _ in range(rng.randint(4, 16))) + rng.choice("，。；！？") 
    if rng.random() < 0.15:
        sent += "\n"
    chinese.append(sent)
    size += len(sent.encode())
chunks = []
for i in range(0, max(len(english), len(code)), 4096):
    chunks += [english[i:i + 4096], "".join(chinese)[i // 3: i // 3 + 1400], code[i:i + 4096]]
text = "".join(chunks)
open(out, "w", encoding="utf-8").write(text)
print(f"{out}: {len(text.encode()) / 1e6:.2f} MB ({len(english.encode())/1e6:.2f} English, "
      f"{len(''.join(chinese).encode())/1e6:.2f} Chinese, {len(code.encode())/1e6:.2f} code)")
