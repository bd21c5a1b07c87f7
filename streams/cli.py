"""The ``factory`` command.

    factory up [SERVICE...]      start local services (kafka, redis, triton, prometheus)
    factory down [SERVICE...]    stop them
    factory status               one line a service
    factory run [--days N]       the main job, end to end on simulated traffic
    factory worker [...]         run one stream worker in the foreground
    factory replay [...]         replay a dataset into transactions and labels
"""

from __future__ import annotations

import argparse
import sys

from infra.local.base import PrerequisiteError, ServiceError
from infra.local.manager import SERVICE_ORDER, Stack
from streams.settings import Settings


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        from streams.worker import main as worker_main

        worker_main(argv[1:])
        return 0
    if argv[:1] == ["replay"]:
        from streams.producer import main as replay_main

        return replay_main(argv[1:])
    parser = argparse.ArgumentParser(prog="factory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down"):
        sub = commands.add_parser(name, help=f"{name} local services")
        sub.add_argument("services", nargs="*", choices=[[], *SERVICE_ORDER], default=[])
    commands.add_parser("status", help="state of each service")
    run = commands.add_parser("run", help="the main job end to end")
    run.add_argument("--customers", type=int, default=500)
    run.add_argument("--terminals", type=int, default=1000)
    run.add_argument("--days", type=int, default=45, help="at least 45 (train, test weeks)")
    run.add_argument("--keep-up", action="store_true", help="leave the services running")
    commands.add_parser("worker", help="run one stream worker (see factory worker --help)")
    commands.add_parser("replay", help="replay a dataset (see factory replay --help)")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            from streams.job import JobSize
            from streams.job import run as run_job

            if args.days < 45:
                parser.error("--days must be at least 45")
            size = JobSize(args.customers, args.terminals, args.days,
                           test_days=(args.days - 7, args.days))
            run_job(size, keep_up=args.keep_up)
            return 0
        stack = Stack(Settings.from_env())
        if args.command == "up":
            stack.up(args.services or None)
        elif args.command == "down":
            stack.down(args.services or None)
        else:
            for name, state in stack.status().items():
                print(f"{name:<11} {state}")
    except (PrerequisiteError, ServiceError) as exc:
        print(f"factory: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
