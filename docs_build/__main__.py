"""python -m docs_build [--check]: see docs_build."""

import argparse
import sys

from docs_build.reference import ROOT, pages
from tabular_mlops.core.files import write_atomically


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="docs_build", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only say which pages are stale")
    args = parser.parse_args(argv)
    stale = {
        path: text
        for path, text in pages().items()
        if not path.exists() or path.read_text() != text
    }
    if args.check:
        for path in stale:
            print(
                f"stale: {path.relative_to(ROOT)} (python -m docs_build writes it)", file=sys.stderr
            )
        return 1 if stale else 0
    for path, text in stale.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, text)
    print(f"{len(stale)} page(s) written", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
