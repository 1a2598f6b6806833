"""Readers of upstream checkpoint layouts and their key maps (F5/E2, Vocos, audio2photoreal, GPT-SoVITS, XTTS)."""
