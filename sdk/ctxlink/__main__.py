"""``python -m ctxlink`` (and the ``ctxlink`` console script): the command line of
:mod:`ctxlink.cli` (``ctxlink --help``)."""

from __future__ import annotations

import sys
from typing import Optional, Sequence

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ctxlink.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
