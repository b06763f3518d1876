"""A reasoning model (DeepSeek-R1's template: the generation prompt opens ``<think>``) fine-tuned on
plain answers learns to close its reasoning and answer, and evaluation reads that answer."""
import warnings

from prefopt import generate, load_tokenizer
from prefopt.tasks.parsing import final_answer
from prefopt.train import SFTTrainer, TrainConfig
from prefopt.train.run import prepare_model
from prefopt.train.sft import load_train_eval
from tests._tiny import R1_STYLE, build_hf_model, build_tokenizer
from tests.train._fixtures import COLORS, write_task


def test_sft_on_a_reasoning_template_teaches_the_answer_after_an_empty_block(tmp_path):
    model_dir = tmp_path / "model"
    build_hf_model(model_dir, tokenizer=False, initializer_range=0.1)
    build_tokenizer(model_dir, template=R1_STYLE, bos="<|begin_of_text|>", eos="<|eot_id|>")
    _, data = write_task(tmp_path)
    cfg = TrainConfig(model=str(model_dir), data=str(data), output_dir=str(tmp_path / "run"), batch_size=4,
                      max_steps=80, lr=5e-3, lora_r=16, lora_alpha=32, lora_dropout=0.0, warmup_steps=2,
                      progress=False)
    tok = load_tokenizer(model_dir)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        train, evals, _ = load_train_eval(cfg, tok)
    assert sum("each response is taken as it follows that prompt" in str(w.message) for w in said) == 1
    model = prepare_model(cfg)
    SFTTrainer(model, cfg, train, evals, pad_id=tok.pad_token_id).train()
    model.eval()
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"Case {i}: triage code for patient {i % 4}?"}],
                                       add_generation_prompt=True) for i in range(8)]
    assert all(tok.decode(p, False).endswith("<think>\n") for p in prompts)  # the template opens the block
    outputs = [tok.decode(ids) for ids in generate(model, prompts, max_new_tokens=32, pad_token_id=0,
                                                     eos_token_ids=tok.eos_token_ids)]
    read = [final_answer(text, opened=True) for text in outputs]
    assert all(state == "done" for _, state in read), outputs  # every answer closed the block
    right = sum(answer == f"Code {COLORS[i % 4]}." for i, (answer, _) in enumerate(read))
    assert right >= 6, outputs  # 7 of 8 here: a tiny model after 80 steps


STAFF = ["nurse", "doctor", "pharmacist", "clerk"]


def test_conversations_of_several_turns_on_a_reasoning_template_train_each_turn(tmp_path):
    """One sequence cannot hold every turn as R1's template renders them (a finished turn loses its
    reasoning), so each assistant turn trains after the prompt it is answered from; both are learnt."""
    import json

    model_dir = tmp_path / "model"
    build_hf_model(model_dir, tokenizer=False, initializer_range=0.1)
    build_tokenizer(model_dir, template=R1_STYLE, bos="<|begin_of_text|>", eos="<|eot_id|>")

    def talk(i):
        return [{"role": "user", "content": f"Case {i}: triage code for patient {i % 4}?"},
                {"role": "assistant", "content": f"<think>\npatient {i % 4}\n</think>\n\nCode {COLORS[i % 4]}."},
                {"role": "user", "content": "Who sees them?"}]

    data = tmp_path / "talks.jsonl"
    data.write_text("".join(json.dumps({"messages": talk(i) + [{"role": "assistant", "content": STAFF[i % 4]}]})
                            + "\n" for i in range(48)))
    cfg = TrainConfig(model=str(model_dir), data=str(data), output_dir=str(tmp_path / "run"), batch_size=4,
                      max_steps=200, lr=5e-3, lora_r=16, lora_alpha=32, lora_dropout=0.0, warmup_steps=2,
                      progress=False)
    tok = load_tokenizer(model_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train, evals, (report,) = load_train_eval(cfg, tok)
    assert len(train) == 96 and (report.n_split, report.n_split_examples) == (48, 96)
    model = prepare_model(cfg)
    SFTTrainer(model, cfg, train, evals, pad_id=tok.pad_token_id).train()
    model.eval()
    first = [tok.apply_chat_template(talk(i)[:1], add_generation_prompt=True) for i in range(8)]
    second = [tok.apply_chat_template(talk(i), add_generation_prompt=True) for i in range(8)]
    out = [final_answer(tok.decode(ids), opened=True)[0]
           for ids in generate(model, first + second, max_new_tokens=24, pad_token_id=0,
                               eos_token_ids=tok.eos_token_ids)]
    assert sum(a.endswith(f"Code {COLORS[i % 4]}.") for i, a in enumerate(out[:8])) >= 6, out
    assert sum(a == STAFF[i % 4] for i, a in enumerate(out[8:])) >= 6, out
