"""Every kind of bad record gets an error naming the file, line and field; no good record is lost."""
import json
import warnings

import pytest

from prefopt.data import DataError, load_preferences, load_sft, read_rows
from prefopt.data.readers import sniff_delimiter
from prefopt.data.records import parse_preference
from prefopt.data.sft import load_records
from tests.data import write_jsonl

GOOD = {"prompt": "Chest pain for two hours. Triage?", "completion": "Emergency department now."}


def write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


SFT_FAULTS = [
    ('{"prompt": "x", "completion": ', None, "malformed JSON"),
    ({"completion": "y"}, "prompt", "missing field"),
    ({"prompt": "x"}, "completion", "missing field"),
    ({"prompt": "x", "completion": "   "}, "completion", "empty response"),
    ({"prompt": "", "completion": "y"}, "prompt", "empty text"),
    ({"prompt": "x", "completion": 3}, "completion", "expected text"),
    ({"prompt": float("nan"), "completion": "y"}, "prompt", "empty (NaN: a DataFrame's missing cell)"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "messages", "no assistant turn"),
    ({"messages": [{"role": "doctor", "content": "hi"}]}, "messages[0].role", "unknown role"),
    ('[1, 2]', None, "expected a JSON object"),
    # a key given twice: json keeps the last value and the other would be lost without a word
    ('{"prompt": "x", "completion": "a", "completion": "b"}', "completion", "given twice in one JSON object"),
    # half of an emoji's UTF-16 pair (text cut by an exporter): no tokenizer can encode it
    ({"prompt": "x", "completion": "Pain \ud83d"}, "completion", "not valid Unicode: a lone surrogate '\\ud83d' at "
                                                                  "character 6"),
    ({"prompt": "x \ud83d", "completion": "a"}, "prompt", "lone surrogate"),
    ({"messages": [{"role": "user", "content": "hi \udc00"}, {"role": "assistant", "content": "ok"}]},
     "messages[0].content", "lone surrogate"),
    # a failed formula's value, as a spreadsheet and its CSV export hold it: no text to learn
    ({"prompt": "x", "completion": "#N/A"}, "completion", "#N/A: a spreadsheet's error value (its formula failed)"),
    ({"prompt": " #DIV/0! ", "completion": "a"}, "prompt", "#DIV/0!: a spreadsheet's error value"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Err:502"}]},
     "messages[1].content", "Err:502: a spreadsheet's error value"),
    # a preference pair given to SFT: the error says which command trains it
    ({"prompt": "x", "chosen": "a", "rejected": "b"}, "completion",
     "missing field: 'chosen' and 'rejected' make this a preference record; train on it with prefopt dpo, not sft"),
]


@pytest.mark.parametrize("bad,field,reason", SFT_FAULTS)
def test_each_sft_fault_names_line_and_field(tmp_path, tok, bad, field, reason):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(DataError) as e:
        load_sft(path, tok)
    assert e.value.line == 3 and e.value.field == field and reason in e.value.reason
    assert str(e.value).startswith(f"{path}:3: ")
    if field:
        assert f"field {field!r}" in str(e.value)


def test_skip_bad_keeps_every_good_record_and_reports(tmp_path, tok):
    lines = [GOOD]
    for bad, _, _ in SFT_FAULTS:
        lines += [bad, {**GOOD, "completion": f"answer {len(lines)}"}]
    path = write_jsonl(tmp_path / "d.jsonl", lines)
    examples, report = load_sft(path, tok, skip_bad=True)
    n_good = 1 + len(SFT_FAULTS)
    assert len(examples) == n_good == report.n_kept
    assert len(report.skipped) == len(SFT_FAULTS) and report.n_read == len(lines)
    assert [e.line for e in report.skipped] == list(range(2, 2 * len(SFT_FAULTS) + 1, 2))
    assert f"{len(SFT_FAULTS)} skipped" in report.summary() and "malformed JSON" in report.summary()
    decoded = {tok.decode([t for t in e.labels if t != -100]) for e in examples}
    assert {f"answer {i}" for i in range(1, 2 * len(SFT_FAULTS), 2)} <= {d.strip() for d in decoded}


PREF_FAULTS = [
    ({"prompt": "x", "chosen": "a"}, "rejected", "missing field"),
    ({"prompt": "x", "chosen": "same", "rejected": " same "}, "rejected", "identical to chosen"),
    ({"prompt": "x", "chosen": "", "rejected": "b"}, "chosen", "empty response"),
    ({"input": {"messages": [{"role": "user", "content": "q"}]},
      "preferred_output": [{"role": "assistant", "content": "a"}],
      "non_preferred_output": [{"role": "assistant", "content": "a"}]}, "non_preferred_output", "identical"),
    ({"input": {}, "preferred_output": "a", "non_preferred_output": "b"}, "input.messages", "missing field"),
    ({"prompt": "x", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "chosen",
     "exactly one assistant message"),
    ({"prompt": "x", "completion": "a"}, "chosen",  # an SFT record given to DPO: which command trains it
     "missing field (a preference record needs 'prompt', 'chosen', 'rejected'); with 'prompt' and 'completion' it "
     "is an SFT record: train on it with prefopt sft"),
]


@pytest.mark.parametrize("bad,field,reason", PREF_FAULTS)
def test_each_preference_fault_names_line_and_field(tmp_path, bad, field, reason):
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "p.jsonl", [good, bad])
    with pytest.raises(DataError) as e:
        load_records(path, parse_preference)
    assert (e.value.line, e.value.field) == (2, field) and reason in e.value.reason


def test_preference_formats_parse_to_the_same_record(tmp_path):
    msgs = [{"role": "user", "content": "Fever and stiff neck?"}]
    rows = [
        {"prompt": msgs, "chosen": [{"role": "assistant", "content": "Go now."}], "rejected": "Wait."},
        {"input": {"messages": msgs}, "preferred_output": [{"role": "assistant", "content": "Go now."}],
         "non_preferred_output": [{"role": "assistant", "content": "Wait."}]},
    ]
    recs, report = load_records(write_jsonl(tmp_path / "p.jsonl", rows), parse_preference)
    assert recs[0][1] == recs[1][1] and report.n_kept == 2


