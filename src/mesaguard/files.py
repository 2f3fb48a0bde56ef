"""Files: atomic writes (a reader sees the old file or the new one, never half of one), checked JSON reads."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["read_json", "write_atomic"]


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: str | os.PathLike[str], error: type[Exception], missing: str, invalid: str, after: str = "") -> Any:
    """The JSON in ``path``; a missing file raises ``error(missing)``, a file that is not
    JSON ``error(f"{invalid} ({reason}){after}")``, JSON nested too deeply to parse too. Other ``OSError``s
    (a directory, no permission) propagate: the caller names them."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(missing) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{invalid} ({exc}){after}") from None
    except RecursionError:
        raise error(f"{invalid} (nested too deeply to read){after}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
