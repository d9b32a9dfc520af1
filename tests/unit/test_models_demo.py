"""The demo's client-side pieces: sampling and the tokenizer it reads without torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from seqinfer.cli.demo import load_tokenizer, sample_next
from seqinfer.service.models.chars import pydoc_tokenizer


def draws(scores: list[float], n: int = 2000, **kwargs: object) -> np.ndarray:
    rng = np.random.default_rng(0)
    arr = np.asarray(scores)
    return np.array([sample_next(arr, rng=rng, **kwargs) for _ in range(n)])  # type: ignore[arg-type]


def test_zero_temperature_is_greedy() -> None:
    assert set(draws([0.1, 3.0, 2.9], n=20, temperature=0.0, top_k=0)) == {1}


def test_top_k_never_leaves_the_k_best() -> None:
    got = draws([5.0, 4.0, 0.0, 4.5, -1.0], temperature=5.0, top_k=2)
    assert set(got) == {0, 3}


def test_temperature_one_follows_the_softmax() -> None:
    got = draws([np.log(0.7), np.log(0.2), np.log(0.1)], n=5000, temperature=1.0, top_k=0)
    freq = np.bincount(got, minlength=3) / got.size
    np.testing.assert_allclose(freq, [0.7, 0.2, 0.1], atol=0.03)


def test_banned_ids_are_never_drawn_and_probabilities_are_accepted() -> None:
    got = draws([0.5, 0.3, 0.2], temperature=1.0, top_k=0, banned=(0,), probabilities=True)
    assert 0 not in set(got) and set(got) == {1, 2}


def test_builtin_tokenizer_is_the_training_one() -> None:
    assert load_tokenizer(None) == pydoc_tokenizer()


def test_demo_module_does_not_import_torch() -> None:
    code = (
        "import sys, seqinfer.cli.main, seqinfer.cli.demo as d; d.load_tokenizer(None); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
