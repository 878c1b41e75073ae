#!/usr/bin/env python3
"""SentencePiece-style BPE tokenizers (Llama 2, Mistral, TinyLlama: characters, byte fallback, the "▁"
word marker) and the ids and texts Hugging Face tokenizers gives for them, as test data for llmserve's
tokenizer. Two layouts of tokenizer.json, both as HF writes them for such models:
  legacy:    normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, decoder Replace + ByteFallback +
             Fuse + Strip (Llama 2's);
  metaspace: pre-tokenizer Metaspace(prepend_scheme first, no split), the same decoder (newer conversions);
  split:     pre-tokenizer Metaspace(prepend_scheme always, split at the marker), decoder Metaspace + ByteFallback
             + Fuse.
The vocabularies are trained here by HF tokenizers' BPE trainer on this repository's README (no hub),
once: a layout whose tokenizer.json exists is read back.
    python3 tests/tokenizer/make_spm_cases.py OUT_DIR
Needs the `tokenizers` package; the expectations are HF tokenizers' own outputs (version recorded)."""
import json
import os
import sys

import tokenizers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

out = sys.argv[1]
here = os.path.dirname(os.path.abspath(__file__))
corpus = open(os.path.join(here, "..", "..", "README.md"), encoding="utf-8").read().splitlines()

SPECIAL = ["<unk>", "<s>", "</s>"]
BYTES = [f"<0x{b:02X}>" for b in range(256)]


def build(layout):
    # (HF's trainer breaks ties in no fixed order: a layout already made is read back, not trained anew, so
    # that a run reproduces the committed files)
    made = os.path.join(out, layout, "tokenizer.json")
    if os.path.exists(made):
        return Tokenizer.from_file(made)
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    seq_decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    if layout == "legacy":  # Llama 2's tokenizer.json
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = seq_decoder
    elif layout == "metaspace":  # transformers' LlamaConverter with legacy=False
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        tok.decoder = seq_decoder
    else:  # "split": words split at the marker, the Metaspace decoder
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
        tok.decoder = decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True),
                                         decoders.ByteFallback(), decoders.Fuse()])
    # Characters the README does not have stay out of the vocabulary: they fall back to byte tokens.
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=SPECIAL, limit_alphabet=120, show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    # As in Llama 2's vocabulary: the byte tokens <0x00>..<0xFF> are ordinary tokens 3..258, not added ones.
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    learned = sorted((i, t) for t, i in vocab.items() if t not in SPECIAL)
    new_vocab = {t: i for i, t in enumerate(SPECIAL)}
    for b in BYTES:
        new_vocab[b] = len(new_vocab)
    for _, t in learned:
        if t not in new_vocab:
            new_vocab[t] = len(new_vocab)
    spec["model"]["vocab"] = new_vocab
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return tok


texts = [
    "Hello world", " Hello  world ", "The capital of France is Paris.", "tensor_parallel_size: 2\n  dtype: bfloat16",
    "naïve café — 東京 🙂 Ωmega", "\t\ttabs\nand\r\nnewlines", "", " ", "▁already marked", "x<s>y</s> z",
    "<s>[INST] What is 2+2? [/INST]", "unknown: ǅ ẞ ſ ﬁ", "emoji 🚀🚀 rocket", "a" * 40, "mpirun -np 8 ./llmserve config.yaml",
    "12345 67.89 1e-5", "über straße", "<unk> stays special", "end with space ",
    "\n".join(corpus)[:12000],  # (a long text: the README as it was when the cases were made)
]
for layout in ("legacy", "metaspace", "split"):
    tok = build(layout)
    d = os.path.join(out, layout)
    os.makedirs(d, exist_ok=True)
    tok.save(os.path.join(d, "tokenizer.json"))
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True}, f)
    cases = []
    for t in texts:
        plain = tok.encode(t, add_special_tokens=False).ids
        with_special = tok.encode(t, add_special_tokens=True).ids
        cases.append({"text": t, "ids": plain, "ids_special": with_special,
                      "decoded": tok.decode(with_special, skip_special_tokens=False),
                      "decoded_skip": tok.decode(with_special, skip_special_tokens=True),
                      "tokens": [tok.decode([i], skip_special_tokens=False) for i in plain]})
    # Byte tokens that are not UTF-8 when put together decode to one U+FFFD each.
    lone = [tok.token_to_id("<0xE4>"), tok.token_to_id("<0xB8>"), tok.token_to_id("▁a") or tok.token_to_id("a"),
            tok.token_to_id("<0xFF>")]
    cases.append({"decode_only": lone, "decoded": tok.decode(lone, skip_special_tokens=False)})
    with open(os.path.join(d, "cases.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizers_version": tokenizers.__version__, "cases": cases}, f, ensure_ascii=False, indent=0)
    print(layout, "vocab", tok.get_vocab_size(), "cases", len(cases))

# A GGUF file's SentencePiece vocabulary (tokenizer.ggml.model "llama": pieces, scores, token types; no
# merges): the legacy layout's pieces with scores that order the merges, and what HF tokenizers gives with
# the merges transformers' SentencePieceExtractor derives from those scores (as its LlamaConverter makes
# Llama 2's tokenizer.json): every split of a piece into two pieces of the vocabulary, ordered by the
# piece's score (highest first; ties by piece id, then by the halves' ids).
legacy = json.loads(open(os.path.join(out, "legacy", "tokenizer.json"), encoding="utf-8").read())
vocab = legacy["model"]["vocab"]
pieces = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
types = [2 if t == "<unk>" else 3 if t in SPECIAL else 6 if t in BYTES else 1 for t in pieces]
scores = [0.0 if ty != 1 else -float(i) for i, ty in enumerate(types)]
by_score = sorted(range(len(pieces)), key=lambda i: -scores[i])  # (stable: ties in id order)
merges = []
for i in by_score:
    p = pieces[i]
    local = [(p[:k], p[k:], scores[i]) for k in range(1, len(p)) if p[:k] in vocab and p[k:] in vocab]
    merges.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
merges = sorted(merges, key=lambda m: -m[2])
spec = dict(legacy)
spec["model"] = dict(legacy["model"], merges=[[a, b] for a, b, _ in merges])
spec["post_processor"] = None
gg = Tokenizer.from_str(json.dumps(spec))
gcases = []
for t in texts:
    ids = gg.encode(t, add_special_tokens=False).ids
    gcases.append({"text": t, "ids": ids, "decoded": gg.decode([1] + ids, skip_special_tokens=True)})
with open(os.path.join(out, "gguf.json"), "w", encoding="utf-8") as f:
    json.dump({"tokenizers_version": tokenizers.__version__, "tokens": pieces, "scores": scores, "types": types,
               "merges": len(merges), "cases": gcases}, f, ensure_ascii=False, indent=0)
print("gguf pieces", len(pieces), "merges", len(merges), "(trained:", len(legacy["model"]["merges"]), ")")
