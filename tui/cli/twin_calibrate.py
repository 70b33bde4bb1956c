"""`servedeck twin calibrate RUN_ID [RUN_ID...]`, and the `--calibration NAME` flag of plan and twin serve.

``calibrate`` reads measured sweeps from the sessions store, fits the twin's end-to-end constants to them
(``backends.twin.calibration``), saves the named profile under the config dir and prints the fit error of
every level before (default constants) and after. ``--calibration NAME`` loads a saved profile for a
prediction; every prediction then says whether it is calibrated and how far off it is expected to be.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from backends.twin import calibration
from backends.twin.calibration import METRIC_LABELS, METRICS, CalibrationProfile, LevelFit, level_error
from backends.twin.engine_config import TwinConfig
from sessions.store import SessionStore


def add_calibrate_parser(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = actions.add_parser(
        "calibrate",
        help="fit the twin's constants to measured sweeps of a real server; save a named profile",
        description=(
            "Fits the end-to-end constants kernels cannot measure (host overhead per step and per sequence, "
            "effective bandwidth and matmul efficiency, bounded to physical ranges) to saved sweeps of a "
            "server whose hardware is known, by least squares on per-level output throughput, TTFT p50/p99 "
            "and TPOT p50. Use the profile with plan / plan --advise / twin serve --calibration NAME."
        ),
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_ID", help="saved runs (servedeck runs list)")
    parser.add_argument(
        "--hardware",
        help="what served the runs, COUNTxGPU (e.g. 2xh100); a twin's runs say it themselves",
    )
    parser.add_argument("--name", help="profile name (default COUNTxGPU-MODEL)")
    parser.add_argument("--model", help="the model the runs served, when their target does not name it")
    parser.add_argument(
        "--data-dir",
        type=Path,
        # SUPPRESS: `servedeck --data-dir X twin calibrate ...` keeps the top-level value.
        default=argparse.SUPPRESS,
        help="folder of the sessions database (default: the user data dir)",
    )
    parser.set_defaults(handler=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    if args.name is not None:
        calibration.check_name(args.name)
    if args.hardware is not None:
        calibration.parse_hardware(args.hardware)
    with SessionStore.open(getattr(args, "data_dir", None)) as store:
        run_ids = list(dict.fromkeys(store.runs.resolve_run_id(run) for run in args.runs))
        sweeps = store.runs.load_sweeps(run_ids, with_records=True)
    print(f"calibrating from {len(sweeps)} run(s): {', '.join(run_ids)}", file=sys.stderr, flush=True)

    def progress(replays: int, cost: float) -> None:
        print(f"  fit: {replays} replays of the levels, best cost {cost:.5f}", file=sys.stderr, flush=True)

    profile = calibration.calibrate(
        sweeps, hardware=args.hardware, name=args.name, model=args.model, progress=progress
    )
    path = calibration.save_profile(profile)
    print_profile(profile)
    print(f"saved calibration {profile.name!r} to {path}")
    print(f"use it: servedeck plan --calibration {profile.name} ... (also plan --advise, twin serve)")
    return 0


def _cell(fit: LevelFit, metric: str) -> list[str]:
    measured = fit.measured.value(metric)
    digits = 0 if metric == "output_throughput" else 1
    return [f"{measured:,.{digits}f}", *level_error(fit, metric)]


def print_profile(profile: CalibrationProfile) -> None:
    out = sys.stdout.write
    c = profile.constants
    out(
        f"Calibration {profile.name!r}: {profile.model} on {profile.hardware}, "
        f"{len(profile.levels)} levels of {len(profile.runs)} run(s)\n"
        f"  constants: step overhead x{c.step_overhead_scale:.3g}, per-sequence overhead "
        f"x{c.per_sequence_scale:.3g}, bandwidth x{c.bandwidth_scale:.3g}, matmul x{c.matmul_scale:.3g}\n"
        "  per level: measured value, twin error with the default constants -> calibrated "
        "(throughput in output tok/s, times in ms)\n"
    )
    headers = ["run", "level"]
    for metric in METRICS:
        label = METRIC_LABELS[metric]
        headers += [label, "default", "calibrated"]
    rows = [
        [fit.run_id[:12], fit.label, *(x for m in METRICS for x in _cell(fit, m))] for fit in profile.levels
    ]
    mean_row = ["mean |error|", ""]
    for metric in METRICS:
        before, after = profile.error_before.get(metric), profile.error_after.get(metric)
        mean_row += [
            "",
            "-" if before is None else f"{before:.1%}",
            "-" if after is None else f"{after:.1%}",
        ]
    rows.append(mean_row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    left = {0, 1}

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i in left else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )

    out(line(headers) + "\n")
    for row in rows:
        out(line(row) + "\n")
    out(f"expected error: {profile.error_summary()} (was {profile.error_summary(profile.error_before)})\n")


# ---- --calibration NAME for predictions ------------------------------------------------------------


def add_calibration_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--calibration",
        metavar="NAME",
        help="time the twin with a saved profile (servedeck twin calibrate); default: uncalibrated",
    )


def load_calibration(args: argparse.Namespace) -> CalibrationProfile | None:
    """The profile ``--calibration`` names (one line if there is none), or None."""
    name: str | None = getattr(args, "calibration", None)
    return None if name is None else calibration.load_profile(name)


def apply_calibration(config: TwinConfig, profile: CalibrationProfile | None) -> TwinConfig:
    return config if profile is None else profile.apply(config)


def calibration_note(profile: CalibrationProfile | None) -> str:
    """What every prediction states: calibrated (profile, runs, expected error) or not."""
    return calibration.prediction_note(profile)


def calibration_document(profile: CalibrationProfile | None) -> dict[str, object]:
    """The same for JSON output."""
    if profile is None:
        return {"calibrated": False, "note": calibration.UNCALIBRATED_NOTE}
    return {
        "calibrated": True,
        "profile": profile.name,
        "hardware": profile.hardware,
        "model": profile.model,
        "runs": profile.runs,
        "constants": profile.constants.model_dump(mode="json"),
        "expected_error": profile.error_after,
        "note": calibration_note(profile),
    }
