"""The EPLB-compatible problem and moesched's drop-in for runtimes' load balancers.

Public calls (see ``solvers.eplb.runtime``): ``rebalance_experts`` (DeepSeek EPLB's
signature and return tuple), ``rebalance_window`` (a placement fitted to a window of
per-batch loads, aligned with the current one), ``align_slots``, and ``MoeschedEplbPolicy``
(vLLM's policy interface).
"""

from solvers.eplb.runtime import (
    MoeschedEplbPolicy,
    WindowPlacement,
    align_slots,
    moved_replicas,
    rebalance_experts,
    rebalance_window,
)

__all__ = [
    "MoeschedEplbPolicy",
    "WindowPlacement",
    "align_slots",
    "moved_replicas",
    "rebalance_experts",
    "rebalance_window",
]
