#!/usr/bin/env python3
"""Reference byte-level BPE tokenizer for tests/test_tokenizers.c: an independent, plain
Python implementation of what HF tokenizers does with a byte-level tokenizer.json (added
tokens matched first, NFC, the Split / ByteLevel / Digits pre-tokenizers run by Python's own
regex engine with the Unicode classes spelled out, GPT-2's byte-to-unicode map, merges by
rank, ignore_merges), applied to random Unicode-heavy strings.

usage: ref_bpe.py COUNT SEED TOKENIZER_JSON OUT_PREFIX [TOKENIZER_JSON OUT_PREFIX ...]
Writes OUT_PREFIX.gguf.inp / OUT_PREFIX.gguf.out in llama.cpp's vector format.
       ref_bpe.py nfc COUNT SEED OUT_PREFIX
Writes random strings and, as the "ids" of each, the code points of its NFC form."""
import json
import random
import re
import sys
import unicodedata as ud

SEP = "\n__ggml_vocab_test__\n"


def ranges(pred):
    out, lo = [], None
    for c in range(0x110000):
        if pred(c):
            if lo is None:
                lo = c
        elif lo is not None:
            out.append((lo, c - 1))
            lo = None
    return out


def cls(rs):
    return "".join("\\U%08x-\\U%08x" % (lo, hi) for lo, hi in rs)


L = cls(ranges(lambda c: ud.category(chr(c))[0] == "L"))
N = cls(ranges(lambda c: ud.category(chr(c))[0] == "N"))
S = cls(ranges(lambda c: 9 <= c <= 13 or c == 0x85 or ud.category(chr(c)) in ("Zs", "Zl", "Zp")))


