"""Training data in several files: a list, a folder of one split's shards, a pattern. Each file
keeps its own lines in errors; the examples are each file's, in order; unsafe sets are refused."""
import hashlib
import json

import pytest

from prefopt.cli import main
from prefopt.data import DataError, load_preferences, load_sft, read_rows
from prefopt.data.files import data_files
from prefopt.data.sft import NoRecordsError
from prefopt.train import TrainConfig
from tests.data import write_jsonl
from tests.train._fixtures import write_pairs, write_task


def _sft(i):
    return {"prompt": f"Case {i}: fever?", "completion": f"Answer {i}."}


def _ids(examples):
    return [list(e.input_ids) for e in examples]


def test_a_folder_of_one_splits_shards_is_read_in_shard_order(tmp_path, tok):
    shards = tmp_path / "data"
    shards.mkdir()
    for i in (1, 0, 2):  # written out of order: read by name
        write_jsonl(shards / f"train-0000{i}-of-00003.jsonl", [_sft(10 * i), _sft(10 * i + 1)])
    (shards / "README.md").write_text("not data")  # beside the shards, as a dataset's card is
    assert [p.name for p in data_files(shards)] == [f"train-0000{i}-of-00003.jsonl" for i in range(3)]
    examples, report = load_sft(shards, tok)
    alone = [e for i in range(3) for e in load_sft(shards / f"train-0000{i}-of-00003.jsonl", tok)[0]]
    assert _ids(examples) == _ids(alone) and len(examples) == 6
    assert report.summary() == f"{shards} (3 files): 6 of 6 records kept"
    assert report.files == [shards / f"train-0000{i}-of-00003.jsonl" for i in range(3)]
    assert data_files(str(shards / "train-*.jsonl")) == report.files  # a pattern: the same files, sorted


def test_an_applications_files_beside_the_data_are_not_read_as_data(tmp_path):
    """Excel's lock file while a workbook is open (``~$notes.xlsx``) and macOS's ``._`` file beside
    each file on a shared drive bear data files' names: a folder or a pattern read them as data
    (a workbook that does not open; a shard set of the wrong size); named alone, each is told."""
    shards = tmp_path / "data"
    shards.mkdir()
    write_jsonl(shards / "train-00000-of-00001.jsonl", [_sft(0)])
    (shards / "._train-00000-of-00001.jsonl").write_bytes(b"\x00\x05\x16\x07")
    (shards / "~$notes.xlsx").write_bytes(b"\x05clinician")
    (shards / "notes.xlsx").write_bytes(b"")
    assert [p.name for p in data_files(shards / "*.xlsx")] == ["notes.xlsx"]
    assert [p.name for p in data_files(str(shards / "train-*.jsonl"))] == ["train-00000-of-00001.jsonl"]
    (shards / "notes.xlsx").unlink()
    assert [p.name for p in data_files(shards)] == ["train-00000-of-00001.jsonl"]
    with pytest.raises(ValueError, match=r"~\$notes.xlsx: the lock file Excel keeps while a workbook is open, not "
                                         r"data: pass notes.xlsx"):
        list(read_rows(shards / "~$notes.xlsx"))
    with pytest.raises(ValueError, match=r"macOS writes beside each file .*: pass train-00000-of-00001.jsonl"):
        list(read_rows(shards / "._train-00000-of-00001.jsonl"))


