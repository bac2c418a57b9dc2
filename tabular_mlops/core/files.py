"""Files the project writes: every write that can be interrupted leaves the old content or
the new one, never a part."""

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, content: bytes | str, mode: int = 0o644) -> None:
    """`path` holds `content` (text as UTF-8), written beside it under a temporary name
    with `mode`, flushed to disk, then renamed over it."""
    data = content.encode() if isinstance(content, str) else content
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
