"""Counts in the commands' output, in the right number: "1 epoch", "40 epochs"."""

from __future__ import annotations


def count(n: int, noun: str) -> str:
    """``n`` and ``noun``, with an "s" unless ``n`` is 1 (the nouns counted here take one)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
