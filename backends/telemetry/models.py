"""GPU telemetry as the bench's results carry it (pydantic only, so results and events can import it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class GpuSummary(BaseModel):
    """Several GPUs at one instant: means of the ratios, sums of power, memory and energy."""

    model_config = ConfigDict(frozen=True)

    t: float
    gpus: int
    utilisation: float | None = Field(default=None, description="mean busy fraction 0..1")
    dram_active: float | None = None
    tensor_active: float | None = None
    power_w: float | None = Field(default=None, description="sum over the GPUs")
    fb_used_mib: float | None = Field(default=None, description="sum over the GPUs")
    fb_total_mib: float | None = Field(default=None, description="sum over the GPUs (used + free)")
    energy_j: float | None = Field(default=None, description="sum of the GPUs' counters")
    per_gpu_power_w: list[float] = Field(default_factory=list)
    per_gpu_utilisation: list[float] = Field(default_factory=list)


class LevelGpuTelemetry(BaseModel):
    """GPU telemetry over one load level (summed over the GPUs the target uses)."""

    model_config = ConfigDict(frozen=True)

    gpus: int = 0
    readings: int = 0
    state: str = Field(default="ok", description="'ok', else the last reading's state (no GPU data)")
    message: str | None = Field(default=None, description="why there is no GPU data, and what to do")
    simulated: bool = False
    gpu_util_mean: float | None = Field(default=None, description="0..1, mean over readings and GPUs")
    dram_active_mean: float | None = None
    power_w_mean: float | None = Field(default=None, description="mean total power of the GPUs (W)")
    power_w_max: float | None = None
    fb_used_mib_max: float | None = None
    energy_j: float | None = Field(default=None, description="over the level, all GPUs")
    energy_source: str | None = Field(default=None, description="'counter' | 'power x time'")
    kj_per_1m_output_tokens: float | None = None
    usd_per_1m_output_tokens: float | None = None
