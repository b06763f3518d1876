"""Generation: KV cache, batching with left padding, sampling, stopping; against transformers."""
import dataclasses

import numpy as np
import pytest
import torch

from prefopt import generate, load_model, load_tokenizer
from prefopt.model import KVCache, PromptCache
from prefopt.model.generate import _prefill_start, left_pad, row_seeds, sample_next, shared_start
from tests._tiny import build_hf_model

PROMPTS = [[5, 17, 33, 90, 4, 61, 7], [8, 9], [120, 44, 3, 3, 210, 11, 19, 300, 12, 15, 16]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    hf = build_hf_model(d, arch="llama", initializer_range=0.5)
    return hf, load_model(d), d


def test_greedy_matches_transformers(tiny):
    hf, ours, _ = tiny
    for p in PROMPTS:
        want = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                           max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=2)
        assert generate(ours, [p], max_new_tokens=20) == [want[0, len(p):].tolist()]


def test_a_model_left_in_train_mode_generates_without_dropout_and_keeps_its_modes(tiny):
    """After trainer.train() the model is in train mode: its LoRA dropout once made greedy
    decoding give another answer on every call (5 of 5 differed on this test's first run)."""
    from prefopt import apply_lora
    from tests._tiny import randomize_lora

    _, _, d = tiny
    model = apply_lora(load_model(d), r=4, dropout=0.3)
    randomize_lora(model)
    want = generate(model.eval(), [PROMPTS[0]], max_new_tokens=12)
    model.train()
    model.model.layers[0].eval()  # a mixed state, as a user may leave it: each module's mode comes back
    modes = {n: m.training for n, m in model.named_modules()}
    assert all(generate(model, [PROMPTS[0]], max_new_tokens=12) == want for _ in range(4))
    assert {n: m.training for n, m in model.named_modules()} == modes


@pytest.mark.parametrize("prompts,error", [
    ("hello", r"prompts are token ids, not text: tok.encode\(text\), or tok.apply_chat_template"),
    (["hello", "there"], "prompts are token ids, not text"),
    ([5, 17, 33], r"a list of prompts, each a list of token ids; for one prompt, \[ids\]"),
    (torch.tensor([[5, 17, 33]]), r"not a Tensor \(a \(B, T\) tensor or array without padding: list\(ids\)\)"),
    (np.array([[5, 17, 33]]), "not a ndarray"),
    ([torch.tensor([[5, 17]])], "prompt 0: token ids .* got Tensor of 2 dimensions"),
    ([], "no prompts"),
    ([[5, 17], [3, 4.0]], "prompt 1: token ids are integers .* got float 4.0"),
    ([[0.0, 17]], "prompt 0: token ids are integers .* got float 0.0"),
    ([[None, 17]], "prompt 0: token ids are integers .* got NoneType None"),
    ([[5, 17], torch.tensor([3.0, 4.0])], "prompt 1: token ids are integers .* got float 3.0"),
    ([[5, 400]], r"prompt 0: token id 400 is outside the model's vocabulary \(0-399\): a tokenizer of another model"),
    ([[5, -1]], "prompt 0: token id -1 is outside"),
])
def test_prompts_that_are_not_token_id_lists_are_refused_with_what_to_pass(tiny, prompts, error):
    """Once: "too many dimensions 'str'", "object of type 'int' has no len()", an IndexError deep
    in the embedding."""
    _, ours, _ = tiny
    with pytest.raises((TypeError, ValueError), match=error):
        generate(ours, prompts, max_new_tokens=2)


def test_prompts_may_be_tuples_numpy_ids_or_1d_tensors_and_arrays(tiny):
    _, ours, _ = tiny
    want = generate(ours, [PROMPTS[0]], max_new_tokens=4)
    assert generate(ours, [tuple(PROMPTS[0])], max_new_tokens=4) == want
    assert generate(ours, [list(np.array(PROMPTS[0]))], max_new_tokens=4) == want
    assert generate(ours, [np.array(PROMPTS[0]), torch.tensor(PROMPTS[0])], max_new_tokens=4) == want * 2


