"""Names read from files (a recipe's name, a config's run_name, a manifest's model and file names) become folder
and file names only through `check_name`: no separators, no `..`, not absolute, a plain character set."""

from __future__ import annotations

import re

from ..errors import ArtifactError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(text, what: str, error=ArtifactError) -> str:
    """`text` if it is a safe folder or file name; else `error` naming `what` and the rule."""
    if not isinstance(text, str) or not _NAME.match(text) or ".." in text:
        raise error(f"{what} {text!r} is not a plain name (letters, digits, '.', '_', '-'; not starting with '.' "
                    f"or '-', no '..', at most 128 characters)")
    return text


def check_relative(text, what: str, error=ArtifactError) -> str:
    """A relative path of plain names, e.g. 'generator/config.json' (one level of folder at most)."""
    parts = text.split("/") if isinstance(text, str) else [text]
    if not 1 <= len(parts) <= 2:
        raise error(f"{what} {text!r} is not a file name inside the folder")
    for part in parts:
        check_name(part, what, error)
    return text
