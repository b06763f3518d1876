"""Preference data as other tools write it: TRL's implicit prompt (chosen and rejected each hold
the whole exchange), Parquet files (a Hugging Face dataset's own format) and DataFrames read
from them, whose list columns hold numpy arrays."""
import csv
import importlib.util
import io
import json
import sys
import zipfile

import pytest

from prefopt.data import DataError, Records, load_preferences, load_sft, read_rows
from prefopt.data.records import PreferenceRecord, parse_preference
from prefopt.data.sheets import cell_text
from tests._formats import write_ods, write_workbook


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


QUESTION = [{"role": "system", "content": "You triage patient messages."}, user("Fever and a stiff neck since noon?")]
EXPLICIT = {"prompt": QUESTION, "chosen": [assistant("Go to the emergency department now.")],
            "rejected": [assistant("Rest and drink fluids.")]}
IMPLICIT = {"chosen": QUESTION + EXPLICIT["chosen"], "rejected": QUESTION + EXPLICIT["rejected"]}
HH = {"chosen": "\n\nHuman: Fever and a stiff neck?\n\nAssistant: Go to the emergency department now.",
      "rejected": "\n\nHuman: Fever and a stiff neck?\n\nAssistant: Rest and drink fluids."}


def parse(row):
    return parse_preference(row, "p.jsonl", 7)


def test_an_implicit_prompt_is_what_chosen_and_rejected_share_as_trl_reads_it():
    """The shared opening messages (system included) are the prompt; the same split as TRL's
    ``maybe_extract_prompt`` gives, for messages and for text that differs at a word."""
    from trl.data_utils import maybe_extract_prompt

    assert parse(IMPLICIT) == parse(EXPLICIT) == PreferenceRecord(
        QUESTION, "Go to the emergency department now.", "Rest and drink fluids.")
    trl = maybe_extract_prompt(dict(IMPLICIT))
    assert parse(IMPLICIT) == parse(trl)
    # HuggingFaceH4's UltraFeedback: a text prompt beside whole conversations; it must agree with them
    h4 = {"prompt": "Fever and a stiff neck since noon?", **IMPLICIT}
    assert parse(h4) == parse(EXPLICIT) and parse(maybe_extract_prompt(dict(h4))) == parse(h4)
    parts = [{"role": "system", "content": [{"type": "text", "text": QUESTION[0]["content"]}]},
             {**QUESTION[1], "name": "patient"}]  # the same messages, as another tool writes them
    assert parse({"prompt": parts, **IMPLICIT}) == parse(EXPLICIT)
    with pytest.raises(DataError, match=r"p.jsonl:7: field 'prompt': does not match the opening messages chosen and "
                                        r"rejected share \(their last user message begins 'Fever and"):
        parse({**IMPLICIT, "prompt": "Chest pain?"})
    got = parse(HH)  # Anthropic HH style: the prompt is text; the space before the answer goes with it (BPE)
    assert got == PreferenceRecord("\n\nHuman: Fever and a stiff neck?\n\nAssistant:",
                                   " Go to the emergency department now.", " Rest and drink fluids.")
    assert got == parse(maybe_extract_prompt(dict(HH)))


def test_a_word_the_two_texts_share_at_the_start_stays_whole():
    """TRL cuts at the first differing character ("The" | "y"); prefopt backs off to the word
    boundary, so each response starts with a whole word."""
    row = {"chosen": "Q: fever? A: The patient needs care.", "rejected": "Q: fever? A: They can wait."}
    assert parse(row) == PreferenceRecord("Q: fever? A:", " The patient needs care.", " They can wait.")
    row = {"chosen": "Q: fever? A: Go now.", "rejected": "Q: fever? A: Go now. Or tomorrow."}  # one extends the other
    assert parse(row) == PreferenceRecord("Q: fever? A: Go", " now.", " now. Or tomorrow.")


@pytest.mark.parametrize("row,field,reason", [
    ({"chosen": [user("a"), assistant("b")], "rejected": [user("c"), assistant("d")]}, "prompt",
     "missing field, and chosen and rejected share no opening message to take it from"),
    ({"chosen": [user("a"), assistant("b"), user("more?")], "rejected": [user("a"), assistant("d")]}, "chosen",
     "after the 1 opening message(s) chosen and rejected share (the prompt), expected one assistant message, "
     "got assistant, user"),
    ({"chosen": [user("a"), assistant("b")], "rejected": [user("a")]}, "rejected",
     "expected one assistant message, got nothing"),
    ({"chosen": IMPLICIT["chosen"], "rejected": IMPLICIT["chosen"]}, "rejected", "identical to chosen"),
    ({"chosen": "Go now.", "rejected": "Wait."}, "prompt",
     "missing field, and chosen and rejected share no opening text to take it from"),
    ({"chosen": IMPLICIT["chosen"], "rejected": "Wait."}, "prompt",
     "missing field; without it chosen and rejected must both be message lists or both text"),
    ({"chosen": "Q: x? A: yes", "rejected": "Q: x? A: yes "}, "rejected", "identical to chosen"),
    ({"prompt": "Fever?", "completion": "Go now.", "label": True}, "chosen",  # unpaired: not something DPO trains on
     "with 'completion' and 'label' it is an unpaired preference record (TRL's KTO format): train on such records "
     "with --loss kto; the other losses need a chosen and a rejected response to the same prompt"),
])
def test_an_implicit_prompt_that_cannot_be_found_is_named(row, field, reason):
    with pytest.raises(DataError) as e:
        parse(row)
    assert (e.value.line, e.value.field) == (7, field) and reason in e.value.reason


def test_implicit_and_explicit_pairs_tokenize_the_same(tmp_path, tok):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (IMPLICIT, EXPLICIT, HH)) + "\n")
    pairs, report = load_preferences(path, tok)
    assert report.n_kept == 3 and pairs[0].key == pairs[1].key


pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow: the parquet extra")


