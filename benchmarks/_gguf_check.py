"""What the GGUF tokenizer checks (check_gguf_sentencepiece.py, check_gguf_tiktoken.py) share: the
clinical texts they encode, and a tiny random llama around a real vocabulary."""
from __future__ import annotations

import csv
import json
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
EXTRA = ["Héllo wörld 😀 12345 mg/dL", "  two  spaces\n\nnew line ", "tab\there, ünïcödé ✓ — “quotes”",
         "BP 150/90, HR 112; SpO₂ 94%", "über-naïve café résumé", "患者は胸痛を訴えた",
         "Bệnh nhân đau ngực nhiều ngày, chuyển viện về Hà Nội; kết quả xét nghiệm bình thường.",
         "Hasta göğüs ağrısı ile başvurdu, takip edilmektedir; jeho tlak je 150/90."]


def clinical_texts(limit: int) -> list[str]:
    """Up to ``limit`` texts from each dataset present (MeQSum questions, MedQA questions, Medical
    Abstracts, KTAS complaints), and the extra ones."""
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


def tiny_llama_writer(path: Path, n_vocab: int):
    """A ``gguf.GGUFWriter`` for a tiny random llama (one layer, 64 wide) with ``n_vocab`` tokens:
    hyperparameters and tensors added; the caller adds the tokenizer and calls :func:`finish`."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    for add, value in [(w.add_block_count, 1), (w.add_context_length, 4096), (w.add_embedding_length, 64),
                       (w.add_feed_forward_length, 128), (w.add_head_count, 4), (w.add_head_count_kv, 4),
                       (w.add_layer_norm_rms_eps, 1e-5), (w.add_rope_dimension_count, 16), (w.add_vocab_size, n_vocab)]:
        add(value)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (n_vocab, 64), "output_norm.weight": (64,), "output.weight": (n_vocab, 64),
              "blk.0.attn_norm.weight": (64,), "blk.0.ffn_norm.weight": (64,), "blk.0.attn_q.weight": (64, 64),
              "blk.0.attn_k.weight": (64, 64), "blk.0.attn_v.weight": (64, 64), "blk.0.attn_output.weight": (64, 64),
              "blk.0.ffn_gate.weight": (128, 64), "blk.0.ffn_up.weight": (128, 64), "blk.0.ffn_down.weight": (64, 128)}
    for name, shape in shapes.items():
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32) * 0.02)
    return w


def finish(w) -> None:
    """Write and close a :func:`tiny_llama_writer`'s file."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
