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
import csv
import json
import sys
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EXTRA = ["Héllo wörld 😀 12345 mg/dL", "  two  spaces\n\nnew line ", "tab\there, ünïcödé ✓ — “quotes”",
         "BP 150/90, HR 112; SpO₂ 94%", "über-naïve café résumé", "患者は胸痛を訴えた"]
_NORMAL, _UNKNOWN, _CONTROL, _UNUSED, _BYTE = 1, 2, 3, 5, 6


def clinical_texts(limit: int) -> list[str]:
    """Up to ``limit`` texts from each dataset present, and the extra ones."""
    out = list(EXTRA)
    sources = [("summarization/meqsum/meqsum.jsonl", "CHQ"), ("clinical_reasoning/medqa/medqa_usmle_4options.jsonl",
                                                            "question")]
    for rel, field in sources:
        path = SHARED / rel
        if path.is_file():
            with path.open(encoding="utf-8") as f:
                out += [json.loads(line)[field] for _, line in zip(range(limit), f)]
    for rel, field, kw in [("text_classification/medical_abstracts/medical_tc.csv", "medical_abstract", {}),
                           ("triage/ktas/data.csv", "Chief_complain", {"delimiter": ";"})]:
        path = SHARED / rel
        if path.is_file():
            with path.open(encoding="latin-1" if "ktas" in rel else "utf-8", newline="") as f:
                out += [row[field] for _, row in zip(range(limit), csv.DictReader(f, **kw))]
    return out


def write_gguf(sp, path: Path) -> None:
    """A tiny random llama (one layer, 64 wide) around ``sp``'s vocabulary, its tokenizer as
    llama.cpp's converter writes one from ``tokenizer.model``."""
    import gguf
    import numpy as np

    n = sp.get_piece_size()
    types = [_UNKNOWN if sp.is_unknown(i) else _CONTROL if sp.is_control(i) else _UNUSED if sp.is_unused(i)
             else _BYTE if sp.is_byte(i) else _NORMAL for i in range(n)]
    w = gguf.GGUFWriter(str(path), "llama")
    for add, value in [(w.add_block_count, 1), (w.add_context_length, 4096), (w.add_embedding_length, 64),
                       (w.add_feed_forward_length, 128), (w.add_head_count, 4), (w.add_head_count_kv, 4),
                       (w.add_layer_norm_rms_eps, 1e-5), (w.add_rope_dimension_count, 16), (w.add_vocab_size, n)]:
        add(value)
    w.add_tokenizer_model("llama")
    w.add_token_list([sp.id_to_piece(i) for i in range(n)])
    w.add_token_scores([sp.get_score(i) for i in range(n)])
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_space_prefix(True)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (n, 64), "output_norm.weight": (64,), "output.weight": (n, 64),
              "blk.0.attn_norm.weight": (64,), "blk.0.ffn_norm.weight": (64,), "blk.0.attn_q.weight": (64, 64),
              "blk.0.attn_k.weight": (64, 64), "blk.0.attn_v.weight": (64, 64), "blk.0.attn_output.weight": (64, 64),
              "blk.0.ffn_gate.weight": (128, 64), "blk.0.ffn_up.weight": (128, 64), "blk.0.ffn_down.weight": (64, 128)}
    for name, shape in shapes.items():
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32) * 0.02)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


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
