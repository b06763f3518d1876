"""The devices a test that compares a GPU against the CPU runs on: the CPU always (in CI, where it
checks the test itself, CPU against CPU) and CUDA where a GPU is visible (marked ``gpu``)."""
import pytest
import torch

CPU_AND_CUDA = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])]
