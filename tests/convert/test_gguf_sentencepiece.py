"""GGUF files with a SentencePiece tokenizer (``tokenizer.ggml.model`` "llama": Llama 2, Mistral
and the models built on them): the merges rebuilt from the pieces' scores, checked against the
Llama 2-style tokenizer.json the file was written from and against transformers' GGUF reader."""
import pytest
import torch

from prefopt import load_model, load_tokenizer
from prefopt.convert.gguf import convert_gguf, describe_import
from prefopt.convert.gguf_tokenizer import spm_merges
from prefopt.model import UnsupportedModelError
from tests._tiny import CORPUS, build_hf_model, build_spm_tokenizer, write_tiny_gguf

gguf = pytest.importorskip("gguf")
IDS = torch.randint(0, 480, (2, 19), generator=torch.Generator().manual_seed(0))
TEXTS = CORPUS + ["Héllo wörld 😀 12345 mg/dL", "tab\there, ünïcödé ✓", "  two  spaces\n\nnew line ",
                  "<s>[INST] chest pain? [/INST] Yes</s> and</s>after"]


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    """A tiny Llama (480-token vocabulary) with a Llama 2-style tokenizer, as an HF folder and as
    the Q8_0 GGUF llama.cpp's converter would write from it; and prefopt's import of that file."""
    tmp = tmp_path_factory.mktemp("spm")
    hf = build_hf_model(tmp / "hf", tokenizer=False, vocab_size=480, intermediate_size=128, tie_word_embeddings=False)
    build_spm_tokenizer(tmp / "hf")
    path = write_tiny_gguf(tmp / "hf", tmp / "m.gguf", qtype="Q8_0")
    return hf, tmp, path, convert_gguf(path, tmp / "out", progress=False)


def test_merges_follow_the_scores_best_piece_first():
    """SentencePiece joins the adjacent pair whose join scores best: "bc" (-1) before "ab" (-2),
    so "abc" is a + bc, never ab + c; both cuts of "abc" are listed, by the pieces' ids. Control,
    byte and unknown pieces are never joined or cut."""
    tokens = ["<unk>", "<s>", "a", "b", "c", "ab", "bc", "abc", "<0x61>", "<s>a"]
    scores = [0, 0, -10, -11, -12, -2, -1, -3, 0, 5]
    types = [2, 3, 1, 1, 1, 1, 1, 1, 6, 3]
    assert spm_merges(tokens, scores, types) == [("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")]


def test_the_tokenizer_gives_the_source_ids_bytes_spaces_and_special_tokens_included(spm):
    """Same ids as the tokenizer.json the file came from: a BOS on every text, "▁" before the text
    and (as llama.cpp does, and Llama 2's own tokenizer.json) after each special token, bytes not
    in the vocabulary as <0xXX> pieces; decoding gives the text back."""
    _, tmp, _, out = spm
    ours, orig = load_tokenizer(out), load_tokenizer(tmp / "hf")
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == orig.encode(text), text
        if "<s>" not in text:  # (a special token inside gets a space after it, as in Llama 2's own tokenizer)
            assert ours.decode(ids) == text
        assert ours.decode(ids, skip_special_tokens=False) == orig.decode(ids, skip_special_tokens=False)
    assert ours.encode("chest")[0] == ours.bos_token_id == 1 and ours.encode("chest", add_special_tokens=False)[0] != 1
    assert ours.encode("😀", add_special_tokens=False)[1:] == [3 + b for b in "😀".encode()]  # "▁", then <0xF0>...
    assert (ours.bos_token, ours.eos_token, ours.config.get("unk_token")) == ("<s>", "</s>", "<unk>")
    assert describe_import(out) == "LlamaForCausalLM, 2 layers, hidden 64, 480 tokens; float32 weights, 1 MiB; " \
                                   "SentencePiece tokenizer"
    msgs = [{"role": "user", "content": "chest pain?"}, {"role": "assistant", "content": "Yes"}]
    assert ours.apply_chat_template(msgs) == orig.apply_chat_template(msgs)
    pr = ours.encode_prompt_response(msgs[:1], "Yes")
    assert ours.decode(pr.ids[pr.prompt_len:]).strip() == "Yes" and pr.ids[-1] == ours.eos_token_id


def test_transformers_gguf_tokenizer_agrees_where_it_reads_the_file_the_same_way(spm):
    """transformers' GGUF reader puts "▁" before the first stretch of text only, so it agrees on
    texts without special tokens inside or leading spaces (prefopt follows llama.cpp there)."""
    transformers = pytest.importorskip("transformers")
    _, tmp, path, out = spm
    theirs = transformers.AutoTokenizer.from_pretrained(tmp, gguf_file=path.name)
    ours = load_tokenizer(out)
    for text in TEXTS[:-2]:
        assert theirs(text)["input_ids"] == ours.encode(text), text


def test_the_model_matches_transformers_own_gguf_loader(spm):
    transformers = pytest.importorskip("transformers")
    hf, tmp, path, out = spm
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp, gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        got, orig = load_model(out)(IDS), hf(IDS).logits
        assert (got - theirs.eval()(IDS).logits).abs().max().item() < 1e-4
    assert 0 < (got - orig).abs().max().item() < 0.1 * orig.abs().max().item()  # Q8_0's error, small