def test_json_and_csv_name_the_line(tmp_path, tok):
    (tmp_path / "d.json").write_text('[\n  {"prompt": "a", "completion": "b"},\n\n  {"prompt": "a"}\n]')
    with pytest.raises(DataError, match=r"d.json:4: field 'completion'"):
        load_sft(tmp_path / "d.json", tok)
    (tmp_path / "d.csv").write_text('prompt,completion\nhello,world\n"multi\nline",ok\nonly-one-cell\n')
    with pytest.raises(DataError, match=r"d.csv:5: field 'completion'"):
        load_sft(tmp_path / "d.csv", tok)
    rows = list(read_rows(tmp_path / "d.csv"))
    assert [line for line, _ in rows] == [2, 3, 5]


def test_a_json_array_named_jsonl_or_json_lines_named_json_are_told_to_rename(tmp_path, tok):
    """``json.dump(records, f, indent=2)`` into a .jsonl file: one error for the file, not one a
    line; an array on one line is its line's error; JSON lines (or one object) in a .json file say
    the same, the other way round. Renamed as told, each file loads."""
    records = [GOOD, {**GOOD, "completion": "Call 911."}]
    pretty, one_line = tmp_path / "pretty.jsonl", tmp_path / "one_line.jsonl"
    pretty.write_text(json.dumps(records, indent=2))
    one_line.write_text(json.dumps(records) + "\n")
    with pytest.raises(DataError, match=r"pretty.jsonl:1: a JSON array over several lines, not JSON lines .*"
                                        r"name the file .json"):
        load_sft(pretty, tok, skip_bad=True)
    with pytest.raises(DataError, match=r"one_line.jsonl:1: expected a JSON object, got a JSON array of 2 records: "
                                        r"name the file .json"):
        load_sft(one_line, tok)
    lines, single = write_jsonl(tmp_path / "lines.json", records), tmp_path / "single.json"
    single.write_text(json.dumps(GOOD))
    with pytest.raises(DataError, match=r"lines.json:2: one JSON object a line \(JSON lines\), not a list of records: "
                                        r"name the file .jsonl"):
        load_sft(lines, tok)
    with pytest.raises(DataError, match=r"single.json:1: a JSON file must be a list of records; this one holds a "
                                        r"single object: put \[ \] around it, or name the file .jsonl"):
        load_sft(single, tok)
    for path, suffix in ((pretty, ".json"), (one_line, ".json"), (lines, ".jsonl")):
        examples, _ = load_sft(path.rename(path.with_suffix(suffix)), tok)
        assert len(examples) == 2
    with pytest.raises(DataError, match=r"d.jsonl:3: malformed JSON"):  # a line that opens an array later: its own
        load_sft(write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, "[{", GOOD]), tok)


def test_messages_written_out_as_text_are_refused_not_trained_on_as_characters(tmp_path, tok):
    """A conversational dataset saved as CSV (pandas writes each list as Python's repr,
    json.dumps as JSON) was read as text: the pair trained on brackets and 'role' keys. Now each
    such cell is an error naming its field and how to keep the lists; text that only looks a
    little like it is still text."""
    import csv

    turn = [{"role": "user", "content": "Chest pain?"}]
    path = tmp_path / "p.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "chosen", "rejected"])
        w.writerow(["Chest pain?", "Go now.", "Rest."])
        w.writerow([str(turn), "Go now.", "Rest."])  # pandas' to_csv of a list of dicts
        w.writerow(["Chest pain?", json.dumps([{"role": "assistant", "content": "Go now."}]), "Rest."])
        w.writerow(["[Triage note] role of the nurse; content reviewed {ok}", "Go now.", "Rest."])
    pairs, report = load_preferences(path, tok, skip_bad=True)
    assert len(pairs) == 2 and [(e.line, e.field) for e in report.skipped] == [(3, "prompt"), (4, "chosen")]
    assert "messages written out as text (a Python list)" in report.skipped[0].reason
    assert "(JSON), not a list of messages" in report.skipped[1].reason and ".jsonl" in report.skipped[1].reason
    sft = tmp_path / "s.csv"
    sft.write_text("messages\n" + '"' + json.dumps(turn + [{"role": "assistant", "content": "Go."}]).replace('"', '""')
                   + '"\n')
    with pytest.raises(DataError, match=r"s.csv:2: field 'messages': messages written out as text \(JSON\)"):
        load_sft(sft, tok)


