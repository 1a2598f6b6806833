"""Streaming checkpoint merge: plan (validate) -> stream (compute) -> write."""
