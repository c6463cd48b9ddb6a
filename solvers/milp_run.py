"""Running CBC (through PuLP) under a budget: one place for its command's parameters.

With a deterministic budget (``Budget.work``) CBC runs on one thread with a node limit of
``NODES_PER_WORK`` per work unit, so its answer does not depend on machine load; the wall
clock then only caps it. Without one (service requests) the wall clock alone stops it.
CBC stopped early still says ``Optimal`` in PuLP's ``status``; read ``sol_status``.
"""

from __future__ import annotations

import pulp

from solvers.common import Budget

NODES_PER_WORK = 1000  # branch-and-bound nodes per work unit: a stated budget, not a time


def cbc(budget: Budget, warm_start: bool = False) -> pulp.PULP_CBC_CMD:
    """The CBC command for ``budget``."""
    wall = max(0.1, round(budget.deadline.left(), 2))
    if budget.work_s is None:
        return pulp.PULP_CBC_CMD(
            msg=False, timeLimit=wall, timeMode="elapsed", threads=max(1, budget.workers),
            warmStart=warm_start,
        )  # fmt: skip
    return pulp.PULP_CBC_CMD(
        msg=False, timeLimit=wall, timeMode="elapsed", threads=1, warmStart=warm_start,
        maxNodes=max(1, round(budget.work_s * NODES_PER_WORK)),
    )  # fmt: skip