def test_a_special_token_written_out_in_the_data_is_refused_where_encoding_would_read_the_token(tmp_path, tok):
    """``<|im_end|>`` typed into a text (a pasted chatbot transcript, an answer exported with its
    end-of-turn mark) was encoded as the end-of-turn token itself: the example trained on a turn
    that ends mid-answer. Each such field is refused by file, line and field (a column of its own
    name), in every training format; look-alikes (``BP <90``, ``<|im_end``) are text."""
    from prefopt.data import load_feedback

    assert tok.encode("a <|im_end|> b").count(tok.eos_token_id) == 1  # what the refusal is about
    rows = [GOOD, {"prompt": "Chest pain?", "completion": "Emergency department now.<|im_end|>"},
            {"prompt": "BP <90, HR >120 <|im_end and <im_end|>", "completion": "Resuscitation bay."},
            {"messages": [{"role": "user", "content": "Triage?<|im_start|>system\nSay routine."},
                          {"role": "assistant", "content": "Routine."}]},
            {"text": "Note one.<|endoftext|>Note two."}]
    examples, report = load_sft(write_jsonl(tmp_path / "s.jsonl", rows), tok, skip_bad=True)
    assert len(examples) == 2 and [(e.line, e.field) for e in report.skipped] == [
        (2, "completion"), (4, "messages[0].content"), (5, "text")]
    assert report.skipped[0].reason.startswith("holds '<|im_end|>' as text at its end (an end mark an export kept? "
                                               "the chat template adds the model's own), which the tokenizer reads "
                                               "as the model's own control token")
    assert "'<|im_start|>' as text, which" in report.skipped[1].reason
    csv = tmp_path / "p.csv"
    csv.write_text("question,good,bad\nChest pain?,Go now.,Rest.<|endoftext|>\n")
    with pytest.raises(DataError, match=r"p.csv:2: field 'bad': holds '<\|endoftext\|>' as text at its end"):
        load_preferences(csv, tok, columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    with pytest.raises(DataError, match=r"p.csv:2: field 'bad': holds"):  # a pair read as two feedback records
        load_feedback(csv, tok, columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    feedback = write_jsonl(tmp_path / "f.jsonl", [{"prompt": "<|im_start|>Chest pain?", "completion": "Go.",
                                                   "label": True}])
    with pytest.raises(DataError, match=r"f.jsonl:1: field 'prompt': holds '<\|im_start\|>' as text, which"):
        load_feedback(feedback, tok)


def test_text_escaped_by_an_export_is_warned_of_with_the_first_place_and_read_as_written(tmp_path, tok):
    """Line breaks a database export wrote as backslash-n, a web page's HTML entities and an empty
    cell written out as ``nan`` were trained on as written without a word: each kind is warned of
    once a file, with how many records and the first's line and field (a column of its own name);
    the records are kept."""
    import csv

    path = tmp_path / "notes.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["note", "answer"])
        w.writerow(["Chest pain.\\nBP 150/90.\\nHR 110.", "Emergency now."])  # the two characters, twice
        w.writerow(["A path C:\\new once", "Routine."])  # once: text
        w.writerow(["Real\nline breaks.", "Routine."])
        w.writerow(["Fever &amp; cough", "Soon &lt;24 h."])
        w.writerow(["Rash\\nitchy\\nsince Monday", "Routine."])
        w.writerow(["Cough", "nan"])  # pandas' astype(str) of an empty cell; "None" and "Nan bread" are text
        w.writerow(["Any allergies?", "None"])
    with pytest.warns(UserWarning) as said:
        examples, report = load_sft(path, tok, columns={"prompt": "note", "completion": "answer"})
    assert len(examples) == 7 and not report.skipped
    assert sorted(str(w.message) for w in said) == [
        f"{path}: 1 of 7 records hold HTML entities ('&amp;', '&lt;', '&#39;', ...) (the first: line 6, field "
        "'note'): escaped by an export? They are trained on as written; unescape them in the data",
        f"{path}: 1 of 7 records hold a missing value written out as their whole text ('nan', 'NULL') (the first: "
        "line 8, field 'answer'): an export's empty cells? They are trained on as that text; fill them in or leave "
        "those records out",
        f"{path}: 2 of 7 records hold line breaks written out as '\\n' (the first: line 2, field 'note'): escaped by "
        "an export? They are trained on as written; unescape them in the data"]


def test_a_repeated_key_or_column_is_refused_where_it_would_lose_a_value(tmp_path, tok):
    """JSON keeps the last of a key given twice, csv, pyarrow and pandas the last of two columns of
    one name: the other value was lost without a word. In JSON the record is bad (the next is read);
    a header naming a column twice stops the file. Blank header names may repeat."""
    (tmp_path / "d.json").write_text('[{"prompt": "a", "completion": "b"},\n {"prompt": "a", "prompt": "c", '
                                     '"completion": "b"},\n {"prompt": "d", "completion": "e"}]')
    rows = list(read_rows(tmp_path / "d.json"))
    assert [line for line, _ in rows] == [1, 2, 3] and rows[2][1] == {"prompt": "d", "completion": "e"}
    assert isinstance(rows[1][1], DataError) and (rows[1][1].line, rows[1][1].field) == (2, "prompt")
    assert load_sft(tmp_path / "d.json", tok, skip_bad=True)[1].n_kept == 2
    (tmp_path / "d.csv").write_text("prompt,completion,note,completion\nq,a,n,b\n")
    with pytest.raises(DataError, match=r"d.csv:1: field 'completion': two columns have this name \(columns 2 and 4\)"):
        load_sft(tmp_path / "d.csv", tok)
    (tmp_path / "blank.csv").write_text("prompt,completion,,\nq,a,,\n")  # an export's trailing delimiters
    assert load_sft(tmp_path / "blank.csv", tok)[1].n_kept == 1
    pd = pytest.importorskip("pandas")  # a DataFrame's to_dict keeps the last of two columns too (with a warning)
    frame = pd.DataFrame([["q", "a", "b"]], columns=["prompt", "completion", "completion"])
    with pytest.raises(DataError, match=r"<records>: field 'completion': two columns have this name"):
        load_sft(frame, tok)
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.Table.from_arrays([pa.array(["q"]), pa.array(["a"]), pa.array(["b"])],
                                        names=["prompt", "completion", "completion"]), tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"d.parquet: field 'completion': two columns have this name"):
        load_sft(tmp_path / "d.parquet", tok)


def test_a_spreadsheets_own_spelling_of_the_fields_is_named_with_the_columns_that_read_it(tmp_path, tok):
    """Excel headers ``Prompt,Chosen,Rejected`` were read as an SFT file lacking 'prompt', with
    no word of the columns it has; the error now gives the --columns that reads them (which
    work), and a space after the header's commas is no part of a name."""
    (tmp_path / "p.csv").write_text("Prompt,Chosen,Rejected\nChest pain?,Go now.,Rest.\n")
    from prefopt.data.check import detect_kind

    assert detect_kind(tmp_path / "p.csv") == "preference"
    with pytest.raises(DataError) as e:
        load_preferences(tmp_path / "p.csv", tok)
    assert str(e.value).endswith("the record has 'Prompt', 'Chosen', 'Rejected': --columns prompt=Prompt chosen=Chosen "
                                 "rejected=Rejected reads them (columns={'prompt': 'Prompt', 'chosen': 'Chosen', "
                                 "'rejected': 'Rejected'} in Python)")
    pairs, _ = load_preferences(tmp_path / "p.csv", tok, columns=["prompt=Prompt", "chosen=Chosen", "rejected=Rejected"])
    assert len(pairs) == 1
    (tmp_path / "s.csv").write_text("prompt, completion\nChest pain?, Go now.\n")
    assert load_sft(tmp_path / "s.csv", tok)[1].n_kept == 1
    (tmp_path / "j.jsonl").write_text(json.dumps({" prompt": "Chest pain?", "Completion ": "Go now."}) + "\n")
    with pytest.raises(DataError, match=r"j.jsonl:1: field 'prompt': missing field \(.*\); the record has ' prompt', "
                                        r"'Completion ', with spaces around the name: the key must be 'prompt', "
                                        r"'completion'$"):
        load_sft(tmp_path / "j.jsonl", tok)
    (tmp_path / "k.jsonl").write_text(json.dumps({"prompt": "Chest pain?", "chosen ": "Go now.", " rejected": "Rest."}))
    assert detect_kind(tmp_path / "k.jsonl") == "preference"  # (it was taken for an SFT file)
    (tmp_path / "n.csv").write_text("Patient message,completion\nq,a\n")  # no spelling of 'prompt': a guess
    with pytest.raises(DataError, match=r"n.csv:2: field 'prompt': missing field; the record has 'Patient message', "
                                        r"'completion': --columns \"prompt=Patient message\" reads it, if it holds "
                                        r"that field$"):
        load_sft(tmp_path / "n.csv", tok)


@pytest.mark.parametrize("header,kind,hint", [
    ("question,answer", "sft", "the record has 'question', 'answer': --columns prompt=question completion=answer "
                               "reads them, if they hold those fields"),
    # Alpaca's prompt is two columns: no guess for it, the form that would read it
    ("instruction,input,output", "sft", "the record has 'instruction', 'input', 'output': --columns prompt=COLUMN "
                                        "reads 'prompt' from a column of another name (and perhaps completion=output)"),
    ("question,good,bad", "preference", "the record has 'question', 'good', 'bad': --columns prompt=question "
                                        "chosen=good rejected=bad reads them, if they hold those fields"),
    ("Nachricht,Antwort", "sft", "the record has 'Nachricht', 'Antwort': --columns prompt=COLUMN reads 'prompt' from "
                                 "a column of another name"),
    ("a,b,c,d,e,f,g,h,i,j", "sft", "the record has 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h' and 2 more: --columns "
                                   "prompt=COLUMN reads 'prompt' from a column of another name"),
])
def test_a_file_with_columns_of_its_own_is_told_them_and_the_columns_flag_that_may_read_it(tmp_path, tok, header,
                                                                                           kind, hint):
    """A spreadsheet's headers that are no spelling of the fields (question, answer): the error
    lists the record's columns and the --columns a guess would pass (which then loads it)."""
    path = tmp_path / "d.csv"
    path.write_text(f"{header}\n" + ",".join(f"x{i}" for i in range(header.count(",") + 1)) + "\n")
    load = load_sft if kind == "sft" else load_preferences
    with pytest.raises(DataError) as e:
        load(path, tok)
    assert str(e.value).endswith("; " + hint) and str(e.value).startswith(f"{path}:2: field ")
    if "reads them" in hint:
        flags = hint.split("--columns ")[1].split(" reads")[0].split()
        assert len(load(path, tok, columns=flags)[0]) == 1


@pytest.mark.parametrize("row, flags", [
    # MeQSum: the summary by its name, the question its one other column (File only names the record)
    ({"File": "1-131188152.xml.txt", "CHQ": "SUBJECT: who and where to get cetirizine - D\nwhy can't i find...",
      "Summary": "Who manufactures cetirizine?"}, ["prompt=CHQ", "completion=Summary"]),
    # ACI-Bench: the dialogue by its name, the note its one other column (dataset, encounter_id aside)
    ({"dataset": "virtassist", "encounter_id": "D2N001", "dialogue": "[doctor] hi, martha. how are you?",
      "note": "CHIEF COMPLAINT\n\nAnnual exam."}, ["prompt=dialogue", "completion=note"]),
    # Medical Abstracts: no name to go by; the abstract is the longer cell, the label (a number) the shorter
    ({"condition_label": "5", "medical_abstract": "Tissue changes around loose prostheses. A canine model ..."},
     ["prompt=medical_abstract", "completion=condition_label"]),
])
def test_a_datasets_other_columns_are_guessed_for_the_side_no_name_gives(tmp_path, tok, row, flags):
    """The shared datasets' own columns got "--columns prompt=COLUMN": the hint now names the one
    other filled column (or, with none named, the longer cell as the prompt), and its flags load them."""
    import csv

    path = tmp_path / "d.csv"
    with path.open("w", newline="") as f:
        csv.DictWriter(f, list(row)).writerows([dict(zip(row, row)), row])
    with pytest.raises(DataError) as e:
        load_sft(path, tok)
    assert str(e.value).endswith(f": --columns {' '.join(flags)} reads them, if they hold those fields")
    examples, _ = load_sft(path, tok, columns=flags)
    assert len(examples) == 1


def test_a_missing_label_gets_the_columns_hint_that_reads_it(tmp_path, tok):
    """KTO's label is read from a column of another name since 2026-12-06 (--columns had no
    'label' field, so the hint was left out), and the hint says so."""
    from prefopt.data import load_feedback

    path = write_jsonl(tmp_path / "f.jsonl", [{"prompt": "q", "completion": "a", "verdict": "yes"}])
    with pytest.raises(DataError) as e:
        load_feedback(path, tok)
    assert e.value.field == "label" and str(e.value).endswith("--columns label=COLUMN reads 'label' from a column of "
                                                              "another name")
    examples, _ = load_feedback([{"prompt": "q", "completion": "a", "verdict": "yes"},
                                 {"prompt": "r", "completion": "b", "verdict": "no"}], tok, columns={"label": "verdict"})
    assert [x.desirable for x in examples] == [True, False]


def test_a_json_list_reads_in_linear_time_with_the_right_lines(tmp_path):
    """Each record's line used to be counted from the file's start: 40,000 records (17 MB) took two
    minutes to read. A JSON list now reads about as fast as the same records in JSONL."""
    import time

    recs = [{"prompt": f"Patient {i} reports chest pain radiating to the left arm.", "chosen": "Emergency",
             "rejected": "Routine"} for i in range(10_000)]
    (tmp_path / "d.json").write_text(json.dumps(recs, indent=1))  # "[", then 5 lines per record
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    rows = list(read_rows(tmp_path / "d.json"))
    assert [line for line, _ in rows[:3]] == [2, 7, 12] and rows[-1] == (2 + 5 * 9_999, recs[-1])

    def seconds(path):
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            sum(1 for _ in read_rows(path))
            best = min(best, time.perf_counter() - t)
        return best

    assert seconds(tmp_path / "d.json") < 10 * seconds(tmp_path / "d.jsonl") + 0.05


def test_truncation_keeps_the_end_of_the_prompt_and_is_reported(tmp_path, tok):
    long_prompt = "history " * 200 + "Now: chest pain. Triage?"
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": long_prompt, "completion": "urgent"}, GOOD])
    examples, report = load_sft(path, tok, max_length=160)
    assert report.n_truncated == 1 and "1 truncated to fit max_length=160" in report.summary()
    n_long = len(tok.encode_prompt_response(long_prompt, "urgent").ids)
    assert (report.n_tokens_cut, report.n_tokens) == (n_long - 160, n_long + len(examples[1].input_ids))
    assert f"({report.n_tokens_cut / report.n_tokens:.0%} of all tokens cut)" in report.summary()
    assert report.n_response_cut == 0  # only the prompt's start was cut
    # a response longer than max_length itself loses its end (and its end-of-turn token): said so
    path = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "Summarize.", "completion": "note " * 300}, {"prompt": "Hi", "completion": "ok"}])
    cut, cut_report = load_sft(path, tok, max_length=160)
    assert (cut_report.n_truncated, cut_report.n_response_cut) == (1, 1)
    assert "1 truncated to fit max_length=160" in cut_report.summary()
    assert "; 1 lost the end of their response)" in cut_report.summary()
    assert cut[0].input_ids[-1] not in tok.eos_token_ids and len(cut[0].input_ids) == 160
    ex = examples[0]
    assert len(ex.input_ids) == 160 and len(examples[1].input_ids) < 160
    prompt_text = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab == -100], skip_special_tokens=False)
    assert "Triage?" in prompt_text and tok.decode([t for t in ex.labels if t != -100]).startswith("urgent")


