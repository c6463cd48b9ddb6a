"""Cycle tables of one (hardware, model), computed once and read by every solve that needs them.

A runtime asks for a plan per layer and per step with the same hardware and model; the cost of
a shard, a transfer of activation rows or a reduce depends only on those and on a token count,
so the figures are kept per (hardware, model) pair and filled on first use. Hardware and model
specs are frozen, so a pair is looked up by identity (hashing a specification by value costs
more than most lookups save); equal specs built twice get their own tables, with equal figures.

Every figure is the one ``hwmodel.costs`` gives (the tables only remember them), so solvers
reading the tables and the executor computing a task afresh agree exactly.

Rows are shared by every caller: callers must not modify them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Generic, TypeVar

from hwmodel import costs
from hwmodel.spec import Hardware, Link, ModelSpec

T = TypeVar("T")


@dataclass(frozen=True, eq=False, slots=True)
class _Same(Generic[T]):
    """A cache key equal only to the same object (and keeping it alive, so its id stays its)."""

    obj: T

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj


class CostTables:
    """Integer-cycle figures of one hardware and model (reference clock ``hardware.clock_hz``).

    Devices with the same figures (all but their id, memory and source) share shard rows.
    """

    def __init__(self, hardware: Hardware, model: ModelSpec) -> None:
        self.hardware, self.model = hardware, model
        figures: dict[object, int] = {}
        self._figures_of: dict[str, int] = {}
        for d in hardware.devices:
            key = d.model_copy(update={"id": "_", "memory_id": "_", "source": ""})
            self._figures_of[d.id] = figures.setdefault(key, len(figures))
        self._device = {d.id: d for d in hardware.devices}
        self._shard: dict[tuple[int, int, int], list[int]] = {}
        self._rows: dict[tuple[str, int], list[int]] = {}
        self._reduce: dict[tuple[str, int, int], list[int]] = {}
        self._weights: dict[tuple[str, int], int] = {}
        self._links: dict[tuple[str, str], Link | None] = {}
        self._reachable: dict[str, tuple[str, ...]] = {}

    def link_between(self, src_device_id: str, dst_device_id: str) -> Link | None:
        """``Hardware.link_between``, remembered."""
        key = (src_device_id, dst_device_id)
        if key not in self._links:
            self._links[key] = self.hardware.link_between(src_device_id, dst_device_id)
        return self._links[key]

    def reachable(self, home_device_id: str) -> tuple[str, ...]:
        """Devices (in declaration order) with a link from and a link to the home device, and
        the home device itself."""
        got = self._reachable.get(home_device_id)
        if got is None:
            got = self._reachable[home_device_id] = tuple(
                d.id
                for d in self.hardware.devices
                if d.id == home_device_id
                or (
                    self.link_between(home_device_id, d.id)
                    and self.link_between(d.id, home_device_id)
                )
            )
        return got

    def shard_row(self, device_id: str, num_tokens: int, num_granules: int) -> list[int]:
        """``row[n]``: cycles of n = 0..G contiguous granules (of ``expert_ffn_size // G``
        columns each) of one expert on ``num_tokens`` tokens on the device, ``[G + 1]``."""
        key = (self._figures_of[device_id], num_tokens, num_granules)
        row = self._shard.get(key)
        if row is None:
            device, model, clock = self._device[device_id], self.model, self.hardware.clock_hz
            width = model.expert_ffn_size // num_granules
            row = [0] + [
                costs.to_cycles(costs.expert_shard_s(device, model, num_tokens, n * width), clock)
                for n in range(1, num_granules + 1)
            ]
            self._shard[key] = row
        return row

    def activation_row(self, link: Link, max_rows: int) -> list[int]:
        """``row[r]``: cycles to move r activation rows over one lane of the link,
        r = 0..max_rows (0 rows: 0 cycles), ``[max_rows + 1]``."""
        row = self._rows.get((link.id, max_rows))
        if row is None:
            clock, model = self.hardware.clock_hz, self.model
            row = [0] + [
                costs.to_cycles(costs.transfer_s(link, model.activation_bytes(r)), clock)
                for r in range(1, max_rows + 1)
            ]
            self._rows[(link.id, max_rows)] = row
        return row

    def reduce_row(self, device_id: str, num_tokens: int, max_partials: int) -> list[int]:
        """``row[p]``: cycles of a reduce of p = 0..max_partials partial sums of
        ``[num_tokens, hidden]`` on the device (0 partials: 0 cycles)."""
        key = (device_id, num_tokens, max_partials)
        row = self._reduce.get(key)
        if row is None:
            device, model, clock = self._device[device_id], self.model, self.hardware.clock_hz
            row = [0] + [
                costs.to_cycles(costs.reduce_s(device, model, num_tokens, p), clock)
                for p in range(1, max_partials + 1)
            ]
            self._reduce[key] = row
        return row

    def weight_cycles(self, link: Link, ffn_width: int) -> int:
        """Cycles to move an expert slice ``ffn_width`` columns wide over one lane of the link."""
        key = (link.id, ffn_width)
        cycles = self._weights.get(key)
        if cycles is None:
            seconds = costs.transfer_s(link, self.model.expert_bytes(ffn_width))
            cycles = self._weights[key] = costs.to_cycles(seconds, self.hardware.clock_hz)
        return cycles


Same = _Same  # for other identity-keyed caches (``solvers.placement.problem.instance_of``)


@functools.lru_cache(maxsize=64)
def _tables(hardware: _Same[Hardware], model: _Same[ModelSpec]) -> CostTables:
    return CostTables(hardware.obj, model.obj)


def tables(hardware: Hardware, model: ModelSpec) -> CostTables:
    """The (shared) cycle tables of this hardware and model object."""
    return _tables(_Same(hardware), _Same(model))
