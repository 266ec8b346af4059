"""``python -m kube_emulator --kubeconfig FILE [--port N] [--crd PATH]... [--state-file F]``: serve until
SIGINT/SIGTERM.

Local mode starts the emulator this way, as a process of its own: the operator never imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from kube_emulator.persistence import StateFileError
from kube_emulator.server import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kube_emulator", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--kubeconfig", type=Path, required=True,
                        help="write a kubeconfig for the emulator here once it answers requests")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (keep it on loopback)")
    parser.add_argument("--port", type=int, default=0, help="listen port (0: a free port)")
    parser.add_argument("--crd", type=Path, action="append", default=[],
                        help="a CRD manifest (file or directory) to register at start; repeatable")
    parser.add_argument("--state-file", type=Path, default=None,
                        help="keep the objects in this file: loaded at start if it exists, rewritten after "
                             "changes and at exit (default: nothing outlives the process)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve_until_signal(args))
    except StateFileError as exc:
        raise SystemExit(f"kube_emulator: {exc} (move it away to start empty)") from None


async def _serve_until_signal(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(serve(kubeconfig=args.kubeconfig, port=args.port, crd_paths=args.crd,
                                       host=args.host, state_file=args.state_file))
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


if __name__ == "__main__":
    main()