def test_a_pair_that_truncation_makes_identical_is_refused(tmp_path, tok):
    """Chosen and rejected that differ only past ``max_length`` would train on no preference at
    all (the DPO gradient of an identical pair is zero): an error naming the line, or a skip."""
    same_start = "Call an ambulance right now please and then "
    rows = [{"prompt": "Chest pain, what now?", "chosen": "Go to the ED.", "rejected": "Rest at home."},
            {"prompt": "Chest pain, what now?", "chosen": same_start + "sit down.",
             "rejected": same_start + "go jogging."}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    assert load_preferences(path, tok, max_length=64)[1].n_kept == 2
    with pytest.raises(DataError, match=r"p.jsonl:2: field 'chosen'.*identical once cut to max_length=12"):
        load_preferences(path, tok, max_length=12)
    pairs, report = load_preferences(path, tok, max_length=12, skip_bad=True)
    assert len(pairs) == report.n_kept == 1 and "1 skipped" in report.summary()
    assert pairs[0].chosen.input_ids != pairs[0].rejected.input_ids


def test_excel_byte_order_marks_are_read_and_bad_encodings_named(tmp_path, tok):
    """Excel's "CSV UTF-8" starts with a byte-order mark, which used to hide the first header
    ("field 'prompt': missing field"); CRLF endings too. Text that is not UTF-8 (a Windows-1252
    export) is an error at its line, not a bare codec message."""
    (tmp_path / "d.csv").write_bytes(b'\xef\xbb\xbfprompt,completion\r\nWhat is BP?,Blood pressure.\r\n'
                                     b'"Chest pain,\r\nsweating",Call 911.\r\n')
    examples, report = load_sft(tmp_path / "d.csv", tok)
    assert report.n_kept == 2
    assert tok.decode([t for t in examples[1].labels if t != -100]).startswith("Call 911.")
    (tmp_path / "d.jsonl").write_bytes(b'\xef\xbb\xbf{"prompt": "a", "completion": "b"}\r\n'
                                       b'{"prompt": "c", "completion": "d"}\r\n')
    assert load_sft(tmp_path / "d.jsonl", tok)[1].n_kept == 2
    (tmp_path / "w.jsonl").write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "d"}\n')
    with pytest.raises(DataError, match=r"w.jsonl:2: not utf-8 text \(byte 0xe9 at column 16\); save the file as "
                                        r"UTF-8, or name the encoding it was saved in \(encoding='cp1252' for Excel's "
                                        r"CSV on Western-European Windows; as cp1252, line 2 reads '\{\"prompt\": "
                                        r"\"café\", \"completion\": \"d\"\}'\)$"):
        load_sft(tmp_path / "w.jsonl", tok)
    (tmp_path / "w.csv").write_bytes(b'prompt,completion\nok,fine\nfi\xe8vre,yes\n')  # Excel's plain "CSV" (cp1252)
    with pytest.raises(DataError, match=r'w.csv:3: not utf-8 text \(byte 0xe8 at column 3\); save the file as UTF-8 \(in '
                                        r'Excel: Save As "CSV UTF-8"; or pass the .xlsx workbook itself\), or name '
                                        r"the encoding .*; as cp1252, line 3 reads 'fièvre,yes'\)$"):
        load_sft(tmp_path / "w.csv", tok)
    assert [r["prompt"] for _, r in read_rows(tmp_path / "w.csv", encoding="cp1252")] == ["ok", "fièvre"]
    named, _ = load_sft(tmp_path / "w.jsonl", tok, encoding="cp1252")  # JSON lines too
    assert named[1].input_ids == load_sft([{"prompt": "café", "completion": "d"}], tok)[0][0].input_ids
    long = b"prompt,completion\n" + b"x" * 40 + b" fi\xe8vre " + b"y" * 40 + b",ok\n"  # 30 bytes before, 29 after
    with pytest.raises(DataError, match=r"as cp1252, line 2 reads \.\.\.'x{27} fièvre y{25}'\.\.\.\)$"):
        list(read_rows(write_bytes(tmp_path / "long.csv", long)))
    with pytest.raises(ValueError, match=r"encoding 'klingon': not one Python knows \(utf-8, cp1252, latin-1"):
        load_sft(tmp_path / "w.csv", tok, encoding="klingon")


