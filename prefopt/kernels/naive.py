"""The plain reference: full logits, log_softmax, gather."""
import torch


def naive_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``hidden`` (N, D), ``weight`` (V, D), ``labels`` (N,) → fp32 log-probs (N,)."""
    logits = (hidden @ weight.T).to(torch.promote_types(hidden.dtype, torch.float32))  # (N, V)
    return logits.log_softmax(-1).gather(-1, labels[:, None]).squeeze(-1)
