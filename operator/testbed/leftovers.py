"""`python -m testbed.leftovers --remove-owned PREFIX`: what an interrupted earlier test session left on
qemu:///system. hack/test.sh runs it once on CI, before the test sessions it runs side by side (each session
would otherwise remove the others' domains at its start)."""

from __future__ import annotations

import argparse

from testbed.hosts import remove_owned_now


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.leftovers")
    parser.add_argument("--remove-owned", metavar="NODE_PREFIX", required=True)
    args = parser.parse_args(argv)
    removed = remove_owned_now(args.remove_owned)
    print(f"testbed.leftovers: removed {removed} domains of nodes {args.remove_owned}* left by earlier sessions")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