def test_kv_cache_matches_full_recompute(tiny):
    _, ours, _ = tiny
    p = PROMPTS[0]
    (new,) = generate(ours, [p], max_new_tokens=12)
    seq = list(p)
    with torch.no_grad():
        for _ in range(12):
            seq.append(int(ours(torch.tensor([seq]))[0, -1].argmax()))
    assert new == seq[len(p):]


def test_batched_left_padded_equals_one_at_a_time(tiny):
    _, ours, _ = tiny
    batched = generate(ours, PROMPTS, max_new_tokens=16)
    assert batched == [generate(ours, [p], max_new_tokens=16)[0] for p in PROMPTS]


def test_rows_stop_at_eos_independently(tiny):
    _, ours, _ = tiny
    free = generate(ours, PROMPTS, max_new_tokens=10)
    eos = free[1][3]  # make row 1 stop at its 4th token
    out = generate(ours, PROMPTS, max_new_tokens=10, eos_token_ids=[eos])
    assert out[1] == free[1][: free[1].index(eos) + 1]
    for got, ref in zip(out, free):
        cut = ref.index(eos) + 1 if eos in ref else len(ref)
        assert got == ref[:cut]


def test_stop_callback_and_streaming(tiny):
    _, ours, _ = tiny
    seen = []
    out = generate(ours, [PROMPTS[0]], max_new_tokens=10, stop=lambda row, ids: len(ids) >= 3,
                   on_step=lambda rows: seen.append(list(rows[0])))
    assert len(out[0]) == 3 and seen[-1] == out[0] and [len(s) for s in seen] == [1, 2, 3]


def test_sampling_is_seeded_and_varies(tiny):
    _, ours, _ = tiny
    a = generate(ours, PROMPTS, max_new_tokens=12, temperature=1.5, seed=3)
    b = generate(ours, PROMPTS, max_new_tokens=12, temperature=1.5, seed=3)
    c = generate(ours, PROMPTS, max_new_tokens=12, temperature=1.5, seed=4)
    assert a == b and a != c


def test_a_sampled_answer_does_not_depend_on_the_prompts_batched_with_it(tiny):
    """Each row draws from its own generator (``row_seeds``): a prompt sampled alone, in a batch,
    or in another order gives the same text; a repeated prompt gets another sample, and
    ``answer_prompts`` gives the same answers at any batch size."""
    from prefopt.evaluate.runner import answer_prompts

    _, ours, d = tiny
    kw = dict(max_new_tokens=12, temperature=1.5, seed=3)
    together = generate(ours, PROMPTS, **kw)
    assert [generate(ours, [p], **kw)[0] for p in PROMPTS] == together
    assert generate(ours, PROMPTS[::-1], **kw) == together[::-1]
    twice = generate(ours, [PROMPTS[1], PROMPTS[1]], **kw)
    assert twice[0] == together[1] and twice[1] != twice[0]
    tok = load_tokenizer(d)
    prompts = [p for p in PROMPTS for _ in range(2)]
    texts = {b: answer_prompts(ours, tok, prompts, batch_size=b, show_progress=False, **kw)[0] for b in (1, 2, 4)}
    assert texts[1] == texts[2] == texts[4] and len(set(texts[1])) > 3
    with pytest.raises(ValueError, match="seed: 2 seeds for 3 prompts"):
        generate(ours, PROMPTS, max_new_tokens=2, temperature=1.0, seed=[1, 2])


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, temperature=1.0, top_p=0.7, generator=g)) for _ in range(300)}
    assert draws == {0, 1}
    assert int(sample_next(logits, temperature=0.0, top_p=1.0, generator=None)) == 0


def test_bad_arguments_are_refused(tiny):
    _, ours, _ = tiny
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(ours, [[1, 2]], max_new_tokens=0)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(ours, [[1], []], max_new_tokens=2)


def test_running_past_the_context_is_warned(tiny):
    _, ours, _ = tiny
    assert ours.config.max_position_embeddings == 256
    with pytest.warns(UserWarning, match="a prompt of 250 tokens plus 8 new ones runs past the model's context of 256"):
        out = generate(ours, [[5] * 250], max_new_tokens=8)
    assert len(out[0]) == 8  # a warning, not a refusal: the caller asked for it
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(ours, [[5] * 250], max_new_tokens=6)  # exactly fills the context: no warning


