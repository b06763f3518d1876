"""``prefopt eval|predict ... --estimate-memory``: what answering the command's records will hold,
from the model's config.json and the records' prompts, before any weight loads."""
import pytest
import torch

from prefopt.cli import main
from prefopt.evaluate.runner import predict
from prefopt.lora import apply_lora
from prefopt.lora_stack import save_adapter
from prefopt.pretrained import load_model
from prefopt.tasks import get_task
from prefopt.tokenizer import load_tokenizer
from prefopt.train.memory_estimate import allocated_peak, module_bytes
from tests import _formats as formats
from tests._tiny import build_hf_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("answers") / "model"
    build_hf_model(d, max_position_embeddings=4096)
    return d


def _messages(tmp_path, n: int = 20, growing: bool = True):
    """Portal messages, each its own from its first word: of growing length (batched by length,
    the longest in batches of fewer), or all alike in length."""
    return formats.write_jsonl(tmp_path / "m.jsonl", [
        {"id": f"m{i}", "message": f"{i:02d} " + "my knee hurts " * (1 + 3 * i if growing else 30),
         "urgency": "urgent", "staff": "nurse"} for i in range(n)])


def _no_model(monkeypatch):
    import prefopt.pretrained

    def refused(*args, **kw):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(prefopt.pretrained, "load_model", refused)


def _figure(out: str, label: str = "peak") -> int:
    """A line's figure (``peak``, ``weights``, ``KV cache``), in bytes."""
    line = next(x for x in out.splitlines() if x.startswith(f"  {label} "))
    number, unit = line[len(label) + 2:].split()[:2]
    return round(float(number) * {"kB": 1e3, "MB": 1e6, "GB": 1e9}[unit.rstrip(":,")])


def test_eval_and_predict_print_the_estimate_for_their_largest_batch_and_write_nothing(tiny, tmp_path, capsys,
                                                                                       monkeypatch):
    """Of the batches the prompts are answered in (by length: the longest 8 of these in a batch of
    their own), the one whose estimate holds the most, at its longest prompt's length."""
    from prefopt.model.length_batches import batch_shapes
    from prefopt.train import TrainConfig
    from prefopt.train.answer_estimate import estimate_answers

    data = _messages(tmp_path)
    task, tok = get_task("portal"), load_tokenizer(str(tiny))
    from prefopt.tasks.check import read_labelled

    prompts = [tok.apply_chat_template(task.messages(r), add_generation_prompt=True)
               for r in read_labelled(task, str(data))]
    longest = max(map(len, prompts))
    shared = next(i for i in range(len(prompts[0])) if len({p[i] for p in prompts}) > 1)  # the portal instructions'
    assert shared > 16
    shapes = batch_shapes(list(map(len, prompts)), 16, 16, "cpu", shared)
    assert len(shapes) > 1 and (16, longest) not in shapes  # (no batch of 16 at the longest prompt's length)
    config = TrainConfig(model=str(tiny), output_dir=".")
    rows, tokens = max(shapes, key=lambda shape: estimate_answers(config, prompts=shape[0], prompt_tokens=shape[1],
                                                                  shared=shared, new_tokens=16, device="cpu").peak)
    _no_model(monkeypatch)
    common = ["--task", "portal", "--model", str(tiny), "--data", str(data), "--estimate-memory", "cpu"]
    for command in (["eval", "--split", "all"], ["predict"]):
        assert main([*command, *common, "--output", str(tmp_path / "out")]) == 0
        said = capsys.readouterr().out.splitlines()
        assert said[0] == (f"20 records, the longest prompt {longest} tokens, the first {shared} of them in every "
                           f"prompt: memory estimate on a CPU, float32 weights, {rows} prompts of {tokens} tokens at "
                           "once and answers of up to 16:")
        assert said[-1].startswith("(--batch-size N lowers it")
    assert not (tmp_path / "out").exists()
    # fewer at once hold less
    assert main(["eval", "--split", "all", *common, "--output", str(tmp_path / "out"), "--batch-size", "2"]) == 0
    fewer = capsys.readouterr().out
    assert "2 prompts of" in fewer and _figure(fewer) < _figure("\n".join(said))
    # an evaluation of answers already made answers nothing: refused with the other flags that would do nothing
    assert main(["eval", "--split", "all", *common[:2], *common[4:], "--output", str(tmp_path / "out"), "--answers",
                 str(tmp_path)]) == 2  # (no --model: it would be refused as well)
    assert f"--answers {tmp_path} scores the answers there, so --estimate-memory would do nothing" in \
        capsys.readouterr().err


