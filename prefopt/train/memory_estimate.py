"""How much memory a training step will hold, worked out before any weight is loaded.

:func:`estimate_memory` builds the run's model from its ``config.json`` on fake tensors (shapes
and dtypes, no storage: ``torch._subclasses.FakeTensorMode``), puts the run's adapter on it, and
runs the trainer's own collate and loss (``sft_batch``/``sft_loss_sum``,
``pair_batch``/``preference_loss_sum``) forward and backward on one micro-batch, the lm_head's
chunked log-probs included (a trained head's one-pass loss, with its gradients formed in the
forward, for full fine-tuning or an adapter on the head). A dispatch mode (:class:`LiveTensors`)
follows every tensor the step creates and frees, so the figure is the step's own peak of live
tensors, not a formula: the activations each layer keeps for the backward (fewer under gradient
checkpointing, where a layer's are rebuilt in the backward), the logits blocks of the head, the
gradients. Ops on the batch's real tensors alone (label checks, the scored positions) run for
real. With ``grad_accum`` above 1 a second micro-batch runs, its forward and backward beside the
first's gradients. AdamW's two moments of the trained weights are added, as they are held from
the second step on, and the batch's own tensors (token ids, labels, a packed pair's ``L²`` mask;
on a CPU all of a step's micro-batches, which the trainer collates first). It takes a few seconds
for any model size, on any machine: a team can size a run for a GPU it does not have yet.

The micro-batch is the worst the settings allow: ``batch_size`` examples of ``max_length``
tokens, all but the first scored; DPO's pairs share a one-token prompt and are packed as real
pairs are (the longest rows and masks). Shorter records hold less. What it does not count: the
CUDA context and kernels (about 0.5 GiB a process), the caching allocator's reserve beyond live
tensors (often 5-20% more on a GPU, see ``torch.cuda.max_memory_reserved``), on a CPU the
process's own code and what the C allocator keeps; on CUDA the lm_head's one-pass loss (the
default there) holds a stage of its gradient rows (``onepass.GRAD_ELEMENTS``: up to 192 MiB in
bf16) beside a logits slab (up to 48 MiB), about 240 MiB where the chunked path estimated here
holds one 64 MiB logits block and its backward's (on an H200 at Llama 3's head: 237 MiB against
224; at other heads unmeasured). The step runs on the CPU's fake tensors; on CUDA bf16 autocast
is stood in for by the CPU's; cuBLAS's two workspaces are added (:func:`cublas_workspace`).

Measured against the allocations of a real step (:func:`allocated_peak`, PyTorch's profiler, on
a CPU: benchmarks/bench_memory_estimate.py, tests/train/test_memory_estimate.py; on a GPU
``torch.cuda.max_memory_allocated``: within a fifth for a tiny model on an H200, 2026-12-04,
once the workspaces were counted). :func:`fit_note` is the warning each run
gives before step 1 where its step will not fit.
"""
from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..devices import DTYPES, resolve_device
from ..fileio import size_text
from .config import TrainConfig
from .estimate_shards import fake_group, local, local_bytes, shard, storage_followed
from .stop_signal import going_on


def where(device: str, autocast: bool = False) -> str:
    """Where an estimated step runs, in words: ``on CUDA under bf16 autocast``, ``on a CPU``."""
    return {"cuda": "on CUDA" + (" under bf16 autocast" if autocast else ""), "cpu": "on a CPU"}[device]