def test_the_command_line_prints_a_warning_as_one_line(tiny, capsys, monkeypatch):
    """It printed Python's two lines, the first naming torch/utils/_contextlib.py (generate's no_grad
    wrapper) as where the warning came from."""
    from prefopt.cli import main

    _, _, d = tiny
    monkeypatch.delenv("PREFOPT_DEBUG", raising=False)
    assert main(["generate", "--model", str(d), "--prompt", "pain " * 240, "--greedy", "--max-new-tokens", "30"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("prefopt generate: warning: a prompt of ") and err.count("\n") == 1 and ".py" not in err
    assert "past the model's context of 256 positions" in err


@pytest.mark.parametrize("flags, kw", [([], {}), (["--repetition-penalty", "1.5"], dict(repetition_penalty=1.5)),
                                       (["--no-repeat-ngram-size", "1", "--repeat-scope", "output"],
                                        dict(no_repeat_ngram_size=1, repeat_scope="output"))])
def test_cli_generate_prints_completion(tiny, capsys, flags, kw):
    from prefopt.cli import main

    _, ours, d = tiny
    tok = load_tokenizer(d)
    # on the CPU, as `ours` runs: a random model's greedy path meets near-ties that a GPU's sums break otherwise
    assert main(["generate", "--model", str(d), "--device", "cpu", "--prompt", "chest pain", "--greedy",
                 "--max-new-tokens", "24", *flags]) == 0
    printed = capsys.readouterr().out
    ids = tok.apply_chat_template([{"role": "user", "content": "chest pain"}], add_generation_prompt=True)
    kw = dict(max_new_tokens=24, eos_token_ids=tok.eos_token_ids, pad_token_id=tok.pad_token_id, **kw)
    want = tok.decode(generate(ours, [ids], **kw)[0])
    assert printed == want + "\n"
    if flags:  # the flags reach generate: they change this answer
        assert want != tok.decode(generate(ours, [ids], **{**kw, **dict(repetition_penalty=1.0,
                                                                          no_repeat_ngram_size=0)})[0])


def test_cli_generate_reads_a_long_prompt_from_a_file_or_stdin(tiny, capsys, tmp_path, monkeypatch):
    """``--prompt @note.txt`` and ``--prompt -`` give the same answer as the text itself; a missing,
    empty or non-UTF-8 file is one line naming it."""
    import io

    from prefopt.cli import main

    _, _, d = tiny
    text = "67-year-old, chest pain\nradiating to the left arm"
    args = ["generate", "--model", str(d), "--greedy", "--max-new-tokens", "12", "--prompt"]
    assert main([*args, text]) == 0
    want = capsys.readouterr().out
    (tmp_path / "note.txt").write_text(text + "\n", encoding="utf-8")
    assert main([*args, f"@{tmp_path / 'note.txt'}"]) == 0
    assert capsys.readouterr().out == want
    monkeypatch.setattr("sys.stdin", io.StringIO(text + "\n"))
    assert main([*args, "-"]) == 0
    assert capsys.readouterr().out == want
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "latin.txt").write_bytes("fi\xe8vre".encode("latin-1"))
    for name, error in [("nope.txt", "no such file"), ("empty.txt", "is empty")]:
        assert main([*args, f"@{tmp_path / name}"]) == 2
        err = capsys.readouterr().err
        assert f"prefopt generate: error: --prompt @{tmp_path / name}: " in err and error in err, err
    assert main([*args, f"@{tmp_path / 'latin.txt'}"]) == 2  # read as data files are: line and column
    assert (f"prefopt generate: error: {tmp_path / 'latin.txt'}:1: not utf-8 text (byte 0xe8 at column 3); save the "
            "file as UTF-8") in capsys.readouterr().err
    (tmp_path / "crlf.txt").write_bytes(text.replace("\n", "\r\n").encode() + b"\r\n")  # saved on Windows
    assert main([*args, f"@{tmp_path / 'crlf.txt'}"]) == 0
    assert capsys.readouterr().out == want


def test_cli_streams_a_character_split_across_tokens_once(tiny, capsys, monkeypatch):
    """Byte-level tokens split "°" and "µ" in two; the first half decodes as U+FFFD. Streaming used to
    print that mark and then the character after it: "38.5�°C"."""
    import prefopt.model
    from prefopt.cli import main

    _, _, d = tiny
    tok = load_tokenizer(d)
    text = "fever 38.5°C, 5 µg"
    ids = tok.encode(text)
    assert any(tok.decode(ids[:i]).endswith("\ufffd") for i in range(len(ids)))  # the case this is about

    def fake_generate(model, prompts, *, on_step, **kw):
        for i in range(1, len(ids) + 1):
            on_step([ids[:i]])
        return [ids]

    monkeypatch.setattr(prefopt.model, "generate", fake_generate)
    assert main(["generate", "--model", str(d), "--prompt", "temperature?"]) == 0
    assert capsys.readouterr().out == text + "\n"


def test_cli_generate_applies_an_adapter(tiny, capsys, tmp_path):
    """``--adapter`` generates with the LoRA-adapted model, not the base one."""
    from prefopt import apply_lora, save_adapter
    from prefopt.cli import main
    from prefopt.lora import lora_layers

    _, _, d = tiny
    tok = load_tokenizer(d)
    adapted = apply_lora(load_model(d), r=4, alpha=8.0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _, m in lora_layers(adapted):
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g))
    save_adapter(adapted, tmp_path / "ad")
    ids = tok.apply_chat_template([{"role": "user", "content": "chest pain"}], add_generation_prompt=True)
    kw = dict(max_new_tokens=8, eos_token_ids=tok.eos_token_ids, pad_token_id=tok.pad_token_id)
    want = tok.decode(generate(adapted.eval(), [ids], **kw)[0])
    base = tok.decode(generate(load_model(d), [ids], **kw)[0])
    assert want != base  # the adapter changes the answer, so the check below can fail
    args = ["generate", "--model", str(d), "--prompt", "chest pain", "--greedy", "--max-new-tokens", "8"]
    assert main(args + ["--adapter", str(tmp_path / "ad")]) == 0
    assert capsys.readouterr().out == want + "\n"
    assert main(args + ["--adapter", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_a_bad_repeat_flag_is_refused_not_dropped(tiny, capsys):
    """``--repetition-penalty 0`` used to become 1.0 (``0 or 1.0``): no penalty, and no word of it."""
    from types import SimpleNamespace

    from prefopt.cli import main
    from prefopt.evaluate.runner import predict
    from prefopt.tasks import get_task
    from prefopt.tasks.base import Record

    _, ours, d = tiny
    assert main(["generate", "--model", str(d), "--prompt", "x", "--greedy", "--repetition-penalty", "0"]) == 2
    assert "repetition_penalty must be positive (1 = none), got 0" in capsys.readouterr().err
    tok = SimpleNamespace(eos_token_ids=[2], pad_token_id=0, apply_chat_template=lambda m, **k: [5, 6], decode=str,
                          control_token_in=lambda text: None)
    with pytest.raises(ValueError, match="repetition_penalty must be positive"):
        predict(ours, tok, get_task("meqsum"), [Record("1", "q", "a")], repetition_penalty=0, show_progress=False)


def test_cli_reports_missing_model_without_traceback(capsys, tmp_path):
    from prefopt.cli import main

    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_logits_and_batched_greedy_generation_match_the_cpu(tiny):
    """What ``prefopt eval``/``compare`` run on a GPU: the KV-cached, left-padded batch in fp32."""
    import copy

    _, ours, _ = tiny
    gpu = copy.deepcopy(ours).cuda()
    ids = torch.tensor([PROMPTS[2]])
    with torch.no_grad():
        want, got = ours(ids), gpu(ids.cuda()).cpu()
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    assert generate(gpu, PROMPTS, max_new_tokens=16) == generate(ours, PROMPTS, max_new_tokens=16)


@pytest.mark.parametrize("penalty", [1.3, 0.8])
def test_repetition_penalty_matches_transformers(tiny, penalty):
    """transformers' RepetitionPenaltyLogitsProcessor: a token already in the row (prompt or output)
    has its logit divided by the penalty where positive, multiplied where negative."""
    hf, ours, _ = tiny
    plain = generate(ours, [PROMPTS[0]], max_new_tokens=24)[0]
    for p in PROMPTS:
        want = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                           max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=2,
                           repetition_penalty=penalty)
        assert generate(ours, [p], max_new_tokens=24, repetition_penalty=penalty) == [want[0, len(p):].tolist()]
    assert generate(ours, [PROMPTS[0]], max_new_tokens=24, repetition_penalty=penalty)[0] != plain
    # left padding does not count as the row's tokens: batched equals one at a time
    batched = generate(ours, PROMPTS, max_new_tokens=16, repetition_penalty=penalty, pad_token_id=PROMPTS[0][0])
    assert batched == [generate(ours, [p], max_new_tokens=16, repetition_penalty=penalty)[0] for p in PROMPTS]
    with pytest.raises(ValueError, match="repetition_penalty must be positive"):
        generate(ours, [[1, 2]], max_new_tokens=2, repetition_penalty=0)


def test_penalize_repeats_by_hand():
    from prefopt.model.repeats import penalize_repeats

    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert penalize_repeats(logits, seen, 2.0).tolist() == [[1.0, -2.0, 0.5, -3.0]]


@pytest.fixture(scope="module")
def looping(tmp_path_factory):
    """A tiny model that, like small real ones decoding greedily, repeats itself (a token, a few)."""
    d = tmp_path_factory.mktemp("loop")
    return build_hf_model(d, arch="llama", initializer_range=0.1), load_model(d)


def _ngrams(seq, n):
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


@pytest.mark.parametrize("n", [2, 3])
def test_no_repeat_ngram_size_matches_transformers(looping, n):
    """transformers' NoRepeatNGramLogitsProcessor: no n-gram occurs twice in prompt + output."""
    hf, ours = looping
    plain = generate(ours, [PROMPTS[0]], max_new_tokens=30)[0]
    assert len(set(_ngrams(PROMPTS[0] + plain, n))) < len(_ngrams(PROMPTS[0] + plain, n))  # it does repeat
    for p in PROMPTS:
        want = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                           max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=2,
                           no_repeat_ngram_size=n)
        got = generate(ours, [p], max_new_tokens=30, no_repeat_ngram_size=n)
        assert got == [want[0, len(p):].tolist()]
        grams = _ngrams(p + got[0], n)
        assert len(set(grams)) == len(grams)
    batched = generate(ours, PROMPTS, max_new_tokens=16, no_repeat_ngram_size=n, pad_token_id=PROMPTS[0][0])
    assert batched == [generate(ours, [p], max_new_tokens=16, no_repeat_ngram_size=n)[0] for p in PROMPTS]


