"""Real-HTTP stand-ins for servers, used by tests."""