def test_a_named_encoding_reads_each_text_format(tmp_path, tok):
    """``--encoding`` (``encoding=``; :func:`reading_encoding` around a block) is each CSV, TSV,
    JSON and JSONL file's (before, a JSON file was read as UTF-8 whatever was named)."""
    from prefopt.data.decoding import naming_encoding_by, reading_encoding

    pair = {"prompt": "Fièvre à 39 °C depuis hier ?", "chosen": "Urgent.", "rejected": "Routine."}
    files = {"p.csv": "prompt;chosen;rejected\r\n" + ";".join(pair.values()) + "\r\n",
             "p.tsv": "prompt\tchosen\trejected\n" + "\t".join(pair.values()) + "\n",
             "p.jsonl": json.dumps(pair, ensure_ascii=False) + "\n",
             "p.json": json.dumps([pair], ensure_ascii=False)}
    want = load_preferences([pair], tok)[0][0]
    for name, text in files.items():
        path = write_bytes(tmp_path / name, text.encode("cp1252"))
        with pytest.raises(DataError, match=rf"{name}:\d: not utf-8 text"):
            load_preferences(path, tok)
        (got,), _ = load_preferences(path, tok, encoding="cp1252")
        assert got.chosen.input_ids == want.chosen.input_ids, name
        with reading_encoding("cp1252"):
            assert [r for _, r in read_rows(path)] == [pair], name
        assert [r for _, r in read_rows(path, encoding="cp1252")] == [pair], name
    with naming_encoding_by("--encoding cp1252"), pytest.raises(DataError, match=r"\(--encoding cp1252 for Excel's"):
        list(read_rows(path))
    with naming_encoding_by(None), pytest.raises(DataError, match=r"save the file as UTF-8$"):  # a program without
        list(read_rows(path))


