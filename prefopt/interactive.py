"""Answers written to the terminal as they are generated: ``prefopt generate`` (one prompt) and
``prefopt chat`` (a conversation, turn by turn, to try a fine-tuned model by hand)."""
from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from .data.records import control_token_problem

CHAT_HELP = ("/reset: a new conversation   /system TEXT: the system message (/system alone: none)   "
             "/file PATH: send a file's text (a note: .txt, .docx, .odt, .pdf)   "
             "/save PATH: add the conversation to a JSONL file   Ctrl-C: stop an answer   /exit or Ctrl-D: quit")


def stream_answer(model, tok, prompt_ids: list[int], *, stops: list[str] | tuple = (), out: TextIO | None = None,
                  **settings) -> str:
    """Generate from ``prompt_ids`` (``settings``: :func:`~prefopt.model.generate`'s), writing the
    text to ``out`` (stdout) as it comes; returns the answer, cut before the first of ``stops``."""
    from .model import generate

    out = out or sys.stdout
    stops = list(stops)
    printed = [0]

    def stop(_row, new_ids):
        return any(s in tok.decode(new_ids) for s in stops)

    def stream(rows):
        # a character split across tokens (µ, °, ≥, an emoji) decodes as U+FFFD until its last byte
        # comes: hold those back, or the replacement marks stay printed before the character
        text = cut_at(tok.decode(rows[0]), stops).rstrip("\ufffd")
        out.write(text[printed[0]:])
        out.flush()
        printed[0] = len(text)

    new = generate(model, [prompt_ids], eos_token_ids=tok.eos_token_ids, pad_token_id=tok.pad_token_id or 0,
                   stop=stop if stops else None, on_step=stream, **settings)
    text = cut_at(tok.decode(new[0]), stops)
    out.write(text[printed[0]:] + "\n")
    out.flush()
    return text


def prompt_file_text(path: Path) -> str:
    """A file given as a prompt (``generate --prompt @FILE``, chat's ``/file``): a Word, Writer or
    PDF document's text (``.docx``, ``.odt``, ``.pdf``: :mod:`prefopt.documents`), else UTF-8 text (a bad byte
    named by line and column); Windows and old Mac line ends read as ``\n``."""
    from .data.decoding import read_text
    from .documents import DOCUMENTS, document_text

    text = document_text(path) if path.suffix.lower() in DOCUMENTS else read_text(path, "utf-8")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def cut_at(text: str, stops: list[str]) -> str:
    """``text`` up to the first of ``stops`` found in it."""
    return text[:min((text.find(s) for s in stops if s in text), default=len(text))]


def fit_turns(tok, system: str | None, turns: list[dict], room: int) -> tuple[list[int], int]:
    """The chat prompt of ``system`` and the latest ``turns`` that fits in ``room`` tokens, and how
    many of the earliest turns it leaves out (whole exchanges, a user turn and its answer). The
    last user turn alone not fitting is a ValueError."""
    head = [{"role": "system", "content": system}] if system else []
    for start in range(0, len(turns), 2):
        ids = tok.apply_chat_template(head + turns[start:], add_generation_prompt=True)
        if len(ids) <= room:
            return ids, start
    raise ValueError(f"that message is {len(ids)} tokens with the chat template, and {room} fit (the model's context "
                     "less --max-new-tokens)")


def chat(model, tok, *, system: str | None = None, context: int, max_new_tokens: int,
         read: Callable[[str], str] | None = None, out: TextIO | None = None, **settings) -> int:
    """A conversation in the terminal: each line read is the user's turn; the model's answer is
    streamed back and kept, so later turns see the whole exchange. Where the conversation no
    longer fits ``context`` tokens (with room for ``max_new_tokens``), its earliest exchanges are
    left out, and it says so. Each turn runs only the tokens its prompt does not share with the
    last turn's prompt and answer (a :class:`~prefopt.model.kv_cache.PromptCache`). Commands:
    :data:`CHAT_HELP`; Ctrl-C stops an answer (its turn left out), and at the prompt quits.
    ``read(prompt)`` gives each line (default: :func:`input`). Returns 0 at ``/exit`` or end of
    input."""
    from .model.kv_cache import PromptCache

    out, read = out or sys.stdout, read or input  # input: line editing and history where readline is there
    turns: list[dict] = []
    kept = PromptCache()  # the conversation's keys and values: each turn runs only what is new

    def say(text: str) -> None:
        out.write(f"({text})\n")
        out.flush()

    say(CHAT_HELP)
    while True:
        try:
            line = read("you> ")
        except EOFError:
            out.write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            turns, kept = [], PromptCache()
            say("a new conversation")
            continue
        if text == "/system" or text.startswith("/system "):
            given = text[len("/system"):].strip() or None
            if given and (problem := control_token_problem(given, tok, "remove it")):
                say(f"system message not changed: it {problem}")
                continue
            system = given
            say(f"system message: {system!r}" if system else "no system message")
            continue
        if text.startswith("/save "):
            say(save_conversation(Path(text[len("/save "):].strip()).expanduser(), system, turns))
            continue
        if text.startswith("/file "):
            path = Path(text[len("/file "):].strip()).expanduser()
            try:
                text = prompt_file_text(path).strip()
            except (OSError, ValueError) as e:
                say(f"{path}: {e.strerror if isinstance(e, OSError) and e.strerror else e}")
                continue
            if not text:
                say(f"{path} is empty")
                continue
            say(f"sent {path} ({len(text)} characters)")
        elif text.startswith("/"):
            say(f"unknown command {text.split()[0]!r}; {CHAT_HELP}")
            continue
        if problem := control_token_problem(text, tok, "remove it (the template writes the model's own turns)"):
            say(f"not sent: your message {problem}")
            continue
        turns.append({"role": "user", "content": text})
        try:
            ids, left_out = fit_turns(tok, system, turns, context - max_new_tokens)
        except ValueError as e:
            turns.pop()
            say(str(e))
            continue
        if left_out:
            turns = turns[left_out:]
            say(f"the earliest {left_out // 2} exchange(s) no longer fit the model's context of {context} tokens: "
                "left out from here on")
        out.write("model> ")
        try:
            answer = stream_answer(model, tok, ids, out=out, max_new_tokens=max_new_tokens, prompt_cache=kept,
                                   **settings)
        except KeyboardInterrupt:  # Ctrl-C stops this answer; at the prompt it quits
            turns.pop()
            out.write("\n")
            say("stopped: this turn is left out of the conversation")
            continue
        turns.append({"role": "assistant", "content": answer})


def save_conversation(path: Path, system: str | None, turns: list[dict]) -> str:
    """Add the conversation to ``path`` as one ``{"messages": [...]}`` line (an SFT record, once its
    answers are what they should be); what happened, as a line to show."""
    if not turns:
        return "nothing to save yet"
    messages = ([{"role": "system", "content": system}] if system else []) + turns
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    except OSError as e:
        return f"{path}: {e.strerror or e}"
    return (f"added {len(turns) // 2} exchange(s) to {path}: a {{\"messages\"}} record, which prefopt sft trains on "
            "once its answers are corrected")
