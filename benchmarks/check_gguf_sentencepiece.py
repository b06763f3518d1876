"""prefopt's SentencePiece GGUF import against SentencePiece itself, on a real vocabulary.

A GGUF file of a Llama 2 or Mistral model keeps its tokenizer as llama.cpp's converter writes it
from ``tokenizer.model``: each piece, its score and its type, no merges. prefopt rebuilds the
merges from the scores (``prefopt.convert.gguf_tokenizer``). This check writes such a file (a
tiny random model around the real vocabulary), imports it with ``convert_gguf`` and encodes real
clinical texts both ways: prefopt's tokenizer and the ``sentencepiece`` library on the original
``.model`` file. The ``tests/`` check the same on a small trained vocabulary; this one needs
``sentencepiece`` (not a prefopt dependency) and a ``.model`` file, for example those in the
``mistral-common`` wheel (``mistral_common/data/tokenizer.model.v1``: Mistral 7B v0.1/v0.2,
32,000 pieces)::

    pip download --no-deps -d /tmp/w mistral-common sentencepiece
    python benchmarks/check_gguf_sentencepiece.py --model-file tokenizer.model.v1

Texts: MeQSum questions, MedQA questions, Medical Abstracts and KTAS complaints from
``../shared/data`` where present (``--limit`` of each), plus a few with accents, emoji, digits
and runs of spaces. SentencePiece does not read ``<s>`` in a text as the control token (llama.cpp
and prefopt do), so the texts hold none.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _gguf_check import clinical_texts, finish, tiny_llama_writer  # noqa: E402

_NORMAL, _UNKNOWN, _CONTROL, _UNUSED, _BYTE = 1, 2, 3, 5, 6


def write_gguf(sp, path: Path) -> None:
    """A tiny random llama (one layer, 64 wide) around ``sp``'s vocabulary, its tokenizer as
    llama.cpp's converter writes one from ``tokenizer.model``."""
    n = sp.get_piece_size()
    types = [_UNKNOWN if sp.is_unknown(i) else _CONTROL if sp.is_control(i) else _UNUSED if sp.is_unused(i)
             else _BYTE if sp.is_byte(i) else _NORMAL for i in range(n)]
    w = tiny_llama_writer(path, n)
    w.add_tokenizer_model("llama")
    w.add_token_list([sp.id_to_piece(i) for i in range(n)])
    w.add_token_scores([sp.get_score(i) for i in range(n)])
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)
    finish(w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-file", required=True, help="a SentencePiece .model file (BPE, byte fallback)")
    ap.add_argument("--limit", type=int, default=500, help="texts from each dataset")
    a = ap.parse_args()
    try:
        import sentencepiece
    except ImportError:
        sys.exit("this check needs the sentencepiece library: pip install sentencepiece")
    from prefopt import load_tokenizer
    from prefopt.convert.gguf import convert_gguf

    sp = sentencepiece.SentencePieceProcessor(model_file=a.model_file)
    texts = clinical_texts(a.limit)
    with tempfile.TemporaryDirectory() as tmp:
        write_gguf(sp, Path(tmp) / "m.gguf")
        tok = load_tokenizer(convert_gguf(Path(tmp) / "m.gguf", Path(tmp) / "out", progress=False))
    differ = [t for t in texts if tok.encode(t) != [sp.bos_id()] + sp.encode(t)]
    decoded = sum(tok.decode(tok.encode(t)) == sp.decode(sp.encode(t)) for t in texts)
    tokens = sum(len(sp.encode(t)) for t in texts)
    print(f"{Path(a.model_file).name}: {sp.get_piece_size()} pieces; {len(texts)} texts, {tokens} tokens: "
          f"{len(texts) - len(differ)} encode the same as SentencePiece, {len(differ)} differ; "
          f"{decoded} decode the same")
    for t in differ[:5]:
        print(f"  differs: {t[:80]!r}\n    prefopt:       {tok.encode(t)[:24]}\n    sentencepiece: "
              f"{[sp.bos_id()] + sp.encode(t)[:23]}")


if __name__ == "__main__":
    main()
