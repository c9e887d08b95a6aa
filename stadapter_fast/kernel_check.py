"""Quick check: FastSTAdapter vs the reference on this machine (the first step of ``make demo``).

Builds a ViT-B/16-width adapter (C=768, Ca=384, kernel (3,1,1)) with random weights, checks that the
fast adapter's output and gradients match the reference module, and times forward+backward of both
on small clips. Honest CPU figures only; GPU figures come from benchmarks/run_gpu.sh.
"""
from __future__ import annotations

import argparse
import time

import torch

from . import FastSTAdapter, STAdapterReference, resolve_backend
from .swap import rel_err


def _time(fn, reps: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=2)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    ref = STAdapterReference(768, 384, (3, 1, 1)).to(dev)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.02)
    fast = FastSTAdapter(768, 384, (3, 1, 1)).to(dev)
    fast.load_state_dict(ref.state_dict())
    T = args.frames
    x = torch.randn(args.clips * T, 197, 768, device=dev, requires_grad=True)
    dy = torch.randn_like(x)

    def step(m):
        x.grad = None
        m.zero_grad(set_to_none=True)
        m(x, T).backward(dy)

    y_ref, y_fast = ref(x, T), fast(x, T)
    err = rel_err(y_fast, y_ref)
    step(ref)
    g_ref = [x.grad.clone()] + [p.grad.clone() for p in ref.parameters()]
    step(fast)
    g_fast = [x.grad.clone()] + [p.grad.clone() for p in fast.parameters()]
    gerr = max(rel_err(a, b) for a, b in zip(g_fast, g_ref))
    t_ref, t_fast = _time(lambda: step(ref), args.reps), _time(lambda: step(fast), args.reps)
    print(f"device={dev} backend={resolve_backend('auto', x.device)} x={tuple(x.shape)} T={T}")
    print(f"max relative difference fast vs reference: output {err:.2e}, grads {gerr:.2e}")
    print(f"fwd+bwd  reference {t_ref * 1e3:8.1f} ms   fast {t_fast * 1e3:8.1f} ms   speed-up {t_ref / t_fast:.2f}x")
    if err > 1e-4 or gerr > 1e-4:
        raise SystemExit("fast and reference adapters disagree")


if __name__ == "__main__":
    main()