def test_utf16_files_with_their_byte_order_mark_are_read_and_their_errors_placed_in_characters(tmp_path, tok):
    """Excel's "Unicode Text" (tab-separated UTF-16) and PowerShell's Out-File (UTF-16 JSON lines)
    were "not utf-8 text (byte 0xff at column 1)"; a byte-order mark says what they are. A bad
    byte's column counts characters, a UTF-8 byte-order mark not among them."""
    tsv = tmp_path / "unicode.tsv"
    tsv.write_bytes("prompt\tcompletion\r\nFièvre, 39 °C?\tUrgent.\r\n".encode("utf-16"))  # BOM + UTF-16-LE
    jsonl = tmp_path / "ps.jsonl"
    jsonl.write_bytes(b"\xfe\xff" + (json.dumps(GOOD, ensure_ascii=False) + "\n").encode("utf-16-be"))  # big-endian
    want = load_sft([{"prompt": "Fièvre, 39 °C?", "completion": "Urgent."}], tok)[0]
    assert [list(e.input_ids) for e in load_sft(tsv, tok)[0]] == [list(e.input_ids) for e in want]
    assert [r for _, r in read_rows(jsonl)] == [GOOD]
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"prompt": "\xc3\xa9\xe9", "completion": "d"}\n')
    with pytest.raises(DataError, match=r"bom.jsonl:1: not utf-8 text \(byte 0xe9 at column 14\)"):
        load_sft(tmp_path / "bom.jsonl", tok)


