"""The peak memory a run logs, on a Linux CPU: the resident set sampled by a thread (the kernel's
own peak counter is left alone). The trainers' figures are tested in test_cuda_training (CPU and
CUDA) and test_sft."""
import sys
import threading
import time

import pytest
import torch

from prefopt.train.peak_memory import PeakMemory, resident_bytes
from tests.train._fixtures import fresh_pages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self (Linux)")
MiB = 2**20


def _sampler_running() -> bool:
    return "prefopt-peak-memory" in {t.name for t in threading.enumerate()}


def test_a_spike_between_reads_is_caught_by_the_sampling_thread():
    with PeakMemory(torch.device("cpu")) as peak:
        start = peak.mb()
        assert _sampler_running() and abs(start - resident_bytes() / MiB) < 64
        block = fresh_pages(256)  # for 0.2 s, freed before the next read
        time.sleep(0.2)
        block.close()
        time.sleep(0.05)
        assert resident_bytes() / MiB < start + 64  # gone from the resident set...
        assert peak.mb() > start + 200  # ...but not from the peak
    assert not _sampler_running()  # the thread lives only inside the block
    again = PeakMemory(torch.device("cpu"))
    with again:  # counted afresh: the earlier spike is not in a new count
        assert again.mb() < start + 64
