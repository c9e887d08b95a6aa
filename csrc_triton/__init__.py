"""Triton kernels of stadapter-fast and their launchers (no autograd, no nn.Module here).

Import this package only after deciding on ``TRITON_INTERPRET``: Triton reads it when the kernels are
decorated. ``stadapter_fast`` imports it lazily, on the first Triton launch.
"""