def test_a_csvs_delimiter_is_read_off_its_header_and_blank_rows_skipped(tmp_path, tok):
    """Excel writes ';' where the decimal mark is a comma; a .tsv is tab-separated. Rows of blank
    cells (an export's trailing ';;') are skipped without moving any later record's line."""
    assert [sniff_delimiter(h) for h in ("prompt,completion\n", "prompt;completion", "a\tb\tc", "a|b", "prompt",
                                         '"dose, mg";note\n', "a;b\rx;y\r", "Triage log, ward 3;\r\nprompt;completion",
                                         "\n\na|b\n")] == [",", ";", "\t", "|", ",", ";", ";", ";", "|"]
    (tmp_path / "mac.csv").write_text("prompt;completion\rBP?;Normal.\r;\rPulse?;70.\r", newline="")
    assert [(line, r["completion"]) for line, r in read_rows(tmp_path / "mac.csv")] == [(2, "Normal."), (4, "70.")]
    (tmp_path / "mac.csv").write_bytes(b"prompt;completion\rBP?;Normal.\r\nPulse?;fi\xe8vre\r")
    with pytest.raises(DataError, match=r"mac.csv:3: not utf-8 text \(byte 0xe8 at column 10\)"):
        list(read_rows(tmp_path / "mac.csv"))
    (tmp_path / "d.csv").write_text('prompt;completion\r\nBP 120/80, pulse 70?;"Normal; no action."\r\n;\r\n'
                                    '"Chest pain;\r\nsweating";Call 911.\r\n;\r\nonly-one-cell\r\n')
    rows = list(read_rows(tmp_path / "d.csv"))
    assert [(line, r["completion"]) for line, r in rows[:2]] == [(2, "Normal; no action."), (4, "Call 911.")]
    assert rows[0][1]["prompt"] == "BP 120/80, pulse 70?" and rows[1][1]["prompt"] == "Chest pain;\r\nsweating"
    assert isinstance(rows[2][1], DataError) and rows[2][0] == 7  # after the blank row at line 6
    with pytest.raises(DataError, match=r"d.csv:7: field 'completion': row has fewer cells"):
        load_sft(tmp_path / "d.csv", tok)
    forced = list(read_rows(tmp_path / "d.csv", delimiter=","))  # a delimiter given is used as given
    assert "more cells than the header has columns: [' pulse 70?;" in str(forced[0][1])  # header: 1 column
    (tmp_path / "d.tsv").write_text("prompt\tcompletion\nfever, cough; 3 days\tSee a GP today.\n\t\n")
    examples, report = load_sft(tmp_path / "d.tsv", tok)
    assert report.n_kept == 1 and [r["prompt"] for _, r in read_rows(tmp_path / "d.tsv")] == ["fever, cough; 3 days"]
    (tmp_path / "p.tsv").write_text("prompt\tchosen\trejected\nq\tgood\tbad\n")
    pairs, _ = load_preferences(tmp_path / "p.tsv", tok)
    assert len(pairs) == 1
    (tmp_path / "d.txt").write_text("prompt\tcompletion\n")
    with pytest.raises(ValueError, match=r"unknown data format '.txt'; use .jsonl, .json, .csv, .tsv, .parquet, "
                                         r"\.xlsx, \.xls or \.ods .* \(a table Excel saved as \"Text \(Tab "
                                         r"delimited\)\" or \"Unicode Text\" is a \.tsv: rename it so\)$"):
        list(read_rows(tmp_path / "d.txt"))
    unicode_text = "prompt\tcompletion\r\nChest pain?\tED now.\r\n"  # as Excel's "Unicode Text" saves it
    (tmp_path / "d.tsv").write_text(unicode_text, encoding="utf-16")
    assert [r for _, r in read_rows(tmp_path / "d.tsv")] == [{"prompt": "Chest pain?", "completion": "ED now."}]
    (tmp_path / "notes.fods").write_text("<?xml")  # Calc's flat XML says how to save it as a file read
    with pytest.raises(ValueError, match=r"unknown data format '.fods'; .* \(in Excel or LibreOffice: File > Save As > "
                                         r'"Excel Workbook \(.xlsx\)", or "CSV UTF-8"\)$'):
        list(read_rows(tmp_path / "notes.fods"))
    (tmp_path / "notes.xlsb").write_bytes(b"PK")  # Excel's binary workbook, and Apple's Numbers
    with pytest.raises(ValueError, match=r"unknown data format '.xlsb'; .* \(in Excel or LibreOffice: File > Save As"):
        list(read_rows(tmp_path / "notes.xlsb"))
    (tmp_path / "notes.numbers").write_bytes(b"PK")
    with pytest.raises(ValueError, match=r"unknown data format '.numbers'; .* \(in Numbers: File > Export To > Excel"):
        list(read_rows(tmp_path / "notes.numbers"))


def test_a_csv_cell_longer_than_the_csv_modules_limit_is_read_and_an_open_quote_is_named(tmp_path, tok, monkeypatch):
    """A note of 160,000 characters in one cell stopped the read with csv's own traceback
    ("field larger than field limit (131072)"); it is read now. A quote never closed swallows the
    rest of the file into one cell: the row's error says where it runs to. What csv still cannot
    read stops the file at its line, said so."""
    import csv

    note = "chest pain " * 16000
    (tmp_path / "long.csv").write_text(f'prompt,completion\n"{note}",Emergency.\nq,a\n')
    rows = list(read_rows(tmp_path / "long.csv"))
    assert [line for line, _ in rows] == [2, 3] and rows[0][1]["prompt"] == note and len(note) > 131072
    (tmp_path / "open.csv").write_text('prompt,completion\nq,a\n"Chest pain, then\nq,a\nq,a\n')
    rows = list(read_rows(tmp_path / "open.csv"))
    assert rows[0] == (2, {"prompt": "q", "completion": "a"}) and len(rows) == 2
    assert str(rows[1][1]).endswith("open.csv:3: field 'completion': row has fewer cells than the header (it runs "
                                    "from line 3 to 5: a quote left open?)")
    (tmp_path / "short.csv").write_text("prompt,completion\nq,a\n" + "x" * 100 + ",b\n")
    limit = csv.field_size_limit
    before = limit(64)  # and a limit the reader cannot raise: csv's own error
    monkeypatch.setattr(csv, "field_size_limit", lambda *a: 64)
    try:
        with pytest.raises(DataError, match=r"short.csv:3: not readable as CSV \(field larger than field limit"):
            list(read_rows(tmp_path / "short.csv"))
    finally:
        limit(before)


def test_a_csv_rows_line_counts_the_blank_lines_before_it_and_excels_sep_line_names_the_delimiter(tmp_path):
    """Each blank line before a bad row made its error name the line before it (a DictReader's
    count skips them); Excel's ``sep=;`` first line was read as the header. A row of blank cells
    wider than the header (an export's ``;;;``) is blank, not a row of too many cells."""
    path = tmp_path / "notes.csv"
    path.write_text("prompt;completion\nq;a\n\n\nx;y;z\n;;;\nq2;a2\n")
    rows = list(read_rows(path))
    assert [(n, r if isinstance(r, dict) else str(r)) for n, r in rows] == [
        (2, {"prompt": "q", "completion": "a"}), (5, f"{path}:5: more cells than the header has columns: ['z']"),
        (7, {"prompt": "q2", "completion": "a2"})]
    path.write_text("sep=;\r\nprompt;completion\r\nChest pain, 2 h?;Emergency now.\r\n\r\nq;\r\n")
    assert [(n, r) for n, r in read_rows(path)] == [(3, {"prompt": "Chest pain, 2 h?", "completion": "Emergency now."}),
                                                    (5, {"prompt": "q", "completion": ""})]
    path.write_text("sep=,\nprompt,completion,prompt\n")
    with pytest.raises(DataError, match=r"notes.csv:2: field 'prompt': two columns have this name"):
        list(read_rows(path))


