"""A small stacked [chosen; rejected] batch for the fused preference-loss tests (LD-DPO, WPO)."""
import torch


def pair_case(dtype=torch.float64, seed=0):
    """``(hidden (6, 11, 16), weight (70, 16), labels (6, 11), (ref_chosen, ref_rejected))``: three
    pairs, answers of different lengths, a gap inside one answer; V = 70 is a multiple of no tile."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(6, 11, 16, generator=g, dtype=dtype)
    w = torch.randn(70, 16, generator=g, dtype=dtype) * 0.3
    y = torch.randint(0, 70, (6, 11), generator=g)
    y[:, :3] = -100
    y[0, 6:] = -100  # answers of different lengths
    y[4, 8:] = -100
    y[2, 3:5] = -100
    ref = torch.randn(3, generator=g, dtype=dtype) - 25, torch.randn(3, generator=g, dtype=dtype) - 25
    return h, w, y, ref
