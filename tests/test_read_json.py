"""A JSON file that cannot be read (cut short by a crash, edited by hand, damaged) is refused with
its path, line and column, where ``json``'s own error names no file; commands say so on one line."""
import copy
import json

import pytest

from prefopt.cli import main
from prefopt.fileio import read_json, read_jsonl
from prefopt.model.config import ModelConfig
from prefopt.model.hub import _stamp


@pytest.mark.parametrize("content, words", [
    ('{\n  "seed": 1,\n  "task": "por', "(Unterminated string starting at: line 3, column 11)"),
    ("", "the file is empty"),
    ("  \n", "the file is empty"),
    ('{"a": 1} x', "(Extra data: line 1, column 10)"),
])
def test_text_that_is_not_json_is_refused_with_its_file_line_and_column(tmp_path, content, words):
    path = tmp_path / "compare_config.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="not valid JSON") as e:
        read_json(path)
    assert str(e.value).startswith(f"{path}: ") and words in str(e.value)


def test_bytes_that_are_not_text_are_refused_with_the_file(tmp_path):
    path = tmp_path / "report.json"
    path.write_bytes(b'{"a": \xff\xfe}')
    with pytest.raises(ValueError, match=r"report.json: not JSON \(byte 6 is not UTF-8 text\)"):
        read_json(path)


def test_a_value_of_another_kind_is_refused_and_any_kind_passes_where_asked(tmp_path):
    path = tmp_path / "split.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="split.json: holds a list where an object was expected"):
        read_json(path)
    assert read_json(path, None) == [1, 2]
    path.write_text('{"test": ["a"]}')
    assert read_json(path) == {"test": ["a"]}


def test_a_json_lines_file_names_its_bad_line(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"id": "a"}\n\n{"id": "b"}\n{"id": \n')
    with pytest.raises(ValueError, match=r"predictions.jsonl: line 4: not valid JSON \(Expecting value: column 8\)"):
        read_jsonl(path)
    path.write_text('{"id": "a"}\n[1]\n')
    with pytest.raises(ValueError, match="predictions.jsonl: line 2: holds a list, not an object"):
        read_jsonl(path)
    path.write_text('{"id": "a"}\n\n{"id": "b"}\n')
    assert read_jsonl(path) == [{"id": "a"}, {"id": "b"}]


def test_a_model_config_cut_short_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama",')
    with pytest.raises(ValueError, match=r"config.json: not valid JSON \(Expecting property name enclosed in double "
                                         r"quotes: line 1, column 24\)"):
        ModelConfig.from_hf(tmp_path)


def test_a_damaged_import_stamp_reads_as_none_so_the_import_is_made_again(tmp_path):
    path = tmp_path / ".prefopt-import.json"
    path.write_bytes(b"\0" * 16)  # what a power cut may leave
    assert _stamp(path) == {}
    assert _stamp(tmp_path / "absent.json") == {}
    path.write_text('{"sha256": "x"}')
    assert _stamp(path) == {"sha256": "x"}


def _finished_run(folder, seed):
    folder.mkdir(parents=True)
    (folder / "compare_config.json").write_text(json.dumps({"task": "portal", "model": "m", "seed": seed}))
    (folder / "report.json").write_text("{}")
    return folder


def test_a_command_reading_a_damaged_run_file_says_which_on_one_line(tmp_path, capsys):
    a, b = _finished_run(tmp_path / "a", 0), _finished_run(tmp_path / "b", 1)
    (b / "compare_config.json").write_text('{"task": "portal", "se')
    assert main(["pool-seeds", str(a), str(b), "--output", str(tmp_path / "pooled")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{b / 'compare_config.json'}: not valid JSON (Unterminated string" in err
    assert not (tmp_path / "pooled").exists()


def test_compare_seeds_over_a_damaged_run_names_its_config_before_any_work(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "compare_config.json").write_text("")
    code = main(["compare", "--task", "portal", "--model", str(tmp_path / "no-model"), "--output", str(run),
                 "--seeds", "0,1"])
    assert code == 2
    assert f"{run / 'compare_config.json'}: not valid JSON (the file is empty)" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["compare_config.json"]


def test_a_field_the_file_lacks_is_named_with_the_file_and_its_place(tmp_path):
    path = tmp_path / "compare_config.json"
    value = {"task": "portal", "decoding": {"max_new_tokens": 8}, "runs": [{"seed": 0}, [{"seed": 1}]]}
    path.write_text(json.dumps(value))
    config = read_json(path)
    assert config == value and json.loads(json.dumps(config)) == value
    assert config.get("seed") is None and "seed" not in config and config["decoding"].get("top_p", 1) == 1
    cases = [(lambda: config["seed"], 'no "seed" field:'),
             (lambda: config["decoding"]["top_p"], 'no "top_p" field in "decoding":'),
             (lambda: config["runs"][0]["model"], 'no "model" field in "runs"[0]:'),
             (lambda: config["runs"][1][0]["model"], 'no "model" field in "runs"[1][0]:'),
             (lambda: copy.deepcopy(config)["decoding"]["top_p"], 'no "top_p" field in "decoding":')]
    for get, words in cases:
        with pytest.raises(KeyError) as e:  # a KeyError still, as a plain dict's, and a ValueError for the commands
            get()
        assert isinstance(e.value, ValueError)
        assert str(e.value) == f"{path}: {words} edited by hand, or written by another program or version?"
    path.write_text('[{"a": 1}]')
    with pytest.raises(KeyError, match=r'compare_config.json: no "b" field in item 0:'):
        read_json(path, list)[0]["b"]


def test_a_json_lines_field_is_named_with_its_line(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"id": "a", "output": "x"}\n\n{"id": "b"}\n')
    records = read_jsonl(path)
    assert records[0]["output"] == "x"
    with pytest.raises(KeyError, match=rf'^{path}: line 3: no "output" field: edited by hand'):
        records[1]["output"]


def test_a_command_reading_a_run_file_without_a_field_it_needs_says_which_on_one_line(tmp_path, capsys):
    a, b = _finished_run(tmp_path / "a", 0), _finished_run(tmp_path / "b", 1)
    assert main(["pool-seeds", str(a), str(b), "--output", str(tmp_path / "pooled")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f'{a / "report.json"}: no "n_test" field: edited by hand' in err
    assert not (tmp_path / "pooled").exists()
    for run in (a, b):
        (run / "compare_config.json").write_text(json.dumps({"model": "m", "seed": int(run.name == "b")}))
    assert main(["pool-seeds", str(a), str(b), "--output", str(tmp_path / "pooled")]) == 2
    assert f'{a / "compare_config.json"}: no "task" field' in capsys.readouterr().err


def test_eval_split_file_without_a_test_list_is_refused_as_not_a_split_file(tmp_path):
    from types import SimpleNamespace

    from prefopt.evaluate.cli import _from_split_file

    records = [SimpleNamespace(id="a"), SimpleNamespace(id="b")]
    path = tmp_path / "split.json"
    for content in ('{"train": ["a"]}', '{"test": "a"}'):
        path.write_text(content)
        with pytest.raises(ValueError, match=rf'^{path}: not a compare split.json \(no "test" list of record ids\)$'):
            _from_split_file(records, str(path), None)
    path.write_text('{"test": ["b", "a"]}')
    assert [r.id for r in _from_split_file(records, str(path), None)] == ["b", "a"]
