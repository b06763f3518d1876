"""``benchmarks/check_chat_templates.py`` on a folder of the tests' own templates: each rendering
compared with transformers', each response's cut told (prefix, continued, refused), a
difference from transformers' making it fail."""
import json

from tests._tiny import CHATML, LLAMA31, R1_STYLE, THINKING
from tests.benchmarks import load_script


def _load():
    return load_script("check_chat_templates")


def test_the_check_reports_each_template_and_fails_on_a_difference(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "templates"
    folder.mkdir()
    no_system = CHATML.replace("{% for message in messages %}", "{% for message in messages %}{% if message['role'] "
                               "== 'system' %}{{ raise_exception('no system role') }}{% endif %}")
    for name, text in {"chatml": CHATML, "dated": LLAMA31, "r1": R1_STYLE, "thinking": THINKING,
                       "no-system": no_system, "broken": "{% if messages %}"}.items():
        (folder / f"{name}.jinja").write_text(text)
    check = _load()
    out = tmp_path / "report.json"
    assert check.main(["--templates", str(folder), "--json", str(out)]) == 1  # the broken one
    report = json.loads(out.read_text())
    assert "TemplateSyntaxError" in report["broken"]["error"]
    for name in ("chatml", "dated", "r1", "thinking", "no-system"):
        assert report[name]["same"] == report[name]["total"] > 0 and report[name]["differ"] == []
    assert report["thinking"]["vars"] == ["enable_thinking"] and report["thinking"]["total"] == 18  # 3 settings
    cuts = {name: [v.split(":")[0] for v in report[name]["boundary"]["plain"].values()] for name in report
            if name != "broken"}
    assert cuts["chatml"] == cuts["dated"] == cuts["thinking"] == ["prefix"] * 3
    assert cuts["r1"] == ["continued"] * 3 and report["r1"]["opens"] == {"plain": True}
    assert "<think>\\n\\n</think>\\n\\nEmergency department now" in report["r1"]["boundary"]["plain"]["user"]
    assert cuts["no-system"] == ["prefix", "refused", "prefix"]  # its own refusal, as transformers' too
    # a response written with its reasoning keeps it, and the answer, once: R1's prompt opened the block; the
    # thinking template drops a finished turn's reasoning, so its responses are continued (3 settings x 3)
    assert report["r1"]["reasoning_kept"] == "3/3" and report["thinking"]["reasoning_kept"] == "9/9"
    assert report["no-system"]["reasoning_kept"] == "2/2"
    # two assistant turns, the first with its reasoning: one sequence where each turn is a span of the whole;
    # per turn where a finished turn loses its reasoning (R1; the thinking template); the no-system template's
    # own refusal is of a system prompt, which this conversation lacks
    assert report["chatml"]["turns"] == report["dated"]["turns"] == report["no-system"]["turns"] == {
        "plain": "one sequence"}
    assert report["r1"]["turns"] == {"plain": "per turn"}
    assert set(report["thinking"]["turns"].values()) == {"per turn"}
    n = sum(report[name]["total"] for name in report if name != "broken")
    out_text = capsys.readouterr().out
    assert "two assistant turns, over every template and setting: 3 one sequence, 4 per turn, 0 refused" in out_text
    assert (f"6 templates, {n} of {n + 1} renderings equal to transformers'; 1 with a difference or a syntax "
            "prefopt cannot parse") in out_text

    (folder / "broken.jinja").unlink()
    real = check._theirs
    monkeypatch.setattr(check, "_theirs", lambda t, m, g, s: real(t, m, g, s) + ("!" if t == R1_STYLE else ""))
    assert check.main(["--templates", str(folder), "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    assert report["r1"]["same"] == 0 and len(report["r1"]["differ"]) == report["r1"]["total"] == 6
    assert all(report[n]["differ"] == [] for n in report if n != "r1")
    monkeypatch.setattr(check, "_theirs", real)
    assert check.main(["--templates", str(folder)]) == 0
