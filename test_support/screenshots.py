"""Screenshots the documentation embeds (docs/images/), taken by the browser tests: with
UPDATE_SCREENSHOTS=1 a test copies what it took there; otherwise only into its temp folder."""

import os
import shutil
from pathlib import Path

IMAGES = Path(__file__).resolve().parent.parent / "docs" / "images"


def keep(shot: Path, name: str) -> None:
    """`shot` becomes docs/images/`name` when UPDATE_SCREENSHOTS=1."""
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, IMAGES / name)
