"""Byte-level GGUF tokenizers read as llama.cpp reads them, by ``tokenizer.ggml.pre``: Llama 3's
and Tekken's whole-word rule (a piece the vocabulary holds is one token, though its merges
never build it), Tekken's split, and the BOS llama.cpp adds when the file does not say.
``benchmarks/check_gguf_tiktoken.py`` checks the same on the real Llama 3 and Tekken
vocabularies against tiktoken."""
import json

import pytest
from tokenizers import Tokenizer

from prefopt import load_tokenizer
from prefopt.convert.gguf import convert_gguf
from tests._tiny import build_hf_model, write_tiny_gguf

WORD = "Ġdyspnoea"  # " dyspnoea" in GPT-2's byte-level characters


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    """A tiny llama whose vocabulary also holds one word its merges never build (as Llama 3's
    holds 588: " nhiều", " jeho", ...)."""
    out = tmp_path_factory.mktemp("pre") / "hf"
    build_hf_model(out, vocab_size=401)
    spec = json.loads((out / "tokenizer.json").read_text())
    assert WORD not in spec["model"]["vocab"] and len(spec["model"]["vocab"]) + len(
        [a for a in spec["added_tokens"] if a["content"] not in spec["model"]["vocab"]]) == 400
    spec["model"]["vocab"][WORD] = 400
    (out / "tokenizer.json").write_text(json.dumps(spec))
    return out


def _import(src, tmp_path, pre, add_bos=False):
    tmp_path.mkdir(exist_ok=True)
    path = write_tiny_gguf(src, tmp_path / f"{pre}.gguf", pre=pre, add_bos=add_bos)
    return convert_gguf(path, tmp_path / pre, progress=False)


@pytest.mark.parametrize("pre, whole", [("llama-bpe", True), ("llama3", True), ("tekken", True), ("qwen2", False),
                                        ("deepseek-r1-qwen", False), ("smollm", False)])
def test_a_word_the_vocabulary_holds_is_one_token_where_llama_cpp_reads_it_whole(src, tmp_path, pre, whole):
    tok = load_tokenizer(_import(src, tmp_path, pre))
    word = tok.encode(" dyspnoea", add_special_tokens=False)
    assert (word == [400]) if whole else (len(word) > 1 and 400 not in word)  # else built from its merges
    ids = tok.encode("The patient has dyspnoea.", add_special_tokens=False)
    assert (400 in ids) is whole and tok.decode(ids) == "The patient has dyspnoea."


def test_tekken_splits_case_runs_and_single_digits(src, tmp_path):
    """Mistral's Tekken regex: a capitalised run and a lower-case run apart, digits one by one,
    a punctuation mark joined to the letters after it (pieces worked out by hand from the regex)."""
    pre = Tokenizer.from_file(str(_import(src, tmp_path, "tekken") / "tokenizer.json")).pre_tokenizer
    pieces = [p for p, _ in pre.pre_tokenize_str("The PatientHas 125mg/dL\n\nBP")]
    want = ["The", " Patient", "Has", " ", "1", "2", "5", "mg", "/d", "L", "\n\n", "BP"]
    assert pieces == [w.replace(" ", "Ġ").replace("\n", "Ċ") for w in want]


@pytest.mark.parametrize("pre, bos", [("llama-bpe", True), ("tekken", True), ("qwen2", False), ("gpt2", False)])
def test_a_file_silent_on_bos_gets_llama_cpp_default_for_its_pre_tokenizer(src, tmp_path, pre, bos):
    tok = load_tokenizer(_import(src, tmp_path, pre, add_bos=None))
    assert (tok.encode("chest pain")[0] == tok.bos_token_id) is bos
    said = load_tokenizer(_import(src, tmp_path / "said", pre, add_bos=not bos))  # the file's own word wins
    assert (said.encode("chest pain")[0] == said.bos_token_id) is (not bos)