def test_eval_data_that_holds_training_examples_is_warned_of(tmp_path, tok):
    """An eval file cut from the same export as the training file often shares records with it:
    the eval loss on those measures what training saw. Counted token for token (SFT examples and
    DPO pairs alike); a disjoint eval file is said nothing of."""
    import warnings

    from prefopt.train.sft import load_train_eval

    write_jsonl(tmp_path / "train.jsonl", [_sft(i) for i in range(4)])
    write_jsonl(tmp_path / "eval.jsonl", [_sft(3), _sft(9), dict(_sft(1), completion="Answer one.")])
    cfg = TrainConfig(model="m", data=str(tmp_path / "train.jsonl"), eval_data=str(tmp_path / "eval.jsonl"),
                      output_dir=str(tmp_path / "run"), progress=False)
    with pytest.warns(UserWarning, match=r"^1 of 3 eval examples are training examples too, token for token: the eval "
                                         r"loss on them measures what training saw"):
        load_train_eval(cfg, tok)
    pairs = [{"prompt": f"Case {i}?", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(3)]
    write_jsonl(tmp_path / "p.jsonl", pairs)
    write_jsonl(tmp_path / "pe.jsonl", pairs[1:] + [dict(pairs[0], rejected="worse 0")])
    cfg = TrainConfig(model="m", data=str(tmp_path / "p.jsonl"), eval_data=str(tmp_path / "pe.jsonl"),
                      output_dir=str(tmp_path / "run"), progress=False)
    with pytest.warns(UserWarning, match=r"^2 of 3 eval examples are training examples too"):
        load_train_eval(cfg, tok, loader=load_preferences)
    write_jsonl(tmp_path / "eval.jsonl", [_sft(9)])
    cfg.data, cfg.eval_data = str(tmp_path / "train.jsonl"), str(tmp_path / "eval.jsonl")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [len(x) for x in load_train_eval(cfg, tok)[:2]] == [4, 1]


def test_a_list_is_read_in_its_own_order_and_an_error_names_its_file_and_line(tmp_path, tok):
    a = write_jsonl(tmp_path / "a.jsonl", [_sft(1), _sft(2)])
    b = write_jsonl(tmp_path / "b.jsonl", [_sft(3), {"prompt": "Cough?"}])
    examples, report = load_sft([b, a], tok, skip_bad=True)
    assert _ids(examples) == _ids(load_sft([_sft(3)], tok)[0] + load_sft(a, tok)[0])
    assert (report.n_read, report.n_kept, len(report.skipped)) == (4, 3, 1)
    assert str(report.skipped[0]) == f"{b}:2: field 'completion': missing field"
    assert report.kept_lines == [1, 1, 2] and report.files == [b, a]
    assert report.kept_records == [0, 1, 2] and report.kept_files == [str(b), str(a), str(a)]
    with pytest.raises(DataError, match=rf"^{b}:2: field 'completion': missing field$"):
        load_sft([a, b], tok)


def test_a_file_with_no_usable_record_among_good_ones_is_skipped_only_when_asked(tmp_path, tok):
    good = write_jsonl(tmp_path / "good.jsonl", [_sft(1)])
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x"}, {"prompt": "y"}])
    examples, report = load_sft([good, bad], tok, skip_bad=True)
    assert len(examples) == 1 and len(report.skipped) == 2
    with pytest.raises(NoRecordsError, match=r"no usable records: .* \(2 files\): 0 of 3 records kept"):
        load_sft([bad, write_jsonl(tmp_path / "bad2.jsonl", [{"prompt": "z"}])], tok, skip_bad=True)


@pytest.mark.parametrize("layout,message", [
    ({"train-00000-of-00001.jsonl": 1, "test-00000-of-00001.jsonl": 1},
     r"a folder is read whole only when it holds one split's shards .* it holds test-00000-of-00001.jsonl, "
     r"train-00000-of-00001.jsonl\. Name the files, or a pattern such as '.*test-\*'"),
    ({"train.jsonl": 1, "eval.jsonl": 1}, r"it holds eval.jsonl, train.jsonl\. Name the files"),
    ({"train-00000-of-00001.jsonl": 1, "notes.jsonl": 1}, r"it holds notes.jsonl, train-00000-of-00001.jsonl\. "
                                                          r"Name the files, or a pattern such as '.*train-\*'"),
])
def test_a_folder_that_mixes_splits_is_refused(tmp_path, layout, message):
    for name, n in layout.items():
        write_jsonl(tmp_path / name, [_sft(i) for i in range(n)])
    with pytest.raises(ValueError, match=message):
        data_files(tmp_path)


def test_a_shard_set_with_a_gap_names_the_missing_shard(tmp_path):
    for i in (0, 2):
        write_jsonl(tmp_path / f"train-0000{i}-of-00003.jsonl", [_sft(i)])
    with pytest.raises(FileNotFoundError, match=r"train-00001-of-00003.jsonl missing: the data holds 2 of the 3 "
                                                r"shards of 'train' \(a download cut short\?\)"):
        data_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="train-00001-of-00003.jsonl missing"):  # by a pattern too
        data_files(str(tmp_path / "train-*"))
    (tmp_path / "ones").mkdir()
    for i in (1, 2):  # numbered from 1, as some tools write them
        write_jsonl(tmp_path / "ones" / f"part-{i}-of-2.jsonl", [_sft(i)])
    assert [p.name for p in data_files(tmp_path / "ones")] == ["part-1-of-2.jsonl", "part-2-of-2.jsonl"]