def _greedy_by_hand(model, prompt, steps, *, penalty=1.0, n=0, scope="all"):
    """Full recompute each step; the row is rescanned from scratch for repeats."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([seq]))[0, -1].float()
            row = seq if scope == "all" else seq[len(prompt):]
            for t in set(row):
                logits[t] = logits[t] * penalty if logits[t] < 0 else logits[t] / penalty
            if n and len(row) >= n - 1:
                tail = tuple(row[len(row) - n + 1:])
                for g in _ngrams(row, n):
                    if g[:-1] == tail:
                        logits[g[-1]] = float("-inf")
            seq.append(int(logits.argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize("kw", [dict(n=3), dict(n=1), dict(penalty=1.5), dict(penalty=1.3, n=2)])
def test_repeat_scope_output_counts_only_the_generated_tokens(looping, kw):
    """``repeat_scope="output"``: prompt tokens may be copied; only the output's own repeats count."""
    _, ours = looping
    args = dict(repetition_penalty=kw.get("penalty", 1.0), no_repeat_ngram_size=kw.get("n", 0))
    for p in PROMPTS:
        got = generate(ours, [p], max_new_tokens=20, repeat_scope="output", **args)[0]
        assert got == _greedy_by_hand(ours, p, 20, scope="output", **kw)
        if kw.get("n"):
            assert len(set(_ngrams(got, kw["n"]))) == len(_ngrams(got, kw["n"]))
    # a prompt that already holds the model's loop: "all" pushes the output off it, "output" does not
    echo = PROMPTS[0] + generate(ours, [PROMPTS[0]], max_new_tokens=16)[0]
    prompts = [echo, *PROMPTS]
    outs = {s: generate(ours, prompts, max_new_tokens=20, repeat_scope=s, **args) for s in ("all", "output")}
    assert outs["all"][0] != outs["output"][0]
    assert outs["output"] == [generate(ours, [p], max_new_tokens=20, repeat_scope="output", **args)[0]
                              for p in prompts]


