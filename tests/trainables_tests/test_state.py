"""The seeded sample stream a trial reads its examples from: position is one integer, grouped or not."""

from __future__ import annotations

import random

import pytest

from trainables.state import SampleStream


@pytest.mark.parametrize("grouped", [False, True])
def test_any_position_reads_what_an_uninterrupted_stream_reads(grouped: bool) -> None:
    """A resumed trial builds a fresh stream and reads on from its saved position: the same examples, across epochs."""
    n, batch = 37, 4
    lengths = [random.Random(i).randint(5, 190) for i in range(n)] if grouped else None
    straight = SampleStream(n, 7, lengths, batch).take(0, 3 * n)
    for start in (0, 5, n - 1, n, 2 * n + 3):
        assert SampleStream(n, 7, lengths, batch).take(start, 3 * n - start) == straight[start:]
    for epoch in range(3):  # every epoch is a permutation: each example once
        assert sorted(straight[epoch * n : (epoch + 1) * n]) == list(range(n))
    assert SampleStream(n, 8, lengths, batch).take(0, n) != straight[:n]  # the seed decides the order


def test_grouped_batches_pad_less_than_shuffled_ones() -> None:
    """What group_by_length (the default) buys: micro-batches of similar length, so fewer pad tokens computed."""
    n, batch = 512, 8
    lengths = [random.Random(i).randint(20, 192) for i in range(n)]

    def padded(order: list[int]) -> int:
        return sum(batch * max(lengths[i] for i in order[b : b + batch]) for b in range(0, n, batch))

    shuffled = padded(SampleStream(n, 0, None, batch).take(0, n))
    grouped = padded(SampleStream(n, 0, lengths, batch).take(0, n))
    real = sum(lengths)
    assert grouped < 1.1 * real < 0.75 * shuffled  # grouped: under 10% padding; shuffled: over 45%
