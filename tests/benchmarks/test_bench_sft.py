"""benchmarks/bench_sft.py's prefopt worker (also bench_checkpointing's, bench_pack's, ...)."""
import json

import torch

from tests._tiny import build_hf_model
from tests.benchmarks import BENCHMARKS, load_script


def test_the_workers_peak_rss_is_the_processs_even_though_train_counts_afresh(tmp_path, monkeypatch):
    """prefopt's trainers set the process's peak RSS back when ``train()`` starts (their
    metrics.jsonl's peak is the run's own); the benchmark still reports the whole process's peak,
    loading included, as TRL's row does: here a 512 MiB block held and freed before training."""
    build_hf_model(tmp_path / "tiny", arch="llama")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    bench = load_script("bench_sft")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in bench.chat_records(4)))
    a = bench.trainer_bench_parser("", steps=2, batch_size=2, max_length=64).parse_args(["--warmup", "1"])
    a.model_dir, a.data, a.out = str(tmp_path / "tiny"), str(data), str(tmp_path / "out")
    block = torch.ones(2**27)  # 512 MiB, every page written
    held = bench.rss("VmHWM")
    del block
    assert held - bench.rss("VmRSS") > 400 * 2**20
    row = bench.prefopt_worker(a)
    # (VmHWM read while the block is held can top the peak the kernel keeps once it is freed by a
    # few hundred KiB: the RSS of that moment)
    assert row["peak_rss"] > held - 2**24 and len(row["step_seconds"]) == 2
