"""The character vocabulary of the built-in ``pydoc-chars`` model, and its corpus.

Torch-free on purpose: the demo (a client) encodes prompts with it.
"""

from __future__ import annotations

from seqinfer.service.models.config import CharTokenizer

# Newline, then printable ASCII (space .. tilde): ids 0..95; 96 is "unknown".
ALPHABET = "\n" + "".join(chr(c) for c in range(32, 127))
UNKNOWN_ID = len(ALPHABET)
# The few non-ASCII characters of CPython's docs, mapped to what a person
# would type, so that they train (and prompt) as ordinary characters.
NORMALISE: tuple[tuple[str, str], ...] = (
    ("\u2019", "'"),
    ("\u2018", "'"),
    ("\u201c", '"'),
    ("\u201d", '"'),
    ("\u2014", "--"),
    ("\u2013", "-"),
    ("\u2026", "..."),
    ("\t", "    "),
)


def pydoc_tokenizer() -> CharTokenizer:
    """Printable ASCII plus newline, with one id for everything else."""
    return CharTokenizer(
        kind="chars", alphabet=ALPHABET, unknown_id=UNKNOWN_ID, normalise=NORMALISE
    )


def pydoc_corpus() -> str:
    """The text of CPython's documentation topics, as ``help()`` shows them.

    ``pydoc_data.topics`` ships with every CPython installation, so training
    needs no download; topics are joined in sorted key order so that the
    corpus is the same on every run of the same Python version.
    """
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key].strip("\n") for key in sorted(topics)) + "\n"
