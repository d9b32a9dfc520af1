"""Benchmarks of ``seqinfer serve --frontends K`` (issue 10): what the split costs, what it buys.

On a 2-core machine K front ends cannot show scaling (the load generator
shares the cores), so ``python -m benchmarks.frontends`` measures the parts
that decide it, side by side in one run: the price of the split (K=1 against
the single process), the engine's CPU per item against a front end's CPU
per message, the engine's saturation throughput under a feeder that replays
recorded front-end batches, and how K=2 spreads load. ``benchmarks/scaling.sh``
(``benchmarks.frontends.scaling``) runs the K sweep on a many-core machine.

Modules: ``layout`` (a server and its processes), ``cell`` (one load run and
each process's CPU), ``feeder`` (recording and replaying front-end
batches), ``figures`` (cells → the issue's targets), ``report`` (markdown),
``scaling`` (the many-core sweep).
"""