def test_a_tokenizer_model_prefopt_does_not_read_is_refused_by_name(spm, tmp_path):
    _, tmp, _, _ = spm
    write_tiny_gguf(tmp / "hf", tmp_path / "m.gguf")
    data = (tmp_path / "m.gguf").read_bytes()
    key = b"tokenizer.ggml.model"
    at = data.index(key) + len(key) + 4 + 8  # the key, its value's type (uint32), the string's length (uint64)
    assert data[at:at + 5] == b"llama"
    (tmp_path / "bad.gguf").write_bytes(data[:at] + b"rwkv5" + data[at + 5:])  # same length: still well-formed
    with pytest.raises(UnsupportedModelError, match=r"bad\.gguf: GGUF tokenizer model 'rwkv5' is not supported"):
        convert_gguf(tmp_path / "bad.gguf", tmp_path / "out", progress=False)


def _vocab(path):
    fields = gguf.GGUFReader(str(path)).fields
    return {k.split(".")[-1]: fields[k].contents() for k in fields if k.startswith("tokenizer.ggml.")}


def test_a_sentencepiece_model_exports_as_llama_cpp_writes_it_and_reads_back(spm, tmp_path):
    """Export writes SentencePiece as llama.cpp's converter does (model "llama", scores, no
    merges, piece types, a BOS and a space before the text): the same tokens and types as the
    test's llama.cpp-style file, scores that give the same merges; read back by prefopt (ids and
    logits) and by transformers' GGUF loader (logits)."""
    from prefopt.convert.gguf_export import export_gguf
    from prefopt.convert.gguf_tokenizer import spm_merges

    hf, tmp, ref_path, _ = spm
    path = export_gguf(tmp / "hf", tmp_path / "e.gguf", out_type="f32", show_progress=False)
    got, ref = _vocab(path), _vocab(ref_path)
    assert got["model"] == "llama" and "merges" not in got and "pre" not in got
    assert got["tokens"] == ref["tokens"] and got["token_type"] == ref["token_type"]
    assert (got["add_bos_token"], got["add_space_prefix"], got["unknown_token_id"]) == (True, True, 0)
    merges = spm_merges(got["tokens"], got["scores"], got["token_type"])
    assert merges == spm_merges(ref["tokens"], ref["scores"], ref["token_type"]) and len(merges) >= 172
    back = convert_gguf(path, tmp_path / "back", progress=False)
    ours, orig = load_tokenizer(back), load_tokenizer(tmp / "hf")
    for text in TEXTS:
        assert ours.encode(text) == orig.encode(text), text
    with torch.no_grad():
        want = hf(IDS).logits
        assert (load_model(back)(IDS) - want).abs().max().item() < 1e-5
    transformers = pytest.importorskip("transformers")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="e.gguf", dtype=torch.float32)
    with torch.no_grad():
        assert (theirs.eval()(IDS).logits - want).abs().max().item() < 1e-4


def test_an_imported_sentencepiece_model_exports_to_the_same_vocabulary(spm, tmp_path):
    """GGUF -> prefopt's folder -> GGUF: the tokens, types and (through the scores) the merges
    survive, so a model fine-tuned after import goes back to llama.cpp with its own tokenizer."""
    from prefopt.convert.gguf_export import export_gguf
    from prefopt.convert.gguf_tokenizer import spm_merges

    _, _, ref_path, out = spm
    got = _vocab(export_gguf(out, tmp_path / "again.gguf", out_type="f16", show_progress=False))
    ref = _vocab(ref_path)
    assert got["tokens"] == ref["tokens"] and got["token_type"] == ref["token_type"]
    assert spm_merges(got["tokens"], got["scores"], got["token_type"]) == spm_merges(
        ref["tokens"], ref["scores"], ref["token_type"])


def test_merges_kept_in_the_file_are_used_where_the_scores_say_nothing(spm, tmp_path):
    """A SentencePiece GGUF converted from tokenizer.json alone has every score -1000; where its
    converter also kept the merges, they give the order, and the ids are the source's."""
    _, tmp, _, _ = spm
    path = write_tiny_gguf(tmp / "hf", tmp_path / "m.gguf", spm_scores=False)
    assert set(_vocab(path)["scores"]) == {-1000.0}
    ours, orig = load_tokenizer(convert_gguf(path, tmp_path / "out", progress=False)), load_tokenizer(tmp / "hf")
    for text in TEXTS:
        assert ours.encode(text) == orig.encode(text), text


class _Meta:
    """GGUF metadata as write_tokenizer reads it."""

    def __init__(self, fields):
        self.fields, self.path = fields, "m.gguf"

    def get(self, key, default=None):
        return self.fields.get(key, default)

    def need(self, key):
        return self.fields[key]


@pytest.mark.parametrize("merges, want", [(None, ["\u2581a", "bc"]), (["a b", "\u2581 ab", "b c"], ["\u2581ab", "c"])])
def test_merges_in_the_file_override_the_order_the_scores_imply(tmp_path, merges, want):
    """Scores all alike (a file converted from tokenizer.json alone): the pieces' ids break the
    tie ("bc", id 6, before "ab", id 7); merges the file keeps are the order instead."""
    from prefopt.convert.gguf_tokenizer import write_tokenizer

    tokens = ["<unk>", "<s>", "\u2581", "a", "b", "c", "bc", "ab", "\u2581a", "\u2581ab"]
    fields = {"general.architecture": "llama", "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
              "tokenizer.ggml.scores": [-1000.0] * len(tokens), "tokenizer.ggml.token_type": [2, 3] + [1] * 8,
              "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.bos_token_id": 1}
    if merges:
        fields["tokenizer.ggml.merges"] = merges
    write_tokenizer(_Meta(fields), tmp_path)
    tok = load_tokenizer(tmp_path)
    assert [tokens[i] for i in tok.encode("abc", add_special_tokens=False)] == want
