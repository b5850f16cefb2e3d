"""The compiled engine: the simpy engine's results for plain stage pools, at millions of requests per second.

`run_compiled(scenario, pipeline, samplers, sink, progress, stop)` simulates one pipeline over the same
requests and draws as `sim.engine.PipelineSimulation` (`core.system.RequestSource`'s streams) and returns
a `Recorder` whose `summary()`, time series and per-request rows equal the simpy run's. It covers the
pipelines whose stages are all plain pools (servers, optional queue limit and timeout; stage slowdowns) with
no cache, nearline store or shadow scoring; `support.unsupported(scenario, pipeline)` names what stands in the way
(without importing numba).

How (see `engine` and `kernels`): a FIFO pool of c servers with a queue limit and abandonment on timeout
is a sweep over its visits in order of arrival with a min-heap of the servers' free times and one of the
live waiters' leave times; the pipeline's steps are swept in turn, a block of arrivals at a time, each
stage's heaps carried from block to block. The float arithmetic is simpy's (`now + delay` at every event),
so times agree exactly, up to the order of events at exactly equal times (probability zero with continuous
service and arrival distributions; a trace with repeated arrival times or constant service times can make
such ties, and then the order simpy gives them may differ).
"""
