"""The ``pgvz`` command."""

from __future__ import annotations

import argparse
import sys

from .errors import PgvzError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgvz", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="load the sample blog table, sync it and search it")
    demo.add_argument("query", nargs="?", default="Blogs about cats")
    demo.add_argument("-k", type=int, default=5, help="how many results (default 5)")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo

            run_demo(args.query, k=args.k)
    except PgvzError as exc:
        print(f"pgvz: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