@pytest.mark.parametrize("kw, match", [(dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
                                       (dict(no_repeat_ngram_size=2.5), "no_repeat_ngram_size"),
                                       (dict(repeat_scope="prompt"), "repeat_scope")])
def test_repeat_options_are_checked(tiny, kw, match):
    with pytest.raises(ValueError, match=match):
        generate(tiny[1], [[1, 2]], max_new_tokens=2, **kw)


@pytest.mark.parametrize("kw", [dict(), dict(repetition_penalty=1.3, no_repeat_ngram_size=2),
                                dict(no_repeat_ngram_size=1, repeat_scope="output"),
                                dict(temperature=1.5, seed=3), dict(temperature=1.0, top_p=0.9, seed=5,
                                                                    repetition_penalty=1.2)])
def test_finished_rows_leave_the_batch_and_no_row_changes(looping, kw):
    """Rows that stop (here at 3, 12, 6 and 20 tokens) are dropped from the batch and the KV cache
    (``compact``): the batch shrinks step by step, and every row's tokens are those it gets alone
    and with the finished rows kept: the repeat guard's rows and the sampling generators follow."""
    _, ours = looping
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[0][:4]]
    limits = [3, 12, 6, 20]
    sizes = []
    hook = ours.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    try:
        got = generate(ours, prompts, max_new_tokens=20, stop=lambda row, ids: len(ids) >= limits[row], **kw)
    finally:
        hook.remove()
    assert [len(r) for r in got] == limits
    assert sizes == [4] * 6 + [2] * 6 + [1] * 8  # half the batch done: 2 of 4 after 6 tokens, 1 of 2 after 12
    kept = generate(ours, prompts, max_new_tokens=20, stop=lambda row, ids: len(ids) >= limits[row],
                    compact=False, **kw)
    alone = [generate(ours, [p], max_new_tokens=n, **kw)[0] for p, n in zip(prompts, limits)]
    assert got == kept == alone
    if kw.get("temperature"):
        seeds = row_seeds(kw["seed"], prompts)  # each row's own generator, in the shrunken batch too
        assert got == [generate(ours, [p], max_new_tokens=n, **{**kw, "seed": [s]})[0]
                       for p, n, s in zip(prompts, limits, seeds)]


