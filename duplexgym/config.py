"""Reading YAML configuration files (reward specs, training configs) with errors that name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


def load_yaml(path: str | Path, parse: Callable[[Any], Any], error: type[Exception], what: str):
    """``parse`` the YAML document at ``path`` (an empty file is ``{}``).

    Unreadable files, bad YAML and errors raised by ``parse`` come out as ``error`` with the
    file's path in front; ``what`` names the kind of file (``"reward spec"``).
    """
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({exc})") from None
    try:
        return parse({} if raw is None else raw)
    except error as exc:
        raise error(f"{path}: {exc}") from None
