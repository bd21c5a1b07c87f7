"""``factory run``: its options, and the job they pick.

``--no-loop`` runs the main job with one model (:mod:`streams.jobs.job`); otherwise the
closed loop runs (:mod:`streams.jobs.loop`) once, once a seed (``--seeds``), or once a
scenario and seed into one table (``--scenarios``, :mod:`streams.jobs.scenario_table`).
``factory`` (:mod:`streams.jobs.cli`) adds the options to its ``run`` command and calls
:func:`run_command`.
"""

from __future__ import annotations

import argparse
import dataclasses

from streams.settings import Settings


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``factory run`` on its sub-parser."""
    parser.add_argument("--customers", type=int, default=None,
                        help="cards (default 1000; 500 with --no-loop)")
    parser.add_argument("--terminals", type=int, default=None,
                        help="terminals (default 2000; 1000 with --no-loop)")
    parser.add_argument("--days", type=int, default=None,
                        help="simulated days (default 84; 45 with --no-loop, at least 45)")
    parser.add_argument("--drift", default="card_testing:start=42,days=42,intensity=10",
                        help="drift scenario KIND:start=D,days=N,intensity=X, or 'none'")
    parser.add_argument("--seconds-per-day", type=float, default=4.0,
                        help="wall seconds an event day takes in the replay")
    parser.add_argument("--parquet", default=None, metavar="PATH",
                        help="the loop on your own transactions (TRANSACTION_ID, TX_DATETIME, "
                             "CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT, TX_FRAUD) instead of the "
                             "simulator; labels 7 days late")
    parser.add_argument("--first-model-days", type=int, default=35,
                        help="days the first model learns from (the rest is the live stream)")
    parser.add_argument("--compare-from-day", type=int, default=None,
                        help="day from which served and frozen scores are compared (default: "
                             "the drift's start, or the first model's end with --parquet)")
    parser.add_argument("--no-loop", action="store_true",
                        help="no retrainer: stream, score and check parity with one model")
    parser.add_argument("--clock", choices=("wall", "event"), default="wall",
                        help="wall: paced at --seconds-per-day, the retrainer acts in wall time; "
                             "event: a day at a time, each acted on before the next (the same "
                             "figures on any machine)")
    parser.add_argument("--seeds", default=None, metavar="S,S,...",
                        help="one run a seed (a world each), then the figures' mean and spread, "
                             "e.g. --clock event --seeds 0,1,2")
    parser.add_argument("--scenarios", default=None, metavar="NAME,...|all",
                        help="one run a scenario (and seed), then one table: card_testing, "
                             "spending_shift, label_delay, night_spree, control (no drift)")
    parser.add_argument("--feedback", default="off", metavar="off|on|off,on",
                        help="investigators review the riskiest cards each day and their "
                             "labels come back that day (event clock); off,on with "
                             "--scenarios runs both")
    parser.add_argument("--reviews-per-day", type=int, default=100,
                        help="cards the investigators review a day (with --feedback)")
    parser.add_argument("--explore-share", type=float, default=0.1,
                        help="share of the reviews spent on cards the model is unsure about "
                             "or drawn at random (with --feedback)")
    parser.add_argument("--follow-up-days", type=float, default=2.0,
                        help="while a drift persists, retrain every this many event days")
    parser.add_argument("--keep-up", action="store_true", help="leave the services running")


def run_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run what ``factory run``'s options ask for; a wrong combination is ``parser``'s
    usage error."""
    if args.no_loop and args.parquet:
        parser.error("--parquet runs the loop: drop --no-loop")
    if args.no_loop:
        from streams.jobs.job import JobSize
        from streams.jobs.job import run as run_job

        days = args.days or 45
        if days < 45:
            parser.error("--days must be at least 45")
        size = JobSize(args.customers or 500, args.terminals or 1000, days,
                       test_days=(days - 7, days))
        run_job(size, keep_up=args.keep_up, triton_repo=Settings.from_env().triton_repo)
        return 0
    from streams.jobs.loop import run_loop
    from streams.jobs.loop_world import LoopSize

    loop = LoopSize(customers=args.customers or 1000,
                    terminals=args.terminals or 2000, days=args.days or 84,
                    drift="none" if args.parquet else args.drift,
                    seconds_per_day=args.seconds_per_day, parquet=args.parquet,
                    first_model_end_day=args.first_model_days,
                    compare_from_day=args.compare_from_day, clock=args.clock,
                    explore_share=args.explore_share,
                    follow_up_days=args.follow_up_days)
    modes = [m.strip() for m in args.feedback.split(",") if m.strip()]
    if not modes or set(modes) - {"off", "on"}:
        parser.error("--feedback is off, on or off,on")
    if "on" in modes and args.clock != "event":
        parser.error("--feedback on needs --clock event")
    if len(modes) > 1 and not args.scenarios:
        parser.error("--feedback off,on needs --scenarios")
    if modes == ["on"]:
        loop = dataclasses.replace(loop, reviews_per_day=args.reviews_per_day)
    if args.scenarios:
        from streams.jobs.scenario_table import run_scenarios, scenario_names

        if args.parquet:
            parser.error("--scenarios simulates its worlds: drop --parquet")
        try:
            names = scenario_names(args.scenarios)
        except ValueError as exc:
            parser.error(str(exc))
        seeds = [int(s) for s in (args.seeds or "0").split(",") if s.strip()]
        run_scenarios(loop, names, seeds, keep_up=args.keep_up,
                      triton_repo=Settings.from_env().triton_repo,
                      reviews=[args.reviews_per_day if m == "on" else 0
                               for m in modes])
        return 0
    if args.seeds:
        from streams.jobs.loop import run_seeds

        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        run_seeds(loop, seeds, keep_up=args.keep_up,
                  triton_repo=Settings.from_env().triton_repo)
        return 0
    run_loop(loop, keep_up=args.keep_up, triton_repo=Settings.from_env().triton_repo)
    return 0
