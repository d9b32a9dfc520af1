"""The Python client against a scripted in-process fake server (fake_seqinfer.py)."""
