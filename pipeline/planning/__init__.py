"""Manifests to plans: reading YAML, expanding jobs, the API's limits; pure values."""