def test_rows_leave_the_batch_once_half_of_it_is_done(looping):
    """The KV cache is copied each time rows leave, and on a CPU a step costs nearly as much for
    a few rows fewer, so they leave together: of 16 rows, the four done after 2 tokens stay until
    four more join them after 5, then 8 go on."""
    _, ours = looping
    prompts = [PROMPTS[i % 3][: 2 + i % 5] for i in range(16)]
    limits = [2] * 4 + [5] * 4 + [9] * 8
    sizes = []
    hook = ours.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
    try:
        got = generate(ours, prompts, max_new_tokens=9, stop=lambda row, ids: len(ids) >= limits[row])
    finally:
        hook.remove()
    assert [len(r) for r in got] == limits
    assert sizes == [16] * 5 + [8] * 4


START = [(7 * i + 3) % 400 for i in range(20)]  # a system prompt, say, that every prompt begins with


@pytest.mark.parametrize("kw", [dict(), dict(repetition_penalty=1.3, no_repeat_ngram_size=2),
                                dict(temperature=1.5, seed=3)])
def test_a_start_every_prompt_has_is_run_once_and_no_row_changes(tiny, kw):
    """The shared start runs once (one row of 20 tokens), then only each prompt's rest, left-padded
    after it; every row's tokens are those it gets alone, and its first logits match the unshared
    batch's to float rounding."""
    _, ours, _ = tiny
    prompts = [START + p for p in PROMPTS]
    shapes = []
    hook = ours.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    try:
        got = generate(ours, prompts, max_new_tokens=12, **kw)
    finally:
        hook.remove()
    assert shapes[:2] == [(1, 20), (3, 11)] and all(s[1] == 1 for s in shapes[2:])
    assert got == [generate(ours, [p], max_new_tokens=12, **kw)[0] for p in prompts]
    cache = KVCache(ours.config, 3, 40, dtype=torch.float32, device="cpu")
    rest, mask = _prefill_start(ours, prompts, 20, cache, 0, "cpu")
    assert mask.tolist()[1] == [1] * 20 + [0] * 9 + [1] * 2 and rest[1].tolist() == [0] * 9 + PROMPTS[1]
    with torch.no_grad():
        shared = ours(rest, mask, kv_cache=cache)[:, -1]
        ids, full_mask = left_pad(prompts, 0)
        plain = ours(ids, full_mask)[:, -1]
    assert (shared - plain).abs().max().item() < 1e-4


