"""Argument checks shared by the ops, the modules and the model wrappers: one wording per rule, so a
``ValueError`` names the argument, what was expected and what was given, the same way everywhere."""
from __future__ import annotations

import argparse
from typing import Any, Callable


def is_int(v: Any, minimum: int = 1) -> bool:
    """Whether ``v`` is an ``int`` (not a ``bool``) of at least ``minimum``."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def check_int(name: str, v: Any, minimum: int = 1) -> int:
    """``v`` if it is an int >= ``minimum``, else a ``ValueError`` naming ``name`` ("a positive int" for
    ``minimum=1``)."""
    if not is_int(v, minimum):
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {v!r}")
    return v


def check_frames(T: Any, rows: int, what: str) -> int:
    """``T`` (frames per clip) must be a positive int dividing ``rows``, the frame count of the tensor
    described by ``what`` (e.g. ``"x.shape[0] = B*T"``)."""
    check_int("T (frames per clip)", T)
    if rows % T != 0:
        raise ValueError(f"{what} = {rows} is not divisible by T = {T}")
    return T


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an int >= ``minimum``; else argparse's error names the flag, what it
    expects and what it got."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {text!r}")
        return value
    return parse
