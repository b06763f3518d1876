"""Task loaders (errors name file, line and field), leak-free splits, preference-pair strategies."""
import json
import random

import pytest

from prefopt.data.records import DataError
from prefopt.tasks import (
    PORTAL_DATA,
    get_task,
    mixed_labels,
    model_error_pairs,
    sample_records,
    split_records,
    wrong_label_pairs,
)


def test_bundled_portal_set_is_synthetic_and_large_enough():
    rows = [json.loads(line) for line in PORTAL_DATA.read_text().splitlines()]
    assert len(rows) >= 300 and all(r["synthetic"] for r in rows)
    assert "synthetic" in (PORTAL_DATA.parent / "README.md").read_text().lower()
    recs = get_task("portal").load()
    assert len({r.labels["staff"] for r in recs}) == 4 and len({r.labels["urgency"] for r in recs}) == 3


def test_split_is_seeded_stratified_and_never_leaks():
    recs = get_task("portal").load()
    recs.append(type(recs[0])("dup", recs[0].prompt, recs[0].target, dict(recs[0].labels)))  # a duplicate prompt
    a = split_records(recs, test=60, val=20, seed=3)
    b = split_records(recs, test=60, val=20, seed=3)
    assert [r.id for r in a["test"]] == [r.id for r in b["test"]]
    assert [r.id for r in split_records(recs, test=60, seed=4)["test"]] != [r.id for r in a["test"]]
    prompts = {k: {r.prompt for r in v} for k, v in a.items()}
    assert not (prompts["train"] & prompts["test"]) and not (prompts["train"] & prompts["val"])
    assert not (prompts["val"] & prompts["test"])
    assert sum(len(v) for v in a.values()) == len(recs)
    share = sum(r.labels["urgency"] == "emergency" for r in a["test"]) / len(a["test"])
    overall = sum(r.labels["urgency"] == "emergency" for r in recs) / len(recs)
    assert abs(share - overall) < 0.07
    with pytest.raises(ValueError, match="no training data"):
        split_records(recs[:10], test=8, val=2)


def test_texts_that_recur_with_different_labels_are_counted_and_the_first_named(tmp_path, capsys):
    """Medical Abstracts lists 83 abstracts once per class (170 rows): each such group is tested
    whole, so one of its rows is wrong whatever the model answers. check-data --task and compare
    say so; the same text with the same label twice, or in other spacing, is no such case."""
    from prefopt.tasks.base import Record

    rows = [Record("a:1", "Chest pain", "", {"u": "urgent"}), Record("a:2", "Refill", "", {"u": "routine"}),
            Record("a:3", "chest  pain", "", {"u": "urgent"}), Record("a:4", "Refill", "", {"u": "routine"})]
    assert mixed_labels(rows) is None
    rows += [Record("a:5", "Rash", "", {"u": "routine"}), Record("a:6", " Rash", "", {"u": "urgent"}),
             Record("a:7", "Rash", "", {"u": "routine"}), Record("a:8", "Refill", "", {"u": "urgent"})]
    assert mixed_labels(rows) == (
        "2 texts recur with different labels (6 rows; the first: a:2 'routine'; a:8 'urgent'): the model is trained "
        "on both, and where such a text is tested one of its rows counts as wrong whatever the answer")
    data = tmp_path / "t.csv"
    data.write_text("note,urgency\n" + "".join(f"Note {i},{('urgent', 'routine')[i % 2]}\n" for i in range(12))
                    + "Note 3,urgent\n")
    from prefopt.cli import main
    from tests._tiny import build_tokenizer

    tok = build_tokenizer(tmp_path / "tok")
    assert main(["check-data", "--model", str(tok), "--task", "text_classification", "--task-option",
                 "text_column=note", "--task-option", "label_column=urgency", "--data", str(data)]) == 0
    assert ("  1 text recurs with different labels (2 rows; the first: t.csv:5 'routine'; t.csv:14 'urgent')"
            in capsys.readouterr().out)
    assert main(["compare", "--task", "text_classification", "--task-option", "text_column=note", "--task-option",
                 "label_column=urgency", "--data", str(data), "--model", str(tmp_path / "none"),
                 "--output", str(tmp_path / "run")]) == 2  # said before anything loads (here: no model to)
    assert "prefopt compare: 1 text recurs with different labels (2 rows;" in capsys.readouterr().out