def test_what_counts_as_a_shared_start(tiny):
    _, ours, _ = tiny
    cfg = ours.config
    assert shared_start([START + [1], START + [2, 3]], cfg, 30) == 20
    assert shared_start([START + [1], START + [1]], cfg, 30) == 20  # each keeps a token of its own
    assert shared_start([START, START + [5]], cfg, 30) == 19
    assert shared_start([START[:15] + [1], START[:15] + [2]], cfg, 30) == 0  # under MIN_SHARED (16)
    assert shared_start([START + [1]], cfg, 30) == 0  # one prompt: nothing to share
    assert shared_start([START + [1], [9] + START], cfg, 30) == 0
    windowed = dataclasses.replace(cfg, sliding_window=32)  # its window counts cache columns
    assert shared_start([START + [1], START + [2]], windowed, 30) == 20
    assert shared_start([START + [1], START + [2]], windowed, 33) == 0
    cache = KVCache(cfg, 2, 10, dtype=torch.float32, device="cpu")
    one = KVCache(cfg, 1, 20, dtype=torch.float32, device="cpu")
    one.advance(20)
    with pytest.raises(ValueError, match="a shared prefix of 20 tokens goes into an empty cache"):
        cache.share(one)


def test_a_prompt_cache_runs_only_what_the_next_prompt_adds(tiny):
    """A conversation's second turn repeats the first prompt and answer: with a PromptCache only
    the tokens after them run (the answer's last token, never run, and the new turn), the cache
    grows as needed, and every answer is the one a fresh call gives; a prompt that parts earlier
    reuses what it shares, and a call stopped part way (Ctrl-C) leaves the cache usable."""
    _, ours, _ = tiny
    kept = PromptCache()
    fed = []
    hook = ours.register_forward_pre_hook(lambda m, args: fed.append(args[0].shape[1]))

    def both(prompt, **kw):
        fed.clear()
        got = generate(ours, [prompt], max_new_tokens=8, prompt_cache=kept, **kw)
        return got, list(fed), generate(ours, [prompt], max_new_tokens=8, **kw)

    try:
        first = PROMPTS[2]
        got, runs, fresh = both(first)
        assert got == fresh and runs == [len(first)] + [1] * 7 and kept.ids == first + got[0][:-1]
        second = first + got[0] + [5, 6, 7]
        got, runs, fresh = both(second)
        assert got == fresh and runs == [4] + [1] * 7 and kept.cache.max_len >= len(second) + 8
        third = first[:5] + [1, 2]  # parts after 5 tokens: those are reused
        got, runs, fresh = both(third)
        assert got == fresh and runs[0] == 2

        def interrupt(rows):
            if len(rows[0]) == 3:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            generate(ours, [second], max_new_tokens=8, prompt_cache=kept, on_step=interrupt)
        assert kept.ids == third[:5]  # what it shared with the stopped prompt, untouched by it
        got, runs, fresh = both(third + [9])
        assert got == fresh and runs[0] == 3
    finally:
        hook.remove()
    with pytest.raises(ValueError, match="prompt_cache serves one prompt at a time, got 2"):
        generate(ours, PROMPTS[:2], max_new_tokens=2, prompt_cache=kept)
