"""Rival servers run side by side with seqinfer (each in its own folder and venv)."""
