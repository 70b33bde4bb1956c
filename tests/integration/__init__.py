"""Tests against real servers on 127.0.0.1: the local engine, twins, fakes, the load generator."""