def _parquet(path, rows):
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_a_parquet_file_is_read_row_by_row_and_errors_name_the_row(tmp_path, tok):
    rows = [IMPLICIT] * 3 + [{"chosen": IMPLICIT["chosen"], "rejected": IMPLICIT["chosen"]}] + [IMPLICIT] * 2
    path = _parquet(tmp_path / "prefs.parquet", rows)
    with pytest.raises(DataError, match=r"prefs.parquet:4: field 'rejected': identical to chosen"):
        load_preferences(path, tok)
    pairs, report = load_preferences(path, tok, skip_bad=True)
    assert len(pairs) == 5 and [s.line for s in report.skipped] == [4]
    assert pairs[0].key == load_preferences([EXPLICIT], tok)[0][0].key
    from prefopt.data import readers

    many = _parquet(tmp_path / "many.parquet", [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(7)])
    assert [(n, r["prompt"]) for n, r in readers._parquet(many, batch_rows=3)] == [(i + 1, f"q{i}") for i in range(7)]
    (tmp_path / "cut.parquet").write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match=r"cut.parquet: not a readable Parquet file \("):
        list(read_rows(tmp_path / "cut.parquet"))


def test_parquet_without_pyarrow_says_how_to_get_it(tmp_path, monkeypatch):
    path = _parquet(tmp_path / "p.parquet", [EXPLICIT])
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"reading .parquet data files needs the optional package 'pyarrow'.*"
                                          r"pip install 'prefopt\[parquet\]'  \(or: pip install pyarrow\)"):
        list(read_rows(path))


def test_a_dataframe_read_from_parquet_loads_its_message_columns(tmp_path, tok):
    """pandas gives a list column back as numpy arrays of dicts; they load as the lists they were."""
    pd = pytest.importorskip("pandas")
    frame = pd.read_parquet(_parquet(tmp_path / "p.parquet", [EXPLICIT, IMPLICIT]))  # IMPLICIT's prompt: None
    assert type(frame.iloc[0]["chosen"]).__name__ == "ndarray"
    pairs, report = load_preferences(frame, tok)
    assert report.n_kept == 2 and pairs[0].key == pairs[1].key


def test_a_hugging_face_dataset_and_a_generator_load_as_their_rows(tmp_path, tok):
    """What TRL's trainers take, a ``datasets.Dataset`` (its ``to_dict`` gives columns, which
    loaded as "expected a dict, got str"), and a generator of dicts load as the same records a
    list gives; what cannot be records says what to pass instead."""
    datasets = pytest.importorskip("datasets")
    pd = pytest.importorskip("pandas")
    rows = [EXPLICIT, {**EXPLICIT, "chosen": [assistant("Yes, go now.")]}]  # (one type a column, as Arrow holds)
    want = [p.key for p in load_preferences(rows, tok)[0]]
    ds = datasets.Dataset.from_list(rows)
    for given in (ds, ds.to_iterable_dataset(), (r for r in rows), pd.DataFrame(rows)):
        pairs, report = load_preferences(given, tok)
        assert [p.key for p in pairs] == want and report.n_kept == 2 and str(report.name) == "<records>"

    class Polars:  # (not installed here) a polars DataFrame gives its rows by to_dicts()
        def to_dicts(self):
            return rows
    assert [p.key for p in load_preferences(Polars(), tok)[0]] == want
    bad = datasets.Dataset.from_list([EXPLICIT, {**EXPLICIT, "rejected": EXPLICIT["chosen"]}])  # the second: equal
    with pytest.raises(DataError, match=r"^<records>:2: field 'rejected': identical to chosen"):
        load_preferences(bad, tok)
    sft, _ = load_sft(datasets.Dataset.from_list([{"prompt": "Fever?", "completion": "Call us."}]), tok)
    assert len(sft) == 1
    refused = [(datasets.DatasetDict(train=ds), r"a DatasetDict of splits \('train'\): pass one, e.g. data\['train'\]"),
               (pd.DataFrame(rows)["prompt"], r"a Series \(one column\): pass the whole table, its DataFrame"),
               (1, r"expected a data file's path, a list of record dicts, a DataFrame or a datasets.Dataset; got int")]
    for given, message in refused:
        with pytest.raises(TypeError, match="^<records>: " + message):
            load_preferences(given, tok)
    for given in (EXPLICIT, {k: [v] for k, v in EXPLICIT.items()}):  # one record; columns
        with pytest.raises(TypeError, match=r"^<records>: a dict, not a list of records: \[record\] for one record, "
                                            r"pandas.DataFrame\(data\) for a dict of columns$"):
            load_preferences(given, tok)
    with pytest.raises(DataError, match=r"<records>:1: field 'completion': expected text, got the number 2: write "
                                        r"it as text \(JSON: \"2\"; a DataFrame's column: "
                                        r"df\[column\].astype\(str\)\)"):
        load_sft(pd.DataFrame({"prompt": ["Fever?"], "completion": [2]}), tok)


def test_an_open_file_is_refused_with_its_path_to_pass(tmp_path, tok):
    """Iterated, an open file gives lines of text, each refused as "expected a dict, got str":
    its path is what to pass (the name also tells the format, and compression)."""
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(EXPLICIT) + "\n", encoding="utf-8")
    assert len(load_preferences(path, tok)[0]) == 1
    named = r"^<records>: an open file \(.*pairs.jsonl\): pass its path, '.*pairs.jsonl', which also tells its format$"
    with open(path, encoding="utf-8") as f, pytest.raises(TypeError, match=named):
        load_preferences(f, tok)
    with open(path, "rb") as f, pytest.raises(TypeError, match="^<records>: an open file"):
        load_sft(f, tok)
    with pytest.raises(TypeError, match=r"^<records>: an open file: pass a data file's path, or "
                                        r"\[json.loads\(line\) for line in f\] for JSON Lines$"):
        load_preferences(io.StringIO(path.read_text(encoding="utf-8")), tok)


def test_openai_content_parts_are_read_when_every_part_is_text():
    """OpenAI's ``"content": [{"type": "text", "text": ...}, ...]`` is the parts' text run together
    (as chat templates that take parts print them); an image part is refused by its place."""
    parts = [{"type": "text", "text": "Fever and a stiff neck "}, {"type": "text", "text": "since noon?"}]
    row = {**EXPLICIT, "prompt": [QUESTION[0], {"role": "user", "content": parts}]}
    assert parse(row) == parse({**EXPLICIT, "prompt": QUESTION})
    row["prompt"][1]["content"] = parts + [{"type": "image_url", "image_url": {"url": "x.png"}}]
    with pytest.raises(DataError, match=r"p.jsonl:7: field 'prompt\[1\].content\[2\]': a part of type 'image_url': "
                                        r"prefopt trains on text only"):
        parse(row)
    with pytest.raises(DataError, match=r"field 'chosen\[0\].content': expected text \(or a list of text parts\)"):
        parse({**EXPLICIT, "chosen": [{"role": "assistant", "content": 3}]})


