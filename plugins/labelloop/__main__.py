"""Command line: ``python -m labelloop {audit,stack,demo,simulate} ...``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"audit": "labelloop.quality.cli", "stack": "labelloop.dev.stack", "demo": "labelloop.dev.demo",
                "simulate": "labelloop.dev.simulate"}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m labelloop {{{','.join(commands)}}} ...", file=sys.stderr)
        return 2
    import importlib

    module = importlib.import_module(commands[argv[0]])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
