"""``benchmarks/check_gguf_tiktoken.py`` runs end to end without tiktoken: a stand-in that
encodes as tiktoken does (split by the regex, a piece the ranks hold is one token, else its
bytes joined lowest rank first), on ranks made from the tests' byte-level tokenizer plus one word
its merges never build."""
import base64
import dataclasses
import json
import sys
import types
from pathlib import Path

import pytest

from tests._tiny import CORPUS, build_tokenizer
from tests.benchmarks import load_script


def _load():
    return load_script("check_gguf_tiktoken")


class _Encoding:
    """tiktoken.Encoding's encode_ordinary, written out."""

    def __init__(self, name, *, pat_str, mergeable_ranks, special_tokens):
        from tokenizers import Regex, pre_tokenizers

        self.split = pre_tokenizers.Split(Regex(pat_str), behavior="isolated")
        self.ranks = mergeable_ranks

    def encode_ordinary(self, text):
        out = []
        for piece, _ in self.split.pre_tokenize_str(text):
            parts = [bytes([b]) for b in piece.encode()]
            while piece.encode() not in self.ranks and len(parts) > 1:
                joins = [(self.ranks[a + b], i) for i, (a, b) in enumerate(zip(parts, parts[1:])) if a + b in self.ranks]
                if not joins:
                    break
                i = min(joins)[1]
                parts[i:i + 2] = [parts[i] + parts[i + 1]]
            out += [self.ranks[piece.encode()]] if piece.encode() in self.ranks else [self.ranks[p] for p in parts]
        return out


def _ranks(mod, folder: Path) -> dict[bytes, int]:
    """The tests' tokenizer's tokens as bytes, ranked by id (its merges' order), then " dyspnoea"."""
    back = {c: b for b, c in enumerate(mod.byte_chars())}
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    tokens = [t for t in sorted(vocab, key=vocab.get) if not t.startswith("<|")]
    ranks = {bytes(back[c] for c in t): r for r, t in enumerate(tokens)}
    ranks[b" dyspnoea"] = len(ranks)
    return ranks


@pytest.mark.parametrize("kind", ["llama3", "tekken"])
@pytest.mark.parametrize("whole", [True, False])
def test_the_check_writes_the_ranks_as_llama_cpp_and_compares_every_text(tmp_path, monkeypatch, capsys, kind, whole):
    from prefopt.convert import gguf_tokenizer

    mod = _load()
    ranks = _ranks(mod, build_tokenizer(tmp_path / "tok"))
    if kind == "llama3":
        path = tmp_path / "tokenizer.model"
        path.write_text("".join(f"{base64.b64encode(b).decode()} {r}\n" for b, r in ranks.items()))
    else:
        path = tmp_path / "tekken.json"
        config = {"pattern": gguf_tokenizer._TEKKEN_SPLIT, "default_vocab_size": len(ranks) + 1000,
                  "default_num_special_tokens": 1000}
        path.write_text(json.dumps({"config": config, "vocab": [
            {"rank": r, "token_bytes": base64.b64encode(b).decode()} for b, r in ranks.items()]}))
    fake = types.ModuleType("tiktoken")
    fake.Encoding = _Encoding
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    pre = "llama-bpe" if kind == "llama3" else "tekken"
    monkeypatch.setitem(gguf_tokenizer._PRE_TOKENIZERS, pre,
                        dataclasses.replace(gguf_tokenizer._PRE_TOKENIZERS[pre], whole=whole))
    monkeypatch.setattr(mod, "clinical_texts", lambda limit: CORPUS + ["The patient has dyspnoea, 12345 mg/dL."])
    monkeypatch.setattr(sys, "argv", ["check", "--rank-file", str(path)])
    mod.main()
    out = capsys.readouterr().out
    assert f"({pre}): {len(ranks)} ranks" in out and "6 texts" in out
    if whole:
        assert "6 encode the same as tiktoken, 0 differ; 6 decode back to the text" in out
    else:  # prefopt reading the file without llama.cpp's whole-word rule: the check sees it
        assert "5 encode the same as tiktoken, 1 differ" in out and "differs: 'The patient has dyspnoea" in out
