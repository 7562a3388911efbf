"""Real English sentences for benchmarks, read from the docstrings of Python's standard
library, so nothing is downloaded and nothing was written for requant.

`real_sentences(n, skip=0)` returns the first sentence of public docstrings, in a fixed
order (module by module, names sorted), deduplicated, between 6 and 40 words; `skip`
gives disjoint sets (e.g. evaluation vs calibration).
"""

from __future__ import annotations

import importlib
import inspect
import re

__all__ = ["real_sentences"]

_MODULES = (
    "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email",
    "enum", "fractions", "functools", "gzip", "hashlib", "heapq", "html", "http.client",
    "inspect", "io", "ipaddress", "itertools", "json", "logging", "math", "mimetypes",
    "os", "pathlib", "pickle", "pprint", "queue", "random", "re", "shlex", "shutil",
    "socket", "sqlite3", "statistics", "string", "struct", "subprocess", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "tokenize", "typing", "unittest",
    "urllib.parse", "uuid", "warnings", "weakref", "xml.dom.minidom", "zipfile",
)
_FIRST_SENTENCE = re.compile(r"^(.+?[.!?])(\s|$)", re.S)


def _first_sentence(doc: str) -> str | None:
    text = " ".join(doc.strip().split())
    m = _FIRST_SENTENCE.match(text)
    if not m:
        return None
    sentence = m.group(1)
    words = sentence.split()
    if not 6 <= len(words) <= 40 or not sentence[0].isupper() or "(" in words[0]:
        return None
    return sentence


def _candidates():
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for attr in sorted(dir(module)):
            if attr.startswith("_"):
                continue
            doc = inspect.getdoc(getattr(module, attr, None))
            if doc:
                yield doc


def real_sentences(n: int, skip: int = 0) -> list[str]:
    """`n` distinct real sentences after skipping the first `skip`."""
    seen: set[str] = set()
    out: list[str] = []
    for doc in _candidates():
        sentence = _first_sentence(doc)
        if sentence is None or sentence in seen:
            continue
        seen.add(sentence)
        if len(seen) > skip:
            out.append(sentence)
            if len(out) == n:
                return out
    raise RuntimeError(f"only {len(out)} sentences available after skipping {skip}; asked for {n}")