def test_a_parquet_tables_dates_and_decimals_come_as_text_json_can_hold(tmp_path):
    """A hospital export's timestamp or decimal column rides along with each row into the
    predictions (JSONL, CSV) and the data digest, which take JSON's values only."""
    import datetime
    import decimal

    row = {**EXPLICIT, "received": datetime.datetime(2026, 11, 30, 8, 15), "day": datetime.date(2026, 11, 30),
           "waited": datetime.timedelta(minutes=42), "temp": decimal.Decimal("38.25"), "ward": None}
    [(line, got)] = list(read_rows(_parquet(tmp_path / "p.parquet", [row])))
    assert line == 1 and json.loads(json.dumps(got)) == {
        **EXPLICIT, "received": "2026-11-30T08:15:00", "day": "2026-11-30", "waited": "0:42:00", "temp": "38.25",
        "ward": None}
    pd = pytest.importorskip("pandas")
    frame = pd.read_parquet(tmp_path / "p.parquet")
    [got] = Records(frame)
    assert got["received"] == "2026-11-30T08:15:00" and got["chosen"] == EXPLICIT["chosen"]


def test_columns_of_other_names_are_read_as_the_fields_and_named_in_errors(tmp_path, tok, capsys):
    """A spreadsheet's own headers (``columns={"prompt": "Patient message", ...}``): read as the
    fields, for SFT, pairs and check-data alike; an error names the file's column."""
    from prefopt.cli import main
    from prefopt.data import load_sft
    from prefopt.data.check import check_data

    cols = {"prompt": "Patient message", "chosen": "Clinician answer", "rejected": "Draft"}
    path = tmp_path / "pairs.csv"
    path.write_text("Patient message,Clinician answer,Draft,prompt\n"  # a column named 'prompt' read from elsewhere
                    "Fever and a stiff neck?,Go to the emergency department now.,Rest.,ignored\n"
                    "Refill please,The pharmacist will call you today.,Go to the emergency department now.,x\n"
                    ",Call us.,Ignore it.,x\n")
    pairs, report = load_preferences(path, tok, columns=cols, skip_bad=True)
    plain, _ = load_preferences([{"prompt": "Fever and a stiff neck?", "chosen": "Go to the emergency department "
                                  "now.", "rejected": "Rest."}], tok)
    assert report.n_kept == 2 and pairs[0].key == plain[0].key
    assert str(report.skipped[0]) == f"{path}:4: field 'Patient message': empty text"
    check = check_data(path, tok, columns=cols)
    assert check.kind == "preference" and check.report.n_kept == 2 and check.answers["rejected"]["Rest."] == 1
    with pytest.raises(DataError, match=r"field 'Draft': missing column \(read as 'rejected'; the record has: "
                                        r"Patient message, Clinician answer, prompt\)"):
        load_preferences([{"Patient message": "q", "Clinician answer": "a", "prompt": "p"}], tok, columns=cols)
    with pytest.raises(ValueError, match=r"columns: promt=q: no field 'promt' \(did you mean 'prompt'\?\)"):
        load_sft([{"q": "Fever?", "completion": "Go."}], tok, columns={"promt": "q"})  # checked in Python too
    with pytest.raises(DataError, match=r"<records>:1: field 'Reply\[0\].content': expected text"):
        load_sft([{"q": "Fever?", "Reply": [{"role": "assistant", "content": 3}]}], tok,
                 columns={"prompt": "q", "completion": "Reply"})
    model = tmp_path / "model"
    from tests._tiny import build_hf_model

    build_hf_model(model)
    argv = ["check-data", "--model", str(model), "--data", str(path), "--columns", "prompt=Patient message",
            "chosen=Clinician answer", "rejected=Draft", "--max-length", "256"]
    assert main(argv) == 1  # the empty row is bad
    assert f"  bad: {path}:4: field 'Patient message': empty text" in capsys.readouterr().out.splitlines()


def test_a_records_own_system_field_is_its_prompts_system_message(tmp_path, tok):
    """A ``system`` field beside the prompt (Orca's DPO pairs: system, question, chosen, rejected)
    is the prompt's first message, for SFT, DPO and KTO records and make-pairs' prompts alike (until
    2026-12-06 it went unread without a word); blank or absent, there is none. A second system
    prompt in the messages, a number, or a tokenizer without a chat template are errors on it."""
    import copy

    from prefopt.data import load_feedback
    from prefopt.evaluate.answer_pairs import read_prompts

    system, question = "You triage patient messages.", "Fever and a stiff neck since noon?"
    asked = [{"role": "system", "content": system}, user(question)]
    sft, _ = load_sft([{"prompt": question, "completion": "ED now.", "system": system},
                       {"messages": [user(question), assistant("ED now.")], "system": system},
                       {"prompt": asked, "completion": "ED now."},
                       {"prompt": question, "completion": "ED now.", "system": " "},
                       {"prompt": question, "completion": "ED now.", "system": float("nan")},
                       {"prompt": question, "completion": "ED now."}], tok)
    assert sft[0].input_ids == sft[1].input_ids == sft[2].input_ids and sft[0].labels == sft[2].labels
    assert sft[3].input_ids == sft[4].input_ids == sft[5].input_ids != sft[0].input_ids
    assert system in tok.decode(sft[0].input_ids, False) and system not in tok.decode(sft[5].input_ids, False)
    orca = [{"system": system, "question": question, "chosen": "ED now.", "rejected": "Rest."}]
    pairs, _ = load_preferences(orca, tok, columns={"prompt": "question"})
    given, _ = load_preferences([{"prompt": asked, "chosen": "ED now.", "rejected": "Rest."}], tok)
    assert pairs[0].key == given[0].key
    renamed, _ = load_preferences([{"Instructions": system, "q": question, "chosen": "ED now.", "rejected": "Rest."}],
                                  tok, columns={"prompt": "q", "system": "Instructions"})
    assert renamed[0].key == given[0].key
    kto, _ = load_feedback([{"prompt": question, "completion": "ED now.", "label": True, "system": system},
                            {"prompt": question, "chosen": "ED now.", "rejected": "Rest.", "system": system}], tok)
    assert kto[0].input_ids == sft[0].input_ids and kto[1].input_ids == sft[0].input_ids  # (the pair's chosen)
    [made], _ = read_prompts([{"prompt": question, "completion": "ED now.", "system": system}], tok)
    assert made.prompt == asked and list(made.ids) == list(sft[0].input_ids[:len(made.ids)])
    for row, said in [({"prompt": asked, "completion": "a", "system": "Be brief."}, "begin with a system message"),
                      ({"messages": [*asked, assistant("a")], "system": "Be brief."}, "begin with a system message"),
                      ({"prompt": question, "completion": "a", "system": 3}, "expected text, got the number 3")]:
        with pytest.raises(DataError, match=rf"<records>:1: field 'system': .*{said}"):
            load_sft([row], tok)
    bare = copy.copy(tok)
    bare.chat_template = None
    with pytest.raises(DataError, match=r"field 'system': a system prompt needs a chat template"):
        load_sft([{"prompt": question, "completion": " a", "system": system}], bare)


