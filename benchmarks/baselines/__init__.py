"""Servers seqinfer is measured against: a transport-only echo and a hand-written GRU server."""
