"""One rank of a real ``--fsdp`` step on a CPU (gloo), for tests/train/test_memory_estimate.py:
under torchrun each rank gives what it held: ``{"rank", "peak", "weights", "moments"}`` as JSON
(the peak as ``measured_step`` takes it; weights and AdamW's moments as this rank's shares), in
``rank<N>.json`` of the folder named third, else as a line on stdout. The two ranks share the
pipe: unbuffered (``PYTHONUNBUFFERED``), a print's text and its newline are two writes, and two
ranks' lines once ran together (CI, 2026-12-06), so the test reads files."""
import json
import os
import sys
from pathlib import Path

import torch

from prefopt.train import DPOConfig, TrainConfig
from prefopt.train.estimate_shards import local_bytes
from prefopt.train.memory_estimate import measured_step, module_bytes
from prefopt.train.run import prepare_model
from tests.train.test_memory_estimate import _trainer

torch.set_num_threads(1)
kind, fields = sys.argv[1], json.loads(sys.argv[2])
config = (TrainConfig if kind == "sft" else DPOConfig)(**fields)
trainer = _trainer(kind, config, prepare_model(config))  # the one-process test's examples
peak = measured_step(trainer)
moments = [v for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
rank = int(os.environ["RANK"])
line = json.dumps({"rank": rank, "peak": peak, "weights": module_bytes(trainer.model),
                   "moments": sum(local_bytes(v) for v in moments)}) + "\n"
if len(sys.argv) > 3:
    Path(sys.argv[3], f"rank{rank}.json").write_text(line)
else:
    sys.stdout.write(line)  # one write: one line
    sys.stdout.flush()
