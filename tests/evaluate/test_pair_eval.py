"""``prefopt eval-pairs``: a trained DPO adapter's rewards on held-out pairs are the ones the DPO
run's own evaluation reported; the log-probs are the model's, summed by hand from its logits."""
import json

import pytest
import torch

from prefopt import load_model, load_tokenizer
from prefopt.cli import main
from prefopt.data.preference import load_preferences
from prefopt.lora_files import adapter_sha256
from prefopt.model.digest import weights_sha256
from prefopt.train.dpo import DPOConfig
from prefopt.train.run import run_dpo
from prefopt.train.shared_prompt import pairs_start
from tests.train._fixtures import write_pairs, write_task


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A DPO adapter trained on one set of pairs and evaluated by its run on another."""
    root = tmp_path_factory.mktemp("pairs")
    model_dir, _ = write_task(root, n=8)
    train, held = write_pairs(root / "train.jsonl"), write_pairs(root / "held.jsonl", n=16, offset=1000)
    cfg = DPOConfig(model=str(model_dir), data=str(train), eval_data=str(held), output_dir=str(root / "dpo"),
                    batch_size=4, max_steps=16, lr=5e-3, beta=0.1, lora_r=8, lora_alpha=16, lora_dropout=0.0,
                    progress=False)
    summary = run_dpo(cfg)
    return model_dir, held, root / "dpo" / "final", summary["eval_after"]


def _run(args, out) -> dict:
    assert main(["eval-pairs", *map(str, args), "--output", str(out), "--n-resamples", "200"]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_rewards_are_those_the_dpo_run_reported_on_the_same_pairs(trained, tmp_path, capsys):
    model_dir, held, adapter, after = trained
    m = _run(["--model", model_dir, "--adapter", adapter, "--data", held], tmp_path / "e")
    assert m["n_pairs"] == 16 and m["reference"] == "the model without the adapter"
    # which weights were measured, by their digests (the reference: the model's own, no adapter)
    assert m["model_sha256"] == weights_sha256(model_dir) is not None
    assert m["adapter_sha256"] == adapter_sha256(adapter) is not None and m["reference_adapter_sha256"] is None
    assert m["rewards/accuracies"]["value"] == pytest.approx(after["eval_rewards/accuracies"])
    assert m["rewards/margins"]["value"] == pytest.approx(after["eval_rewards/margins"], abs=1e-4)
    assert m["logps/chosen"] == pytest.approx(after["eval_logps/chosen"], abs=1e-3)
    lo, hi = m["rewards/margins"]["ci"]
    assert lo <= m["rewards/margins"]["value"] <= hi and m["rewards/margins"]["value"] > 0
    rows = [json.loads(x) for x in (tmp_path / "e" / "pairs.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == list(range(1, 17))
    assert all(r["margin"] == pytest.approx(0.1 * ((r["logp_chosen"] - r["ref_logp_chosen"])
                                                   - (r["logp_rejected"] - r["ref_logp_rejected"]))) for r in rows)
    out = capsys.readouterr().out
    assert f"prefopt eval-pairs: reward accuracy {m['rewards/accuracies']['value']:.0%}" in out

    # by hand: the model's logits, log-softmax, the answer tokens' log-probs summed
    tok = load_tokenizer(model_dir)
    pairs, _ = load_preferences(held, tok)
    assert pairs_start(pairs) == 76  # so eval-pairs ran each batch after the start every prompt has, once
    model = load_model(model_dir, adapter=adapter).eval()
    ex = pairs[0].chosen
    ids, labels = torch.tensor([list(ex.input_ids)]), torch.tensor(list(ex.labels))
    with torch.no_grad():
        logp = torch.log_softmax(model(ids)[0, :-1].double(), -1)
    keep = labels[1:] != -100
    by_hand = logp[torch.arange(len(keep)), labels[1:].clamp(min=0)][keep].sum().item()
    assert rows[0]["logp_chosen"] == pytest.approx(by_hand, abs=1e-3)
    assert rows[0]["tokens_chosen"] == int(keep.sum())

    # a second evaluation into the same folder keeps the first
    _run(["--model", model_dir, "--adapter", adapter, "--data", held, "--reference-adapter", adapter], tmp_path / "e")
    assert (tmp_path / "e" / "earlier" / "1" / "metrics.json").is_file()
    same = json.loads((tmp_path / "e" / "metrics.json").read_text())  # the adapter against itself: no margin
    assert same["rewards/margins"]["value"] == 0 and same["rewards/accuracies"]["value"] == 0
    assert same["reference"] == str(adapter) and same["reference_adapter_sha256"] == m["adapter_sha256"]


def test_without_an_adapter_only_the_models_own_preference_is_measured(trained, tmp_path, capsys):
    model_dir, held, adapter, _ = trained
    m = _run(["--model", model_dir, "--data", held], tmp_path / "base")
    assert "rewards/accuracies" not in m and m["reference"] is None
    assert 0 <= m["prefers_chosen_logp_sum"]["value"] <= 1
    assert "nothing to measure rewards against" in capsys.readouterr().out
    assert main(["eval-pairs", "--model", str(model_dir), "--data", str(held), "--output", str(tmp_path / "x"),
                 "--reference-adapter", str(adapter)]) == 2
    assert "--reference-adapter needs --adapter" in capsys.readouterr().err


def test_against_an_earlier_evaluation_tests_the_models_own_preferences_paired(trained, tmp_path, capsys):
    """The DPO adapter against the base model on the same pairs: the two shares of pairs whose
    chosen answer the model alone prefers, their difference with its bootstrap interval, and
    exact McNemar on the pairs where they disagree; other pairs are refused before any model loads."""
    model_dir, held, adapter, _ = trained
    base = _run(["--model", model_dir, "--data", held], tmp_path / "base")
    dpo = _run(["--model", model_dir, "--adapter", adapter, "--data", held, "--against", tmp_path / "base"],
               tmp_path / "dpo")
    paired = json.loads((tmp_path / "dpo" / "paired.json").read_text())
    s = paired["prefers_chosen_logp_sum"]
    assert paired["against"] == str(tmp_path / "base") and paired["n_pairs"] == 16
    assert s["earlier"] == base["prefers_chosen_logp_sum"]["value"]
    assert s["this"] == dpo["prefers_chosen_logp_sum"]["value"]
    assert s["delta"] == pytest.approx(s["this"] - s["earlier"])
    assert s["delta"] == pytest.approx((s["mcnemar"]["b_only"] - s["mcnemar"]["a_only"]) / 16)
    assert s["ci"][0] <= s["delta"] <= s["ci"][1]
    rows = {d: [json.loads(x) for x in (tmp_path / d / "pairs.jsonl").read_text().splitlines()]
            for d in ("base", "dpo")}
    newly_right = sum(b["logp_chosen"] > b["logp_rejected"] and not a["logp_chosen"] > a["logp_rejected"]
                      for a, b in zip(rows["base"], rows["dpo"]))
    assert s["mcnemar"]["b_only"] == newly_right
    assert f"against {tmp_path / 'base'}: the model alone prefers the chosen answer in {s['this']:.0%}" in (
        capsys.readouterr().out)

    other = tmp_path / "other.jsonl"
    write_pairs(other, n=12, offset=5000)
    assert main(["eval-pairs", "--model", str(model_dir), "--data", str(other), "--output", str(tmp_path / "o"),
                 "--against", str(tmp_path / "base")]) == 2
    assert "--against: that evaluation scored other pairs" in capsys.readouterr().err
    assert not (tmp_path / "o" / "metrics.json").exists()
    assert main(["eval-pairs", "--model", str(model_dir), "--data", str(held), "--output", str(tmp_path / "o"),
                 "--against", str(tmp_path / "nowhere")]) == 2
    assert "no pairs.jsonl (an eval-pairs output folder)" in capsys.readouterr().err
