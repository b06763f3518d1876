"""prefopt check-data: bad records, token lengths, what max_length cuts, repeats; before training."""

import pytest

from prefopt.cli import main
from prefopt.data import DataError
from prefopt.data.check import bad_lines, check_data, detect_kind
from tests._formats import write_workbook
from tests._tiny import build_hf_model
from tests.data import write_jsonl


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("check")
    build_hf_model(d)
    return d


def test_an_sft_file_is_measured_and_its_bad_records_named(model, tmp_path, capsys):
    from prefopt import load_tokenizer

    good = {"prompt": "Chest pain. Triage?", "completion": "Emergency."}
    rows = [good, {"prompt": "history " * 100 + "Triage?", "completion": "Urgent."}, good,
            {"prompt": "x", "completion": ""}, "{not json", {"prompt": "Rash.", "completion": "Routine."}]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    assert detect_kind(path) == "sft"
    tok = load_tokenizer(model)
    check = check_data(path, tok, max_length=160)
    lengths = [len(tok.encode_prompt_response(r["prompt"], r["completion"]).ids) for r in (good, rows[1], rows[5])]
    assert sorted(check.total) == sorted([lengths[0], lengths[1], lengths[0], lengths[2]])
    assert check.duplicates == 1 and check.report.n_kept == 4 and len(check.report.skipped) == 2
    assert all(p + r == t for p, r, t in zip(check.prompt, check.response, check.total))
    assert main(["check-data", "--model", str(model), "--data", str(path), "--max-length", "160"]) == 1
    out = capsys.readouterr().out
    assert "train.jsonl: SFT records; 4 of 6 records kept, 1 truncated to fit max_length=160" in out
    assert "  bad: " in out and "train.jsonl:4: field 'completion'" in out and "train.jsonl:5: malformed JSON" in out
    assert f"max_length={max(lengths)} would fit every record" in out
    assert "  1 record repeats an earlier one token for token\n" in out
    # the answers, counted over the records that parse (the bad ones left out): a label's share
    assert "  completion: 3 distinct: 'Emergency.' 2 (50%), 'Urgent.' 1 (25%), 'Routine.' 1 (25%)\n" in out


