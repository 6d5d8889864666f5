"""The whole agent on a simulated clock: ``python -m fleet simulate`` (see docs/architecture.md)."""
