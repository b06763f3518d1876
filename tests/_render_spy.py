"""What text generate and check-data render from a model's chat template, for tests of the flags
that change it (``--chat-date``, ``--chat-vars``)."""
import json
from pathlib import Path

ASKED = [{"role": "user", "content": "Chest pain since noon. Who should see me?"}]


def spy_rendering(command: str, model_dir: Path, tmp_path: Path, monkeypatch) -> tuple[list[str], list[str]]:
    """``(args, rendered)``: the command line of ``generate`` or ``check-data`` on ``model_dir``,
    and the list each run appends its text to (generate: the prompt it answers, no model run;
    check-data: the generation prompt of :data:`ASKED` under the tokenizer it checks with)."""
    import prefopt.data.check
    import prefopt.model
    from prefopt.tokenizer import load_tokenizer

    rendered = []
    if command == "generate":
        def fake_generate(model, prompts, **kw):
            rendered.append(load_tokenizer(model_dir).decode(prompts[0], skip_special_tokens=False))
            return [[]]
        monkeypatch.setattr(prefopt.model, "generate", fake_generate)
        return ["generate", "--model", str(model_dir), "--prompt", "Chest pain since noon.", "--greedy"], rendered
    check = prefopt.data.check.check_data

    def spy(path, tok, **kw):
        rendered.append(tok.apply_chat_template(ASKED, add_generation_prompt=True, tokenize=False))
        return check(path, tok, **kw)
    monkeypatch.setattr(prefopt.data.check, "check_data", spy)
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt": "Chest pain since noon.", "completion": "Emergency."}) + "\n")
    return ["check-data", "--model", str(model_dir), "--data", str(data), "--max-length", "200"], rendered
