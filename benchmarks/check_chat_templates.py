"""Real chat templates rendered by prefopt and by transformers, and what SFT needs of each.

For every ``*.jinja`` file in ``--templates`` (llama.cpp keeps 70 of them, copied from the models'
tokenizer configs, in ``models/templates``; the ``llama-cpp-python`` sdist on PyPI carries them under
``vendor/llama.cpp/models/templates``), this renders a few clinical conversations, each with and
without the generation prompt, with prefopt's renderer (``prefopt.chat_template.render_chat``)
and with transformers' (``render_jinja_template``, the code behind ``apply_chat_template``), once
plainly and once with each switch the template reads (``enable_thinking``, ``thinking``,
``reasoning_effort`` ...), and reports for each template:

- ``same``: how many renderings gave the same text (a template that refuses a conversation
  must refuse it in both);
- ``boundary``: for each conversation, how SFT and DPO cut a response off
  (``prefopt.chat_template.exchange_texts``, behind ``Tokenizer.encode_prompt_response``):
  ``prefix`` where the prompt's text (generation prompt on) starts the text with the answer as
  the last assistant turn, ``continued`` where the answer is taken after the prompt instead (a
  reasoning model's template; the report shows the text around the cut), ``refused`` where the
  template refuses the conversation or the cut cannot be made;
- ``opens``: whether the generation prompt opens a reasoning block (``<think>``), so answers
  begin inside it (``prefopt.evaluate.runner.reasoning_opened``);
- ``reasoning_kept``: of the responses written with their reasoning (``<think>...</think>`` then
  the answer), how many reach the training text with the reasoning and the answer once each;
- ``vars``: the variables of its own it reads (the switches among them are tried);
- ``turns``: how SFT trains a conversation of two assistant turns, the first written with its
  reasoning: ``one sequence`` where each turn's text is a span of the whole rendering (every turn
  trained in one example), ``per turn`` where it is not and each turn is cut off after the
  conversation before it instead (``prefopt.data.sft.turn_examples``; the turn's text reaches
  its example once), ``refused`` where neither can be done. Checked on the texts; ``load_sft``
  makes the same test on the tokens.

    .venv/bin/python benchmarks/check_chat_templates.py --templates DIR [--json OUT]

Exit status 1 where any rendering differs from transformers', or a template does not parse.
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
ANSWER = "Emergency department now: chest pain with sweating needs an ECG within 10 minutes."
THOUGHT = "Crushing chest pain with sweating for 40 minutes is an acute coronary syndrome until proven otherwise."
REASONED = f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}"  # a response written with its reasoning
CONVERSATIONS = {
    "user": [{"role": "user", "content": "Crushing chest pain for 40 minutes, sweating. Where should I go?"}],
    "system": [{"role": "system", "content": "You are a careful triage nurse. Answer in one sentence."},
               {"role": "user", "content": "Rash on my arm for two days, no fever. Where should I go?"}],
    "turns": [{"role": "user", "content": "I have a headache."},
              {"role": "assistant", "content": "How long has it lasted, and how bad is it?"},
              {"role": "user", "content": "Three days; the worst of my life, with a stiff neck."}],
}
# two assistant turns, the first written with its reasoning: is each turn a span of the whole rendering?
TWO_TURNS = [CONVERSATIONS["turns"][0], {"role": "assistant", "content": f"<think>\n{THOUGHT}\n</think>\n\n"
                                         + CONVERSATIONS["turns"][1]["content"]},
             CONVERSATIONS["turns"][2], {"role": "assistant", "content": ANSWER}]
# switches a template may read, and the values worth trying (others are shown, not set)
SWITCHES = {"enable_thinking": [False, True], "thinking": [True, False], "reasoning_effort": ["low", "high"],
            "add_vision_id": [False]}


def _ours(template: str, messages: list, gen: bool, switches: dict) -> str:
    from prefopt.chat_template import render_chat

    # strftime_now: the clock's, as transformers' (a date pinned at midnight would differ from a template's time)
    return render_chat(template, messages, add_generation_prompt=gen, special_tokens=SPECIALS, **switches)


def _theirs(template: str, messages: list, gen: bool, switches: dict) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([messages], chat_template=template, add_generation_prompt=gen,
                                        **SPECIALS, **switches)
    return rendered[0]


def _both(template: str, messages: list, gen: bool, switches: dict) -> tuple[object, object]:
    """Each renderer's text, or ``("refused", the error's class)`` where it raised."""
    out = []
    for render in (_ours, _theirs):
        try:
            out.append(render(template, messages, gen, switches))
        except Exception as e:  # a template's raise_exception, or one that needs what the check gives none of
            out.append(("refused", type(e).__name__.replace("ChatTemplateError", "TemplateError")))
    return out[0], out[1]


def _settings(names: set[str]) -> list[dict]:
    """The plain rendering, and one per value of each switch the template reads."""
    return [{}] + [{name: v} for name in sorted(names & set(SWITCHES)) for v in SWITCHES[name]]


def check_template(template: str) -> dict:
    """The report of one template (see the module's docstring). Reasoned responses are tried in every
    setting, thinking off too, where training warns about them (``chat_template.THINKING_OFF``)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="responses written with their reasoning")
        return _check(template)


