"""prefopt's byte-level BPE GGUF import against tiktoken, on real vocabularies: Llama 3's and
Mistral's Tekken (Mistral NeMo, Mistral Small 3, Pixtral).

Both tokenizers are tiktoken's: a regex splits the text, and each piece is one token if the
vocabulary holds it, else its bytes are joined pair by pair, the pair whose join ranks first
going first. Their Hugging Face ``tokenizer.json`` (and so llama.cpp's GGUF files, with
``tokenizer.ggml.pre`` "llama-bpe" or "tekken") keep the vocabulary as GPT-2 byte-level strings and
the ranks as merges. This check writes such a file from the original rank file (a tiny random
model around the real vocabulary), imports it with ``convert_gguf`` and encodes real clinical
texts both ways: prefopt's tokenizer and tiktoken on the ranks. It needs ``tiktoken`` (not a
prefopt dependency) and a rank file: Llama 3's ``tokenizer.model`` (in the ``llama-models``
wheel, ``llama_models/llama3/tokenizer.model``) or a Tekken JSON (in the ``mistral-common``
wheel, ``mistral_common/data/tekken_240911.json``)::

    pip download --no-deps -d /tmp/w llama-models mistral-common tiktoken regex
    python benchmarks/check_gguf_tiktoken.py --rank-file llama_models/llama3/tokenizer.model
    python benchmarks/check_gguf_tiktoken.py --rank-file mistral_common/data/tekken_240911.json

Texts: as check_gguf_sentencepiece.py's (``--limit`` from each dataset in ``../shared/data``).
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gguf_check import clinical_texts, finish, tiny_llama_writer  # noqa: E402

_NORMAL, _CONTROL = 1, 3
# Llama 3's split and special tokens (llama_models/llama3/tokenizer.py)
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPECIAL = 256


class Vocabulary:
    """A tiktoken vocabulary as a model holds it: ``ranks`` (bytes -> rank), the split
    ``pattern``, special tokens, the id of rank 0 (``offset``), llama.cpp's pre-tokenizer name."""

    def __init__(self, ranks: dict[bytes, int], pattern: str, special: list[str], offset: int, pre: str):
        self.ranks, self.pattern, self.special, self.offset, self.pre = ranks, pattern, special, offset, pre

    @classmethod
    def read(cls, path: Path) -> Vocabulary:
        if path.suffix == ".json":  # Tekken: the first 1,000 ids are special, then the ranks
            spec = json.loads(path.read_text(encoding="utf-8"))
            config = spec["config"]
            n_special = config["default_num_special_tokens"]
            keep = config["default_vocab_size"] - n_special
            ranks = {base64.b64decode(t["token_bytes"]): t["rank"] for t in spec["vocab"][:keep]}
            special = ["<unk>", "<s>", "</s>"] + [f"<SPECIAL_{i}>" for i in range(3, n_special)]
            return cls(ranks, config["pattern"], special, n_special, "tekken")
        ranks = {}  # tiktoken's own format: "base64 rank" per line; Llama 3's special tokens follow the ranks
        for line in path.read_text(encoding="utf-8").splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        special = ["<|begin_of_text|>", "<|end_of_text|>"] + [
            f"<|reserved_special_token_{i}|>" for i in range(LLAMA3_SPECIAL - 2)]
        return cls(ranks, LLAMA3_PATTERN, special, 0, "llama-bpe")

    @property
    def bos(self) -> int:
        return 1 if self.offset else len(self.ranks)

    @property
    def eos(self) -> int:
        return 2 if self.offset else len(self.ranks) + 1

    def ids(self, ranks: list[int]) -> list[int]:
        return [self.bos] + [r + self.offset for r in ranks]


def byte_chars() -> list[str]:
    """GPT-2's byte -> character table: printable bytes stand for themselves, the others for
    characters from U+0100 on."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Every cut of a token into two tokens, in the order of the joined token's rank (then of the
    parts' ranks): BPE with these merges joins pairs as tiktoken does."""
    out = []
    for token, rank in ranks.items():
        cuts = [(ranks[token[:i]], ranks[token[i:]], token[:i], token[i:]) for i in range(1, len(token))
                if token[:i] in ranks and token[i:] in ranks]
        out += [(rank, *cut) for cut in cuts]
    out.sort()
    return [(left, right) for _, _, _, left, right in out]


def write_gguf(vocab: Vocabulary, path: Path) -> None:
    """A tiny random llama around ``vocab``, its tokenizer as llama.cpp's converter writes one
    from the model's ``tokenizer.json``: GPT-2 byte-level strings, merges, the pre-tokenizer's name."""
    chars = byte_chars()

    def text(b: bytes) -> str:
        return "".join(chars[x] for x in b)

    by_rank = sorted(vocab.ranks, key=vocab.ranks.get)
    if vocab.offset:
        tokens, types = vocab.special + [text(b) for b in by_rank], [_CONTROL] * vocab.offset + [_NORMAL] * len(by_rank)
    else:
        tokens, types = [text(b) for b in by_rank] + vocab.special, [_NORMAL] * len(by_rank) + [_CONTROL] * len(
            vocab.special)
    w = tiny_llama_writer(path, len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([f"{text(a)} {text(b)}" for a, b in merges_from_ranks(vocab.ranks)])
    w.add_bos_token_id(vocab.bos)
    w.add_eos_token_id(vocab.eos)
    w.add_add_bos_token(True)
    finish(w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rank-file", required=True, type=Path,
                    help="Llama 3's tokenizer.model (tiktoken format) or a Tekken .json")
    ap.add_argument("--limit", type=int, default=500, help="texts from each dataset")
    a = ap.parse_args()
    try:
        import tiktoken
    except ImportError:
        sys.exit("this check needs the tiktoken library: pip install tiktoken regex")
    from prefopt import load_tokenizer
    from prefopt.convert.gguf import convert_gguf

    vocab = Vocabulary.read(a.rank_file)
    enc = tiktoken.Encoding(a.rank_file.name, pat_str=vocab.pattern, mergeable_ranks=vocab.ranks, special_tokens={})
    texts = clinical_texts(a.limit)
    with tempfile.TemporaryDirectory() as tmp:
        write_gguf(vocab, Path(tmp) / "m.gguf")
        tok = load_tokenizer(convert_gguf(Path(tmp) / "m.gguf", Path(tmp) / "out", progress=False))
    differ = [t for t in texts if tok.encode(t) != vocab.ids(enc.encode_ordinary(t))]
    decoded = sum(tok.decode(tok.encode(t), skip_special_tokens=True) == t for t in texts)
    tokens = sum(len(enc.encode_ordinary(t)) for t in texts)
    print(f"{a.rank_file.name} ({vocab.pre}): {len(vocab.ranks)} ranks + {len(vocab.special)} special; "
          f"{len(texts)} texts, {tokens} tokens: {len(texts) - len(differ)} encode the same as tiktoken, "
          f"{len(differ)} differ; {decoded} decode back to the text")
    for t in differ[:5]:
        mine, theirs = tok.encode(t), vocab.ids(enc.encode_ordinary(t))
        at = next((i for i, (x, y) in enumerate(zip(mine, theirs)) if x != y), min(len(mine), len(theirs)))
        print(f"  differs: {t[:80]!r}\n    from token {at}: prefopt {mine[at:at + 8]}, tiktoken {theirs[at:at + 8]} "
              f"({[tok.decode([i]) for i in theirs[at:at + 4]]})")


if __name__ == "__main__":
    main()