def held_beyond(device: str) -> str:
    """What a process on ``device`` holds beyond the estimated tensors, in words."""
    return ("the CUDA context (about 0.5 GiB) and the caching allocator's reserve (often 5-20% more)"
            if device == "cuda" else "the process's own code and what the C allocator keeps (the "
            "resident set is often 0.5-1 GiB more)")


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training step holds at once (``peak``) and what makes it up: ``weights`` (every
    parameter and buffer, a separate reference model's too), ``trained`` (the trained weights,
    within ``weights``), ``optimizer`` (AdamW's two moments of them), ``activations`` (what the
    forward keeps for the backward, the lm_head's share included), ``batch`` (the micro-batches'
    own tensors: ``accum`` of them), and what it assumed: the micro-batch, the device, the
    weights' dtype, the layers recomputed and whether CUDA's bf16 autocast is on. On CUDA ``peak``
    includes ``workspace``, cuBLAS's workspaces (:func:`cublas_workspace`). Under ``--fsdp`` every
    figure is one of ``processes`` processes' (its shares of the weights, gradients and moments)."""

    peak: int
    weights: int
    trained: int
    optimizer: int
    activations: int
    sequences: int
    tokens: int
    device: str
    dtype: str
    checkpointed: int
    layers: int
    autocast: bool = False
    workspace: int = 0
    reference: int = 0  # a separate reference model's weights (--ref), within ``weights``
    batch: int = 0  # the micro-batches' token ids, labels and masks held through the step
    accum: int = 1  # the micro-batches ``batch`` counts: a CPU step's --grad-accum, one on CUDA
    processes: int = 1  # under --fsdp, the processes sharing the model: the figures are each one's

    def on(self) -> str:
        """Where the step runs, in words: ``on CUDA under bf16 autocast``, ``on a CPU``."""
        return where(self.device, self.autocast)

    def recomputed(self) -> str:
        """``, gradient checkpointing on N of L layers``, or nothing."""
        return f", gradient checkpointing on {self.checkpointed} of {self.layers} layers" if self.checkpointed else ""

    def _batches(self) -> str:
        """Whose the ``batch`` line's bytes are: on a CPU every micro-batch of a step, collated first."""
        return (f" ({self.accum} micro-batches, --grad-accum, collated before the step)" if self.accum > 1
                else "")

    def _shares(self) -> str:
        """Under --fsdp, whose the figures are."""
        return (f", under --fsdp for each of {self.processes} processes (its share of the weights, their gradients "
                "and AdamW's moments; a block's whole weights while it runs)" if self.processes > 1 else "")

    def beyond(self) -> str:
        """What a process holds beyond the estimated tensors, in words."""
        return held_beyond(self.device)

    def lines(self) -> list[str]:
        """The estimate in words, for the console."""
        return [
            f"memory estimate for one training step {self.on()}, {self.dtype} weights, a micro-batch of "
            f"{self.sequences} sequence{'s' * (self.sequences != 1)} of {self.tokens} tokens{self.recomputed()}"
            f"{self._shares()}:",
            f"  weights      {size_text(self.weights)}"
            + (f", the reference model's (--ref) {size_text(self.reference)} among them" if self.reference else ""),
            f"  trained      {size_text(self.trained)} of them, with their gradients and AdamW's two moments "
            f"({size_text(self.optimizer)})",
            f"  activations  {size_text(self.activations)} kept by the forward for the backward",
            f"  batch        {size_text(self.batch)} of token ids, labels and masks{self._batches()}",
            *([f"  workspace    {size_text(self.workspace)} for cuBLAS (the forward's and the backward's threads)"]
              if self.workspace else []),
            f"  peak         {size_text(self.peak)} of tensors at once; add {self.beyond()}",
        ]