def test_a_text_column_no_field_reads_is_warned_of_once_a_file(tmp_path, tok):
    """Alpaca's instruction, input, output read with prompt=instruction completion=output would
    train without the input (the note to summarise): said once a file, naming the column and the
    line; pairs and feedback alike. Numbers, dates and true/false (a spreadsheet's too, as text),
    lists, blank cells and columns that say what a record is (make-pairs' own line, source,
    finished, file; UltraFeedback's prompt_id, messages and scores) pass without a word."""
    import warnings

    from prefopt.data import load_feedback

    path = tmp_path / "alpaca.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"instruction": "Summarise the note.", "input": "", "output": "Nothing to summarise."},
        {"instruction": "Summarise the note.", "input": "54M, chest pain for 2 h.", "output": "Chest pain, 2 h."}]))
    cols = {"prompt": "instruction", "completion": "output"}
    with pytest.warns(UserWarning) as said:
        load_sft(path, tok, columns=cols)
    (warning,) = [w for w in said if "not read" in str(w.message)]
    assert str(warning.message).startswith(f"{path}:2: 'input' not read: a prompt/completion record is read from "
                                           "'prompt', 'completion', 'system' alone; where a column holds part of the "
                                           "prompt (Alpaca's 'input' beside its 'instruction'), join it into")
    with pytest.warns(UserWarning, match=r"'reviewer' not read: a feedback record is read from 'prompt', "
                                         r"'completion', 'label', 'system' alone"):
        load_feedback([{"prompt": "Fever?", "completion": "ED now.", "label": True, "reviewer": "Dr A"},
                       {"prompt": "Rash?", "completion": "Wait.", "label": False}], tok)
    medqa = {"question": "A 23-year-old has a fever. Which drug?", "answer": "Ampicillin", "answer_idx": "A",
             "options": {"A": "Ampicillin", "B": "Ceftriaxone"}, "realidx": 7}  # the options apart from the question
    with pytest.warns(UserWarning, match=r"<records>:1: 'answer_idx', 'options' not read"):
        load_sft([medqa], tok, columns={"prompt": "question", "completion": "answer"})
    alpaca_pair = {"instruction": "Summarise the note.", "input": "54M, chest pain for 2 h.", "chosen": "Chest pain.",
                   "rejected": "Nothing."}  # a text input is no OpenAI record (once refused as 'input.messages')
    with pytest.warns(UserWarning, match=r"<records>:1: 'input' not read: a preference record"):
        assert len(load_preferences([alpaca_pair], tok, columns={"prompt": "instruction"})[0]) == 1
    with pytest.raises(DataError, match=r"field 'input.messages': missing field"):  # OpenAI's, its input mistyped
        load_preferences([{"input": "Fever?", "preferred_output": [assistant("ED now.")],
                           "non_preferred_output": [assistant("Wait.")]}], tok)
    with pytest.warns(UserWarning, match=r"'prompt' not read: a conversation record is read from 'messages', "
                                         r"'system' alone"):  # a prompt that is none of its turns
        load_sft([{"prompt": "Summarise the note.", "messages": [user("54M, chest pain."), assistant("Chest pain.")]}],
                 tok)
    with pytest.warns(UserWarning, match=r"'rationale' not read: a preference record"):
        load_preferences([{"prompt": "Fever?", "chosen": "ED now.", "rejected": "Wait.", "rationale": "safer"}], tok)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_sft(path, tok, columns=cols)  # said once a file
        load_preferences([{"prompt": "Fever?", "chosen": "ED now.", "rejected": "Wait.", "line": 3, "file": "a.jsonl",
                           "source": "model_answer", "finished": False},
                          {"prompt": "Fever?", "prompt_id": "9f2c", "chosen": [user("Fever?"), assistant("ED now.")],
                           "rejected": [user("Fever?"), assistant("Wait.")],
                           "messages": [user("Fever?"), assistant("ED now.")], "score_chosen": 8.0,
                           "score_rejected": 3.5}], tok)
        load_sft([{"messages": [user("Fever?"), assistant("ED now.")], "id": "a1", "note": " "}], tok)
        load_sft([{"prompt": "Fever?", "prompt_id": "9f2c", "messages": [user("Fever?"), assistant("ED now.")]}],
                 tok)  # UltraChat's: the prompt beside the conversation is its first turn again
        sheet = tmp_path / "sheet.csv"  # a spreadsheet's numbers, dates and flags arrive as text
        sheet.write_text("dataset,prompt,completion,score,reviewed,sent,rate\n"  # (ACI-Bench's dataset: virtassist)
                         "virtassist,Fever?,ED now.,0.3,TRUE,2024-03-01 08:30,12%\n")
        load_sft(sheet, tok)


