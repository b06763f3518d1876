"""A model's tokenizer and a GGUF file's ``tokenizer.ggml.*`` metadata, both ways: rebuilt on
import (:func:`write_tokenizer`), described for export (:func:`tokenizer_metadata`).

Two kinds, as llama.cpp reads them:
- ``gpt2``: byte-level BPE (SmolLM2, Llama 3, Qwen2, Mistral's Tekken). The file keeps the
  merges; the split before BPE is named by ``tokenizer.ggml.pre``.
- ``llama``: SentencePiece BPE (Llama 2, Mistral, TinyLlama and the medical models built on
  them). The file keeps each piece's score, not the merges (unless its converter kept them too):
  SentencePiece joins, of the adjacent pieces, the pair whose join scores best, so the merges
  are every cut of a piece into two pieces, best-scored piece first. Spaces become ``▁``, one is put before the text (and, as
  llama.cpp does, after every special token), and bytes missing from the vocabulary fall back
  to the ``<0xXX>`` pieces.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .._deps import require
from ..fileio import read_json, write_json_atomic
from ..model.config import UnsupportedModelError

# llama.cpp pre-tokenizer name -> how the text is split before byte-level BPE
_GPT2_SPLIT = None  # ByteLevel's own GPT-2 regex
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2's split (llama.cpp's "qwen2"): as Llama 3's, but each digit on its own
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Mistral's Tekken (Mistral NeMo, Mistral Small 3): capitalised and lower-case runs of letters
# apart, each digit on its own, a slash kept with the punctuation before it
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class _Pre:
    """How llama.cpp reads a byte-level BPE file with a given ``tokenizer.ggml.pre``: the split
    before BPE (``style``, ``regex``); whether a piece the vocabulary holds whole is that one
    token (``whole``: tiktoken's rule, llama.cpp's ignore_merges; Llama 3 has 588 tokens its
    merges never build); whether a BOS is added when the file does not say (``bos``)."""

    style: str
    regex: str | None = None
    whole: bool = False
    bos: bool = False


_LLAMA3 = _Pre("split+bytelevel", _LLAMA3_SPLIT, whole=True, bos=True)
_QWEN2 = _Pre("split+bytelevel", _QWEN2_SPLIT)
# names as llama.cpp reads them (aliases after the name its converter writes: "llama3"/"llama-v3"
# are older Llama 3 files, "deepseek-r1-qwen" the DeepSeek-R1 distills of Qwen2.5)
_PRE_TOKENIZERS = {
    "gpt2": _Pre("bytelevel"),
    "default": _Pre("bytelevel"),
    "smollm": _Pre("digits+bytelevel"),
    "starcoder": _Pre("digits+bytelevel"),
    "llama-bpe": _LLAMA3,
    "llama3": _LLAMA3,
    "llama-v3": _LLAMA3,
    "falcon3": _LLAMA3,
    "qwen2": _QWEN2,
    "deepseek-r1-qwen": _QWEN2,
    "tekken": _Pre("split+bytelevel", _TEKKEN_SPLIT, whole=True, bos=True),
}
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6  # llama.cpp token types
_SPACE = "\u2581"  # SentencePiece's "▁"
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


def write_tokenizer(meta, out: Path) -> None:
    """``tokenizer.json`` and ``tokenizer_config.json`` in ``out`` from the file's metadata
    (``meta``: ``get``/``need`` by key, ``path`` for messages)."""
    tk_mod = require("tokenizers", "building a tokenizer")
    from tokenizers import AddedToken

    kind = meta.need("tokenizer.ggml.model")
    tokens = list(meta.need("tokenizer.ggml.tokens"))
    types = list(meta.get("tokenizer.ggml.token_type", [_NORMAL] * len(tokens)))
    if kind == "gpt2":
        pre = _pre(meta)
        tk, bos_default = _byte_level(tk_mod, meta, tokens, pre), pre.bos
    elif kind == "llama":
        tk, bos_default = _sentencepiece(tk_mod, meta, tokens, types), True
    else:
        raise UnsupportedModelError(f"{meta.path}: GGUF tokenizer model {kind!r} is not supported; prefopt reads "
                                    "byte-level BPE ('gpt2') and SentencePiece BPE ('llama')")
    special = (_CONTROL, _UNKNOWN)
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k in special])
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == _USER_DEFINED])

    def token(key):
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    bos, eos = token("bos"), token("eos")
    # llama.cpp's defaults where the file is silent: SentencePiece adds a BOS, byte-level BPE only
    # for some pre-tokenizers (Llama 3's, Tekken)
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", bos_default)) and bos is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    _add_bos_eos(tk, tokens, bos if add_bos else None, eos if add_eos else None, byte_level=kind == "gpt2")
    tk.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "unk_token": token("unknown"),
        "pad_token": token("padding") or eos,
        "add_bos_token": add_bos,
        **({"add_eos_token": True} if add_eos else {}),
        "clean_up_tokenization_spaces": False,
        "model_max_length": meta.get(f"{meta.need('general.architecture')}.context_length", 2048),
    }
    template = meta.get("tokenizer.chat_template")
    named = {n: meta.get(f"tokenizer.chat_template.{n}") for n in meta.get("tokenizer.chat_templates") or []}
    named = {n: t for n, t in named.items() if t}  # (tool_use, rag: llama.cpp's names for the others)
    if template and named:
        config["chat_template"] = [{"name": "default", "template": template}] + [
            {"name": n, "template": t} for n, t in named.items()]
    elif template:
        config["chat_template"] = template
    write_json_atomic(out / "tokenizer_config.json", config)


def _pre(meta) -> _Pre:
    name = meta.get("tokenizer.ggml.pre", "default")
    if name not in _PRE_TOKENIZERS:
        raise UnsupportedModelError(
            f"{meta.path}: GGUF pre-tokenizer {name!r} is not supported; known: {sorted(_PRE_TOKENIZERS)}"
        )
    return _PRE_TOKENIZERS[name]


def _byte_level(tk_mod, meta, tokens, pre: _Pre):
    from tokenizers import Regex, decoders, models, pre_tokenizers

    merges = [tuple(m.split(" ", 1)) for m in meta.need("tokenizer.ggml.merges")]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tk = tk_mod.Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False, ignore_merges=pre.whole))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre.regex is None)
    if pre.style == "digits+bytelevel":
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre.style == "split+bytelevel":
        split = pre_tokenizers.Split(Regex(pre.regex), behavior="isolated", invert=False)
        tk.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    else:
        tk.pre_tokenizer = byte_level
    tk.decoder = decoders.ByteLevel()
    return tk


def _sentencepiece(tk_mod, meta, tokens, types):
    from tokenizers import decoders, models, normalizers

    scores = list(meta.need("tokenizer.ggml.scores"))
    if len(scores) != len(tokens) or len(types) != len(tokens):
        raise ValueError(f"{meta.path}: GGUF tokenizer lists {len(tokens)} tokens, {len(scores)} scores and "
                         f"{len(types)} token types; they must match")
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    given = meta.get("tokenizer.ggml.merges")  # some converters keep them: then they, not the scores, are the order
    merges = [tuple(m.split(" ", 1)) for m in given] if given else spm_merges(tokens, scores, types)
    tk = tk_mod.Tokenizer(models.BPE(vocab, merges, fuse_unk=True, byte_fallback=True,
                                     unk_token=tokens[unk] if unk is not None and 0 <= unk < len(tokens) else None))
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    spaces = normalizers.Replace(" ", _SPACE)
    # Prepend runs on each stretch of text between special tokens: a space after each, as llama.cpp
    tk.normalizer = normalizers.Sequence([normalizers.Prepend(_SPACE), spaces]) if prefix else spaces
    steps = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    tk.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return tk


def spm_merges(tokens, scores, types) -> list[tuple[str, str]]:
    """SentencePiece BPE's merges from its pieces and their scores: every cut of a normal piece
    into two normal pieces, the best-scored piece's cuts first (then by the pieces' ids)."""
    ids = {t: i for i, t in enumerate(tokens) if types[i] == _NORMAL}
    ranked = []
    for piece, i in ids.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                ranked.append((-scores[i], i, ids[left], ids[right]))
    ranked.sort()
    return [(tokens[a], tokens[b]) for _, _, a, b in ranked]


def _add_bos_eos(tk, tokens, bos, eos, *, byte_level: bool) -> None:
    """What ``encode`` puts around a text: a BOS and/or EOS where the file says so."""
    from tokenizers import processors

    if bos is None and eos is None:
        if byte_level:
            tk.post_processor = processors.ByteLevel(trim_offsets=False)
        return
    ids = {t: i for i, t in enumerate(tokens)}
    head, tail = (f"{bos}:0 " if bos else ""), (f" {eos}:0" if eos else "")
    head_b, tail_b = (f"{bos}:1 " if bos else ""), (f" {eos}:1" if eos else "")
    tk.post_processor = processors.TemplateProcessing(
        single=f"{head}$A:0{tail}", pair=f"{head}$A:0{tail} {head_b}$B:1{tail_b}",
        special_tokens=[(t, ids[t]) for t in (bos, eos) if t],
    )


def tokenizer_metadata(src: Path, vocab_size: int) -> dict:
    """The ``tokenizer.ggml.*`` values for ``src``'s ``tokenizer.json``, byte-level BPE or
    SentencePiece BPE: the tokenizer model (``gpt2``/``llama``), every id's token (padded to the
    embedding's rows with unused ``[PAD{i}]``) and its type, the merges (byte-level: and how text
    is split before BPE, llama.cpp's pre-tokenizer name) or each piece's score (SentencePiece: and
    whether a space goes before the text), the special ids and the chat template (as
    :func:`~prefopt.tokenizer.load_tokenizer` reads them, from every file that may hold them)."""
    from ..tokenizer import load_tokenizer

    tok = load_tokenizer(src)  # no tokenizer.json: its error
    path = src / "tokenizer.json"
    spec = read_json(path)
    model = spec.get("model") or {}
    byte_level = model.get("type") == "BPE" and _has_byte_level(spec.get("pre_tokenizer"))
    if not byte_level and not (model.get("type") == "BPE" and model.get("byte_fallback")):
        raise UnsupportedModelError(f"{path}: only byte-level BPE and SentencePiece BPE tokenizers are exported "
                                    f"(got {model.get('type')!r})")
    by_id = {i: t for t, i in model["vocab"].items()}
    types = {i: _NORMAL for i in by_id}
    if not byte_level:  # SentencePiece: its byte pieces and <unk> have types of their own
        types.update({i: _BYTE for i, t in by_id.items() if _BYTE_PIECE.fullmatch(t)})
        types.update({i: _UNKNOWN for i, t in by_id.items() if t == model.get("unk_token")})
    for added in spec.get("added_tokens") or []:
        by_id[added["id"]] = added["content"]
        if types.get(added["id"]) != _UNKNOWN:
            types[added["id"]] = _CONTROL if added.get("special") else _USER_DEFINED
    if max(by_id) >= vocab_size:
        raise UnsupportedModelError(f"{path}: token id {max(by_id)} has no row in the model's embedding "
                                    f"({vocab_size} rows): the tokenizer is not this model's")
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(vocab_size)]
    kinds = [types.get(i, _UNUSED) for i in range(vocab_size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    ids = {t: i for i, t in enumerate(tokens)}
    pad = tok.pad_token if tok.config.get("pad_token") is not None else None  # not the tokenizer's fallback to EOS
    template = tok.chat_template
    if tok.named_templates:  # the one prefopt renders as default (tokenizer.chat_template), the others by name
        template = [{"name": "default", "template": template}] + [
            {"name": k, "template": v} for k, v in tok.named_templates.items() if k != "default"]
    out = {"tokens": tokens, "types": kinds, "bos": ids.get(tok.bos_token), "eos": ids.get(tok.eos_token),
           "unk": ids.get(tok.unk_token), "pad": ids.get(pad), "chat_template": template,
           "add_bos": tok.bos_token_id is not None and tok.encode("a")[:1] == [tok.bos_token_id]}
    if byte_level:
        return {**out, "model": "gpt2", "pre": _pre_tokenizer(spec.get("pre_tokenizer"), path), "merges": merges,
                "space_prefix": False}
    return {**out, "model": "llama", "scores": spm_scores(tokens, kinds, merges),
            "space_prefix": _space_prefix(spec, path)}


def spm_scores(tokens, types, merges) -> list[float]:
    """Scores that :func:`spm_merges` turns back into ``merges`` (``"left right"``): a piece's is
    minus the rank of the first merge that makes it; pieces no merge makes (single characters)
    score below them all; special, byte and unused pieces 0."""
    rank: dict[str, int] = {}
    for k, m in enumerate(merges):
        rank.setdefault(m.replace(" ", ""), k)
    return [-float(rank.get(t, len(merges) + i)) if kind == _NORMAL else 0.0
            for i, (t, kind) in enumerate(zip(tokens, types))]


def _space_prefix(spec: dict, path) -> bool:
    """Whether a SentencePiece ``tokenizer.json`` puts "▁" before the text: Llama 2's style (a
    Prepend normalizer) or the newer one (a Metaspace pre-tokenizer that prepends)."""
    norms = _parts(spec.get("normalizer"), "normalizers")
    pre = _parts(spec.get("pre_tokenizer"))
    spaces = any(n.get("type") == "Replace" and n.get("content") == _SPACE for n in norms)
    meta = [p for p in pre if p.get("type") == "Metaspace"]
    if not spaces and not meta:
        raise UnsupportedModelError(f"{path}: a byte-fallback BPE that does not write spaces as '\u2581' is not "
                                    "SentencePiece-style; it cannot be exported")
    if meta:
        return meta[0].get("prepend_scheme", "always") != "never" and meta[0].get("add_prefix_space", True)
    return any(n.get("type") == "Prepend" and n.get("prepend") == _SPACE for n in norms)


def _parts(step, key: str = "pretokenizers") -> list[dict]:
    """A tokenizer.json pipeline step's parts: a Sequence's, else the step alone."""
    if not step:
        return []
    return list(step[key]) if step.get("type") == "Sequence" else [step]


def _has_byte_level(pre) -> bool:
    return any(p.get("type") == "ByteLevel" for p in _parts(pre))


def _pre_tokenizer(pre, path) -> str:
    """llama.cpp's name for how ``tokenizer.json`` splits text before BPE, among those
    :func:`~prefopt.convert.gguf.convert_gguf` reads back the same way."""
    kinds = [p.get("type") for p in _parts(pre)]
    last = _parts(pre)[-1] if kinds else {}
    if kinds == ["ByteLevel"] and last.get("use_regex", True):
        return "gpt2"
    if kinds == ["Digits", "ByteLevel"] and _parts(pre)[0].get("individual_digits") and last.get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not last.get("use_regex", True):
        pattern = (_parts(pre)[0].get("pattern") or {}).get("Regex")
        # the table's first name for a split is llama.cpp converter's own (aliases come after it)
        name = next((n for n, p in _PRE_TOKENIZERS.items() if p.style == "split+bytelevel" and p.regex == pattern), None)
        if name:
            return name
    raise UnsupportedModelError(f"{path}: its pre-tokenizer ({' + '.join(kinds) or 'none'}) is not one prefopt can "
                                "name for llama.cpp (GPT-2, SmolLM2, Llama 3, Qwen2 or Tekken style)")