def estimate_memory(config: TrainConfig, device: str | None = None, *, model_config=None,
                    tokens: int | None = None, processes: int = 2) -> MemoryEstimate:
    """The peak memory of one training step of ``config`` (a :class:`TrainConfig` or
    ``DPOConfig``) on ``device`` (``"cpu"`` or ``"cuda"``; default the config's device on this
    machine), from the model's ``config.json`` alone (or ``model_config``, a loaded model's
    ``ModelConfig``), for micro-batches of ``tokens`` a row (default ``max_length``). Adapters
    (LoRA, DoRA, QLoRA) and full fine-tuning, the lm_head frozen or trained (its one-pass loss, as
    the CPU runs it), on dense models (a mixture of experts routes by values that fake tensors
    lack); anything else is a ``ValueError`` that says so. Under ``--fsdp``, one of ``processes``
    processes' share (:mod:`.estimate_shards`)."""
    from ..model.config import ModelConfig
    from ..model.hub import resolve_model_dir
    from ..model.transformer import Transformer

    kind = device_kind(device or config.device)
    cfg = read_model_config(config, model_config)

    rows, T = _rows(config), min(tokens or config.max_length, config.max_length)
    step_loss, batch_bytes = _worst_step(config, T)  # its batch in real tensors: the model's activations alone fake
    autocast = kind == "cuda" and config.bf16_autocast
    world = processes if config.fsdp else 1
    with (fake_group(world) if config.fsdp else nullcontext()) as mesh, fake_tensors():
        model = fake_model(config, cfg)
        ref = getattr(config, "ref", None)  # DPO's separate frozen reference model (--ref), loaded in full
        reference = module_bytes(_built(Transformer, ModelConfig.from_hf(resolve_model_dir(ref)),
                                        DTYPES[config.dtype])) // world if ref else 0  # (--fsdp: sharded as well)
        model.gradient_checkpointing = config.checkpointing()
        model.train()
        if config.fsdp:
            shard(model, mesh)
        trained = sum(local_bytes(p) for p in model.parameters() if p.requires_grad)
        live = LiveTensors(model)
        with live, storage_followed(live.resized) if config.fsdp else nullcontext(), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = step_loss(model)
            activations = live.now
            loss.backward()
            if config.grad_accum > 1:  # a later micro-batch's forward and backward, the earlier's gradients held
                step_loss(model).backward()
    weights = module_bytes(model) + reference
    optimizer = 2 * trained
    # the step's peak with AdamW's moments held (from step 2 on); the optimizer step itself (gradients, moments and
    # a temporary the size of the trained weights, with the activations gone) where that is more
    workspace = cublas_workspace(kind)
    # the micro-batches' own tensors (token ids, labels, a packed pair's mask), made before the step's ops and held
    # through it: on a CPU all of a step's (the trainer collates them first), on CUDA the one copied there at a time
    accum = config.grad_accum if kind == "cpu" else 1
    batch = batch_bytes * accum
    # each checkpointed layer keeps the CPU's random-number state from its forward to its recomputation, for the
    # same dropout masks (made outside the dispatch mode; on CUDA in host memory, with the GPU's)
    rng_states = model.checkpointed_layers() * torch.get_rng_state().nbytes if kind == "cpu" else 0
    peak = weights + workspace + batch + max(live.peak + rng_states + optimizer, live.now + optimizer + trained)
    return MemoryEstimate(peak=peak, weights=weights, trained=trained, optimizer=optimizer, activations=activations,
                          sequences=rows, tokens=T, device=kind, dtype=config.dtype,
                          checkpointed=model.checkpointed_layers(), layers=len(model.model.layers), autocast=autocast,
                          workspace=workspace, reference=reference, batch=batch, accum=accum, processes=world)


def read_model_config(config: TrainConfig, given=None):
    """The ``ModelConfig`` of ``config``'s model (``given``, a loaded model's, or from its folder's
    ``config.json``); a ``ValueError`` for a GGUF file (not read here) or a model the estimates do
    not cover (:func:`uncovered`)."""
    from ..model.config import ModelConfig
    from ..model.hub import is_gguf, resolve_model_dir

    if given is None and is_gguf(config.model):
        raise ValueError(f"{config.model}: the estimate reads an HF folder's config.json; import the GGUF file first "
                         "(prefopt convert-gguf)")
    cfg = given or ModelConfig.from_hf(resolve_model_dir(config.model))
    if why := uncovered(config, cfg):
        raise ValueError(why)
    return cfg


@contextmanager
def fake_tensors() -> Iterator[None]:
    """Inside: new tensors are fake (shapes and dtypes, no storage), real ones may meet them."""
    with FakeTensorMode(allow_non_fake_inputs=True), warnings.catch_warnings():
        # DoRA keys its cached weight norm by the weight's address, which a fake tensor has none of (the norm is
        # computed once all the same)
        warnings.filterwarnings("ignore", message="Accessing the data pointer of FakeTensor")
        yield


def fake_model(config: TrainConfig, cfg, dtype: torch.dtype | None = None, adapted: bool = True) -> torch.nn.Module:
    """Inside :func:`fake_tensors`: the model of ``cfg`` (a ``ModelConfig``) in ``dtype`` (default
    ``config.dtype``) as ``config`` loads it, its 4-bit layers where ``config.quantize`` says,
    and (``adapted``) what it trains on it: a fresh adapter, or every weight trainable."""
    from ..model.transformer import Transformer
    from ..quant import quantize_model, quantized_layers
    from .run import adapt

    model = _built(Transformer, cfg, DTYPES[config.dtype] if dtype is None else dtype)
    if config.quantize:
        quantize_model(model, quantized_layers(config.lora_targets), config.quantize)
    return adapt(model, config) if adapted else model


def estimate_lines(config: TrainConfig, device: str | None = None) -> list[str]:
    """``--estimate-memory``'s console lines: the estimate's; under ``--fsdp`` for the processes
    torchrun starts (``WORLD_SIZE``), or where none says, for 2 with a line for 4 and 8 beside."""
    if not config.fsdp:
        return estimate_memory(config, device).lines()
    world = int(os.environ.get("WORLD_SIZE", "0") or 0)
    if world > 1:
        return estimate_memory(config, device, processes=world).lines()
    more = {n: estimate_memory(config, device, processes=n) for n in (4, 8)}
    return [*estimate_memory(config, device, processes=2).lines(),
            f"  peak with 4 processes {size_text(more[4].peak)} each, with 8 {size_text(more[8].peak)} each (under "
            "torchrun: for its --nproc_per_node alone)"]