def test_a_text_column_beside_a_label_is_warned_of_and_read_as_prompt_and_answer_when_named(tmp_path, tok):
    """A classification export (``id,text,label``) given to SFT as it is reads as language
    modelling records (TRL's ``{"text"}``): the notes' words are learnt, never their labels. That
    is said once a file, with the flag that teaches the labels; read with it, the file is SFT
    records of prompt and answer (check-data took it for KTO feedback: its 'label' stayed)."""
    import warnings

    from prefopt.data.check import check_data, detect_kind

    path = tmp_path / "notes.csv"
    path.write_text("id,text,label,source\n1,Chest pain since this morning,urgent,portal\n"
                    "2,Refill of my inhaler please,routine,portal\n")
    with pytest.warns(UserWarning) as said:
        examples, _ = load_sft(path, tok)
    (warning,) = [w for w in said if "not read" in str(w.message)]
    assert str(warning.message) == (f"{path}:2: 'label' not read: a record with 'text' and no 'prompt' and "
                                    "'completion' trains on its text alone, every token (language modelling), "
                                    "never on what the other columns say; to teach the model to answer with "
                                    "'label': --columns prompt=text completion=label")
    assert [tok.decode(list(e.input_ids)) for e in examples][0].startswith("Chest pain since this morning")
    with pytest.warns(UserWarning, match=r"'covid' not read"):  # a word ending in "id", not an identifier
        load_sft([{"text": "Fever and cough", "covid": "yes"}], tok)
    with pytest.warns(UserWarning, match=r"'system' not read: .* never on what the other columns say; a 'system' "
                                         r"prompt opens a prompt, and a text record has none: give the records "
                                         r"'prompt' and 'completion' \(or 'messages'\) for it to be read$"):
        load_sft([{"text": "Fever and cough", "system": "You are a triage nurse."}], tok)  # (not: completion=system)
    with pytest.warns(UserWarning, match=r"'system', 'label' not read: .* answer with 'label': --columns "
                                         r"prompt=text completion=label$"):
        load_sft([{"text": "Fever and cough", "system": "You are a triage nurse.", "label": "urgent"}], tok)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once a file: not again
        load_sft(path, tok)
        load_sft([{"": 0, "id": "a1", "text": "Chest pain", "patient_id": 3, "date": "2026-01-02", "note": " ",
                  "Unnamed: 0": 1, "recordId": 7}], tok)  # (an index column pandas wrote, read back by it or not)
        cols = {"prompt": "text", "completion": "label"}
        pairs, _ = load_sft(path, tok, columns=cols)
        assert detect_kind(path, cols) == "sft"
        check = check_data(path, tok, columns=cols)
    assert len(pairs) == 2 and tok.decode(list(pairs[0].input_ids)).rstrip().endswith("urgent")
    assert check.kind == "sft" and check.report.n_kept == 2 and check.answers["completion"] == {"urgent": 1,
                                                                                                "routine": 1}


def test_a_folder_of_a_datasets_shards_is_one_set_to_training_and_a_task_is_told_to_join_them(tmp_path, tok):
    for i in range(2):
        _parquet(tmp_path / f"train-0000{i}-of-00002.parquet", [EXPLICIT])
    with pytest.raises(FileNotFoundError, match=r"a folder, not a data file; pass one of its files "
                                                r"\(train-00000-of-00002.parquet, train-00001-of-00002.parquet\); a "
                                                r"task's split saved in several files is one file to it: join them "
                                                r"first \(pandas: pd.concat\(.*\); sft, dpo and check-data read such a "
                                                r"folder whole$"):
        list(read_rows(tmp_path))  # as a task reads its data
    pairs, report = load_preferences(tmp_path, tok)  # as dpo reads it
    assert len(pairs) == 2 and report.name == f"{tmp_path} (2 files)"


def _ids(examples):
    return [list(e.input_ids) for e in examples]


def test_an_excel_workbook_reads_as_its_sheet_saved_as_csv_would_with_excels_row_numbers(tmp_path, tok):
    """A clinician's spreadsheet, unconverted: the same examples as the sheet saved as CSV; errors
    name the row Excel shows; numbers, TRUE/FALSE and dates as the export's text; blank rows (and
    blank sheets beside it) skipped."""
    import datetime

    rows = [["prompt", "completion", "reviewed", "score", "when"],
            ["Chest pain for two hours?", "Emergency department now.", True, 3.0, datetime.date(2026, 1, 2)],
            [None, None],
            ["Refill of lisinopril?", "Pharmacist, routine.", False, 2.5, None]]
    book = write_workbook(tmp_path / "notes.xlsx", {"Notes": [[None], *rows], "Empty": []})  # header on row 2
    got = list(read_rows(book))
    assert [line for line, _ in got] == [3, 5]
    assert got[0][1] == {"prompt": "Chest pain for two hours?", "completion": "Emergency department now.",
                         "reviewed": "TRUE", "score": "3", "when": "2026-01-02"}
    assert got[1][1]["score"] == "2.5" and got[1][1]["when"] == ""
    assert cell_text(datetime.datetime(2026, 1, 2, 8, 30)) == "2026-01-02T08:30:00"
    assert [cell_text(v) for v in (0.1 * 3, 1 / 3, 2.5, 3.0)] == ["0.3", "0.333333333333333", "2.5", "3"]  # as shown
    assert cell_text(datetime.time(8, 30)) == "08:30:00"
    with (tmp_path / "notes.csv").open("w", newline="") as f:
        csv.writer(f).writerows([r[:2] for r in rows if r[0]])
    assert _ids(load_sft(book, tok)[0]) == _ids(load_sft(tmp_path / "notes.csv", tok)[0])
    pairs = write_workbook(tmp_path / "pairs.xlsx", {"Sheet1": [["prompt", "chosen", "rejected"], ["q", "a", "b"],
                                                           ["q", "a", None], ["q", "a", "c", "stray"]]})
    with pytest.raises(DataError, match=r"pairs.xlsx:3: field 'rejected': empty response"):
        load_preferences(pairs, tok)
    _, report = load_preferences(pairs, tok, skip_bad=True)
    assert report.n_kept == 1 and str(report.skipped[1]).endswith(
        "pairs.xlsx:4: a cell past the header's last column (sheet 'Sheet1'): 'stray'")


def _doctored(book, out, pattern: bytes, replacement: bytes, count: int = 1):
    """``book`` written to ``out`` with ``pattern`` in its first sheet's XML replaced, as another
    writer (Excel, a script) would have written it; ``count`` replacements expected."""
    import re
    import zipfile

    with zipfile.ZipFile(book) as z:
        files = {n: z.read(n) for n in z.namelist()}
    sheet = next(n for n in files if n.startswith("xl/worksheets/sheet"))
    files[sheet], n = re.subn(pattern, replacement, files[sheet])
    assert n == count
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out