def test_the_estimate_bounds_a_real_evaluations_peak(tiny, tmp_path, capsys):
    """Every batch taken at the longest prompt's length, their shared instructions run once: the
    real answers' peak, batches of prompts alike in length, or a little above it (each batch
    compacted, where the real answers may all run to the end)."""
    data = _messages(tmp_path, 16, growing=False)
    assert main(["eval", "--task", "portal", "--model", str(tiny), "--data", str(data), "--split", "all",
                 "--estimate-memory", "cpu", "--batch-size", "8", "--output", str(tmp_path / "out")]) == 0
    estimated = _figure(capsys.readouterr().out)
    task, tok = get_task("portal"), load_tokenizer(str(tiny))
    from prefopt.tasks.check import read_labelled

    records = read_labelled(task, str(data))
    model = load_model(str(tiny), dtype=torch.float32, device="cpu")
    real = module_bytes(model) + allocated_peak(lambda: predict(model, tok, task, records, batch_size=8,
                                                                show_progress=False))
    assert real <= estimated < 1.05 * real, (estimated, real)


def test_a_4_bit_base_counts_the_adapter_on_top_of_it(tiny, tmp_path, capsys):
    model = load_model(str(tiny), dtype=torch.float32, device="cpu")
    apply_lora(model, r=32)
    adapter = save_adapter(model, tmp_path / "adapter")
    data = _messages(tmp_path, 4)
    common = ["eval", "--task", "portal", "--model", str(tiny), "--data", str(data), "--split", "all",
              "--estimate-memory", "cuda", "--output", str(tmp_path / "out")]

    def weights(*extra) -> int:
        assert main([*common, *extra]) == 0
        return _figure(capsys.readouterr().out, "weights")

    plain, merged, quantized, adapted = (weights(), weights("--adapter", str(adapter)), weights("--quantize", "nf4"),
                                         weights("--quantize", "nf4", "--adapter", str(adapter)))
    assert plain == merged  # merged in: the base's size
    assert quantized < adapted  # the r32 adapter beside the 4-bit codes


def test_an_evaluation_that_will_not_fit_is_warned_of_and_goes_on(tiny, tmp_path, capsys, monkeypatch):
    from prefopt.train import memory_estimate

    monkeypatch.setattr(memory_estimate, "free_bytes", lambda device: 4096)
    data = _messages(tmp_path, 4)
    assert main(["eval", "--task", "portal", "--model", str(tiny), "--data", str(data), "--split", "all",
                 "--max-new-tokens", "2", "--output", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "prefopt eval: warning: answering 4 prompts of " in err and "cpu has 4 kB free" in err
    assert "Lower --batch-size: fewer prompts answered at once" in err
    assert (tmp_path / "out" / "metrics.json").is_file()


def test_a_gguf_model_is_estimated_from_the_folder_its_tokenizer_imported(tmp_path, capsys):
    """``--model x.gguf``: its tokenizer's load imports it (a cached HF folder), whose config.json
    the estimate reads, as it reads a folder given as the model."""
    pytest.importorskip("gguf")
    from tests._tiny import write_tiny_gguf

    build_hf_model(tmp_path / "hf", intermediate_size=128, max_position_embeddings=4096)
    gguf_file = write_tiny_gguf(tmp_path / "hf", tmp_path / "tiny.gguf")
    data = _messages(tmp_path, 4)
    common = ["eval", "--task", "portal", "--data", str(data), "--split", "all", "--estimate-memory", "cuda",
              "--output", str(tmp_path / "out")]
    assert main([*common, "--model", str(gguf_file)]) == 0
    from_gguf = capsys.readouterr().out
    assert main([*common, "--model", str(tmp_path / "hf")]) == 0
    assert _figure(from_gguf, "KV cache") == _figure(capsys.readouterr().out, "KV cache") > 0