def cublas_workspace(device: str) -> int:
    """The bytes of cuBLAS workspace a CUDA training step holds (0 elsewhere): PyTorch allocates one
    per thread that runs GEMMs, through its caching allocator, so they count as allocated; a step
    has two, the forward's thread and autograd's backward thread (measured on an H200: a real step
    held 64 MiB more than its tensors). Each is ``$CUBLAS_WORKSPACE_CONFIG`` (``:KiB:count`` pairs)
    where set, else PyTorch's default: 32 MiB on Hopper and later (assumed where no GPU is
    visible), 4096 KiB × 2 + 16 KiB × 8 before."""
    if device != "cuda":
        return 0
    spec = os.environ.get("CUBLAS_WORKSPACE_CONFIG", "")
    parts = spec.strip(":").split(":") if spec else []
    if parts and len(parts) % 2 == 0 and all(p.isdigit() for p in parts):
        kib = sum(int(a) * int(b) for a, b in zip(parts[::2], parts[1::2]))
    elif torch.cuda.is_available() and torch.cuda.get_device_capability()[0] < 9:
        kib = 4096 * 2 + 16 * 8
    else:
        kib = 4096 * 8
    return 2 * kib * 1024


def uncovered(config: TrainConfig, model_config) -> str | None:
    """Why the estimate does not cover a run of ``config`` on a model of ``model_config`` (a
    ``ModelConfig``), or None where it does: a dense one (a mixture of experts routes each token by
    values fake tensors lack)."""
    if any(model_config.sparse(i) for i in range(model_config.num_hidden_layers)):
        return (f"{config.model} ({model_config.model_type}) is a mixture of experts, whose router sends each token by "
                "its values, which the estimate's tensors do not have: it covers dense models")
    return None


