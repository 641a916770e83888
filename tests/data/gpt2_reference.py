#!/usr/bin/env python3
"""Cross-checks the expected ids in tests/data/tokenizer_test.cpp with GPT-2's
own algorithm (openai/gpt-2 src/encoder.py: the same byte-to-unicode map,
regex and merge loop, run with Python's `regex` module as GPT-2 does).

  NODE_PATH=/tmp/gpt2tok/node_modules node tests/data/gpt2_expected.js --json > /tmp/cases.json
  python3 tests/data/gpt2_reference.py /usr/local/share/kiln/gpt2 /tmp/cases.json
  python3 tests/data/gpt2_reference.py /usr/local/share/kiln/gpt2 --fortunes

The first compares every case's ids with gpt-3-encoder's; the second prints
the size and FNV-1a hashes of the fortunes corpus and of its GPT-2 ids that
the corpus test pins.
"""
import json
import os
import struct
import sys

import regex

PAT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class Gpt2:
    def __init__(self, d):
        self.encoder = json.load(open(os.path.join(d, "encoder.json")))
        lines = open(os.path.join(d, "vocab.bpe"), encoding="utf-8").read().split("\n")[1:-1]
        self.ranks = {tuple(l.split()): i for i, l in enumerate(lines)}
        self.byte_encoder = bytes_to_unicode()
        self.cache = {}

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token)
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            bigram = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if bigram not in self.ranks:
                break
            out, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == bigram[0] and word[i + 1] == bigram[1]:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = tuple(out)
        self.cache[token] = word
        return word

    def encode(self, text):
        ids = []
        for piece in PAT.findall(text):
            t = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[x] for x in self.bpe(t))
        return ids

    def encode_special(self, text):
        ids = []
        for i, part in enumerate(text.split("<|endoftext|>")):
            if i:
                ids.append(self.encoder["<|endoftext|>"])
            ids += self.encode(part)
        return ids


def fnv1a(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def main():
    g = Gpt2(sys.argv[1])
    if sys.argv[2] == "--fortunes":
        d = "/usr/share/games/fortunes"
        names = sorted(n for n in os.listdir(d) if not n.endswith((".dat", ".u8"))
                       and os.path.isfile(os.path.join(d, n)) and not os.path.islink(os.path.join(d, n)))
        data = b"".join(open(os.path.join(d, n), "rb").read() for n in names)
        ids = g.encode(data.decode("utf-8"))
        print(f"{len(data)} bytes, fnv1a {fnv1a(data):#x}; {len(ids)} ids, fnv1a of int32 ids "
              f"{fnv1a(b''.join(struct.pack('<i', i) for i in ids)):#x}")
        return 0
    cases = json.load(open(sys.argv[2]))
    bad = [c["name"] for c in cases if g.encode_special(c["text"]) != c["ids"]]
    print(f"{len(cases)} cases, {len(bad)} differ {bad}")
    print("' \\x85x' ->", g.encode(" \x85x"), "(GPT-2's \\s includes U+0085)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
