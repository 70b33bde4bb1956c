"""Calibrate the twin from measured sweeps: fit the constants kernels cannot measure, store a named profile.

The fitted constants are the scales of ``TwinConstants``: host overhead per step and per sequence, effective
bandwidth and matmul efficiency, each bounded to a physical range (``BOUNDS``). Every measured level is
replayed through a fresh twin of the run's hardware with the level's own prompt and answer lengths, seed
and arrivals (fast-forward), and the fit minimises the squared log ratios predicted/measured of output
throughput, TTFT p50 and p99 and TPOT p50, plus a weak ridge on the log scales, by a bounded Nelder-Mead in
log-parameter space from a few starting host overheads (no scipy in the environment).

The search takes no derivatives on purpose: a percentile of a few dozen requests is a staircase in the
constants (which step a request joins flips with a fraction of a millisecond), so finite differences see
the stairs, not the slope. A Levenberg-Marquardt with a 5% difference step stopped 4-25x above the cost of
the true constants on three runs of a live twin with hidden constants; the simplex (and one restart)
reached a lower cost on all ten.

Runs come in as ``SweepResult`` with records (the caller reads them from the store: backends never imports
sessions). Profiles are JSON files under ``config.calibrations_dir()``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backends.bench.models import LoadLevel, RequestRecord, SampledRequest
from backends.bench.results import SweepResult
from backends.config import calibrations_dir
from backends.errors import ConfigError
from backends.twin import fastforward
from backends.twin.engine import TwinEngine
from backends.twin.engine_config import TwinConfig, TwinConstants
from manifests.gpus import GpuType

METRICS = ("output_throughput", "ttft_p50", "ttft_p99", "tpot_p50")
METRIC_LABELS = {
    "output_throughput": "throughput",
    "ttft_p50": "TTFT p50",
    "ttft_p99": "TTFT p99",
    "tpot_p50": "TPOT p50",
}
# Physical ranges of the scales (defaults in roofline.py): host overhead 0.2-20 ms a step, 0.2-100 us a
# sequence; effective bandwidth from 0.3 of the default to the datasheet peak (0.89 x 1.12 ~ 1.0);
# matmul from 0.3 of the default (0.66) to the dense peak (x 1.5).
BOUNDS: dict[str, tuple[float, float]] = {
    "step_overhead_scale": (0.1, 10.0),
    "per_sequence_scale": (0.05, 25.0),
    "bandwidth_scale": (0.3, 1.12),
    "matmul_scale": (0.3, 1.5),
}
MIN_LEVELS = 3
STARTING_STEP_OVERHEADS = (0.5, 1.0, 2.0, 4.0)
# A weak ridge on the log scales: a constant moves from its default only as far as the runs demand (small
# sweeps cannot tell per-sequence overhead from bandwidth, and would otherwise pin one at a bound). At 0.05
# it outweighed the data: a live twin's true constants (overhead x3) cost 0.003 of ridge against 0.0002 of
# misfit, and the fit settled at overhead x1.3; at 0.01 at x2.6-x2.8 on 10 runs (CALIBRATION.md 9b).
PRIOR_WEIGHT = 0.01
MIN_REQUESTS_PER_LEVEL = 4
EVALUATIONS_PER_START = 300
SIMPLEX_SIZE = 0.3  # the starting simplex: +0.3 in each log scale (x1.35)
CONVERGED_SPREAD = 1e-7  # stop once the simplex's costs differ by less
PROGRESS_EVERY = 50
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HARDWARE = re.compile(r"^\s*(?:(\d+)\s*x\s*)?([a-z0-9-]+?)(?:\s*\(twin\))?\s*$")
UNCALIBRATED_NOTE = (
    "uncalibrated: default constants from kernel timings (vs published end-to-end vLLM results: "
    "see CALIBRATION.md section 9; `servedeck twin calibrate` fits them to your runs)"
)


def parse_hardware(label: str) -> tuple[GpuType, int]:
    """``2xh100``, ``h100`` (one), ``2xh100 (twin)`` -> (GPU type, count); ConfigError otherwise."""
    match = _HARDWARE.match(label.lower())
    gpu = None
    if match is not None:
        try:
            gpu = GpuType(match.group(2))
        except ValueError:
            gpu = None
    if match is None or gpu is None:
        known = ", ".join(g.value for g in GpuType)
        raise ConfigError(f"hardware {label!r}: use COUNTxGPU, e.g. 2xh100 (GPU one of {known})")
    return gpu, int(match.group(1) or 1)


def hardware_label(gpu: GpuType, count: int) -> str:
    return f"{count}x{gpu.value}"


class LevelPoint(BaseModel):
    """The fitted metrics of one level (throughput in output tok/s, times in ms)."""

    model_config = ConfigDict(frozen=True)

    output_throughput: float
    ttft_p50: float
    ttft_p99: float
    tpot_p50: float

    def value(self, metric: str) -> float:
        return float(getattr(self, metric))


class MeasuredLevel(BaseModel):
    run_id: str
    index: int
    level: LoadLevel
    seed: int
    requests: list[SampledRequest]
    answer_lengths: list[int]
    measured: LevelPoint


class LevelFit(BaseModel):
    run_id: str
    label: str
    measured: LevelPoint
    before: LevelPoint
    after: LevelPoint


def level_error(fit: LevelFit, metric: str) -> tuple[str, str]:
    """The twin's error on one level's metric ("+12.3%"), with the default constants and the fitted ones;
    "-" where nothing was measured. The CLI table and the TUI's picked-profile line both use it."""
    measured = fit.measured.value(metric)

    def gap(value: float) -> str:
        return "-" if measured <= 0 else f"{value / measured - 1:+.1%}"

    return gap(fit.before.value(metric)), gap(fit.after.value(metric))