def test_split_is_proportional_for_imbalanced_classes():
    from prefopt.tasks import Record

    recs = [Record(str(i), f"case {i}", "", {"label": "common" if i < 80 else "rare"}) for i in range(100)]
    s = split_records(recs, test=10, val=20, seed=0)
    assert [sum(r.labels["label"] == "rare" for r in s[k]) for k in ("test", "val", "train")] == [2, 4, 14]
    assert (len(s["test"]), len(s["val"]), len(s["train"])) == (10, 20, 70)


def test_a_limited_sample_keeps_the_class_mix_and_the_order():
    from collections import Counter

    test = split_records(get_task("portal").load(), test=90, seed=0)["test"]  # runs class by class
    assert len({r.stratum() for r in test[:10]}) == 1  # so test[:10] would be one class
    kinds = Counter(r.stratum() for r in test)
    part = sample_records(test, 30, seed=0)
    assert len(part) == 30 and len({r.id for r in part}) == 30
    got = Counter(r.stratum() for r in part)
    assert set(got) == set(kinds) and all(abs(got[k] - 30 * kinds[k] / 90) < 1 for k in kinds)
    where = {r.id: i for i, r in enumerate(test)}
    assert [where[r.id] for r in part] == sorted(where[r.id] for r in part)  # in the order they came
    assert [r.id for r in sample_records(test, 30, seed=0)] == [r.id for r in part]
    assert [r.id for r in sample_records(test, 30, seed=1)] != [r.id for r in part]
    assert sample_records(test, 500) == test


LOADER_ERRORS = [  # (file name, content, task, the error it must raise)
    ("portal.jsonl", '{"message": "hi", "urgency": "urgent", "staff": "nurse"}\n'
                     '{"message": "chest pain", "urgency": "soonish", "staff": "nurse"}\n',
     "portal", r"portal.jsonl:2: field 'urgency'"),
    ("portal.jsonl", '{"message": "", "urgency": "urgent", "staff": "nurse"}\n',
     "portal", r"portal.jsonl:1: field 'message': empty"),
    ("portal.jsonl", '{"message": "x", "urgency": "urgent", "staff": "nurse"\n', "portal", "malformed JSON"),
    ("t.csv", "text,label\nsome text,a\n,b\n", "text_classification", r"t.csv:3: field 'text': empty"),
    # errors name the record's first line
    ("t.csv", 'text,label\n"a note\nover two lines",a\n,b\n', "text_classification", r"t.csv:4: field 'text': empty"),
    ("t.csv", "text,label\nsome text,a,extra\n", "text_classification", r"t.csv:2: more cells than the header"),
    # a label the task cannot read is located too (it used to be a bare ValueError)
    ("t.csv", "condition_label,medical_abstract\n1,an abstract\n7,another abstract\n", "medical_abstracts",
     r"t.csv:3: field 'condition_label': condition_label must be 1-5"),
    ("processed.test.data", "63,1,1,145,233,1,2,150,0,2.3,3,0,6,0\n67,1,4,160,286,0,2,108,1,1.5,2,3,3,x\n",
     "uci_heart", r"processed.test.data:2: field 'num'"),
    # PubMedQA: a table's rows by line, PQA-L's JSON by the line of its PubMed id, and the id
    ("pq.csv", "question,context,answer\nIs it?,ctx,yes\n,ctx,no\n", "pubmedqa", r"pq.csv:3: field 'question': empty"),
    ("pq.csv", "question,context,answer\nIs it?,ctx,perhaps\n", "pubmedqa",
     r"pq.csv:2: field 'answer': expected yes, no or maybe, got 'perhaps'$"),
    ("ori_pqal.json", json.dumps({"111": {"QUESTION": "q?", "CONTEXTS": ["c"], "final_decision": "yes"},
                                  "222": {"CONTEXTS": ["c"], "final_decision": "no"}}, indent=1), "pubmedqa",
     r"ori_pqal.json:9: field 'QUESTION': record 222: missing field \(have: CONTEXTS, final_decision\)"),
    ("ori_pqal.json", '{"111": {"QUESTION": "q?", "CONTEXTS": ["c"], "final_decision": "dunno"}}', "pubmedqa",
     r"ori_pqal.json:1: field 'final_decision': record 111: expected yes, no or maybe, got 'dunno'"),
    ("ori_pqal.json", '{"111": ["q?"]}', "pubmedqa", r"ori_pqal.json:1: record 111: expected an object of fields"),
    ("ori_pqal.json", '{\n "111": {"QUESTION": "q?", "CONTEXTS": ["c"], "final_decision": "yes"},\n "111": {}\n}',
     "pubmedqa", r"ori_pqal.json:3: record 111 is given twice"),
    ("ori_pqal.json", '{\n "111": {"QUESTION": "q?", "CONTEXTS": ["c"], "final_decision": "yes"},\n "222": {"QUE',
     "pubmedqa", r"ori_pqal.json:3: malformed JSON"),
    ("ori_pqal.json", '"q?"', "pubmedqa", r"ori_pqal.json:1: expected PubMedQA's object of records by PubMed id"),
    ("ori_pqal.json", '{\n "111": {"QUESTION": "q?", "QUESTION": "q2?", "final_decision": "yes"}\n}', "pubmedqa",
     r"ori_pqal.json:2: field 'QUESTION': given twice in one JSON object"),
]