def test_a_sheet_is_chosen_by_name_for_a_read_a_load_a_block_and_a_training_run(tmp_path, tok):
    """One workbook with the training and test sets on two sheets: ``sheet`` (``--sheet``) reads
    one by its tab's name (in any case), a hidden one too; a name it lacks lists its sheets; a
    file that is not a workbook is refused where a sheet is named. A training config reads its
    data and eval data from two sheets of one workbook."""
    from prefopt.data.sheets import reading_sheet
    from prefopt.train.config import TrainConfig
    from prefopt.train.sft import load_train_eval

    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    book.active.title = "Train"
    for row in [["prompt", "completion"], *[[f"train q{i}", f"a{i}"] for i in range(3)]]:
        book.active.append(row)
    for title, n in (("Test", 2), ("Codes", 1)):
        sheet = book.create_sheet(title)
        for row in [["prompt", "completion"], *[[f"{title.lower()} q{i}", f"a{i}"] for i in range(n)]]:
            sheet.append(row)
    book["Codes"].sheet_state = "hidden"
    book.save(tmp_path / "notes.xlsx")
    path = tmp_path / "notes.xlsx"
    assert [r["prompt"] for _, r in read_rows(path, sheet="test")] == ["test q0", "test q1"]
    assert [r["prompt"] for _, r in read_rows(path, sheet="Codes")] == ["codes q0"]
    with pytest.raises(DataError, match=r"notes.xlsx: no sheet 'Val' \(its sheets: 'Train', 'Test', 'Codes' "
                                        r"\(hidden\)\)"):
        list(read_rows(path, sheet="Val"))
    (tmp_path / "more.csv").write_text("prompt,completion\nq,a\n")
    with pytest.raises(ValueError, match=r"more.csv: not a workbook \(.xlsx, .xlsm, .xls or .ods\), and a sheet "
                                         r"to read was named \('Train'\)"):
        load_sft([path, tmp_path / "more.csv"], tok, sheet="Train")
    assert len(load_sft(path, tok, sheet="Train")[0]) == 3 and len(load_sft(path, tok, sheet="TEST")[0]) == 2
    with reading_sheet("Test"):  # (what --sheet does for check-data, make-pairs, eval-nll, eval-pairs)
        assert len(load_sft(path, tok)[0]) == 2
        assert len(load_sft(path, tok, sheet="Train")[0]) == 3  # (an explicit sheet wins)
    cfg = TrainConfig(model="m", data=str(path), sheet="Train", eval_data=str(path), eval_sheet="Test",
                      output_dir=str(tmp_path / "run"), progress=False)
    train, evals, reports = load_train_eval(cfg, tok)
    assert (len(train), len(evals), [r.n_kept for r in reports]) == (3, 2, [3, 2])
    from prefopt.fileio import sha256_of
    from prefopt.train.card import _data_lines

    digest = sha256_of(path)
    assert _data_lines(cfg, 3, 2)[:2] == [f"- `{name}`: `{path.resolve()}` (sheet {sheet!r}, SHA-256 `{digest}`)"
                                          for name, sheet in (("data", "Train"), ("eval_data", "Test"))]  # the card


def test_a_workbook_whose_stated_dimensions_are_too_small_is_read_whole(tmp_path):
    """openpyxl's read-only mode stops at the rows a sheet's <dimension> claims; a writer that
    states too few (here A1:B2 for six rows) lost every record past the first without a word."""
    book = write_workbook(tmp_path / "w.xlsx", {"s": [["prompt", "completion"], *[[f"q{i}", f"a{i}"] for i in range(5)]]})
    cut = _doctored(book, tmp_path / "cut.xlsx", rb'<dimension ref="[^"]+" ?/>', b'<dimension ref="A1:B2"/>')
    assert [line for line, _ in read_rows(cut)] == [2, 3, 4, 5, 6]


def test_a_formula_whose_value_was_never_saved_is_refused_not_read_as_empty(tmp_path):
    """openpyxl writes a formula without calculating it (``<f>..</f><v/>``); its values read such
    a cell as empty, so an optional field lost its text unsaid. A formula Excel saved, its value
    an empty text (``t="str"``, ``<v></v>``) included, reads as its value."""
    rows = [["prompt", "completion", "system"], *[[f"q{i}", f"a{i}", f'=IF(A{i + 2}="","","Triage.")']
                                                   for i in range(5)]]
    book = write_workbook(tmp_path / "f.xlsx", {"Notes": rows})
    with pytest.raises(DataError, match=r"f.xlsx: sheet 'Notes', cells C2, C3, C4 and 2 more: formulas with no saved "
                                        r"value, read as empty \(a workbook written by a program that does not "
                                        r"calculate, such as openpyxl\); open it in Excel or LibreOffice and save it"):
        list(read_rows(book))
    empty = rb"(?:<v ?/>|<v></v>)"  # openpyxl's empty value: <v/>, or <v></v> where lxml is installed
    saved = _doctored(book, tmp_path / "saved.xlsx", rb'(<c r="C[2-5]")(><f>[^<]*</f>)' + empty,
                      rb'\1 t="str"\2<v>Triage.</v>', count=4)
    saved = _doctored(saved, tmp_path / "saved2.xlsx", rb'(<c r="C6")(><f>[^<]*</f>)' + empty,
                      rb'\1 t="str"\2<v></v>')
    assert [r["system"] for _, r in read_rows(saved)] == ["Triage."] * 4 + [""]


def test_a_value_merged_down_over_rows_is_read_in_each_row_it_covers(tmp_path):
    """A clinician labels a block of rows by merging one cell down over them: Excel shows the
    label beside each, the file holds it in the first alone (and a CSV export leaves the rest
    empty). Each row reads it, with a warning."""
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    ws = book.active
    for row in [["message", "urgency", "seen"], ["chest pain", "urgent", "yes"], ["short of breath", None, "no"],
                ["stroke signs", None, None], ["refill", "routine", "yes"]]:
        ws.append(row)
    ws.merge_cells("B2:B4")
    ws.merge_cells("C4:C5")
    book.save(tmp_path / "m.xlsx")
    with pytest.warns(UserWarning, match=r"m.xlsx: sheet 'Sheet': ranges B2:B4, C4:C5 merged over rows: each row it "
                                         r"covers read with its value, as the sheet shows it"):
        got = list(read_rows(tmp_path / "m.xlsx"))
    assert [(n, r["urgency"], r["seen"]) for n, r in got] == [
        (2, "urgent", "yes"), (3, "urgent", "no"), (4, "urgent", ""), (5, "routine", "")]


