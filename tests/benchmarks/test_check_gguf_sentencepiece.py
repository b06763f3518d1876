"""``benchmarks/check_gguf_sentencepiece.py`` runs end to end without the sentencepiece library:
a stand-in built from the tests' Llama 2-style tokenizer answers as SentencePiece would."""
import json
import sys
import types
from pathlib import Path

import pytest

from tests._tiny import SPM_BYTES, build_spm_tokenizer
from tests.benchmarks import load_script


class _StandIn:
    """SentencePieceProcessor's answers for the tests' SentencePiece-style tokenizer.json: pieces by
    id, scores by merge rank, piece kinds; encode/decode through the tokenizer itself."""

    def __init__(self, folder: Path, reverse: bool = False):
        from prefopt import load_tokenizer

        spec = json.loads((folder / "tokenizer.json").read_text())
        self.pieces = sorted(spec["model"]["vocab"], key=spec["model"]["vocab"].get)
        merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
        rank = {m.replace(" ", ""): k for k, m in enumerate(merges)}
        sign = 1 if reverse else -1  # reverse: scores that order the merges worst first
        self.scores = [sign * float(rank.get(p, len(merges) + i)) for i, p in enumerate(self.pieces)]
        self.tok = load_tokenizer(folder)

    def get_piece_size(self):
        return len(self.pieces)

    def id_to_piece(self, i):
        return self.pieces[i]

    def get_score(self, i):
        return 0.0 if self.is_control(i) or self.is_byte(i) or self.is_unknown(i) else self.scores[i]

    def is_unknown(self, i):
        return self.pieces[i] == "<unk>"

    def is_control(self, i):
        return self.pieces[i] in ("<s>", "</s>")

    def is_unused(self, i):
        return False

    def is_byte(self, i):
        return self.pieces[i] in SPM_BYTES

    def bos_id(self):
        return 1

    def eos_id(self):
        return 2

    def unk_id(self):
        return 0

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids):
        return self.tok.decode(ids)


@pytest.mark.parametrize("reverse", [False, True])
def test_the_check_writes_the_vocabulary_as_llama_cpp_and_compares_every_text(tmp_path, monkeypatch, capsys,
                                                                               reverse):
    mod = load_script("check_gguf_sentencepiece")
    build_spm_tokenizer(tmp_path / "spm")
    fake = types.ModuleType("sentencepiece")
    fake.SentencePieceProcessor = lambda model_file: _StandIn(tmp_path / "spm", reverse)
    monkeypatch.setitem(sys.modules, "sentencepiece", fake)
    texts = ["Héllo wörld 😀 12345 mg/dL", "  two  spaces\n\nnew line ", "tab\there, ünïcödé ✓ — “quotes”",
             "The patient reports chest pain."]
    monkeypatch.setattr(mod, "clinical_texts", lambda limit: texts)
    monkeypatch.setattr(sys, "argv", ["check", "--model-file", "x.model"])
    mod.main()
    out = capsys.readouterr().out
    if reverse:  # merges ordered worst first: the check sees it
        assert "x.model: 480 pieces; 4 texts" in out and " 0 differ" not in out and "differs:" in out
    else:
        assert "x.model: 480 pieces; 4 texts" in out and "4 encode the same as SentencePiece, 0 differ" in out