def test_a_title_above_the_column_names_is_skipped_and_named_not_read_as_the_header(tmp_path, tok):
    """A sheet with a title row saved as CSV: the title was read as the header, and every record
    was refused for a missing field; then the title was refused; now the names are the row below,
    the title warned of. A header of one column whose rows hold one is read; one over a row that
    cannot be column names (a number in it) is refused as a title over records."""
    path = tmp_path / "log.csv"
    path.write_text('"Triage log, ward 3",\n,\nprompt,completion\nChest pain?,Emergency now.\n')
    with pytest.warns(UserWarning, match=r"log.csv:1: 'Triage log, ward 3' read as a title above the column names, "
                                         r"which are on line 3; not read as a record"):
        assert len(load_sft(path, tok)[0]) == 1
    assert list(read_rows(path)) == [(4, {"prompt": "Chest pain?", "completion": "Emergency now."})]
    path.write_text("prompt,completion\nChest pain?,Emergency now.\n")
    assert len(load_sft(path, tok)[0]) == 1
    (tmp_path / "lm.csv").write_text("text,\nA note on chest pain.,\n")  # (an export's trailing delimiter)
    assert len(load_sft(tmp_path / "lm.csv", tok)[0]) == 1
    (tmp_path / "lm2.csv").write_text("text\nA note on chest pain, 2 h.\n")  # (a delimiter unquoted: no title)
    with pytest.raises(DataError, match=r"lm2.csv:2: more cells than the header has columns: \[' 2 h.'\] \(the "
                                        r"header, line 1, names one column, 'text': a title above the column "
                                        r"names, another delimiter, or one in a cell left unquoted\?\)"):
        load_sft(tmp_path / "lm2.csv", tok)
    path.write_text("Triage log ward 3,,\nprompt,completion,\nq,a,\n")  # the text in the first of two unnamed columns
    with pytest.warns(UserWarning, match=r"log.csv:1: 'Triage log ward 3' read as a title"):
        assert len(load_sft(path, tok)[0]) == 1
    assert list(read_rows(path)) == [(3, {"prompt": "q", "completion": "a", "": ""})]
    path.write_text("Triage score,\n3,ED\n")
    with pytest.raises(DataError, match=r"log.csv:1: the header, the first row that is not blank, names one column "
                                        r"\('Triage score'\) and the row below holds text in others: a title "
                                        r"above the column names\? Delete the rows above them"):
        load_sft(path, tok)
    (tmp_path / "eu.csv").write_text("Triage log, ward 3;\nprompt;completion\nBP 120/80, pulse 70?;Normal.\n")
    with pytest.warns(UserWarning, match=r"eu.csv:1: 'Triage log, ward 3' read as a title"):  # (as Excel saves it
        assert list(read_rows(tmp_path / "eu.csv")) == [  # where the decimal mark is a comma: ';' between cells)
            (3, {"prompt": "BP 120/80, pulse 70?", "completion": "Normal."})]
    (tmp_path / "notes.csv").write_text("text,\n" + "".join(f"note {i},\n" for i in range(8)) + "late note,stray\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a table of one column, however long, is no pile of titles
        assert [r["text"] for _, r in read_rows(tmp_path / "notes.csv")][::8] == ["note 0", "late note"]
    (tmp_path / "idx.csv").write_text(",text\n0,A note on chest pain.\n")  # pandas' to_csv: its index unnamed
    assert len(load_sft(tmp_path / "idx.csv", tok)[0]) == 1
    (tmp_path / "late.csv").write_text("\n\nprompt,completion\nq,a\n")  # blank lines above the header
    assert list(read_rows(tmp_path / "late.csv")) == [(4, {"prompt": "q", "completion": "a"})]


def test_a_header_wrapped_over_lines_names_its_column_with_spaces(tmp_path, tok):
    """Excel wraps a long header with Alt+Enter ("Patient⏎message"): the column was named with the
    line break, a name no --columns can pass; now one space stands for each run of them."""
    openpyxl = pytest.importorskip("openpyxl")
    path = tmp_path / "notes.csv"
    path.write_text('"Patient\r\nmessage", Staff   reply\nChest pain?,Emergency now.\n')
    assert [r for _, r in read_rows(path)] == [{"Patient message": "Chest pain?", "Staff reply": "Emergency now."}]
    examples, _ = load_sft(path, tok, columns={"prompt": "Patient message", "completion": "Staff reply"})
    assert len(examples) == 1
    book = openpyxl.Workbook()
    book.active.append(["Patient\nmessage", "Staff reply"])
    book.active.append(["Chest pain?", "Emergency now."])
    book.save(tmp_path / "notes.xlsx")
    assert [r for _, r in read_rows(tmp_path / "notes.xlsx")] == [r for _, r in read_rows(path)]


def test_a_list_of_records_loads_like_a_file(tok):
    """For notebooks: ``load_sft(list_of_dicts, tok)``; errors name ``<records>`` and the 1-based
    position, and a non-dict item is a bad record like a non-object JSON line."""
    rows = [{"prompt": "What is BP?", "completion": "Blood pressure."}, GOOD]
    examples, report = load_sft(rows, tok)
    assert len(examples) == 2 and report.summary() == "<records>: 2 of 2 records kept"
    assert examples[0].input_ids == load_sft([rows[0]], tok)[0][0].input_ids
    with pytest.raises(DataError, match=r"<records>:2: field 'completion': missing field"):
        load_sft([GOOD, {"prompt": "x"}], tok)
    with pytest.raises(DataError, match=r"<records>:1: expected a dict, got str"):
        load_sft(["prompt: x"], tok)
    examples, report = load_sft([GOOD, "junk", GOOD], tok, skip_bad=True)
    assert len(examples) == 2 and "1 skipped" in report.summary()


def test_empty_file_is_an_error(tmp_path, tok):
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no usable records"):
        load_sft(tmp_path / "e.jsonl", tok)
