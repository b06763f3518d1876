"""One rank of a real ``--fsdp`` step on a CPU (gloo), for tests/train/test_memory_estimate.py:
under torchrun each rank prints what it held: ``{"rank", "peak", "weights", "moments"}`` as JSON
(the peak as ``measured_step`` takes it; weights and AdamW's moments as this rank's shares)."""
import json
import os
import sys

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
print(json.dumps({"rank": int(os.environ["RANK"]), "peak": peak, "weights": module_bytes(trainer.model),
                  "moments": sum(local_bytes(v) for v in moments)}), flush=True)
