"""GPU telemetry: NVIDIA dcgm-exporter's DCGM_FI_* metrics, parsed, scraped and summarised per level."""