@pytest.mark.parametrize("name,content,task,error", LOADER_ERRORS)
def test_loader_errors_name_file_line_and_field(tmp_path, name, content, task, error):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(DataError, match=error):
        get_task(task).load(p)
    with pytest.raises(ValueError, match="unknown task 'medq' \\(did you mean 'medqa'\\?\\)"):
        get_task("medq")
    with pytest.raises(ValueError, match="task 'meqsum' has no option 'colour'; its options .*: none"):
        get_task("meqsum", colour="red")
    with pytest.raises(ValueError, match="no option 'levls' \\(did you mean 'levels'\\?\\); .*: levels='grouped', "
                                         "disposition=False"):
        get_task("ktas", levls="ktas")
    # options typed on the command line arrive as text: "False" (not JSON) must not switch one on
    assert [f.name for f in get_task("ktas", disposition="False").fields] == ["urgency"]
    assert [f.name for f in get_task("ktas", disposition="yes").fields] == ["urgency", "disposition"]
    assert get_task("pubmedqa", max_chars="900").max_chars == 900
    with pytest.raises(ValueError, match="option disposition is true or false \\(got 'maybe'\\)"):
        get_task("ktas", disposition="maybe")
    with pytest.raises(ValueError, match="option max_chars is a whole number \\(got 'lots'\\)"):
        get_task("pubmedqa", max_chars="lots")


def test_generic_files_with_user_named_columns(tmp_path):
    c = tmp_path / "notes.csv"
    c.write_text("note,dx\nCough and fever,infection\nChest pain on exertion,cardiac\nRash after drug,allergy\n")
    t = get_task("text_classification", text_column="note", label_column="dx")
    recs = t.load(c)
    assert t.fields[0].labels == ["allergy", "cardiac", "infection"] and recs[1].labels == {"label": "cardiac"}
    n = tmp_path / "vitals.csv"
    n.write_text("hr,sbp,outcome\n120,85,sick\n?,120,well\n")
    t = get_task("numeric_table", label_column="outcome")
    recs = t.load(n)
    assert "hr: missing" in recs[1].prompt and recs[0].labels == {"label": "sick"}
    s = tmp_path / "s.jsonl"
    s.write_text(json.dumps({"long": "The patient asks about the dose of metformin.", "short": "Metformin dose?"}))
    recs = get_task("summarization", source_column="long", target_column="short").load(s)
    assert recs[0].target == "Metformin dose?"