def translate(pattern):
    """HF's Oniguruma pattern -> Python re: \\p{L}, \\p{N}, \\s, \\S spelled out."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("[^", i) or pattern.startswith("[", i):
            j = pattern.index("]", i)
            body = pattern[i + (2 if pattern[i + 1] == "^" else 1):j]
            body = body.replace("\\p{L}", L).replace("\\p{N}", N).replace("\\s", S)
            out.append(("[^" if pattern[i + 1] == "^" else "[") + body + "]")
            i = j + 1
        elif pattern.startswith("\\p{L}", i):
            out.append("[" + L + "]"); i += 5
        elif pattern.startswith("\\p{N}", i):
            out.append("[" + N + "]"); i += 5
        elif pattern.startswith("\\s", i):
            out.append("[" + S + "]"); i += 2
        elif pattern.startswith("\\S", i):
            out.append("[^" + S + "]"); i += 2
        else:
            out.append(pattern[i]); i += 1
    return re.compile("".join(out))


GPT2_RE = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"


def bytes_to_unicode():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, k = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + k)
            k += 1
    return dict(zip(bs, map(chr, cs)))


class Ref:
    def __init__(self, path):
        t = json.load(open(path, encoding="utf-8"))
        m = t["model"]
        self.vocab = m["vocab"]
        self.ignore_merges = m.get("ignore_merges", False)
        self.ranks = {}
        for r, mg in enumerate(m["merges"]):
            a, b = mg.split(" ") if isinstance(mg, str) else mg
            self.ranks.setdefault((a, b), r)
        self.added = sorted(((a["content"], a["id"]) for a in t["added_tokens"]), key=lambda x: -len(x[0]))
        self.by_first = {}
        for content, tid in self.added:  # longest first within each first character
            self.by_first.setdefault(content[0], []).append((content, tid))
        norm = t.get("normalizer")
        self.nfc = bool(norm) and norm["type"] == "NFC"
        self.steps = []
        pts = t["pre_tokenizer"]
        for p in pts["pretokenizers"] if pts["type"] == "Sequence" else [pts]:
            if p["type"] == "Split":
                self.steps.append(translate(p["pattern"]["Regex"]))
            elif p["type"] == "ByteLevel":
                assert not p.get("add_prefix_space")
                if p.get("use_regex", True):
                    self.steps.append(translate(GPT2_RE))
            elif p["type"] == "Digits":
                self.steps.append(re.compile("[" + N + "]" if p["individual_digits"] else "[" + N + "]+"))
            else:
                raise SystemExit("unsupported pre-tokenizer " + p["type"])
        self.b2u = bytes_to_unicode()
        self.cache = {}

    def split(self, rx, s):
        """Isolated split: matches and the text between them."""
        out, pos = [], 0
        for mt in rx.finditer(s):
            if mt.start() > pos:
                out.append(s[pos:mt.start()])
            if mt.end() > mt.start():
                out.append(mt.group())
            pos = mt.end()
        if pos < len(s):
            out.append(s[pos:])
        return out

    def bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        w = "".join(self.b2u[b] for b in word.encode("utf-8"))
        if self.ignore_merges and w in self.vocab:
            ids = [self.vocab[w]]
        else:
            parts = list(w)
            while len(parts) > 1:
                best = min(range(len(parts) - 1), key=lambda i: self.ranks.get((parts[i], parts[i + 1]), 1 << 60))
                if (parts[best], parts[best + 1]) not in self.ranks:
                    break
                pair = (parts[best], parts[best + 1])
                merged, i = [], 0
                while i < len(parts):  # all occurrences, left to right
                    if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                        merged.append(parts[i] + parts[i + 1])
                        i += 2
                    else:
                        merged.append(parts[i])
                        i += 1
                parts = merged
            ids = [self.vocab[p] for p in parts]
        self.cache[word] = ids
        return ids

    def encode(self, text):
        ids, pos, seg = [], 0, 0
        while pos <= len(text):
            hit = None
            for p in range(seg, len(text)):
                for content, tid in self.by_first.get(text[p], ()):
                    if text.startswith(content, p):
                        hit = (p, content, tid)
                        break
                if hit:
                    break
            end = hit[0] if hit else len(text)
            piece = text[seg:end]
            if piece:
                if self.nfc:
                    piece = ud.normalize("NFC", piece)
                words = [piece]
                for rx in self.steps:
                    words = [x for w in words for x in self.split(rx, w)]
                for w in words:
                    ids.extend(self.bpe(w))
            if not hit:
                break
            ids.append(hit[2])
            seg = pos = hit[0] + len(hit[1])
        return ids


# ---- random strings -------------------------------------------------------------------------
PIECES = {
    "space": [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\n ", " \t ", "\u00a0", "\u3000", "\u2009", "\u2028", "\x0b"],
    "contraction": ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve", "'LL", "'D", "'x", "''"],
    "punct": [".", ",", "!", "?", "...", "--", "(", ")", "[", "]", "{", "}", "\"", "#", "$", "%", "&", "*", "/",
              "\\", "@", "^", "_", "`", "|", "~", "<", ">", "=", "+", "-", "\u00bf", "\u00ab", "\u00bb", "\u2014",
              "\u2026", "\u3002", "\uff01", ":)", "=>", "!=", "::", "//"],
    "digits": ["0", "7", "42", "123", "2024", "31415", "1000000", "3.14", "1,000", "\u0663\u0664",
               "\uff11\uff12", "\u00b2", "\u2167", "\u00bd", "\u0967\u0968"],
    "word": ["hello", "Hello", "HELLO", "the", "The", "world", "tokenizer", "encoding", "don", "can", "I",
             "a", "xyzzy", "Qwen", "llama", "snake_case", "CamelCase", "naïve", "café", "Äpfel", "straße",
             "привет", "Привет", "мир", "γεια", "σου", "مرحبا", "שלום", "नमस्ते", "日本語", "中文", "漢字",
             "한국어", "ไทย", "ქართული", "Ελληνικά", "ﬁ", "ǅ"],
    "combining": ["e\u0301", "a\u0323\u0302", "a\u0302\u0323", "o\u0308", "\u1100\u1161\u11a8", "\u1100\u1161",
                  "n\u0303", "\u0301", "A\u030a", "\u212b", "\u2126", "u\u0308\u0301"],
    "emoji": ["\U0001f600", "\U0001f999", "\U0001f680", "\U0001f636\u200d\U0001f32b\ufe0f", "\u2705",
              "\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f44d\U0001f3fd", "\u2764\ufe0f"],
}


def random_string(rng, specials):
    kinds = list(PIECES) + (["special"] if specials else [])
    out = []
    for _ in range(rng.randint(1, 40)):
        k = rng.choice(kinds)
        out.append(rng.choice(specials) if k == "special" else rng.choice(PIECES[k]))
    return "".join(out)


def write_vectors(prefix, texts, rows):
    with open(prefix + ".gguf.inp", "w", encoding="utf-8", newline="") as f:
        for t in texts:
            f.write(t + SEP)
    with open(prefix + ".gguf.out", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(" ".join(map(str, r)) + "\n")


def main():
    if sys.argv[1] == "nfc":
        count, seed, prefix = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
        rng = random.Random(seed)
        texts = [random_string(rng, []) for _ in range(count)]
        write_vectors(prefix, texts, [[ord(c) for c in ud.normalize("NFC", t)] for t in texts])
        return
    count, seed = int(sys.argv[1]), int(sys.argv[2])
    for path, prefix in zip(sys.argv[3::2], sys.argv[4::2]):
        ref = Ref(path)
        rng = random.Random(seed)
        specials = [c for c, _ in ref.added][:8]
        texts = [random_string(rng, specials) for _ in range(count)]
        write_vectors(prefix, texts, [ref.encode(t) for t in texts])


if __name__ == "__main__":
    main()
