"""Typed configurations of the experiments (one module per experiment)."""