def test_a_preference_file_is_detected_and_a_clean_one_exits_0(model, tmp_path, capsys):
    rows = [{"prompt": f"Message {i}. Triage?", "chosen": "urgent review", "rejected": "routine visit"}
            for i in range(3)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    assert detect_kind(path) == "preference"
    assert main(["check-data", "--model", str(model), "--data", str(path), "--max-length", "256"]) == 0
    out = capsys.readouterr().out
    assert "pairs.jsonl: preference pairs; 3 of 3 records kept" in out
    assert "every record fits max_length=256" in out and "repeat" not in out and "context" not in out
    assert "  chosen: 1 distinct: 'urgent review' 3 (100%)\n  rejected: 1 distinct: 'routine visit' 3 (100%)\n" in out
    assert main(["check-data", "--model", str(model), "--data", str(path)]) == 0  # the default, 1024
    assert "max_length=1024 is past the model's context of 256 tokens" in capsys.readouterr().out


def test_check_data_reads_the_sheet_named_and_a_task_its_sheet_option(model, tmp_path, capsys):
    """``--sheet`` for a training workbook, ``--task-option sheet=`` for a task's: the sheet named
    is read, where without it the workbook of two data sheets is refused."""
    write_workbook(tmp_path / "notes.xlsx", {
        "train": [["prompt", "completion"], ["Chest pain?", "Emergency now."], ["Refill?", "Pharmacy."]],
        "test": [["note", "urgency"], ["Chest pain", "urgent"], ["Refill", "routine"], ["Rash", "routine"]]})
    data = ["check-data", "--model", str(model), "--data", str(tmp_path / "notes.xlsx")]
    assert main(data) == 2 and "2 sheets hold data ('train', 'test')" in capsys.readouterr().err
    assert main(data + ["--sheet", "train"]) == 0
    assert "notes.xlsx: SFT records; 2 of 2 records kept" in capsys.readouterr().out
    assert main(data + ["--task", "text_classification", "--task-option", "text_column=note", "--task-option",
                        "label_column=urgency", "--task-option", "sheet=test"]) == 0
    said = capsys.readouterr().out
    assert "notes.xlsx: text_classification records, as compare's SFT examples; 3 of 3 records kept" in said
    assert "label: 2 labels: 'routine' 2 (67%), 'urgent' 1 (33%)" in said


def test_check_data_of_a_task_lists_what_its_examples_encoding_refuses_and_fails(model, tmp_path, capsys):
    """A record whose row reads well but whose SFT example cannot be encoded (a summary that
    kept its ``<|im_end|>``) was dropped from the count of kept records and listed nowhere, and
    the check passed: it is listed by its record and the check fails."""
    rows = "".join(f"Message {i} about my knee,Knee pain {i}.\n" for i in range(5))
    (tmp_path / "s.csv").write_text("message,summary\n" + rows + "Refill please,Refill.<|im_end|>\n")
    assert main(["check-data", "--model", str(model), "--task", "summarization", "--task-option",
                 "source_column=message", "--task-option", "target_column=summary", "--data",
                 str(tmp_path / "s.csv")]) == 1
    out = capsys.readouterr().out
    assert "summarization records, as compare's SFT examples; 5 of 6 records kept; 1 skipped" in out
    assert "\n  bad: s.csv:7: its reference answer: holds '<|im_end|>' as text at its end" in out
    (tmp_path / "c.csv").write_text("note,urgency\nchest pain,urgent\nrash,routine\nknee <|im_end|>,urgent\n")
    assert main(["check-data", "--model", str(model), "--task", "text_classification", "--task-option",
                 "text_column=note", "--task-option", "label_column=urgency", "--data", str(tmp_path / "c.csv")]) == 1
    out = capsys.readouterr().out  # the class mix is of what trains: the refused record's label is not in it
    assert "2 of 3 records kept; 1 skipped" in out and "label: 2 labels: 'routine' 1 (50%), 'urgent' 1 (50%)" in out


def test_check_data_encodes_each_text_once_and_forgets_them_after(model, tmp_path):
    """It loaded the file twice (untruncated, then at max_length), encoding every text twice: 51 s
    for 20,000 records where training's load took 24 s. Loading pairs encoded each prompt twice."""
    from prefopt import load_tokenizer
    from prefopt.data import load_preferences

    rows = [{"prompt": f"Message {i}. Triage?", "chosen": "urgent review", "rejected": "routine visit"}
            for i in range(4)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    tok = load_tokenizer(model)
    texts = []
    real = tok.backend.encode
    tok.backend = type("Counting", (), {"__getattr__": lambda self, k: getattr(real.__self__, k),
                                        "encode": lambda self, text, **kw: texts.append(text) or real(text, **kw)})()
    plain = check_data(path, tok, max_length=256)
    assert len(texts) == len(set(texts)) == 4 * 3  # each pair: its prompt, prompt+chosen, prompt+rejected
    texts.clear()
    load_preferences(path, tok)  # a pair's prompt is encoded once, not once per response
    assert len(texts) == len(set(texts)) == 4 * 3
    assert tok._seen is None  # nothing kept after the check
    with tok.remembering():
        ids = tok.encode("Message 0. Triage?")
        ids.append(-1)  # a caller's list is its own: the remembered ids stay as they were
        assert tok.encode("Message 0. Triage?") == ids[:-1]
    texts.clear()
    again = check_data(path, tok, max_length=256)
    assert len(texts) == 12 and again.total == plain.total and again.report.n_kept == 4


def test_records_bad_alike_share_a_line_and_the_rest_are_counted():
    def err(line, field="prompt", reason="missing field", path="a.jsonl"):
        return DataError(path, line, field, reason)

    errors = [err(n) for n in (1, 2, 3, 7, 9, 10)] + [err(4, "completion", "empty"), err(5, path="b.jsonl"),
                                                      err(None, None, "not a JSON file"), err(6, None, "malformed")]
    assert bad_lines(errors) == ["  bad: a.jsonl:1-3, 7, 9-10 (6 records): field 'prompt': missing field",
                                 "  bad: a.jsonl:4: field 'completion': empty",  # another field: its own line
                                 "  bad: b.jsonl:5: field 'prompt': missing field",  # another file: its own too
                                 "  bad: a.jsonl: not a JSON file", "  bad: a.jsonl:6: malformed"]
    assert bad_lines(errors, 2) == bad_lines(errors)[:2] + ["  ... and 3 more bad records (--all-bad lists them all)"]
    assert bad_lines(errors, None) == [f"  bad: {e}" for e in errors]  # --all-bad: each record, as it was
    spread = bad_lines([err(n) for n in range(1, 30, 2)])
    assert spread == ["  bad: a.jsonl:1, 3, 5, 7, 9, 11, ... (15 records): field 'prompt': missing field"]


def test_a_file_with_no_usable_record_is_listed_not_refused(model, tmp_path, capsys):
    """check-data stopped with one line ("no usable records ... first: ...") and exit 2 exactly
    where the listing matters most: a file whose every record is bad."""
    from prefopt import load_tokenizer
    from prefopt.data import DataError, load_preferences
    from prefopt.data.sft import NoRecordsError

    rows = [{"prompt": f"Message {i}.", "chosen": "same", "rejected": "same"} for i in range(11)] + ["{oops"]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    assert main(["check-data", "--model", str(model), "--data", str(path), "--kind", "preference",
                 "--max-length", "256"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{path}: preference pairs; 0 of 12 records kept; 12 skipped: 11x identical")
    bad = [x.removeprefix(f"  bad: {path}:") for x in out if x.startswith("  bad: ")]
    assert bad == ["1-11 (11 records): field 'rejected': identical to chosen: a preference pair needs two different "
                   "responses",  # the records bad alike, one line
                   "12: malformed JSON: Expecting property name enclosed in double quotes (column 2)"]
    assert len(out) == 3
    assert main(["check-data", "--model", str(model), "--data", str(path), "--all-bad"]) == 1  # each on its own
    listed = [x for x in capsys.readouterr().out.splitlines() if x.startswith("  bad: ")]
    assert len(listed) == 12 and listed[-1] == f"  bad: {path}:12: malformed JSON: Expecting property name " \
        "enclosed in double quotes (column 2)"
    # training still refuses such a file, with the report of what each record lacked
    with pytest.raises(DataError, match="no usable records") as err:
        load_preferences(path, load_tokenizer(model), skip_bad=True)
    assert isinstance(err.value, NoRecordsError) and len(err.value.report.skipped) == 12

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    assert main(["check-data", "--model", str(model), "--data", str(empty), "--max-length", "256"]) == 1
    assert capsys.readouterr().out == f"{empty}: SFT records; 0 of 0 records kept\n  the file holds no records\n"


def test_a_listing_piped_into_head_ends_quietly(model, tmp_path):
    """``prefopt check-data ... --all-bad | head`` printed a BrokenPipeError traceback."""
    import subprocess
    import sys

    path = write_jsonl(tmp_path / "pairs.jsonl", ["{oops"] * 4000)  # a listing larger than a pipe's buffer
    p = subprocess.Popen([sys.executable, "-m", "prefopt.cli", "check-data", "--model", str(model), "--data", str(path),
                          "--all-bad", "--max-length", "256"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.readline()
    p.stdout.close()  # as head does after its lines
    err = p.stderr.read()
    assert first.startswith(str(path).encode()) and p.wait(timeout=60) == 141 and err == b""


def test_free_text_answers_are_counted_not_listed(model, tmp_path):
    """Past twelve distinct answers they are free text: how many distinct, not each. A chat's
    answer is its last assistant turn; a long label is shortened."""
    from prefopt import load_tokenizer
    from prefopt.data.check import LABELS

    tok = load_tokenizer(model)
    rows = [{"prompt": f"Note {i}.", "completion": f"Summary number {i}."} for i in range(LABELS + 1)]
    check = check_data(write_jsonl(tmp_path / "free.jsonl", rows), tok, max_length=256)
    assert f"  completion: {LABELS + 1} distinct of {LABELS + 1}" in check.lines()
    chat = [{"messages": [{"role": "user", "content": "Rash?"}, {"role": "assistant", "content": "Look."},
                          {"role": "user", "content": "And?"}, {"role": "assistant", "content": "x" * 50}]}]
    line = [x for x in check_data(write_jsonl(tmp_path / "chat.jsonl", chat), tok, max_length=256).lines()
            if "completion" in x]
    assert line == [f"  completion: 1 distinct: '{'x' * 37}...' 1 (100%)"]


def test_a_tasks_data_is_checked_as_compare_reads_it(model, tmp_path, capsys):
    """--task: the records as the task reads them, each field's class mix (a label no record has
    shows as 0), and the SFT examples compare would build, measured like any training file."""
    from collections import Counter

    from prefopt import load_tokenizer
    from prefopt.tasks import get_task

    task = get_task("portal")
    records = task.read(None)
    assert main(["check-data", "--model", str(model), "--task", "portal", "--max-length", "4096"]) == 0
    out = capsys.readouterr().out.splitlines()  # the tiny model's tokens are short: a long example
    assert out[0].endswith(f"portal_messages.jsonl: portal records, as compare's SFT examples; {len(records)} of "
                           f"{len(records)} records kept")
    tok = load_tokenizer(model)
    longest = max(len(tok.encode_prompt_response(task.messages(r), r.target).ids) for r in records)
    assert f"  every record fits max_length=4096 (the longest has {longest} tokens)" in out
    assert "  max_length=4096 is past the model's context of 256 tokens" in out[-1]
    for f in task.fields:
        counts = Counter(dict.fromkeys(f.labels, 0)) + Counter(r.labels[f.name] for r in records)  # ties: field order
        line = next(x for x in out if x.startswith(f"  {f.name}: "))
        assert line == f"  {f.name}: {len(f.labels)} labels: " + ", ".join(
            f"'{a}' {k} ({k / len(records):.0%})" for a, k in counts.most_common())
    assert not any(x.startswith("  completion:") for x in out)  # labels per field instead of rendered answers

    csv = tmp_path / "notes.csv"
    csv.write_text("note,urgency\nchest pain,urgent\nrash,routine\nknee,routine\n")
    argv = ["check-data", "--model", str(model), "--task", "text_classification", "--data", str(csv),
            "--task-option", "text_column=note", "--task-option", "label_column=urgency",
            "--task-option", "labels=urgent,routine,emergency", "--max-length", "4096"]
    assert main(argv) == 0
    assert "  label: 3 labels: 'routine' 2 (67%), 'urgent' 1 (33%), 'emergency' 0 (0%)" in capsys.readouterr().out
    csv.write_text("note,urgency\nchest pain,urgent\n,routine\nrash,sometime\nknee,routine\n")
    assert main(argv) == 1  # compare stops at the first bad row; the check names every one and measures the rest
    out = capsys.readouterr().out.splitlines()
    hint = "--task-option label_map=\"sometime=LABEL\" reads a word of your file's as a label"
    assert out[:3] == [f"{csv}: text_classification records, as compare's SFT examples; 2 of 4 records kept; 2 "
                       f"skipped: 1x empty; 1x 'sometime' is not one of the labels given (urgent, routine, emergency); "
                       f"{hint} (first: {csv}:3, field 'note')",
                       f"  bad: {csv}:3: field 'note': empty",
                       f"  bad: {csv}:4: field 'urgency': 'sometime' is not one of the labels given (urgent, routine, "
                       f"emergency); {hint}"]
    assert "  label: 3 labels: 'urgent' 1 (50%), 'routine' 1 (50%), 'emergency' 0 (0%)" in out
    # the words no label is, gathered into one option to map them by
    assert "  no label: 'sometime' (1 row); where these are your file's own words for labels, --task-option " \
           "\"label_map=sometime=LABEL\" reads each as its label (else correct those rows)" in out
    csv.write_text("note,urgency\n" + "".join(f"note {i},{'urgent' if i % 3 else 'later'}\n" for i in range(40)))
    assert main(argv) == 1  # 14 bad rows: the first 10, and no measures of what is left
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{csv}: text_classification records; more than 10 bad rows, the first 10:"
    assert out[1] == (f"  bad: {csv}:2, 5, 8, 11, 14, 17, ... (10 records): field 'urgency': 'later' is not one of "
                      "the labels given (urgent, routine, emergency); --task-option label_map=\"later=LABEL\" reads a "
                      "word of your file's as a label")  # the first ten, alike: one line
    assert out[2].startswith("  ... and more (--all-bad finds every one") and "model's context" in out[4]
    assert out[3].startswith("  no label in the bad rows listed: 'later' (10 rows); ")
    assert main(argv + ["--all-bad"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "26 of 40 records kept; 14 skipped: 14x 'later' is not one of" in out[0] and len(
        [x for x in out if x.startswith("  bad: ")]) == 14
    assert [x for x in out if x.startswith("  no label")] == [
        "  no label: 'later' (14 rows); where these are your file's own words for labels, --task-option "
        "\"label_map=later=LABEL\" reads each as its label (else correct those rows)"]
    assert main(argv + ["--kind", "sft"]) == 2
    assert "--kind is for a training file; with --task the records are what compare builds" in capsys.readouterr().err
    (tmp_path / "ktas.csv").write_text("Sex;Age\n1;40\n")  # another file's header: each row says what it has
    assert main(["check-data", "--model", str(model), "--task", "ktas", "--data", str(tmp_path / "ktas.csv")]) == 1
    assert f"  bad: {tmp_path / 'ktas.csv'}:2: field 'Chief_complain': missing field (have: Sex, Age)" in (
        capsys.readouterr().out.splitlines())
    assert main(["check-data", "--model", str(model), "--task", "ktas", "--data", str(tmp_path / "none.csv")]) == 2
    assert "none.csv: no such data file" in capsys.readouterr().err  # not a row: one error, as before
    assert main(["check-data", "--model", str(model)]) == 2
    assert "--data FILE is needed" in capsys.readouterr().err


def test_labels_that_are_codes_are_said_to_be_offered_bare_with_the_map_that_names_them(model, tmp_path, capsys):
    csv = tmp_path / "codes.csv"
    csv.write_text("note,code\nchest pain,1\nrash,3\nknee,2\nfever,1\n")
    argv = ["check-data", "--model", str(model), "--task", "text_classification", "--data", str(csv),
            "--task-option", "text_column=note", "--task-option", "label_column=code"]
    assert main(argv) == 0
    assert ("  the labels are codes (1, 2, 3): the prompt asks for one of them and says nothing of what each means, "
            "so the base model can only guess; --task-option \"label_map=1=NAME,2=NAME,3=NAME\" names them (or say "
            "it in --task-option instruction=...)") in capsys.readouterr().out.splitlines()
    assert main([*argv, "--task-option", "label_map=1=emergency,2=urgent,3=routine"]) == 0
    out = capsys.readouterr().out
    assert "labels are codes" not in out and "label: 3 labels: 'emergency' 2 (50%)" in out
    csv.write_text("hr,code\n120,1\n60,2\n")  # numeric_table's own wording; words as labels say nothing
    argv = ["check-data", "--model", str(model), "--task", "numeric_table", "--data", str(csv),
            "--task-option", "label_column=code"]
    assert main(argv) == 0 and "(or say it in --task-option question=...)" in capsys.readouterr().out
    csv.write_text("hr,code\n120,sick\n60,well\n")
    assert main(argv) == 0 and "labels are codes" not in capsys.readouterr().out


def test_pairs_that_mostly_reject_one_label_are_called_lopsided(model, tmp_path, capsys):
    """On-policy negatives carry the direction of a model's errors: an answer rejected far more
    often than chosen teaches DPO to avoid it whatever the prompt (docs/dpo.md)."""
    from prefopt.data.check import lopsided_lines

    labels = ["routine", "urgent", "emergency"]
    balanced = [{"prompt": f"Message {i}?", "chosen": labels[i % 3], "rejected": labels[(i + 1) % 3]} for i in range(9)]
    assert main(["check-data", "--model", str(model), "--data", str(write_jsonl(tmp_path / "b.jsonl", balanced)),
                 "--max-length", "256"]) == 0
    assert "lopsided" not in capsys.readouterr().out
    skewed = balanced + [{"prompt": f"Message {i}?", "chosen": "urgent", "rejected": "routine"} for i in range(9, 15)]
    assert main(["check-data", "--model", str(model), "--data", str(write_jsonl(tmp_path / "s.jsonl", skewed)),
                 "--max-length", "256"]) == 0  # a finding, not a bad record
    assert ("  lopsided: 'routine' is rejected in 9 pairs and chosen in 3: DPO may learn to avoid it whatever the "
            "prompt; balance the pairs (docs/dpo.md)") in capsys.readouterr().out.splitlines()
    from collections import Counter

    free = Counter({f"answer {i}": 1 for i in range(20)})  # free text: no labels to speak of
    assert lopsided_lines(free, Counter({"short": 20})) == []
    assert lopsided_lines(Counter({"a": 5}), Counter({"b": 1, "c": 9})) == [
        "  lopsided: 'c' is rejected in 9 pairs and chosen in 0: DPO may learn to avoid it whatever the prompt; "
        "balance the pairs (docs/dpo.md)"]  # 'b': in under 5 pairs
    assert lopsided_lines(Counter({"a": 60}), Counter({"b": 5, "c": 55})) == [
        "  lopsided: 'c' is rejected in 55 pairs and chosen in 0: DPO may learn to avoid it whatever the prompt; "
        "balance the pairs (docs/dpo.md)"]  # 'b': in under a tenth of them


def test_unpaired_feedback_is_detected_and_checked_as_kto_reads_it(model, tmp_path, capsys):
    """KTO's records: each completion measured on its own (not beside its mismatched one), the
    desirable and undesirable answers counted, a bad label named; a pair file read with --kind
    feedback counts its chosen as desirable and its rejected as not."""
    rows = [{"prompt": "Chest pain?", "completion": "Emergency.", "label": True},
            {"prompt": "Rash?", "completion": "Emergency.", "label": False},
            {"prompt": "Refill?", "completion": "Routine.", "label": "true"},
            {"prompt": "Refill?", "completion": "Routine.", "label": "true"},
            {"prompt": "Fever?", "completion": "Urgent.", "label": "maybe"}]
    path = write_jsonl(tmp_path / "feedback.jsonl", rows)
    assert detect_kind(path) == "feedback"
    assert main(["check-data", "--model", str(model), "--data", str(path)]) == 1
    out = capsys.readouterr().out
    assert "feedback.jsonl: unpaired feedback (KTO); 4 of 5 records kept" in out
    assert "feedback.jsonl:5: field 'label': expected true or false (is the completion desirable?; 1/0 and yes/no are read too), got 'maybe'" in out
    assert "  desirable: 2 distinct: 'Routine.' 2 (67%), 'Emergency.' 1 (33%)" in out
    assert "  undesirable: 1 distinct: 'Emergency.' 1 (100%)" in out and "1 record repeats an earlier one" in out
    from prefopt import load_tokenizer

    tok = load_tokenizer(model)
    check = check_data(path, tok)
    lengths = [len(tok.encode_prompt_response(r["prompt"], r["completion"]).ids) for r in rows[:4]]
    assert check.total == lengths  # the completion's own sequence
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Chest pain?", "chosen": "Emergency.", "rejected": "Routine."},
                                              {"prompt": "Rash?", "chosen": "Routine.", "rejected": "Emergency."}])
    assert detect_kind(pairs) == "preference"
    assert check_data(pairs, tok, kind="feedback").answers == {"desirable": {"Emergency.": 1, "Routine.": 1},
                                                               "undesirable": {"Routine.": 1, "Emergency.": 1}}
    capsys.readouterr()
    # --kind kto for prefopt dpo --loss kto's records, --kind dpo for prefopt dpo's
    assert main(["check-data", "--model", str(model), "--data", str(pairs), "--kind", "kto"]) == 0
    assert "pairs.jsonl: unpaired feedback (KTO); 2 of 2 records kept" in capsys.readouterr().out
    assert main(["check-data", "--model", str(model), "--data", str(pairs), "--kind", "dpo"]) == 0
    assert "pairs.jsonl: preference pairs; 2 of 2 records kept" in capsys.readouterr().out