def measured_step(trainer) -> int:
    """The bytes a real training step of ``trainer`` held at once, the measure the estimate is
    checked against: its second step (the first makes AdamW's moments), on a CPU the most it had
    allocated (:func:`allocated_peak`) plus the weights and moments alive before it, on CUDA
    ``torch.cuda.max_memory_allocated``."""
    trainer.train_step(0)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(trainer.device)
        trainer.train_step(1)
        return torch.cuda.max_memory_allocated(trainer.device)
    moments = [v for s in trainer.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
    held = module_bytes(trainer.model) + sum(local_bytes(t) for t in moments)
    return held + allocated_peak(lambda: trainer.train_step(1))


def fit_note(config: TrainConfig, model: torch.nn.Module, device: torch.device, longest: int) -> str | None:
    """A warning before step 1 where a step of the run (micro-batches of its ``longest`` training
    example, as the worst batch pads them) will not fit in the memory ``device`` has free beside
    the weights already loaded; None where it fits, or where the estimate does not cover the run
    or the free memory is not known; its advice in the words of the program running the trainer
    (``stop_signal.going_on``). The estimate runs only where a quick generous bound
    (:func:`surely_fits`) does not fit, and draws no random number (the run's stay as they would
    be)."""
    free = free_bytes(device)
    if free is None or not hasattr(getattr(model, "config", None), "sparse"):  # a Transformer's ModelConfig
        return None
    if config.fsdp:  # (its stand-in group cannot run beside the run's own: --estimate-memory gives a share)
        return None
    if surely_fits(config, model, free, longest):  # (the estimate takes 0.2-6 s; most runs have room to spare)
        return None
    short = short_of(lambda: estimate_memory(config, device.type, model_config=model.config, tokens=longest), free,
                     device)
    if short is None:
        return None
    est, need, killed = short
    return (f"a training step of these settings holds about {size_text(est.peak)} of tensors ({est.sequences} "
            f"sequences of {est.tokens} tokens, the longest example's length), {size_text(need)} of it beyond the "
            "weights loaded, "
            f"and {device.type} has {size_text(free)} free: the run will likely run out of memory{killed}. "
            f"{going_on().smaller}{_full_note(config, est)}")


def short_of(estimate: Callable[[], object], free: int, device: torch.device) -> tuple | None:
    """``(the estimate, its need, what a CPU adds to the warning)`` where ``estimate()`` (a
    :class:`MemoryEstimate` or an answer estimate, made without drawing a random number of the
    run's) holds more beyond the weights loaded (its need) than the ``free`` bytes ``device``
    has; None where it fits, or where the estimate does not cover the run (it says which),
    cannot read a model or meets an op fake tensors cannot run: a warning is not worth stopping
    for."""
    try:
        with torch.random.fork_rng(devices=[]):
            est = estimate()
    except (ValueError, OSError, RuntimeError):
        return None
    need = est.peak - est.weights
    if need <= free:
        return None
    return est, need, " (on Linux the kernel may stop the process then, without a word)" if device.type == "cpu" else ""


def _full_note(config: TrainConfig, est: MemoryEstimate) -> str:
    """For full fine-tuning, what holds most beside the weights and what holds less: ``""`` else."""
    if config.lora:
        return ""
    return (f". Training every weight also holds their gradients and AdamW's two moments "
            f"({size_text(est.trained + est.optimizer)} here): LoRA (leave out --no-lora) holds them for the "
            "adapter alone")


def surely_fits(config: TrainConfig, model: torch.nn.Module, free: int, longest: int) -> bool:
    """Whether a generous bound on what a step adds to the loaded weights fits in ``free`` bytes,
    so the estimate need not run: per token and layer 12 D + 8 F + 4 (heads + 2 kv heads) x head_dim
    values of 4 bytes (SmolLM2's LoRA step keeps 16 D in all; a checkpointed layer 2 D, one of
    them the full width while it is rebuilt), the head's gathered states and four
    logits blocks, three copies of the largest layer's weights (16-bit or 4-bit ones widened for a
    pass) and four of the trained ones; doubled. tests/train/test_memory_estimate.py holds it
    above the estimate."""
    from ..kernels._backward import CHUNK_ELEMENTS

    c = model.config
    tokens = _rows(config) * min(longest or config.max_length, config.max_length)
    width = 12 * c.hidden_size + 8 * c.intermediate_size + 4 * (c.num_attention_heads + 2 * c.num_key_value_heads) \
        * c.head_dim
    layer = max(map(layer_values, model.model.layers))
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    k = model.checkpointed_layers()  # these keep their input alone, and one of them is rebuilt at a time
    kept = width * (c.num_hidden_layers - k + (k > 0)) + 2 * c.hidden_size * k
    bound = 4 * (tokens * (kept + 4 * c.hidden_size) + 4 * CHUNK_ELEMENTS + 3 * layer + 4 * trained)
    return 2 * bound <= free


def layer_values(block: torch.nn.Module) -> int:
    """How many values ``block``'s weights hold at full width: its parameters, and a 4-bit
    projection's (whose codes are buffers) as the weight it is widened to for a pass."""
    from ..quant import QuantLinear

    return sum(p.numel() for p in block.parameters()) + sum(m.in_features * m.out_features for m in block.modules()
                                                             if isinstance(m, QuantLinear))


def free_bytes(device: torch.device) -> int | None:
    """Memory ``device`` has free now: CUDA's free memory plus what PyTorch's allocator holds
    unused; on Linux, the kernel's MemAvailable; else None."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def allocated_peak(job: Callable[[], object]) -> int:
    """The most bytes that ``job()`` had allocated at once on a CPU beyond what was alive before it,
    from PyTorch's profiler (each allocation and release, summed in time order): the measure the
    estimate is checked against (on CUDA ``torch.cuda.max_memory_allocated`` says it).

    Only the releases of blocks allocated inside the window count. PyTorch's CPU allocator keeps
    the size of every block allocated while any profiler ran, so without that filter a block an
    earlier profiled job left alive (in a long-lived process, such as a pytest worker) and freed in
    this one would be subtracted, reading the peak low (a DPO step once read 0.905 of its usual
    peak so); a block from before any profiling is not reported at all."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        job()
    events = sorted((e for e in _tree_events(prof.profiler.kineto_results.experimental_event_tree())
                     if e.tag == _EventType.Allocation), key=lambda e: e.start_time_ns)
    live: set[int] = set()
    now = peak = 0
    for e in events:
        block = e.extra_fields
        if block.alloc_size > 0:
            live.add(block.ptr)
        elif block.ptr in live:
            live.remove(block.ptr)
        else:
            continue  # allocated before the window
        now += block.alloc_size
        peak = max(peak, now)
    return peak


def _tree_events(roots):
    """Every event of the profiler's event tree, parents before their children."""
    for e in roots:
        yield e
        yield from _tree_events(e.children)


def _rows(config: TrainConfig) -> int:
    """A micro-batch's rows: DPO's (and KTO's) two for each of ``batch_size`` pairs (examples)."""
    from .dpo import DPOConfig

    return config.batch_size * (2 if isinstance(config, DPOConfig) else 1)


def device_kind(name: str) -> str:
    """``"cpu"`` or ``"cuda"`` for a device name; ``auto`` is this machine's."""
    if name == "auto":
        return resolve_device("auto").type
    kind = str(name).split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"the memory estimate is for cpu or cuda, not {name!r}")
    return kind


