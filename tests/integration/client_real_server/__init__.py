"""seqinfer.client and the client CLI against the real server on loopback.

Outputs are checked against torch.nn.GRU (tests.support.reference_run), so
the codec, shaping and session bookkeeping are checked end to end, not only
"some array came back". The modules share one server (conftest.py).
"""
