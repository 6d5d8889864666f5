"""The fleet controller and its HTTP endpoint."""