def _built(cls, cfg, dtype: torch.dtype) -> torch.nn.Module:
    """``cls(cfg)`` with its floating tensors in ``dtype`` (as loading casts them; a fake module's
    parameters cannot be swapped for cast ones afterwards)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return cls(cfg)
    finally:
        torch.set_default_dtype(before)


def module_bytes(model: torch.nn.Module) -> int:
    """The bytes ``model``'s parameters and buffers take (also on the meta or a fake device; under
    FSDP2 this process's shares)."""
    return sum(local_bytes(t) for t in [*model.parameters(), *model.buffers()])


def _worst_step(config: TrainConfig, T: int) -> tuple[Callable[[torch.nn.Module], torch.Tensor], int]:
    """The trainer's loss on the largest micro-batch the settings allow, laid out by its own
    collate: SFT's ``batch_size`` examples of ``T`` tokens; DPO's pairs of ``T``-token sequences
    sharing a one-token prompt (packed where ``share_prompt`` is on, as real pairs would be: the
    longest rows and the largest masks), the reference log-probs as a cache would give them.
    Every token but the first scored. KTO is taken as pairs of the same sizes. With it, the bytes
    of the batch's own tensors (a packed pair's mask is ``L²`` booleans a row)."""
    from dataclasses import replace

    from ..data.preference import PairExample
    from ..data.sft import IGNORE, TokenizedExample
    from ..losses import REFERENCE_FREE
    from .dpo import DPOConfig, pair_batch, preference_loss_sum
    from .sft import sft_batch, sft_loss_sum

    def example(token: int) -> TokenizedExample:
        return TokenizedExample([1] + [token] * (T - 1), [IGNORE] + [token] * (T - 1))

    if not isinstance(config, DPOConfig):
        batch = sft_batch([example(1)] * config.batch_size, config, pad_id=0)
        return (lambda model: sft_loss_sum(model, batch)), _bytes(batch)
    if config.run_kind == "kto":
        config = replace(config, loss="sigmoid")
    batch = pair_batch([PairExample(example(1), example(2))] * config.batch_size, config, pad_id=0)
    refs = (None, None) if config.loss in REFERENCE_FREE else (torch.zeros(config.batch_size),) * 2
    return (lambda model: preference_loss_sum(model, batch, config, *refs)[0]), _bytes(batch)


def _bytes(batch: dict) -> int:
    """The bytes of a collated batch's tensors."""
    return sum(local_bytes(v) for v in batch.values() if isinstance(v, torch.Tensor))


class LiveTensors(TorchDispatchMode):
    """Follows the storages that ops create under it (not the model's own weights), from their
    creation to their release: ``now`` and ``peak`` bytes of them."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.known = {local(t).untyped_storage()._cdata for t in [*model.parameters(), *model.buffers()]}
        self.sizes: dict[int, int] = {}
        self.refs: dict[int, weakref.ref] = {}
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if tensors and not any(isinstance(t, FakeTensor) for t in tensors):  # the batch's own (labels, masks): run
            with unset_fake_temporarily():  # for real, so that what depends on their values can be worked out
                out = func(*args, **(kwargs or {}))
        else:
            out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._follow(t.untyped_storage())
        return out

    def _follow(self, storage) -> None:
        key = storage._cdata
        if key in self.sizes or key in self.known:  # a view of a tensor already counted, or of a weight
            return
        self.sizes[key] = storage.nbytes()
        self.now += self.sizes[key]
        self.peak = max(self.peak, self.now)
        self.refs[key] = weakref.ref(storage, lambda _, key=key: self._release(key))

    def resized(self, change: int) -> None:
        """A storage grown or freed in place by ``change`` bytes (FSDP2's gathered weights)."""
        self.now += change
        self.peak = max(self.peak, self.now)

    def _release(self, key: int) -> None:
        self.now -= self.sizes.pop(key, 0)
        self.refs.pop(key, None)
