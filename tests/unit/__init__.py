"""Unit tests: pure logic (models, parsing, manifests, catalog, cost, store); no servers, no processes."""
