"""TorchServe 0.12 with stateful sequence batching, serving the bench-gru weights.

Files: ``handler.py`` (runs inside TorchServe's worker, in this folder's own
venv), ``model-config.yaml`` (baked into the .mar), ``log4j2.xml`` (quiet
logging), ``peer.py`` (install, start and stop by PID; also a CLI:
``python -m benchmarks.peers.torchserve setup|start|stop``) and ``client.py``
(the load generator's adapter for ``StreamPredictions2``).
"""
