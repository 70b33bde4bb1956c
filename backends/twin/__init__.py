"""The vLLM twin: a simulated vLLM server (engine, fast-forward mode, live HTTP server)."""
