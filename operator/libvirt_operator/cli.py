"""Command line: ``libvirt-operator run`` (the operator), ``libvirt-operator dev`` (local mode) and
``libvirt-operator console`` (a guest's serial console, console.py)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from libvirt_operator import __version__, console
from libvirt_operator import settings as settings_mod


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="libvirt-operator",
                                     description="Run libvirt/KVM VMs declared as VirtualMachine resources.")
    parser.add_argument("--version", action="version", version=f"libvirt-operator {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator for one node",
                         description="Run the operator for one node (in-cluster config and NODE_NAME when "
                                     "no flags are given). Every flag has an environment variable.")
    settings_mod.add_arguments(run)

    sub.add_parser("console", help="attach to a VM's serial console on its node, or print its log (--log)",
                   add_help=False)

    dev = sub.add_parser("dev", help="local mode: API emulator + the operator for one node",
                         description="Start the Kubernetes API emulator (NOT for production), install the "
                                     "CRD, register a Node, write a kubeconfig to --kubeconfig once the API "
                                     "answers, and run the operator for that node. Foreground until "
                                     "Ctrl-C/SIGTERM.")
    settings_mod.add_arguments(dev, mode="dev")
    dev.add_argument("--api-only", action="store_true", help="run only the API emulator (with the CRD)")
    dev.add_argument("--port", type=int, default=0, help="API emulator port (default: a free port)")
    dev.add_argument("--state-file", type=Path, default=None,
                     help="where the API emulator keeps its objects across restarts (default: "
                          "<local state dir>/<node name>/api-state.json; with --api-only: nothing is kept)")
    dev.add_argument("--fresh", action="store_true",
                     help="start with an empty API (the previous state file is kept as *.previous); the operator "
                          "then removes the guests of the node's old VMs as orphans")
    drain = sub.add_parser("drain", help="live-migrate every running VM of a node to another node",
                           description="Create a VirtualMachineMigration for every running or paused VM of NODE "
                                       "to TARGET, list the VMs that cannot migrate (and why), and wait for the "
                                       "migrations. Exit status: 0 all moved, 1 a migration failed, 2 some VMs "
                                       "cannot migrate.")
    drain.add_argument("node", metavar="NODE", help="the node to empty")
    drain.add_argument("--to", dest="target", required=True, metavar="TARGET", help="the node to move the VMs to")
    drain.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, else in-cluster)")
    drain.add_argument("--namespace", default=None, help="only the VMs of this namespace (default: all)")
    drain.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the migrations (default: 600)")
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", stream=sys.stderr)
    # kopf and aiohttp are chatty at INFO about every watch cycle.
    for noisy in ("kopf.objects", "kopf._core.reactor.running", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["console"]:  # its own small parser: no operator settings
        return console.main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "run":
        settings = settings_mod.from_namespace(args)
        _setup_logging(settings.log_level)
        if args.node_name is None and not os.environ.get("NODE_NAME"):
            logging.getLogger(__name__).warning("no --node-name or NODE_NAME: using %r", settings.node_name)
        from libvirt_operator.operator_main import run_operator

        return asyncio.run(run_operator(settings))
    if args.command == "drain":
        from libvirt_operator.drain import run_drain

        return run_drain(args.node, args.target, kubeconfig=args.kubeconfig or os.environ.get("KUBECONFIG"),
                         namespace=args.namespace, timeout=args.timeout)
    if args.command == "dev":
        if args.kubeconfig is None and not os.environ.get("KUBECONFIG"):
            raise SystemExit("dev: --kubeconfig FILE is required (the kubeconfig is written there)")
        uri_given = args.libvirt_uri is not None or bool(os.environ.get(settings_mod.env_name_for("libvirt_uri")))
        settings = settings_mod.from_namespace(args, local_mode=True)
        _setup_logging(settings.log_level)
        from libvirt_operator import local

        try:
            node_dir = local.node_state_dir(settings.node_name)
        except ValueError as exc:
            raise SystemExit(f"dev: {exc}") from None
        # Each node's images and disks under its own directory, unless given (flag or environment).
        given = {name for name in ("image_dir", "storage_dir")
                 if getattr(args, name) is not None or os.environ.get(settings_mod.env_name_for(name))}
        settings = settings_mod.replace(settings, **{name: node_dir / sub for name, sub in
                                                     (("image_dir", "images"), ("storage_dir", "disks"))
                                                     if name not in given})
        state_file = args.state_file or (None if args.api_only else node_dir / local.STATE_FILE_NAME)
        kubeconfig = Path(os.path.abspath(settings.kubeconfig or ""))
        asyncio.run(local.run_dev(settings, kubeconfig=kubeconfig, api_only=args.api_only, port=args.port,
                                  libvirt_uri_given=uri_given, state_file=state_file, fresh=args.fresh))
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