def level_errors_line(fit: LevelFit) -> str:
    """One level's before->after error on every stored metric: "4 req/s: throughput +1.0%->+0.2%, ..."."""
    cells = (f"{METRIC_LABELS[m]} {'->'.join(level_error(fit, m))}" for m in METRICS)
    return f"{fit.label}: {', '.join(cells)}"


class CalibrationProfile(BaseModel):
    """A named set of fitted constants for one hardware, with where they came from and how well they fit."""

    name: str
    gpu: GpuType
    gpu_count: int
    model: str
    constants: TwinConstants
    runs: list[str]
    created_at: datetime
    error_before: dict[str, float] = Field(description="mean |predicted/measured - 1| per metric, defaults")
    error_after: dict[str, float] = Field(description="the same with the fitted constants")
    levels: list[LevelFit]

    @property
    def hardware(self) -> str:
        return hardware_label(self.gpu, self.gpu_count)

    def error_summary(self, errors: dict[str, float] | None = None) -> str:
        errors = self.error_after if errors is None else errors
        return ", ".join(f"{METRIC_LABELS[m]} {errors[m]:.1%}" for m in METRICS if m in errors)

    def note(self) -> str:
        """What every calibrated prediction states: which profile, and its expected error."""
        return (
            f"calibrated: profile {self.name!r} ({self.hardware}, {self.model}, {len(self.levels)} levels of "
            f"{len(self.runs)} runs); expected error {self.error_summary()}"
        )

    def apply(self, config: TwinConfig) -> TwinConfig:
        """``config`` with this profile's constants; one line if it is for other hardware."""
        if config.gpu is not self.gpu:
            raise ConfigError(
                f"calibration {self.name!r} was fit on {self.hardware}; it cannot time "
                f"{config.gpu_count}x{config.gpu.value} (calibrate on that GPU, or plan without it)"
            )
        return config.model_copy(update={"constants": self.constants})


def prediction_note(profile: CalibrationProfile | None) -> str:
    """What every prediction states: calibrated (profile, runs, expected error) or not."""
    if profile is None:
        return UNCALIBRATED_NOTE
    return f"{profile.note()}; runs {', '.join(profile.runs)}"


def calibrated_gpus(profile: CalibrationProfile, gpus: Sequence[GpuType] | None) -> list[GpuType]:
    """The GPU types an advisor search may cover with ``profile``: its own; one line if others are asked."""
    others = [g.value for g in gpus or [] if g is not profile.gpu]
    if others:
        raise ConfigError(
            f"calibration {profile.name!r} was fit on {profile.hardware}; it cannot time "
            f"{', '.join(others)} (--gpus {profile.gpu.value}, or advise without --calibration)"
        )
    return [profile.gpu]