def test_a_dataset_folder_reads_the_tasks_files_or_names_the_ones_to_pass(tmp_path):
    """ACI-Bench ships train.csv and valid.csv (plus metadata): its folder reads both splits. A
    folder given to a task that reads one file used to fail as "no such data file"."""
    import csv

    for name, n in (("train.csv", 3), ("valid.csv", 2)):
        with open(tmp_path / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["encounter_id", "dialogue", "note"])
            w.writeheader()
            w.writerows({"encounter_id": f"{name}{i}", "dialogue": f"[doctor] {name} visit {i}",
                         "note": f"Note {i}."} for i in range(n))
    (tmp_path / "train_metadata.csv").write_text("encounter_id,cc\nx,knee pain\n")
    recs = get_task("aci_bench").read(str(tmp_path))
    assert [r.id for r in recs] == ["train.csv:2", "train.csv:3", "train.csv:4", "valid.csv:2", "valid.csv:3"]
    assert "valid.csv visit 1" in recs[-1].prompt and recs[-1].target == "Note 1."
    (tmp_path / "valid.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"no valid.csv \(task 'aci_bench' reads train.csv, valid.csv"):
        get_task("aci_bench").read(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"a folder, not a data file; pass one of its files "
                                                r"\(train.csv, train_metadata.csv\)"):
        get_task("meqsum").read(str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"holds no .jsonl, .json, .csv, .tsv, .parquet, .xlsx, .xls or .ods\)"):
        get_task("meqsum").read(str(empty))


def test_labels_given_to_a_generic_task_are_the_only_ones_its_rows_may_hold(tmp_path):
    """``labels`` fixes the answer set (and its order in the prompt): a row with another label is
    an error at its line, not a record the parser can never get right. Given on the command line
    as ``labels=Urgent,routine`` it is split at commas, and compared as rows are (case, spaces)."""
    c = tmp_path / "t.csv"
    c.write_text("text,label\nchest pain,URGENT\nrefill, Routine \nrash,soon\n")
    for labels in ("Urgent, routine", ["urgent", " Routine", "URGENT"]):
        t = get_task("text_classification", labels=labels)
        assert t.fields[0].labels == ["urgent", "routine"]
        with pytest.raises(DataError, match=r"t.csv:4: field 'label': 'soon' is not one of the labels given "
                                            r"\(urgent, routine\)"):
            t.load(c)
    with pytest.raises(DataError, match=r"t.csv:4: field 'label': 'soon' is not one of the labels given"):
        get_task("numeric_table", labels="urgent,routine", feature_columns=["text"]).load(c)
    c.write_text("text,label\nchest pain,URGENT\nrefill, Routine \n")
    recs = get_task("text_classification", labels="routine,urgent,soon").load(c)
    assert [r.labels["label"] for r in recs] == ["urgent", "routine"]
    assert "Answer with one of: routine, urgent, soon." in recs[0].prompt  # a label no row holds may be offered
    with pytest.raises(ValueError, match="labels: an empty name"):
        get_task("text_classification", labels="urgent,,routine")
    n = tmp_path / "vitals.csv"  # feature_columns too: "hr,sbp" is two columns, not six characters
    n.write_text("hr;sbp;temp;outcome;;\n120;85;39,1;sick;;\n")
    assert get_task("numeric_table", label_column="outcome", feature_columns="hr, sbp").load(n)[0].prompt.endswith(
        "\n\n- hr: 120\n- sbp: 85")
    assert get_task("numeric_table", label_column="outcome").load(n)[0].prompt.endswith(  # unnamed columns left out
        "\n\n- hr: 120\n- sbp: 85\n- temp: 39,1")


def test_a_generic_tasks_label_map_reads_a_files_codes_as_its_labels(tmp_path):
    """``label_map``: a file labelled in codes (``1``, ``2``) or its own words is trained and asked
    in the labels the map names; a cell it does not name is its own label, unless labels were
    given, where it is refused with the option to map it."""
    c = tmp_path / "t.csv"
    c.write_text("note,dx\nlump in breast,1\nheartburn,2\nchest pain,I\nrash,other\n")
    t = get_task("text_classification", text_column="note", label_column="dx",
                 label_map="1=neoplasms, 2=digestive, i=Cardiovascular")
    recs = t.load(c)
    assert [r.labels["label"] for r in recs] == ["neoplasms", "digestive", "cardiovascular", "other"]
    assert "Answer with one of: cardiovascular, digestive, neoplasms, other." in recs[0].prompt
    given = get_task("text_classification", text_column="note", label_column="dx", labels="neoplasms,digestive",
                     label_map={"1": "neoplasms", "2": "digestive"})
    with pytest.raises(DataError, match=r"t.csv:4: field 'dx': 'I' is not one of the labels given \(neoplasms, "
                                        r"digestive\) nor of label_map's words \(1, 2\); --task-option "
                                        r"label_map=\"I=LABEL\" reads a word of your file's as a label$"):
        given.load(c)
    with pytest.raises(ValueError, match=r"label_map: 3=cardiac: 'cardiac' is not one of the task's labels "
                                         r"\(neoplasms, digestive\)"):
        get_task("text_classification", labels="neoplasms,digestive", label_map="1=neoplasms,3=cardiac")
    for empty in ("1=neoplasms,2=", ",", {"1": " "}):  # no label, or no pair: not read as "no map"
        with pytest.raises(ValueError, match="label_map: expected WORD=LABEL pairs split by commas"):
            get_task("text_classification", label_map=empty)
    n = tmp_path / "vitals.csv"
    n.write_text("hr;sbp;outcome\n120;85;0\n60;120;1\n")
    t = get_task("numeric_table", label_column="outcome", labels="well,sick", label_map="0=sick,1=well")
    assert [r.labels["label"] for r in t.load(n)] == ["sick", "well"]
    # a missing label column is found by the map's words
    with pytest.raises(DataError, match=r"field 'label': missing field .*\(here likely: --task-option "
                                        r"label_column=outcome\)$"):
        get_task("numeric_table", labels="well,sick", label_map="0=sick,1=well").load(n)
    with pytest.raises(DataError, match=r"here likely: --task-option text_column=note --task-option label_column=dx"):
        get_task("text_classification", label_map="1=neoplasms,2=digestive").load(c)


@pytest.mark.parametrize("shared", [False, True], ids=["synthetic", "shared"])
def test_medical_abstracts_codes_read_through_a_label_map_are_the_datasets_own_task(tmp_path, shared):
    """The generic classifier given Medical Abstracts' codes as a ``label_map`` (and its labels and
    question) reads the file as the dataset's own task does: the same records, labels and prompts
    (the shared file's 2,400 where present; synthetic rows in its format always)."""
    import os
    from pathlib import Path

    from prefopt.tasks.text_classification import ABSTRACT_CLASSES
    from tests import _formats as formats

    path = Path(os.environ.get("PREFOPT_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data")
                ) / "text_classification" / "medical_abstracts" / "medical_tc.csv"
    if shared and not path.is_file():
        pytest.skip(f"the Medical Abstracts dataset is not at {path}")
    path = path if shared else formats.write_abstracts(tmp_path / "medical_tc.csv", 12)
    own = get_task("medical_abstracts")
    generic = get_task("text_classification", text_column="medical_abstract", label_column="condition_label",
                       labels=",".join(ABSTRACT_CLASSES.values()), instruction=own.instruction,
                       label_map=",".join(f"{k}={v}" for k, v in ABSTRACT_CLASSES.items()))
    want, got = own.read(str(path)), generic.read(str(path))
    assert len(got) == len(want) >= 12 and len({r.labels["label"] for r in want}) > 1
    assert [(r.prompt, r.target, r.labels) for r in got] == [(r.prompt, r.target, r.labels) for r in want]


def test_generic_tasks_read_spreadsheet_exports_with_their_delimiter_and_encoding(tmp_path):
    """A Western-European Excel export: ';' between cells (the decimal mark is a comma), cp1252
    text, trailing rows of empty cells. The delimiter is read off the header; the encoding must be
    named, and the error says how."""
    rows = "note;urgency;temp\r\nfi\xe8vre et toux, 3 jours;urgent;38,5\r\n\"douleur; thorax\";urgent;37,0\r\n" \
           "renouvellement d'ordonnance;routine;36,8\r\n;;\r\n;;\r\n"
    p = tmp_path / "export.csv"
    p.write_bytes(rows.encode("cp1252"))
    with pytest.raises(DataError, match=r"export.csv:2: not utf-8 text \(byte 0xe8 at column 3\); save the file as "
                                        r"UTF-8 \(.*the .xlsx workbook itself\), or name the encoding it was saved "
                                        r"in \(--task-option encoding=cp1252 for Excel's CSV on Western-European "
                                        r"Windows; as cp1252, line 2 reads 'fièvre et toux, 3 jours;urgent;3'"
                                        r"\.\.\.\)$"):
        get_task("text_classification", text_column="note", label_column="urgency").load(p)
    t = get_task("text_classification", text_column="note", label_column="urgency", encoding="cp1252")
    recs = t.load(p)
    assert [r.id for r in recs] == ["export.csv:2", "export.csv:3", "export.csv:4"]  # the blank rows skipped
    assert "fièvre et toux, 3 jours" in recs[0].prompt and "douleur; thorax" in recs[1].prompt
    assert t.fields[0].labels == ["routine", "urgent"]
    n = get_task("numeric_table", label_column="urgency", feature_columns=["temp"], encoding="cp1252").load(p)
    assert "- temp: 38,5" in n[0].prompt and n[2].labels == {"label": "routine"}
    s = get_task("summarization", source_column="note", target_column="urgency", encoding="latin-1").load(p)
    assert s[0].target == "urgent" and "fièvre" in s[0].prompt

    tsv = tmp_path / "notes.tsv"  # a .tsv is tab-separated, even where a header name holds a comma
    tsv.write_text("note, as written\tlabel\nCough, fever; 3 days\tinfection\nChest pain\tcardiac\n")
    recs = get_task("text_classification", text_column="note, as written").load(tsv)
    assert [r.labels["label"] for r in recs] == ["infection", "cardiac"] and "Cough, fever; 3 days" in recs[0].prompt
    piped = tmp_path / "piped.csv"  # '|' read off the header or named; a named delimiter is used as named
    piped.write_text("text|label\nCough, fever\tday 3|infection\n")
    for name in (None, "|", "pipe"):
        assert get_task("text_classification", delimiter=name).load(piped)[0].labels == {"label": "infection"}
    with pytest.raises(DataError, match=r"piped.csv:2: more cells than the header has columns: \[' fever"):
        get_task("text_classification", delimiter="comma").load(piped)

    with pytest.raises(ValueError, match="delimiter must be one character or one of tab"):
        get_task("text_classification", delimiter="semi")
    with pytest.raises(ValueError, match=r"encoding 'latin-9x': not one Python knows \(utf-8, cp1252, latin-1"):
        get_task("summarization", encoding="latin-9x")
    with pytest.raises(ValueError, match="task 'meqsum' has no option 'encoding'"):  # a dataset's reader has its format
        get_task("meqsum", encoding="cp1252")
    bad = tmp_path / "bad.csv"  # there the error names no option it does not take
    bad.write_bytes("condition_label,medical_abstract\n1,fi\xe8vre\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"bad.csv:2: not utf-8 text \(byte 0xe8 at column 5\); save the file as "
                                        r"UTF-8 \(in Excel: Save As \"CSV UTF-8\"; or pass the .xlsx workbook itself\)$"):
        get_task("medical_abstracts").load(bad)


def test_wrong_label_pairs_random_by_default_hardest_on_request():
    task = get_task("portal")
    recs = task.load()
    pairs = wrong_label_pairs(task, recs, seed=0)
    assert len(pairs) == len(recs) and all(p["chosen"] != p["rejected"] for p in pairs)
    assert all(p["prompt"][-1]["role"] == "user" for p in pairs)
    changed = [next(line for line in p["rejected"].splitlines() if line not in p["chosen"].splitlines())
               for p in pairs]
    assert 0.3 < sum(c.startswith("Urgency") for c in changed) / len(changed) < 0.7  # both fields get negatives
    rejected_urgency = [c.split(": ")[1] for c in changed if c.startswith("Urgency")]
    assert min(rejected_urgency.count(u) for u in ("emergency", "urgent", "routine")) > 0.15 * len(rejected_urgency)

    r = next(x for x in recs if x.labels["urgency"] == "emergency")
    for seed in range(5):
        answers = task.wrong_answers(r, random.Random(seed), recs, hardest=True)
        first_urgency = next(a for a in answers if "Urgency: emergency" not in a)
        assert "Urgency: urgent" in first_urgency  # the neighbouring level is the hardest mistake


def test_model_error_pairs_use_the_models_wrong_answers_and_fall_back():
    task = get_task("portal")
    recs = task.load()[:4]
    outputs = ["Urgency: routine\nStaff: front desk", recs[1].target, "", "blah"]
    pairs, report = model_error_pairs(task, recs, lambda rs: outputs, seed=0)
    assert report == {"prompts": 4, "model_errors": 2 - (recs[0].target == outputs[0]), "fallback_wrong_label":
                      2 + (recs[0].target == outputs[0])}
    assert pairs[3]["rejected"] == "blah" and pairs[3]["source"] == "model_errors"
    assert pairs[1]["source"] == "wrong_label"  # the model was right there


@pytest.mark.parametrize("command", ["eval", "predict", "compare", "check-data"])
def test_help_lists_every_tasks_options_with_their_defaults(command, capsys):
    """``--task-option`` takes what the task's constructor takes: --help shows each task's."""
    from prefopt.cli import main
    from prefopt.tasks import TASKS

    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "\n  ktas: levels='grouped', disposition=False\n" in out and "\n  meqsum: none\n" in out
    assert "\n  portal: message_column='message', urgency_column='urgency', staff_column='staff', delimiter=None" in out
    assert all(f"\n  {name}: " in out for name in TASKS)
