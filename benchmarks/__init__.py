"""seqinfer's benchmark harness: load generator, baselines, peers and scenarios.

Run everything with ``python -m benchmarks`` (or ``seqinfer bench``). Every
figure that matters is reported as a ratio of two things measured side by
side in the same run, because the machine is shared and noisy.
"""
