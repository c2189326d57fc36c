"""Command line: ``ctxlink demo`` (console script) or ``python -m ctxlink demo``;
``ctxlink --version``."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from ctxlink import __version__

    parser = argparse.ArgumentParser(prog="ctxlink", description="ctxlink command line")
    parser.add_argument("--version", action="version", version=f"ctxlink {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    demo = sub.add_parser(
        "demo",
        help="three agents on shared order contexts: naive HGET/HSET vs ctxlink, side by side",
        description="Runs the reference scenario (Router, Fulfillment Checker, Pricing Agent, "
        "concurrently) on a throwaway redis-server three times: last-write-wins HGET/HSET, "
        "ctxlink writing whole contexts, and ctxlink with declared read sets (field patches); "
        "prints what each run measured.",
    )
    demo.add_argument("--engine", choices=("module", "lua"), default="module",
                      help="module: redis-server with the ctxlink module (default); "
                      "lua: a stock redis-server and the Lua scripts")
    demo.add_argument("--orders", type=int, default=2000, help="number of orders (default 2000)")
    demo.add_argument("--module", metavar="PATH", default=None,
                      help="the module to load (default: $CTXLINK_MODULE, else build/ctxlink.so)")
    demo.add_argument("--lanes", type=int, default=4,
                      help="orders worked on at once; 3 agent threads per lane (default 4)")
    demo.add_argument("--think-ms", type=float, default=1.0,
                      help="each agent thinks up to this long between read and write (default 1)")
    demo.add_argument("--seed", type=int, default=1, help="seed of the think times")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        if args.orders < 1 or args.lanes < 1 or args.think_ms < 0:
            print("ctxlink demo: --orders and --lanes must be >= 1, --think-ms >= 0",
                  file=sys.stderr)
            return 2
        from ctxlink.demo import run_demo

        return run_demo(engine=args.engine, orders=args.orders, module=args.module,
                        lanes=args.lanes, think_ms=args.think_ms, seed=args.seed)
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