def _percentile_ms(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) * 1000.0 if values else 0.0


def _point_from_records(records: Sequence[RequestRecord], output_throughput: float) -> LevelPoint:
    ttfts: list[float] = []
    tpots: list[float] = []
    for record in records:
        ttft, latency = record.ttft, record.latency
        if ttft is None:
            continue
        ttfts.append(ttft)
        tokens = record.output_tokens or len(record.chunk_times)
        if latency is not None and tokens > 1:
            tpots.append((latency - ttft) / (tokens - 1))
    return LevelPoint(
        output_throughput=output_throughput,
        ttft_p50=_percentile_ms(ttfts, 50),
        ttft_p99=_percentile_ms(ttfts, 99),
        tpot_p50=_percentile_ms(tpots, 50),
    )


def _open_loop(level: LoadLevel) -> bool:
    return level.concurrency_cap is None and math.isfinite(level.request_rate)


def measured_levels(sweep: SweepResult) -> list[MeasuredLevel]:
    """A run's levels as replayable workloads: its requests' prompt and answer lengths, seed, arrivals."""
    out: list[MeasuredLevel] = []
    for level in sweep.levels:
        done = [r for r in level.records if r.success and r.ttft is not None]
        if len(done) < MIN_REQUESTS_PER_LEVEL or level.level.ramp_up is not None:
            continue
        # An open-loop level replays the times its requests were really sent: on a busy client they drift
        # from the seed's schedule, and the server batched what it really got.
        replay_sends = _open_loop(level.level) and all(r.sent_at is not None for r in done)
        done.sort(key=lambda r: (r.sent_at or 0.0, r.index) if replay_sends else (0.0, r.index))
        requests = [
            SampledRequest(
                # Placeholder text: the twin only needs lengths; a distinct one per request, no shared prefix.
                prompt=f"r{sweep.run_id}.{level.index}.{r.index}",
                prompt_len=max(1, r.input_tokens or r.prompt_len),
                expected_output_len=max(1, r.expected_output_len, r.output_tokens or 0),
                arrival_s=r.sent_at if replay_sends else None,
            )
            for r in done
        ]
        answers = [max(1, r.output_tokens or len(r.chunk_times)) for r in done]
        out.append(
            MeasuredLevel(
                run_id=sweep.run_id,
                index=level.index,
                level=level.level,
                seed=sweep.config.seed,
                requests=requests,
                answer_lengths=answers,
                measured=_point_from_records(done, level.metrics.output_throughput),
            )
        )
    return out


def run_model_name(sweep: SweepResult) -> str:
    model = sweep.config.target.model or ""
    return model.removesuffix("-twin")


def run_hardware(sweep: SweepResult, given: str | None) -> tuple[GpuType, int]:
    """The hardware that served a run: ``given`` (``--hardware``), else what a twin target said."""
    recorded = sweep.config.target.hardware
    if given is not None:
        hardware = parse_hardware(given)
        if recorded is not None and parse_hardware(recorded) != hardware:
            raise ConfigError(
                f"run {sweep.run_id} was measured on {recorded}, not {hardware_label(*hardware)} (--hardware)"
            )
        return hardware
    if recorded is None:
        raise ConfigError(
            f"run {sweep.run_id} has no known hardware (the server did not say what it runs on); "
            "pass --hardware COUNTxGPU, e.g. 2xh100"
        )
    return parse_hardware(recorded)


def predict_level(config: TwinConfig, level: MeasuredLevel, engine: TwinEngine | None = None) -> LevelPoint:
    result = fastforward.run_level(
        engine or TwinEngine(config),
        level.level,
        level.requests,
        index=level.index,
        seed=level.seed,
        eos_after=level.answer_lengths,
    )
    records = [r for r in result.records if r.success]
    return _point_from_records(records, result.metrics.output_throughput)


def predict_levels(config: TwinConfig, levels: Sequence[MeasuredLevel]) -> list[LevelPoint]:
    """Each run's levels in order through one engine, as one server served them."""
    points: list[LevelPoint] = []
    engines: dict[str, TwinEngine] = {}
    for level in levels:
        engine = engines.setdefault(level.run_id, TwinEngine(config))
        points.append(predict_level(config, level, engine))
    return points


