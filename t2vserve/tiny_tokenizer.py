"""A small CLIP-format BPE tokenizer the project learns from its own corpus (no hub download).

The vocabulary is laid out exactly like OpenAI CLIP's: the 256 byte symbols, the same with the
end-of-word marker ``</w>``, one token per learned merge, then ``<|startoftext|>`` and ``<|endoftext|>``.
So ``transformers.CLIPTokenizer`` loads it unchanged, like the tokenizer of a real checkpoint.
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

CORPUS = Path(__file__).parent / "data" / "tokenizer_corpus.txt"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2 reversible byte -> printable unicode symbol table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def learn_merges(words: list[str], num_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE: repeatedly merge the most frequent adjacent symbol pair (ties broken by the pair)."""
    symbols = bytes_to_unicode()
    vocab = collections.Counter()
    for word in words:
        chars = [symbols[b] for b in word.encode("utf-8")]
        vocab[tuple(chars[:-1] + [chars[-1] + "</w>"])] += 1
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: collections.Counter = collections.Counter()
        for word, count in vocab.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        merged = collections.Counter()
        for word, count in vocab.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        vocab = merged
    return merges


def build_vocab_and_merges(num_merges: int = 600) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-layout vocabulary and merge list learned from the project's corpus."""
    text = CORPUS.read_text(encoding="utf-8").lower()
    words = re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", text)
    merges = learn_merges(words, num_merges)
    base = list(bytes_to_unicode().values())
    tokens = base + [t + "</w>" for t in base] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab: dict[str, int] = {}
    for token in tokens:  # a merge can reproduce an existing token: keep the first id
        vocab.setdefault(token, len(vocab))
    return vocab, merges


def save_tiny_tokenizer(directory: Path, max_length: int = 77) -> "object":
    """Write a CLIPTokenizer to ``directory`` (``save_pretrained`` layout) and return it."""
    from transformers import CLIPTokenizer

    vocab, merges = build_vocab_and_merges()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
    tokenizer.save_pretrained(str(directory))
    return tokenizer
