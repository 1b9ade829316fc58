"""Manifests to plans: reading YAML and the environment, expanding jobs, the API's limits."""