def _residuals(predicted: Sequence[LevelPoint], measured: Sequence[LevelPoint]) -> np.ndarray:
    out = []
    for p, m in zip(predicted, measured, strict=True):
        for metric in METRICS:
            mv, pv = m.value(metric), p.value(metric)
            if mv > 0 and pv > 0:
                out.append(math.log(pv / mv))
            elif mv > 0:
                out.append(-5.0)
    return np.asarray(out, dtype=np.float64)


def mean_errors(predicted: Sequence[LevelPoint], measured: Sequence[LevelPoint]) -> dict[str, float]:
    errors: dict[str, float] = {}
    for metric in METRICS:
        gaps = [
            abs(p.value(metric) / m.value(metric) - 1.0)
            for p, m in zip(predicted, measured, strict=True)
            if m.value(metric) > 0
        ]
        if gaps:
            errors[metric] = float(np.mean(gaps))
    return errors


_KEYS = tuple(BOUNDS)
_LOW = np.log([BOUNDS[k][0] for k in _KEYS])
_HIGH = np.log([BOUNDS[k][1] for k in _KEYS])


def _constants(x: np.ndarray) -> TwinConstants:
    return TwinConstants(**{k: float(math.exp(v)) for k, v in zip(_KEYS, x, strict=True)})


def fit_constants(
    base: TwinConfig,
    levels: Sequence[MeasuredLevel],
    *,
    evaluations_per_start: int = EVALUATIONS_PER_START,
    progress: Callable[[int, float], None] | None = None,
) -> TwinConstants:
    """Bounded Nelder-Mead on the log scales from each of ``STARTING_STEP_OVERHEADS``; the best constants.

    ``progress(evaluations, best cost)`` every ``PROGRESS_EVERY`` replays of the levels."""
    measured = [level.measured for level in levels]
    evaluations = 0
    best: tuple[float, np.ndarray] | None = None

    def cost(x: np.ndarray) -> float:
        nonlocal evaluations, best
        config = base.model_copy(update={"constants": _constants(x)})
        r = np.concatenate((_residuals(predict_levels(config, levels), measured), PRIOR_WEIGHT * x))
        f = float(r @ r)
        evaluations += 1
        if best is None or f < best[0]:
            best = (f, x.copy())
        if progress is not None and evaluations % PROGRESS_EVERY == 0:
            progress(evaluations, best[0])
        return f

    # Step and per-sequence overhead trade off against bandwidth on small sweeps: start from a few host
    # overheads (a symmetric grid, not the answer) and keep the best fit.
    for overhead in STARTING_STEP_OVERHEADS:
        x0 = np.zeros(len(_KEYS))
        x0[0] = math.log(overhead)
        _nelder_mead(cost, x0, evaluations_per_start)
    assert best is not None
    _nelder_mead(cost, best[1], evaluations_per_start)  # a fresh simplex round the best point: a restart
    return _constants(best[1])


def _nelder_mead(cost: Callable[[np.ndarray], float], x0: np.ndarray, max_evaluations: int) -> None:
    """Minimise ``cost`` inside the bounds (points are clipped to them); ``cost`` keeps the best point."""

    def clipped(x: np.ndarray) -> np.ndarray:
        return np.asarray(np.clip(x, _LOW, _HIGH), dtype=np.float64)

    points = [clipped(x0)]
    for j in range(len(x0)):
        vertex = points[0].copy()
        vertex[j] += SIMPLEX_SIZE if vertex[j] + SIMPLEX_SIZE <= _HIGH[j] else -SIMPLEX_SIZE
        points.append(vertex)
    values = [cost(p) for p in points]
    used = len(points)
    while used < max_evaluations:
        order = np.argsort(values)
        points, values = [points[i] for i in order], [values[i] for i in order]
        if values[-1] - values[0] < CONVERGED_SPREAD:
            break
        centroid = np.mean(points[:-1], axis=0)
        worst = points[-1]
        reflected = clipped(2 * centroid - worst)
        f_reflected = cost(reflected)
        used += 1
        if f_reflected < values[0]:
            expanded = clipped(3 * centroid - 2 * worst)
            f_expanded = cost(expanded)
            used += 1
            points[-1], values[-1] = (
                (expanded, f_expanded) if f_expanded < f_reflected else (reflected, f_reflected)
            )
        elif f_reflected < values[-2]:
            points[-1], values[-1] = reflected, f_reflected
        else:
            contracted = clipped(centroid + 0.5 * (worst - centroid))
            f_contracted = cost(contracted)
            used += 1
            if f_contracted < values[-1]:
                points[-1], values[-1] = contracted, f_contracted
            else:  # shrink towards the best point
                for i in range(1, len(points)):
                    points[i] = points[0] + 0.5 * (points[i] - points[0])
                    values[i] = cost(points[i])
                    used += 1


