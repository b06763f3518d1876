"""check-data --task reads past bad rows in one read of the file, for every task's reader; eval
and compare still stop at the first bad row."""
import json

import pytest

from prefopt.data import DataError
from prefopt.tasks import Task, get_task
from prefopt.tasks._io import need, read_past_bad_rows, table
from tests._tiny import build_hf_model


def _portal(tmp):
    path = tmp / "data.jsonl"
    rows = [{"message": f"m{i}", "urgency": "urgent" if i % 3 else "later", "staff": "nurse"} for i in range(30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows).replace('"m7"', '"m7",,'))  # line 8: malformed JSON
    return "portal", {}, path, {i + 1 for i in range(30) if i % 3 == 0} | {8}


def _ktas(tmp):
    path = tmp / "data.csv"
    lines = ["Sex;Age;Chief_complain;KTAS_expert"] + [f"1;40;{'pain' if i % 4 else ''};{3 if i % 5 else 9}"
                                                     for i in range(30)]
    path.write_text("\n".join(lines) + "\n", encoding="latin-1")
    return "ktas", {}, path, {i + 2 for i in range(30) if i % 4 == 0 or i % 5 == 0}


def _medqa(tmp):
    path = tmp / "data.jsonl"
    rows = [{"question": "q", "options": {"A": "x", "B": "y"}, "answer_idx": "A" if i % 4 else "E"} for i in range(30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return "medqa", {}, path, {i + 1 for i in range(30) if i % 4 == 0}


def _pubmedqa(tmp):
    path = tmp / "data.csv"
    path.write_text("question,context,answer\n" + "".join(f"q{i}?,ctx,{'yes' if i % 4 else 'perhaps'}\n"
                                                       for i in range(30)))
    return "pubmedqa", {}, path, {i + 2 for i in range(30) if i % 4 == 0}


def _pqa_l(tmp):
    """PQA-L's own file: one JSON object of records by PubMed id, one line a key (indent=1, as published)."""
    path = tmp / "ori_pqal.json"
    rows = {str(100 + i): {"QUESTION": f"q{i}?", "CONTEXTS": ["c"], "final_decision": "yes" if i % 4 else "perhaps"}
            for i in range(30)}
    path.write_text(json.dumps(rows, indent=1))
    return "pubmedqa", {}, path, {2 + 7 * i for i in range(30) if i % 4 == 0}  # each record 7 lines from line 2


def _meqsum(tmp):
    path = tmp / "data.jsonl"
    rows = [{"CHQ": "question" if i % 6 else " ", "Summary": "s"} for i in range(30)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return "meqsum", {}, path, {i + 1 for i in range(30) if i % 6 == 0}


def _text(tmp):
    path = tmp / "data.csv"
    path.write_text("note,urgency\n" + "".join(f"note {i},{'urgent' if i % 3 else 'later'}\n" for i in range(30)))
    return "text_classification", {"text_column": "note", "label_column": "urgency",
                                   "labels": "urgent,routine"}, path, {i + 2 for i in range(30) if i % 3 == 0}


def _numeric(tmp):
    path = tmp / "data.csv"
    path.write_text("age,bp,label\n" + "".join(f"{40 + i},{120 if i % 5 else ''},{'yes' if i % 7 else ''}\n"
                                                 for i in range(30)))
    return "numeric_table", {"label_column": "label"}, path, {i + 2 for i in range(30) if i % 7 == 0}


def _uci(tmp):
    path = tmp / "processed.test.data"
    good = "63.0,1.0,1.0,145.0,233.0,1.0,2.0,150.0,0.0,2.3,3.0,0.0,6.0,0"
    path.write_text("".join((good if i % 4 else "63.0,1.0") + "\n" for i in range(30)))
    return "uci_heart", {}, path, {i + 1 for i in range(30) if i % 4 == 0}


@pytest.mark.parametrize("make", [_portal, _ktas, _medqa, _pubmedqa, _pqa_l, _meqsum, _text, _numeric, _uci])
def test_every_bad_row_is_found_in_one_read(tmp_path, monkeypatch, make):
    """Each task's reader sets its bad rows aside and reads on: one read of the file lists every
    bad row, in file order, and keeps every good one (it used to read the file once more per bad
    row); the first 10 alone stop the read early. Without check-data the first bad row stops."""
    import prefopt.data.readers
    import prefopt.tasks._io
    import prefopt.tasks.reasoning

    name, options, path, bad_lines = make(tmp_path)
    reads = []
    real = prefopt.tasks._io.read_rows
    monkeypatch.setattr(prefopt.tasks._io, "read_rows", lambda *a, **k: reads.append(a) or real(*a, **k))
    keyed = prefopt.tasks.reasoning.keyed_json  # (PQA-L's object of records by id)
    monkeypatch.setattr(prefopt.tasks.reasoning, "keyed_json", lambda *a, **k: reads.append(a) or keyed(*a, **k))
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: opened.append(f) or real_open(f, *a, **k))
    task = get_task(name, **options)
    records, bad = read_past_bad_rows(task, str(path))
    assert [e.line for e in bad] == sorted(bad_lines) and len(bad) >= 5
    assert len(records) == 30 - len(bad_lines)
    assert len(reads) + opened.count(path) == 1  # one read of the file, however many rows are bad
    stopped, first = read_past_bad_rows(task, str(path), limit=3)
    assert stopped is None and [e.line for e in first] == sorted(bad_lines)[:4]
    with pytest.raises(DataError) as e:
        task.read(str(path))
    assert e.value.line == min(bad_lines)


class _OwnLoop(Task):
    """A task written without ``one_row``: its row errors leave its loop."""

    name = "own_loop"

    def load(self, path, labelled=True):
        return [need(row, "text", path, line) for line, row in table(path)]


def test_a_task_whose_loop_does_not_set_rows_aside_is_read_again_past_each(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": "" if i in (2, 5) else "t"}) + "\n" for i in range(8)))
    records, bad = read_past_bad_rows(_OwnLoop(), str(path))
    assert records == ["t"] * 6 and [(e.line, e.field) for e in bad] == [(3, "text"), (6, "text")]


def test_a_lone_surrogate_in_a_tasks_text_is_named_by_line_and_field(tmp_path):
    """Half of an emoji's UTF-16 pair (an exporter's cut) used to fail inside the tokenizer, at a
    position in the rendered prompt; the task's reader names the row and field."""
    path = tmp_path / "data.jsonl"
    rows = [{"CHQ": "question", "Summary": "s"}, {"CHQ": "chest pain \ud83d", "Summary": "s"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"data.jsonl:2: field 'CHQ': not valid Unicode: a lone surrogate '\\ud83d' at "
                                        r"character 12"):
        get_task("meqsum").read(str(path))


def test_a_spreadsheets_error_value_is_refused_as_a_label_or_text_and_text_that_mentions_one_is_read(tmp_path):
    """A label column filled by a lookup formula holds ``#N/A`` where the lookup found nothing:
    read as it was, it became one more class to learn; a text that only mentions one is text."""
    path = tmp_path / "notes.csv"
    path.write_text("note,urgency\nchest pain,urgent\nrefill,#N/A\nrash,routine\n#DIV/0!,urgent\n"
                    "N/A,routine\nsee #N/A above,urgent\n")
    task = get_task("text_classification", text_column="note", label_column="urgency")
    with pytest.raises(DataError, match=r"notes.csv:3: field 'urgency': #N/A: a spreadsheet's error value"):
        task.read(str(path))
    records, bad = read_past_bad_rows(task, str(path))
    assert [(e.line, e.field) for e in bad] == [(3, "urgency"), (5, "note")]
    assert [r.id for r in records] == ["notes.csv:2", "notes.csv:4", "notes.csv:6", "notes.csv:7"]
    assert records[3].prompt.endswith("\n\nsee #N/A above") and {r.target for r in records} == {"urgent", "routine"}


def test_a_tasks_data_reads_from_a_workbook_or_a_compressed_file_as_from_its_file(tmp_path):
    """The bundled portal messages as an Excel sheet and gzipped: the same records; a bad row's
    error names the row Excel shows."""
    import gzip

    openpyxl = pytest.importorskip("openpyxl")
    task = get_task("portal")
    want = task.read()
    rows = [json.loads(line) for line in task.bundled_data.read_text().splitlines() if line.strip()]
    keys = list(rows[0])
    book = openpyxl.Workbook()
    book.active.append(keys)
    for r in rows:
        book.active.append([r[k] for k in keys])
    book.active.cell(row=5, column=keys.index("urgency") + 1, value="sometime")  # record 4: no such label
    book.save(tmp_path / "portal.xlsx")
    with pytest.raises(DataError, match=r"portal.xlsx:5: field 'urgency'"):
        task.read(tmp_path / "portal.xlsx")
    book.active.cell(row=5, column=keys.index("urgency") + 1, value=rows[3]["urgency"])
    book.save(tmp_path / "portal.xlsx")
    assert [(r.prompt, r.target) for r in task.read(tmp_path / "portal.xlsx")] == [(r.prompt, r.target) for r in want]
    (tmp_path / "portal.jsonl.gz").write_bytes(gzip.compress(task.bundled_data.read_bytes()))
    assert [r.prompt for r in task.read(tmp_path / "portal.jsonl.gz")] == [r.prompt for r in want]


def test_a_rare_label_spelt_nearly_as_a_common_one_is_warned_of_as_a_likely_misspelling(tmp_path, recwarn):
    """A hand-labelled sheet's "urgnet" became a class of its own (trained on, averaged into
    macro-F1) without a word. It is warned of, naming both labels and their rows; labels that
    differ in digits alone, a common pair, and labels given are not."""
    rows = ([f"Note {i},urgent" for i in range(20)] + [f"Refill {i},routine" for i in range(15)] + ["Rash,urgnet"]
            + [f"Stage {i},grade 1" for i in range(2)] + [f"Stage b{i},grade 2" for i in range(12)])
    (tmp_path / "t.csv").write_text("note,urgency\n" + "\n".join(rows) + "\n")
    task = get_task("text_classification", text_column="note", label_column="urgency")
    with pytest.warns(UserWarning) as said:
        task.read(tmp_path / "t.csv")
    assert [str(w.message) for w in said] == [
        f"{tmp_path / 't.csv'}: label 'urgnet' (1 row) is spelt nearly as 'urgent' (20 rows): a misspelling? It is "
        "read as a class of its own; correct it in the data (or give the labels, --task-option labels=a,b,c, and "
        "rows of any other are refused)"]
    assert task.fields[0].labels == ["grade 1", "grade 2", "routine", "urgent", "urgnet"]
    recwarn.clear()
    given = get_task("text_classification", text_column="note", label_column="urgency",
                     labels="urgent,routine,grade 1,grade 2")
    with pytest.raises(DataError, match=r"t.csv:37: field 'urgency': 'urgnet' is not one of the labels given"):
        given.read(tmp_path / "t.csv")
    (tmp_path / "n.csv").write_text("a,b,label\n" + "\n".join(["1,2,healthy"] * 12 + ["3,4,helathy", "5,6,ill"]) + "\n")
    with pytest.warns(UserWarning, match=r"n.csv: label 'helathy' \(1 row\) is spelt nearly as 'healthy' \(12 rows\)"):
        get_task("numeric_table", label_column="label").read(tmp_path / "n.csv")


def test_a_tasks_escaped_text_is_said_by_record_and_not_again_by_the_stages_files(tiny_model, tmp_path, capsys,
                                                                               monkeypatch):
    """check-data --task and compare name the escapes by the user's record ('notes.csv:2'), where
    the loaders named the lines of compare's own files (data/sft_train.jsonl) or of the records in
    memory; compare's stages, which read those files, say it no more."""
    import prefopt.train.run as run
    from prefopt.cli import main
    from prefopt.data import load_sft
    from prefopt.tokenizer import load_tokenizer
    from tests.tasks.conftest import StopAtSFT

    data = tmp_path / "notes.csv"
    data.write_text("message,summary,coder\n" + "Pain &amp; swelling since Monday,Pain since Monday.,A\n"
                    + "".join(f"Message {i} about my knee,Knee pain {i}.,B &amp; C\n" for i in range(12)))
    options = ["--task", "summarization", "--task-option", "source_column=message", "--task-option",
               "target_column=summary", "--data", str(data)]
    said = ("13 records hold HTML entities ('&amp;', '&lt;', '&#39;', ...) (the first: record 'notes.csv:2'): "
            "escaped by an export? They are trained on as written; unescape them in the data")
    assert main(["check-data", "--model", str(tiny_model), *options]) == 0
    out = capsys.readouterr()
    assert f"  1 of {said}" in out.out and "warning" not in out.err  # (not the 12 of a column no prompt reads)

    def run_sft(config):  # the stage's own load of its file, then stop
        load_sft(config.data, load_tokenizer(config.model))
        raise StopAtSFT

    monkeypatch.setattr(run, "run_sft", run_sft)
    with pytest.raises(StopAtSFT):
        main(["compare", "--model", str(tiny_model), *options, "--output", str(tmp_path / "run"), "--set",
              "max_train=8", "--set", "test=4", "--set", "sft_steps=1"])
    out = capsys.readouterr()
    assert f"prefopt compare: {data}: 1 of {said}" in out.out
    assert "records hold" not in out.err  # (the SFT stage's file, data/sft_train.jsonl, holds the entity too)


def test_check_data_task_renders_each_records_prompt_once(tiny_model, capsys, monkeypatch):
    """The prompts are built once and used twice, for the SFT examples measured and for the escapes
    looked for (a task whose prompt holds a document's text renders it once)."""
    from collections import Counter

    from prefopt.cli import main

    task_class = type(get_task("portal"))
    rendered, messages = Counter(), task_class.messages
    monkeypatch.setattr(task_class, "messages", lambda self, r: rendered.update([r.id]) or messages(self, r))
    assert main(["check-data", "--model", str(tiny_model), "--task", "portal"]) == 0
    assert "portal records, as compare's SFT examples" in capsys.readouterr().out
    assert len(rendered) > 100 and set(rendered.values()) == {1}


def test_a_task_file_with_no_records_is_refused_as_such_before_the_model_loads(tmp_path, capsys):
    """An empty file, or a table of headers only: said so, where eval's split said ``test (0) + val (0)
    leave no training data out of 0 groups``."""
    from prefopt.cli import main

    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "headers.csv").write_text("id,message,urgency\n")
    for name in ("empty.jsonl", "headers.csv"):
        for command in ("eval", "compare"):
            path = tmp_path / name
            assert main([command, "--task", "portal", "--model", str(tmp_path / "no-model"), "--data", str(path),
                         "--output", str(tmp_path / command)]) == 2
            assert capsys.readouterr().err == (f"prefopt {command}: error: {path}: no portal records (an empty file, "
                                               "or a table with no rows under its header?)\n")
            assert not (tmp_path / command).exists()
    tiny = tmp_path / "tiny"
    build_hf_model(tiny)
    assert main(["check-data", "--task", "portal", "--model", str(tiny), "--data", str(tmp_path / "empty.jsonl")]) == 1
    assert "0 of 0 records kept\n  the file holds no records\n" in capsys.readouterr().out  # none usable: exit 1


@pytest.mark.parametrize("task,options,content,error", [
    ("text_classification", {}, "note,urgency\nchest pain since noon,urgent\n",
     r"t.csv:2: field 'text': missing field \(have: note, urgency\); --task-option text_column=COLUMN reads another "
     r"column as the text \(here likely: --task-option text_column=note --task-option label_column=urgency\)$"),
    # the labels given pick the label's column among several; the text named, the label's error alone
    ("text_classification", {"text_column": "note", "labels": "urgent,routine"},
     "ward,note,triage\n3,chest pain since noon,urgent\n",
     r"t.csv:2: field 'label': missing field .*label_column=COLUMN .*\(here likely: --task-option "
     r"label_column=triage\)$"),
    ("summarization", {}, "Notiz,Zusammenfassung\nlong note of the visit,short\n",
     r"t.csv:2: field 'source': .*\(here likely: --task-option source_column=Notiz --task-option "
     r"target_column=Zusammenfassung\)$"),
    ("numeric_table", {"labels": "yes,no"}, "age,bp,heart_disease\n40,120,yes\n",
     r"t.csv:2: field 'label': .*\(here likely: --task-option label_column=heart_disease\)$"),
    ("medical_abstracts", {}, "abstract,label\nan abstract,1\n",  # its columns are the dataset's: no option to name
     r"t.csv:2: field 'medical_abstract': missing field \(have: abstract, label\)$"),
])
def test_a_missing_columns_error_names_the_option_and_the_likely_column(tmp_path, task, options, content, error):
    (tmp_path / "t.csv").write_text(content)
    with pytest.raises(DataError, match=error):
        get_task(task, **options).read(str(tmp_path / "t.csv"))