def test_unreadable_sets_are_refused_with_their_reason(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [_sft(1)])
    with pytest.raises(ValueError, match=r"named twice in the data .*trained on twice"):
        data_files([a, tmp_path / "." / "a.jsonl"])
    with pytest.raises(FileNotFoundError, match=r"nothing\*.jsonl: the pattern matches no file"):
        data_files(str(tmp_path / "nothing*.jsonl"))
    with pytest.raises(FileNotFoundError, match=r"gone.jsonl: no such data file"):
        data_files([a, tmp_path / "gone.jsonl"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: a folder holding no data file"):
        data_files(tmp_path / "empty")


def test_preference_shards_in_parquet_load_as_the_files_do(tmp_path, tok):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    rows = [json.loads(line) for line in write_pairs(tmp_path / "p.jsonl", n=6).read_text().splitlines()]
    folder = tmp_path / "pairs"
    folder.mkdir()
    for i in range(2):
        pd.DataFrame(rows[3 * i: 3 * i + 3]).to_parquet(folder / f"train-0000{i}-of-00002.parquet")
    pairs, report = load_preferences(folder, tok)
    alone, _ = load_preferences(tmp_path / "p.jsonl", tok)
    assert [list(p.chosen.input_ids) for p in pairs] == [list(p.chosen.input_ids) for p in alone]
    assert report.kept_lines == [1, 2, 3, 1, 2, 3]


def test_the_config_takes_one_path_or_several(tmp_path):
    a, b = (write_jsonl(tmp_path / f"{n}.jsonl", [_sft(1)]) for n in "ab")
    assert TrainConfig(model="m", output_dir="o", data=[str(a)]).data == str(a)  # one: kept as text
    assert TrainConfig(model="m", output_dir="o", data=[a, b]).data == [str(a), str(b)]
    with pytest.raises(ValueError, match=r"data: .*c.jsonl: no such data file"):
        TrainConfig(model="m", output_dir="o", data=[str(a), str(tmp_path / "c.jsonl")])
    with pytest.raises(ValueError, match=r"data: expected a path or a list of paths, got \[1\]"):
        TrainConfig(model="m", output_dir="o", data=[1])
    (tmp_path / "run.yaml").write_text(f"model: m\noutput_dir: o\ndata:\n  - {a}\n  - {b}\n")
    pytest.importorskip("yaml")
    assert TrainConfig.from_file(tmp_path / "run.yaml").data == [str(a), str(b)]


def test_sft_trains_on_every_file_and_its_card_hashes_each(tmp_path, capsys):
    model_dir, data = write_task(tmp_path, n=12)
    lines = data.read_text().splitlines()
    first = tmp_path / "first.jsonl"
    second = tmp_path / "second.jsonl"
    first.write_text("\n".join(lines[:8]) + "\n")
    second.write_text("\n".join(lines[8:]) + "\n")
    out = tmp_path / "run"
    assert main(["sft", "--model", str(model_dir), "--data", str(first), str(second), "--output-dir", str(out),
                 "--max-steps", "1", "--batch-size", "2", "--lora-r", "4", "--no-progress"]) == 0
    assert f"prefopt: {first}, {second} (2 files): 12 of 12 records kept" in capsys.readouterr().out
    assert json.loads((out / "train_config.json").read_text())["data"] == [str(first), str(second)]
    card = (out / "final" / "README.md").read_text()
    assert "- `data`: 2 files, read in this order:\n" in card
    for f in (first, second):
        assert f"  - `{f.resolve()}` (SHA-256 `{hashlib.sha256(f.read_bytes()).hexdigest()}`)" in card
    assert "- 12 training examples, 0 for evaluation" in card


def test_check_data_checks_several_files_as_one_set(tmp_path, capsys):
    model_dir, _ = write_task(tmp_path, n=1)
    a = write_jsonl(tmp_path / "a.jsonl", [_sft(1), _sft(2)])
    b = write_jsonl(tmp_path / "b.jsonl", [_sft(2), {"prompt": "Cough?"}])  # a repeat of a's second, and a bad one
    assert main(["check-data", "--model", str(model_dir), "--data", str(a), str(b)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{a}, {b} (2 files): SFT records; 3 of 4 records kept; 1 skipped: 1x missing field " \
                     f"(first: {b}:2, field 'completion')"
    assert out[1] == "  kept per file: a.jsonl 2 of 2, b.jsonl 1 of 2"
    assert f"  bad: {b}:2: field 'completion': missing field" in out
    assert "  1 record repeats an earlier one token for token" in out


def test_eval_pairs_names_each_pairs_file_and_checks_them_against_an_earlier_run(tmp_path, capsys):
    model_dir, _ = write_task(tmp_path, n=1)
    a, b = write_pairs(tmp_path / "a.jsonl", n=2), write_pairs(tmp_path / "b.jsonl", n=3, offset=2)

    def run(out, *data, against=()):
        return main(["eval-pairs", "--model", str(model_dir), "--data", *map(str, data), "--output", str(out),
                     "--n-resamples", "50", *against])

    assert run(tmp_path / "one", a, b) == 0
    rows = [json.loads(x) for x in (tmp_path / "one" / "pairs.jsonl").read_text().splitlines()]
    assert [(r["file"], r["line"]) for r in rows] == [(str(a), 1), (str(a), 2), (str(b), 1), (str(b), 2), (str(b), 3)]
    assert json.loads((tmp_path / "one" / "metrics.json").read_text())["data"] == f"{a}, {b}"
    assert run(tmp_path / "two", a, b, against=("--against", str(tmp_path / "one"))) == 0
    capsys.readouterr()
    assert run(tmp_path / "three", b, a, against=("--against", str(tmp_path / "one"))) == 2
    assert "that evaluation scored other pairs (their files or lines in the data differ)" in capsys.readouterr().err
    assert run(tmp_path / "single", a) == 0  # one file: rows name their line alone, as before
    assert "file" not in json.loads((tmp_path / "single" / "pairs.jsonl").read_text().splitlines()[0])


def test_a_resumed_run_needs_its_files_in_their_order(tmp_path):
    from prefopt.train import run_sft

    model_dir, data = write_task(tmp_path, n=8)
    lines = data.read_text().splitlines()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("\n".join(lines[:4]) + "\n")
    b.write_text("\n".join(lines[4:]) + "\n")

    def cfg(files, **kw):
        return TrainConfig(model=str(model_dir), data=[str(f) for f in files], output_dir=str(tmp_path / "run"),
                           batch_size=2, lora_r=4, progress=False, save_every=1, **kw)

    run_sft(cfg([a, b], max_steps=2))
    with pytest.raises(ValueError, match=r"other training data \(8 examples then and now, but other tokens\): the "
                                         r"data changed \(a file edited, or files named in another order\)"):
        run_sft(cfg([b, a], max_steps=3, resume=True))
    summary = run_sft(cfg([a, b], max_steps=3, resume=True))
    assert (summary["resumed_from_step"], summary["total_steps"]) == (1, 3)  # the last checkpoint: step 1


def test_a_file_of_an_unknown_format_among_the_paths_is_named_as_such(tmp_path, tok, capsys):
    """Paths stay paths whatever their names (they were once taken for records: "expected a dict")."""
    a = write_jsonl(tmp_path / "a.jsonl", [_sft(1)])
    (tmp_path / "notes.txt").write_text("x\n")
    with pytest.raises(ValueError, match=r"notes.txt: unknown data format '\.txt'"):
        load_sft([str(a), str(tmp_path / "notes.txt")], tok)
    model_dir, _ = write_task(tmp_path, n=1)
    assert main(["check-data", "--model", str(model_dir), "--data", str(a), str(tmp_path / "notes.txt")]) == 2
    assert "notes.txt: unknown data format '.txt'" in capsys.readouterr().err
    assert load_sft([str(tmp_path / "a*")], tok)[1].files == [a]  # a pattern in a list is a path too


def test_text_formats_compressed_as_a_whole_read_as_the_files_do(tmp_path, tok, capsys):
    """``train.jsonl.gz``, ``notes.csv.xz``, ``pairs.json.bz2``: the same examples and lines as
    uncompressed (a shard folder of them too, and a run trains from one and hashes the file it
    read); a file that does not decompress, a compressed Parquet file and an unknown inner format
    are named as such."""
    import bz2
    import gzip
    import lzma

    from prefopt.evaluate.new_records import table_format

    rows = [_sft(i) for i in range(3)]
    plain = {".jsonl": write_jsonl(tmp_path / "a.jsonl", rows), ".json": tmp_path / "a.json",
             ".csv": tmp_path / "a.csv", ".tsv": tmp_path / "a.tsv"}
    plain[".json"].write_text(json.dumps(rows, indent=1))
    plain[".csv"].write_text("prompt;completion\n" + "".join(f"{r['prompt']};{r['completion']}\n" for r in rows))
    plain[".tsv"].write_text("prompt\tcompletion\n" + "".join(f"{r['prompt']}\t{r['completion']}\n" for r in rows))
    want = _ids(load_sft(plain[".jsonl"], tok)[0])
    for path, (zip_suffix, module) in zip(plain.values(), [(".gz", gzip), (".xz", lzma), (".bz2", bz2), (".gz", gzip)]):
        packed = tmp_path / f"z{path.name}{zip_suffix}"
        packed.write_bytes(module.compress(path.read_bytes()))
        examples, report = load_sft(packed, tok)
        assert _ids(examples) == want and report.n_kept == 3, packed
    (tmp_path / "z.jsonl.gz").write_bytes(gzip.compress(b'{"prompt": "x", "completion": "y"}\n{"prompt": "x"}\n'))
    with pytest.raises(DataError, match=r"z.jsonl.gz:2: field 'completion': missing field"):
        load_sft(tmp_path / "z.jsonl.gz", tok)
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(2):
        (shards / f"train-0000{i}-of-00002.jsonl.gz").write_bytes(gzip.compress(json.dumps(rows[i]).encode() + b"\n"))
    assert len(load_sft(shards, tok)[0]) == 2
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match=r"bad.jsonl.gz: not a readable .gz file"):
        load_sft(tmp_path / "bad.jsonl.gz", tok)
    (tmp_path / "t.parquet.gz").write_bytes(gzip.compress(b"PAR1"))
    with pytest.raises(ValueError, match=r"t.parquet.gz: a .parquet file compressed again"):
        load_sft(tmp_path / "t.parquet.gz", tok)
    (tmp_path / "notes.txt.gz").write_bytes(gzip.compress(b"x\n"))
    with pytest.raises(ValueError, match=r"unknown data format '\.txt'.*also compressed: \.gz, \.bz2, \.xz"):
        load_sft(tmp_path / "notes.txt.gz", tok)
    assert table_format(tmp_path / "new.csv.gz") == "csv" and table_format(tmp_path / "new.jsonl.xz") == "jsonl"
    model_dir, data = write_task(tmp_path, n=4)
    packed = tmp_path / "train.jsonl.gz"
    packed.write_bytes(gzip.compress(data.read_bytes()))
    out = tmp_path / "run"
    assert main(["sft", "--model", str(model_dir), "--data", str(packed), "--output-dir", str(out), "--max-steps", "1",
                 "--batch-size", "2", "--lora-r", "4", "--no-progress"]) == 0
    assert f"prefopt: {packed}: 4 of 4 records kept" in capsys.readouterr().out
    assert hashlib.sha256(packed.read_bytes()).hexdigest() in (out / "final" / "README.md").read_text()
