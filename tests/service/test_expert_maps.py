"""The answer's per-layer expert map reads every expert a task computes, grouped GEMMs too."""

from __future__ import annotations

from hwmodel.plan import ComputeTask, Plan
from service.schemas import expert_maps


def test_a_grouped_gemm_maps_each_expert_with_rows_to_its_own_slice() -> None:
    grouped = ComputeTask(
        id="g", device_id="ndp0", op="expert", layer=3, num_tokens=3, expert=5,
        ffn_start=0, ffn_end=1024, group_rows=(1, 0, 2),
        group_cols=((0, 512), (0, 1024), (256, 1024)),
    )  # fmt: skip
    plain_group = ComputeTask(
        id="p", device_id="ndp1", op="expert", layer=3, num_tokens=2, expert=5,
        ffn_start=512, ffn_end=1024, group_rows=(1, 1),
    )  # fmt: skip
    single = ComputeTask(id="s", device_id="gpu", op="expert", layer=4, num_tokens=1, expert=9)
    maps = expert_maps(Plan(tasks=(grouped, plain_group, single)))
    assert [m.layer for m in maps] == [3, 4]
    # expert 6 has no rows in "g" (not read there) but one in "p"; expert 7 only in "g"
    assert maps[0].experts == {
        5: [("ndp0", 0, 512), ("ndp1", 512, 1024)],
        6: [("ndp1", 512, 1024)],
        7: [("ndp0", 256, 1024)],
    }
    assert maps[1].experts == {9: [("gpu", 0, None)]}