def test_a_character_excel_escapes_in_a_text_is_read_as_itself(tmp_path):
    """A note pasted into Excel with Windows line breaks is saved with each carriage return as
    ``_x000D_`` (and a typed ``_x000D_`` as ``_x005F_x000D_``): openpyxl hands the escapes on, and
    they were read, and trained on, as those seven characters."""
    book = write_workbook(tmp_path / "e.xlsx", {"s": [["prompt", "completion"],
                                                 ["Chest pain.ESC1Since 2 h.", "ED now ESC2"]]})
    saved = _doctored(book, tmp_path / "saved.xlsx", rb"ESC1", rb"_x000D_\n")  # (\n: a line feed, in re's replacement)
    saved = _doctored(saved, tmp_path / "saved2.xlsx", rb"ESC2", rb"_x005F_x000D_ (typed)")
    assert [r for _, r in read_rows(saved)] == [{"prompt": "Chest pain.\r\nSince 2 h.",
                                                 "completion": "ED now _x000D_ (typed)"}]


def test_an_excel_tables_total_row_is_not_read_as_a_record(tmp_path):
    """Excel's Total Row under a table (Table Design > Total Row: ``Total`` and a ``SUBTOTAL``
    formula, its value saved) was read as one more record, prompt "Total"; the table's definition
    says which row it is. A column numbering the rows by ``SUBTOTAL`` (a filtered list's trick)
    keeps every row."""
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    ws = book.active
    ws.title = "s"
    for row in [["prompt", "completion", "n"], ["q1", "a1", "=SUBTOTAL(3,$A$2:A2)"],
                ["q2", "a2", "=SUBTOTAL(3,$A$2:A3)"], ["Total", "=SUBTOTAL(103,B2:B3)", None]]:
        ws.append(row)
    table = openpyxl.worksheet.table.Table(displayName="Notes", ref="A1:C4")
    table.totalsRowCount = 1
    ws.add_table(table)
    book.save(tmp_path / "t.xlsx")
    saved = _doctored(tmp_path / "t.xlsx", tmp_path / "saved.xlsx", rb"(<f>SUBTOTAL[^<]*</f>)(?:<v ?/>|<v></v>)",
                      rb"\1<v>2</v>", count=3)  # (openpyxl writes <v></v> where lxml is installed)
    with pytest.warns(UserWarning, match=r"saved.xlsx: sheet 's': row 4, an Excel table's total row, not read"):
        assert [(n, r["prompt"], r["n"]) for n, r in read_rows(saved)] == [(2, "q1", "2"), (3, "q2", "2")]


def test_hidden_rows_are_read_and_warned_of_and_a_hidden_sheet_is_not_read(tmp_path):
    """Rows a clinician hid or filtered out in Excel are still in the file (and in its CSV
    export): read, with a warning that names them; a sheet hidden in Excel (a lookup list) is not
    read where one sheet in view holds the data, and a workbook whose data is all hidden says so."""
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.Workbook()
    ws = book.active
    ws.title = "Notes"
    for row in [["prompt", "completion"], *[[f"q{i}", f"a{i}"] for i in range(6)]]:
        ws.append(row)
    for n in (3, 5, 9):  # row 9 holds nothing: no warning for it
        ws.row_dimensions[n].hidden = True
    book.create_sheet("codes").append(["urgent", "routine"])
    book["codes"].sheet_state = "hidden"
    book.save(tmp_path / "h.xlsx")
    with pytest.warns(UserWarning) as seen:
        got = list(read_rows(tmp_path / "h.xlsx"))
    assert [line for line, _ in got] == [2, 3, 4, 5, 6, 7]
    assert sorted(str(w.message) for w in seen) == [
        f"{tmp_path / 'h.xlsx'}: read sheet 'Notes'; sheets hidden in Excel ('codes') hold data too and are not read",
        f"{tmp_path / 'h.xlsx'}: sheet 'Notes': rows 3, 5, hidden in Excel (by hand or by a filter), read like the "
        "others, as its CSV export would write them; delete them from the sheet to leave them out"]
    ws.sheet_state = "hidden"  # Excel keeps one sheet in view: here an empty one
    book.active = book.index(book.create_sheet("Sheet2"))
    book.save(tmp_path / "all_hidden.xlsx")
    with pytest.raises(DataError, match=r"all_hidden.xlsx: no sheet in view holds data \(hidden ones do: 'Notes', "
                                        r"'codes'\); unhide the sheet of records"):
        list(read_rows(tmp_path / "all_hidden.xlsx"))