def _check(template: str) -> dict:
    from prefopt.chat_template import exchange_texts, opens_reasoning, template_variables

    try:
        names = template_variables(template)
    except Exception as e:  # a syntax prefopt's parser does not know
        return {"error": f"{type(e).__name__}: {e}", "same": 0, "total": 1, "differ": [], "boundary": {},
                "opens": {}, "vars": []}
    own = sorted(names - {"messages", "add_generation_prompt", "tools", "documents", "raise_exception",
                          "strftime_now", *SPECIALS})
    same = total = 0
    differ, boundary, opens, kept, turns = [], {}, {}, [], {}
    for switches in _settings(set(own)):
        def render(m, g, s=switches):
            return _ours(template, m, g, s)

        key = " ".join(f"{k}={json.dumps(v)}" for k, v in switches.items()) or "plain"
        for name, msgs in CONVERSATIONS.items():
            for messages, gen in ((msgs, True), (msgs + [{"role": "assistant", "content": ANSWER}], False)):
                ours, theirs = _both(template, messages, gen, switches)
                total += 1
                if ours == theirs:
                    same += 1
                else:
                    differ.append({"switches": key, "conversation": name, "generation_prompt": gen,
                                   "ours": ours if isinstance(ours, tuple) else ours[-300:],
                                   "theirs": theirs if isinstance(theirs, tuple) else theirs[-300:]})
            try:
                prompt, full, continued = exchange_texts(render, msgs, ANSWER)
            except Exception as e:  # the template refuses the conversation, or the response cannot be cut off
                boundary.setdefault(key, {})[name] = f"refused: {type(e).__name__}"
                continue
            boundary.setdefault(key, {})[name] = f"continued: {full[len(prompt) - 20:]!r}" if continued else "prefix"
            opens.setdefault(key, opens_reasoning(prompt))
            prompt, full, _ = exchange_texts(render, msgs, REASONED)
            kept.append(full[len(prompt):].count(THOUGHT) == 1 and full[len(prompt):].count(ANSWER) == 1)
        turns[key] = _turns(render)
    return {"same": same, "total": total, "differ": differ, "boundary": boundary, "opens": opens, "vars": own,
            "reasoning_kept": f"{sum(kept)}/{len(kept)}", "turns": turns}


def _turns(render) -> str:
    """How SFT trains :data:`TWO_TURNS` under ``render`` (the module docstring's ``turns``)."""
    from prefopt.chat_template import exchange_texts

    answers = [i for i, m in enumerate(TWO_TURNS) if m["role"] == "assistant"]
    try:
        whole = render(TWO_TURNS, False)
        if all(whole.startswith(render(TWO_TURNS[:i], True)) and whole.startswith(render(TWO_TURNS[:i + 1], False))
               for i in answers):
            return "one sequence"
        for i in answers:
            prompt, full, _ = exchange_texts(render, TWO_TURNS[:i], TWO_TURNS[i]["content"])
            answer = TWO_TURNS[i]["content"].split("</think>")[-1].strip()
            if full[len(prompt):].count(answer) != 1:
                return "refused: the turn's text is not in its example once"
    except Exception as e:  # the template refuses the conversation, or a turn cannot be cut off
        return f"refused: {type(e).__name__}"
    return "per turn"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--templates", required=True, type=Path, help="a folder of *.jinja chat templates")
    p.add_argument("--json", type=Path, help="write every template's report here")
    args = p.parse_args(argv)
    paths = sorted(args.templates.glob("*.jinja"))
    if not paths:
        raise SystemExit(f"{args.templates}: no *.jinja files")
    reports, bad = {}, 0
    for path in paths:
        r = reports[path.stem] = check_template(path.read_text(encoding="utf-8"))
        cuts = [v.split(":")[0] for by in r["boundary"].values() for v in by.values()]
        cut = ", ".join(f"{cuts.count(k)} {k}" for k in ("prefix", "continued", "refused") if k in cuts) or "-"
        opened = ", ".join(k for k, v in r["opens"].items() if v) or "-"
        switches = ", ".join(v for v in r["vars"] if v in SWITCHES) or "-"
        ways = [v.split(":")[0] for v in r.get("turns", {}).values()]
        turns = ", ".join(f"{ways.count(k)} {k}" for k in ("one sequence", "per turn", "refused") if k in ways) or "-"
        print(f"{path.stem:45s} same {r['same']:3d}/{r['total']:<3d} {cut:24s} reasoning kept "
              f"{r.get('reasoning_kept', '-'):6s} two turns: {turns:18s} opens: {opened:22s} switches: {switches}"
              + (f"  {r['error']}" if "error" in r else ""), flush=True)
        bad += r["same"] != r["total"]
    n_same = sum(r["same"] for r in reports.values())
    n_total = sum(r["total"] for r in reports.values())
    print(f"{len(reports)} templates, {n_same} of {n_total} renderings equal to transformers'; {bad} with a "
          "difference or a syntax prefopt cannot parse")
    ways = [v.split(":")[0] for r in reports.values() for v in r.get("turns", {}).values()]
    print("two assistant turns, over every template and setting: "
          + ", ".join(f"{ways.count(k)} {k}" for k in ("one sequence", "per turn", "refused")))
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1, ensure_ascii=False))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
