#!/usr/bin/env python3
"""Independent Python model of transformers' slow CLIPTokenizer without ftfy (BasicTokenizer path),
used to produce the extra unicode cases of test_tokenizer.c. Needs the `regex` module.

usage: tokenizer_ref.py VOCAB.txt.gz < prompts (one JSON string per line) -> JSON lines of ids
"""
import gzip, json, sys, unicodedata
import regex

def byte_alphabet():
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    order, cps = printable[:], printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            order.append(b); cps.append(256 + extra); extra += 1
    return {b: chr(c) for b, c in zip(order, cps)}, [chr(c) for c in cps]

def load(path):
    lines = gzip.open(path).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    merges = [tuple(l.split()) for l in lines]
    enc, chars = byte_alphabet()
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return enc, {t: i for i, t in enumerate(vocab)}, {m: i for i, m in enumerate(merges)}

def is_control(c):
    return c not in "\t\n\r" and unicodedata.category(c).startswith("C")

def is_ws(c):
    return c in " \t\n\r" or unicodedata.category(c) == "Zs"

def is_cjk(cp):
    return any(a <= cp <= b for a, b in [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
                                         (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)])

def basic(text):
    out = []
    for c in text:
        if ord(c) == 0 or ord(c) == 0xFFFD or is_control(c):
            continue
        if is_ws(c):
            out.append(" ")
        elif is_cjk(ord(c)):
            out.append(" " + c + " ")
        else:
            out.append(c)
    words = unicodedata.normalize("NFC", "".join(out)).split()
    return " ".join(" ".join(w.lower() for w in words).split())

PAT = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                    regex.IGNORECASE)

def bpe(token, ranks):
    if token in ("<|startoftext|>", "<|endoftext|>"):
        return [token]
    word = tuple(token[:-1]) + (token[-1] + "</w>",)
    while len(word) > 1:
        pairs = set(zip(word, word[1:]))
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        new, i = [], 0
        while i < len(word):
            if i + 1 < len(word) and word[i] == best[0] and word[i + 1] == best[1]:
                new.append(word[i] + word[i + 1]); i += 2
            else:
                new.append(word[i]); i += 1
        word = tuple(new)
    return list(word)

def tokenize(text, enc, vocab, ranks):
    ids = []
    pieces = regex.split(r"(<\|startoftext\|>|<\|endoftext\|>)", text)
    for p in pieces:
        if p in ("<|startoftext|>", "<|endoftext|>"):
            ids.append(vocab[p]); continue
        for tok in PAT.findall(basic(p)):
            t = "".join(enc[b] for b in tok.encode("utf-8"))
            ids += [vocab.get(x, vocab["<|endoftext|>"]) for x in bpe(t, ranks)]
    return ids

if __name__ == "__main__":
    enc, vocab, ranks = load(sys.argv[1])
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(tokenize(json.loads(line), enc, vocab, ranks)))
