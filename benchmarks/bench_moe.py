"""A mixture of experts' forward and backward: prefopt's ``SparseMoE`` model against transformers'
``Qwen3MoeForCausalLM`` (transformers 5: its experts fused into 3-D tensors), in one run.

The same random Qwen3-MoE-shaped model (saved once by transformers, loaded by each), the same
token batch, fp32 on the CPU; each implementation in its own fresh process. A step is a forward,
``logsumexp`` of the logits averaged, and a backward through every parameter (router and experts
included); the first ``--warmup`` steps are left out of the time. Peak RSS is the process's
``VmHWM`` at the end, and what it grew by after the library's imports (the model, its
activations and gradients); the logits of the two are checked to agree first (max abs difference).

``--lora R``: the base frozen, a rank-``R`` adapter on the attention and on every expert's
``gate_up_proj`` and ``down_proj`` (prefopt's ``apply_lora(..., target_parameters=...)`` against
PEFT's ``LoraConfig(target_parameters=...)`` on transformers' model); the backward reaches the
adapters only.

    .venv/bin/python benchmarks/bench_moe.py [--experts 32 --top-k 4 --hidden 512 --layers 4 --tokens 1024] [--lora 16]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import rss, run_worker  # noqa: E402

KINDS = ("transformers", "prefopt")


def build(folder: Path, a) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.Qwen3MoeConfig(
        vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=2 * a.hidden, moe_intermediate_size=a.hidden // 2,
        num_hidden_layers=a.layers, num_attention_heads=8, num_key_value_heads=4, head_dim=a.hidden // 8,
        num_experts=a.experts, num_experts_per_tok=a.top_k, norm_topk_prob=True, decoder_sparse_step=1,
        mlp_only_layers=[])
    transformers.Qwen3MoeForCausalLM(cfg).float().save_pretrained(folder)


ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def worker(kind: str, folder: str, a) -> dict:
    import torch

    if kind == "prefopt":
        from prefopt import load_model

        base = rss("VmRSS")  # after the library's imports: what follows is the model, activations, gradients
        model = load_model(folder)
        logits = model
        if a.lora:
            from prefopt import apply_lora

            apply_lora(model, r=a.lora, alpha=2 * a.lora, dropout=0.0, target_modules=ATTENTION,
                       target_parameters=("gate_up_proj", "down_proj"))
    else:
        import transformers

        base = rss("VmRSS")
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        if a.lora:
            import peft

            model = peft.get_peft_model(model, peft.LoraConfig(
                r=a.lora, lora_alpha=2 * a.lora, lora_dropout=0.0, target_modules=ATTENTION,
                target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]))
        logits = lambda ids: model(ids).logits  # noqa: E731
    model.train()
    ids = torch.randint(0, a.vocab, (a.tokens // 256, 256), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        first = logits(ids[:1, :32]).float()
    times = []
    for _ in range(a.warmup + a.steps):
        t = time.perf_counter()
        logits(ids).float().logsumexp(-1).mean().backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    timed = times[a.warmup:]
    return {"kind": kind, "s_per_step": sum(timed) / len(timed), "peak_rss": rss("VmHWM"), "rss_base": base,
            "probe": first.flatten()[:2048].tolist()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experts", type=int, default=32)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--tokens", type=int, default=1024, help="tokens a step (rows of 256)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--lora", type=int, default=0, help="rank of adapters on the attention and the experts (PEFT "
                   "for transformers), the base frozen; 0: train every weight")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--worker", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(*a.worker, a)))
        return {}
    settings = ["--experts", str(a.experts), "--top-k", str(a.top_k), "--hidden", str(a.hidden), "--layers",
                str(a.layers), "--vocab", str(a.vocab), "--tokens", str(a.tokens), "--steps", str(a.steps),
                "--warmup", str(a.warmup), "--lora", str(a.lora)]
    with tempfile.TemporaryDirectory(prefix="bench_moe_") as tmp:
        build(Path(tmp) / "model", a)
        runs = {k: run_worker(__file__, *settings, "--worker", k, str(Path(tmp) / "model")) for k in KINDS}
    diff = max(abs(x - y) for x, y in zip(runs["prefopt"].pop("probe"), runs["transformers"].pop("probe")))
    mib = 2 ** 20
    print(f"{platform.processor() or platform.machine()}, {a.experts} experts (top {a.top_k}), hidden {a.hidden}, "
          f"{a.layers} layers, {a.tokens} tokens a step, fp32"
          + (f", LoRA r{a.lora} on the attention and experts (transformers: PEFT)" if a.lora else "")
          + f"; logits agree to {diff:.1e}")
    print("| implementation | s / step (fwd+bwd) | peak RSS (MiB) | peak beyond its imports (MiB) |")
    print("|---|---|---|---|")
    for k in KINDS:
        r = runs[k]
        print(f"| {k} | {r['s_per_step']:.3f} | {r['peak_rss'] / mib:,.0f} | {(r['peak_rss'] - r['rss_base']) / mib:,.0f} |")
    ratio = runs["prefopt"]["s_per_step"] / runs["transformers"]["s_per_step"]
    mem = (runs["prefopt"]["peak_rss"] - runs["prefopt"]["rss_base"]) / max(
        runs["transformers"]["peak_rss"] - runs["transformers"]["rss_base"], 1)
    print(f"prefopt / transformers: {ratio:.2f}x the time, {mem:.2f}x the memory beyond the imports")
    out = {"runs": runs, "time_ratio": ratio, "memory_ratio": mem, "logits_max_abs_diff": diff}
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
