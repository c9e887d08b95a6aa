"""Accumulation dtype of the kernels and their PyTorch twins: fp64 for fp64 input, fp32 otherwise (fp16,
bf16 and fp32 accumulate in fp32). Plain PyTorch: importing it neither imports Triton nor decorates
kernels, so ``stadapter_fast`` uses the same rule on its PyTorch path."""
import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The accumulation dtype for tensors of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32
