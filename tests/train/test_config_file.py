"""A training config from a file and from Python: values of the wrong kind, typos and other
libraries' names get one clear message (file, line, setting), never a traceback."""
import json
from pathlib import Path

import pytest

from prefopt.train import DPOConfig, TrainConfig
from prefopt.train.config_file import typed_value


@pytest.fixture
def data(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("{}\n")
    return p


def _errors(path) -> str:
    with pytest.raises(ValueError) as e:
        DPOConfig.from_file(path)
    return str(e.value)


def test_typed_value_by_kind():
    assert typed_value("float", "1e-4") == 1e-4 and isinstance(typed_value("float", 2), float)
    assert typed_value("int", "1e3") == 1000 and typed_value("int | None", 7.0) == 7
    assert typed_value("int", 2**60 + 1) == 2**60 + 1  # not rounded through a float
    assert typed_value("int | None", None) is None and typed_value("str | None", Path("a/b")) == "a/b"
    assert typed_value("list[str]", "q_proj, v_proj") == ["q_proj", "v_proj"]
    assert typed_value("list[str]", ("q_proj",)) == ["q_proj"]
    assert typed_value("list[str]", ["q_proj,v_proj", "lm_head"]) == ["q_proj", "v_proj", "lm_head"]  # as the CLI gives it
    for kind, value, why in [("float", "fast", "expected a number, got 'fast'"), ("int", 2.5, "whole number"),
                             ("int", True, "expected a number"), ("bool", "yes please", "true or false"),
                             ("float", None, "needs a value"), ("str", 3, "expected text"),
                             ("list[str]", [], "list of names"), ("list[str]", ["q", 1], "list of names")]:
        with pytest.raises(ValueError, match=why):
            typed_value(kind, value)


def test_a_yaml_file_with_yamls_own_readings_loads(tmp_path, data):
    """YAML reads ``1e-4`` (no dot) as text and ``q_proj, v_proj`` as one string: both are what
    the user meant, so both load."""
    pytest.importorskip("yaml")
    p = tmp_path / "c.yaml"
    p.write_text(f"model: m\ndata: {data}\noutput_dir: o\nlr: 1e-4\nmax_steps: 1e3\nlora_targets: q_proj, v_proj\n")
    cfg = DPOConfig.from_file(p)
    assert (cfg.lr, cfg.max_steps, cfg.lora_targets) == (1e-4, 1000, ["q_proj", "v_proj"])
    p.rename(tmp_path / "C.YML")  # a Windows-made name
    assert DPOConfig.from_file(tmp_path / "C.YML").lr == 1e-4
    assert isinstance(cfg.lr, float) and isinstance(cfg.max_steps, int)


def test_every_problem_in_a_file_is_named_with_its_line(tmp_path, data):
    pytest.importorskip("yaml")
    p = tmp_path / "c.yaml"
    p.write_text(f"model: m\ndata: {data}\noutput_dir: o\nlr: fast\nmax_steps: 2.5\nlora: maybe\n"
                 "learning_rate: 1\nbeat: 0.2\nsomething: 1\nwarmup_steps:\n")
    msg = _errors(p)
    for part in (f"{p}:4: lr: expected a number, got 'fast'", f"{p}:5: max_steps: expected a whole number",
                 f"{p}:6: lora: expected true or false", f"{p}:7: unknown setting 'learning_rate' (prefopt calls it 'lr')",
                 f"{p}:8: unknown setting 'beat' (did you mean 'beta'?)", f"{p}:9: unknown setting 'something'\n",
                 f"{p}:10: warmup_steps: needs a value"):
        assert part in msg + "\n", part
    j = tmp_path / "c.json"
    j.write_text('{"model": "m", "output_dir": "o",\n "lora_r": "four"}')
    assert f"{j}:2: lora_r: expected a number, got 'four'" in _errors(j)
    j.write_bytes(b"\xef\xbb\xbf" + b'{"model": "m", "output_dir": "o", "lora_r": 4}')  # saved by Notepad, with a BOM
    assert DPOConfig.from_file(j).lora_r == 4
    j.write_bytes('{"model": "Modèle"}'.encode("latin-1"))
    assert f"{j}:1: not utf-8 text (byte 0xe8 at column 15); save the file as UTF-8" in _errors(j)


def test_a_broken_or_missing_file_is_named(tmp_path):
    pytest.importorskip("yaml")
    cases = {"a.yaml": ("model: [m\n", "a.yaml:2: not valid YAML"),
             "b.json": ('{"model": "m",\n}', "b.json:2: not valid JSON"),
             "c.yaml": ("- model\n- lr\n", "c.yaml: expected settings as name: value pairs, got a list"),
             "d.json": ("[1]", "got a list"),
             "e.yaml": ("lr: 0.1\n", "e.yaml: missing model (--model), output_dir (--output-dir): set them")}
    for name, (text, part) in cases.items():
        (tmp_path / name).write_text(text)
        assert part in _errors(tmp_path / name), name
    assert "nothing.yaml: no such config file" in _errors(tmp_path / "nothing.yaml")
    (tmp_path / "f.yaml").write_text("")  # empty: every setting from the command line
    assert DPOConfig.from_file(tmp_path / "f.yaml", model="m", output_dir="o").lr == 5e-5


def test_a_setting_given_twice_is_named_at_its_second_line(tmp_path, data):
    """YAML's safe_load and json keep the last of a key given twice: a second ``lr:`` further
    down a long file won without a word. A YAML merge (``<<: *defaults``) may still be overridden."""
    pytest.importorskip("yaml")
    (tmp_path / "a.yaml").write_text(f"model: m\noutput_dir: o\ndata: {data}\nlr: 1e-4\nbeta: 0.1\nlr: 3e-3\n")
    assert _errors(tmp_path / "a.yaml") == (f"{tmp_path}/a.yaml:6: 'lr' is set twice (first on line 4): the file "
                                            "would keep the last value without a word; keep one")
    (tmp_path / "b.yaml").write_text(f"model: m\noutput_dir: o\ndata: {data}\ncolumns:\n  prompt: a\n  prompt: b\n")
    assert "b.yaml:6: 'prompt' is set twice (first on line 5)" in _errors(tmp_path / "b.yaml")
    (tmp_path / "c.json").write_text(json.dumps({"model": "m"})[:-1] + ',\n "model": "n"}')
    assert "c.json:2: 'model' is set twice (first on line 1)" in _errors(tmp_path / "c.json")
    (tmp_path / "d.yaml").write_text("base: &b\n  lr: 1.0e-4\n  beta: 0.2\nrun:\n  <<: *b\n  lr: 3.0e-3\n")
    import yaml

    from prefopt.train.config_file import _once_loader

    assert yaml.load((tmp_path / "d.yaml").read_text(), Loader=_once_loader(yaml))["run"] == {"lr": 3e-3, "beta": 0.2}


def test_python_values_of_the_wrong_kind_are_named(data):
    with pytest.raises(ValueError) as e:
        DPOConfig(model="m", output_dir="o", lr="fast", beta=None, lora=1)
    msg = str(e.value)
    assert "lr: expected a number" in msg and "beta: needs a value" in msg and "lora: expected true or false" in msg
    cfg = TrainConfig(model="m", output_dir=Path("runs") / "x", data=data, lora_targets="q_proj")
    assert cfg.output_dir == "runs/x" and cfg.data == str(data) and cfg.lora_targets == ["q_proj"]
    assert json.loads(json.dumps(cfg.to_dict()))["output_dir"] == "runs/x"  # train_config.json can be written


def test_an_unknown_compare_setting_names_the_one_meant():
    from prefopt.evaluate.compare_config import CompareConfig

    cfg = CompareConfig(task="portal", model="m", output="o", overrides={"max_trian": 3})
    with pytest.raises(ValueError, match=r"\['max_trian'\] \(did you mean 'max_train'\?\); the settings: batch_size"):
        cfg.settings()


def test_a_relative_data_path_that_is_missing_says_where_it_was_looked_for(tmp_path, monkeypatch):
    """A run's train_config.json reused from another folder: its relative ``data`` was the run's
    current folder's; the error says paths are read from here, not from the file's folder."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_config.json").write_text(json.dumps({"model": "m", "output_dir": "o", "data": "d/train.jsonl"}))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match=r"data: d/train.jsonl: no such data file\n  \(.*train_config.json: its relative paths, "
                                         r"such as d/train.jsonl, are read from the current folder, .*elsewhere, not"):
        TrainConfig.from_file(run / "train_config.json")
    with pytest.raises(ValueError) as e:  # an absolute path: nothing to add
        TrainConfig.from_file(run / "train_config.json", data=str(tmp_path / "none.jsonl"))
    assert "relative paths" not in str(e.value)


def test_columns_load_from_a_mapping_entries_or_text_and_bad_ones_are_named(tmp_path, data):
    """``columns`` ({field: column}) from a YAML mapping, a list of FIELD=COLUMN entries (the
    flag's form) or one line of them; a column name may hold spaces."""
    pytest.importorskip("yaml")
    want = {"prompt": "Patient message", "chosen": "Clinician answer"}
    for text in ("columns:\n  prompt: Patient message\n  chosen: Clinician answer\n",
                 "columns:\n  - prompt=Patient message\n  - chosen = Clinician answer\n",
                 "columns: prompt=Patient message, chosen=Clinician answer\n"):
        p = tmp_path / "c.yaml"
        p.write_text(f"model: m\ndata: {data}\noutput_dir: o\n{text}")
        assert DPOConfig.from_file(p).columns == want
    assert TrainConfig(model="m", output_dir="o").columns == {}
    with pytest.raises(ValueError, match=r"columns: promt=q: no field 'promt' \(did you mean 'prompt'\?\)"):
        TrainConfig(model="m", output_dir="o", columns=["promt=q", "chosen=a"])
    with pytest.raises(ValueError, match=r"columns: 'chosen' is given twice"):
        TrainConfig(model="m", output_dir="o", columns=["chosen=a", "chosen=b"])
    with pytest.raises(ValueError, match=r"columns: 'prompt': expected FIELD=COLUMN, such as prompt=question"):
        TrainConfig(model="m", output_dir="o", columns=["prompt"])
    with pytest.raises(ValueError, match=r"columns: expected FIELD=COLUMN entries or a mapping, got \{'prompt': 3\}"):
        TrainConfig(model="m", output_dir="o", columns={"prompt": 3})
    with pytest.raises(ValueError, match=r"columns: prompt=: no column given"):
        TrainConfig(model="m", output_dir="o", columns=["prompt="])
    from prefopt.cli import parse_args

    args = parse_args(["dpo", "--model", "m", "--output-dir", "o", "--columns", "prompt=Patient message",
                       "chosen=Clinician answer"])
    assert typed_value("dict[str, str]", args.columns) == want


def test_trl_s_packing_names_point_to_pack(tmp_path, data):
    """TRL's ``packing`` and ``padding_free`` are prefopt's ``pack`` (SFT, on by default)."""
    from prefopt.train import TrainConfig

    j = tmp_path / "c.json"
    for name in ("packing", "padding_free"):
        j.write_text(f'{{"model": "m", "data": "{data}", "output_dir": "o", "{name}": true}}')
        with pytest.raises(ValueError, match=rf"unknown setting '{name}' \(prefopt calls it 'pack'\)"):
            TrainConfig.from_file(j)
    j.write_text(f'{{"model": "m", "data": "{data}", "output_dir": "o", "pack": false}}')
    assert TrainConfig.from_file(j).pack is False and TrainConfig(model="m", data=str(data), output_dir="o").pack