def calibrate(
    runs: Sequence[SweepResult],
    *,
    hardware: str | None,
    name: str | None = None,
    model: str | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> CalibrationProfile:
    """Fit a profile to ``runs`` (with records). Bad input is one ConfigError line."""
    if not runs:
        raise ConfigError("give at least one run id to calibrate from")
    shapes = {run.run_id: run_hardware(run, hardware) for run in runs}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{rid} {hardware_label(*hw)}" for rid, hw in shapes.items())
        raise ConfigError(f"runs of different hardware in one calibration ({listed}); calibrate each apart")
    models = {run.run_id: model or run_model_name(run) for run in runs}
    if len(set(models.values())) > 1:
        listed = ", ".join(f"{rid} {m or '?'}" for rid, m in models.items())
        raise ConfigError(f"runs of different models in one calibration ({listed}); calibrate each apart")
    gpu, count = next(iter(shapes.values()))
    model_name = next(iter(models.values()))
    if not model_name:
        raise ConfigError("the runs do not name their model; pass --model (e.g. gemma-3-27b-it)")
    base = TwinConfig.build(model_name, gpu, count)
    levels = [level for run in runs for level in measured_levels(run)]
    if len(levels) < MIN_LEVELS:
        raise ConfigError(
            f"{len(levels)} usable measured level(s) in {len(runs)} run(s); calibration needs at least "
            f"{MIN_LEVELS} (each with {MIN_REQUESTS_PER_LEVEL}+ finished requests) to fit 4 constants"
        )
    name = name or f"{hardware_label(gpu, count)}-{base.model.name}"
    check_name(name)
    measured = [level.measured for level in levels]
    before = predict_levels(base, levels)
    constants = fit_constants(base, levels, progress=progress)
    after = predict_levels(base.model_copy(update={"constants": constants}), levels)
    return CalibrationProfile(
        name=name,
        gpu=gpu,
        gpu_count=count,
        model=base.model.name,
        constants=constants,
        runs=[run.run_id for run in runs],
        created_at=datetime.now(UTC),
        error_before=mean_errors(before, measured),
        error_after=mean_errors(after, measured),
        levels=[
            LevelFit(run_id=level.run_id, label=level.level.label, measured=level.measured, before=b, after=a)
            for level, b, a in zip(levels, before, after, strict=True)
        ],
    )


# ---- the profile store ------------------------------------------------------------------------------


def check_name(name: str) -> None:
    if _NAME.match(name) is None:
        raise ConfigError(
            f"calibration name {name!r}: use letters, digits, '.', '_' or '-' (at most 64, no leading symbol)"
        )


def _path(name: str, folder: Path | None) -> Path:
    check_name(name)
    return (folder or calibrations_dir()) / f"{name}.json"


def save_profile(profile: CalibrationProfile, folder: Path | None = None) -> Path:
    path = _path(profile.name, folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(profile.model_dump_json(indent=2), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        raise ConfigError(
            f"cannot save calibration {profile.name!r} to {path}: {exc.strerror or exc}"
        ) from None
    return path


def list_profiles(folder: Path | None = None) -> list[str]:
    root = folder or calibrations_dir()
    return sorted(p.stem for p in root.glob("*.json")) if root.is_dir() else []


def load_profile(name: str, folder: Path | None = None) -> CalibrationProfile:
    path = _path(name, folder)
    if not path.is_file():
        known = ", ".join(list_profiles(folder)) or "none yet (servedeck twin calibrate RUN_ID ...)"
        raise ConfigError(f"no calibration {name!r}; known: {known}")
    try:
        return CalibrationProfile.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError, ValueError):
        raise ConfigError(f"calibration file {path} is unreadable; calibrate again to replace it") from None
