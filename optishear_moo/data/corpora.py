"""Text corpora shipped with the package (xz-compressed package data) and local text files."""

from __future__ import annotations

import functools
import lzma
from importlib import resources
from pathlib import Path

SHIPPED_CORPORA = {
    "gutenberg": "Public-domain books from Project Gutenberg (2.8 MB of text)",
    "wikitext2-valid": "WikiText-2 validation split, tokenized variant (1.1 MB)",
    "wikitext2-test": "WikiText-2 test split, tokenized variant (1.3 MB); held-out perplexity",
}


@functools.lru_cache(maxsize=4)
def load_corpus(name: str) -> str:
    """The text of a shipped corpus (see ``SHIPPED_CORPORA``) or of a local UTF-8 text file."""
    if name in SHIPPED_CORPORA:
        data = resources.files("optishear_moo.data").joinpath(f"corpora/{name}.txt.xz").read_bytes()
        return lzma.decompress(data).decode("utf-8")
    path = Path(name).expanduser()
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{name!r} is not UTF-8 text ({error.reason} at byte {error.start}): give a "
                             "plain text file") from None
        if "\x00" in text:
            raise ValueError(f"{name!r} is a binary file, not text: give a plain text file")
        if not text.strip():
            raise ValueError(f"text file {name!r} is empty: give a file with calibration text")
        return text
    raise ValueError(
        f"unknown corpus {name!r}: use one of {', '.join(SHIPPED_CORPORA)}, a path to a text "
        "file, or 'hf:DATASET[:CONFIG][:SPLIT]' for a datasets corpus"
    )


def load_hf_corpus(spec: str, text_column: str = "text", max_characters: int = 20_000_000) -> str:
    """Join the text column of a ``datasets`` corpus named ``hf:NAME[:CONFIG][:SPLIT]``.

    Needs the dataset in the local cache or a reachable hub; nothing in the default path uses it.
    """
    import datasets

    parts = spec.removeprefix("hf:").split(":")
    name, config, split = (parts + [None, None])[:3]
    try:
        dataset = datasets.load_dataset(name, config, split=split or "train")
    except Exception as error:  # datasets raises many types for "not reachable / not cached"
        raise ValueError(
            f"could not load dataset {name!r} ({type(error).__name__}: {str(error)[:200]}); "
            "without a hub, save the text to a file and pass its path instead"
        ) from error
    if text_column not in dataset.column_names:
        raise ValueError(f"dataset {name!r} has no column {text_column!r}: {dataset.column_names}")
    pieces, size = [], 0
    for text in dataset[text_column]:
        pieces.append(text)
        size += len(text)
        if size >= max_characters:
            break
    return "\n\n".join(pieces)


def corpus_text(source: str) -> str:
    """Text for a calibration/evaluation ``source``: shipped name, file path or ``hf:`` spec."""
    if source.startswith("hf:"):
        return load_hf_corpus(source)
    return load_corpus(source)