def test_a_workbook_that_is_not_one_sheet_of_records_is_refused_by_name(tmp_path, monkeypatch):
    two = write_workbook(tmp_path / "two.xlsx", {"train": [["prompt", "completion"], ["q", "a"]],
                                            "test": [["prompt", "completion"], ["q2", "a2"]]})
    with pytest.raises(DataError, match=r"two.xlsx: 2 sheets hold data \('train', 'test'\); name the one to read "
                                        r"\(--sheet NAME\), so that no other sheet \(a test set\) is "
                                        r"trained on"):
        list(read_rows(two))
    with pytest.raises(DataError, match=r"none.xlsx: no sheet holds any data"):
        list(read_rows(write_workbook(tmp_path / "none.xlsx", {"Sheet1": []})))
    twice = write_workbook(tmp_path / "twice.xlsx", {"s": [[None], ["prompt", "completion", "prompt"], ["q", "a", "b"]]})
    with pytest.raises(DataError, match=r"twice.xlsx:2: field 'prompt': two columns have this name"):
        list(read_rows(twice))
    titled = write_workbook(tmp_path / "titled.xlsx", {"s": [["Triage score"], [3, "ED"], ["q", "a"]]})
    with pytest.raises(DataError, match=r"titled.xlsx:1: the header, .* names one column \('Triage score'\) "
                                        r"and the row below holds text in others: a title above the column names"):
        list(read_rows(titled))  # (a number is no column's name: no title is skipped to read 3, "ED" as the names)
    (tmp_path / "cut.xlsx").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(DataError, match=r"cut.xlsx: not a readable Excel workbook \(BadZipFile"):
        list(read_rows(tmp_path / "cut.xlsx"))
    (tmp_path / "locked.xlsx").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504))  # as Excel encrypts one
    with pytest.raises(DataError, match=r"locked.xlsx: not a readable Excel workbook \(a password-protected workbook "
                                        r"\(or an Excel 97-2003 workbook renamed: name it .xls, which is read\): in "
                                        r"Excel, save a copy without the password"):
        list(read_rows(tmp_path / "locked.xlsx"))
    (tmp_path / "export.xlsx").write_bytes(b"<html><table><tr><td>note</td></tr></table></html>")
    with pytest.raises(DataError, match=r"export.xlsx: an HTML table named .xlsx \(as many systems' \"Export to "
                                        r"Excel\" write one\), not a workbook: open it in Excel and save it as Excel"):
        list(read_rows(tmp_path / "export.xlsx"))  # it was "not a readable Excel workbook (BadZipFile: ...)"
    strict = tmp_path / "strict.xlsx"  # Excel's "Strict Open XML Spreadsheet": the ISO namespaces, the same parts
    with zipfile.ZipFile(write_workbook(tmp_path / "plain.xlsx", {"s": [["prompt", "completion"], ["q", "a"]]})) as z, \
            zipfile.ZipFile(strict, "w") as out:
        for name in z.namelist():
            out.writestr(name, z.read(name).replace(b"http://schemas.openxmlformats.org/spreadsheetml/2006/main",
                                                    b"http://purl.oclc.org/ooxml/spreadsheetml/main").replace(
                b"http://schemas.openxmlformats.org/officeDocument/2006/relationships",
                b"http://purl.oclc.org/ooxml/officeDocument/relationships"))
    with pytest.raises(DataError, match=r"strict.xlsx: a workbook saved as \"Strict Open XML Spreadsheet\", which "
                                        r"openpyxl reads as one without sheets: in Excel, File > Save As > \"Excel "
                                        r"Workbook \(.xlsx\)\"$"):
        list(read_rows(strict))  # it was "no sheet holds any data"
    (tmp_path / "z.xlsx.gz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"z.xlsx.gz: a .xlsx file compressed again"):
        list(read_rows(tmp_path / "z.xlsx.gz"))
    monkeypatch.setitem(sys.modules, "openpyxl", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"reading .xlsx data files needs the optional package 'openpyxl'.*"
                                          r"pip install 'prefopt\[excel\]'"):
        list(read_rows(two))


def test_title_rows_above_the_column_names_are_skipped_and_named_in_every_format(tmp_path):
    """A report exported with its title (and run date) above the column names: each was read as
    the header of one column and refused; now the column names are the row below the titles, in a
    CSV as Excel saves the sheet (each row as wide as the sheet), an .xlsx (the title merged
    across the columns, as "Merge & Center" leaves it), an .ods and an .xls, with the same row
    numbers, and the titles warned of."""
    rows = [["Triage log, ward 3", None], ["Exported 2025-03-01 08:00", None], [None, None],
            ["prompt", "completion"], ["Chest pain?", "Emergency now."], ["Cough, 3 days", "GP"]]
    paths = [tmp_path / "log.csv", write_workbook(tmp_path / "log.xlsx", {"Log": rows}),
             write_ods(tmp_path / "log.ods", {"Log": rows})]
    with paths[0].open("w", newline="") as f:
        csv.writer(f).writerows([["" if v is None else v for v in row] for row in rows])
    if importlib.util.find_spec("xlwt") and importlib.util.find_spec("xlrd"):
        from tests.data.test_xls import write_xls

        paths.append(write_xls(tmp_path / "log.xls", {"Log": rows}))
    openpyxl = pytest.importorskip("openpyxl")
    book = openpyxl.load_workbook(paths[1])
    book["Log"].merge_cells("A1:B1")
    book.save(paths[1])
    for path in paths:
        with pytest.warns(UserWarning) as said:
            got = list(read_rows(path))
        assert got == [(5, {"prompt": "Chest pain?", "completion": "Emergency now."}),
                       (6, {"prompt": "Cough, 3 days", "completion": "GP"})], path
        assert [str(w.message) for w in said] == [
            f"{path}:1: 'Triage log, ward 3', 'Exported 2025-03-01 08:00' read as titles above the column names, "
            "which are on line 4; not read as a record"]


@pytest.mark.parametrize("indent,separators", [(None, None), (1, None), (4, (",", ": ")), (None, (",", ":")),
                                               ("\t", (" ,", " : "))])
def test_a_json_object_of_records_reads_entry_by_entry_as_json_reads_it_with_each_keys_line(tmp_path, indent,
                                                                                         separators):
    """keyed_json (PubMedQA's records by id) gives json's own entries, in order, each at the line
    its key is on, however the file is laid out; braces, quotes and newlines inside strings do not
    move it."""
    import random

    from prefopt.data.readers import keyed_json

    rng = random.Random(f"{indent!r} {separators!r}")  # (a text seed: the same draws every run)
    texts = ["plain", 'a "quoted" {brace}', "two\nlines", "tab\there", "é, ü: ß", "", "\\ backslash ]"]
    data = {str(rng.randrange(10**8)) + rng.choice(["", " x", "\n", '"}']): {
        "QUESTION": rng.choice(texts), "CONTEXTS": rng.sample(texts, 3), "n": rng.random(), "ok": True,
        "nested": {"k": [rng.choice(texts), None]}} for _ in range(25)}
    path = tmp_path / "records.json"
    text = json.dumps(data, indent=indent, separators=separators, ensure_ascii=rng.random() < 0.5)
    path.write_text(text, encoding="utf-8")
    got = list(keyed_json(path))
    assert [(k, v) for _, k, v in got] == list(data.items())
    for line, key, _ in got:  # the key, as json wrote it, starts on its line
        assert json.dumps(key, ensure_ascii=False) in text.splitlines()[line - 1] or \
            json.dumps(key) in text.splitlines()[line - 1]
    assert list(keyed_json(_write(tmp_path / "empty.json", "{ }"))) == []
    assert list(keyed_json(_write(tmp_path / "list.json", "[1, 2]"))) == [(1, None, [1, 2])]


def _write(path, text):
    path.write_text(text)
    return path
