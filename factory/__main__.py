"""`python -m factory [ROOT]`: build (or find) the demo models, print their directory."""

from __future__ import annotations

import sys
from pathlib import Path

from factory.build import build_demo_models


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(".royalty") / "models"
    models = build_demo_models(root, progress=sys.stderr.isatty())
    sys.stdout.write(f"{models.root}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
