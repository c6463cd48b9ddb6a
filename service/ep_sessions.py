"""Expert-parallel sidecar sessions: route every batch over the current replicas, keep a window
of recent batch histograms, and re-place when routed balance over the window drops.

Each batch is routed exactly (``solvers.eplb.routing``) with the current placement; its
balancedness joins the window's running record. When the window's mean falls below
``rebalance_below``, one background re-placement fits a placement per layer to the window
(``rebalance_window``: the window fit, never worse than EPLB on the window, its slots aligned
with the current ones so only replicas that must move count), and adopts it *per layer* when
that layer's routed balancedness over the window gains at least ``min_gain`` plus
``move_cost`` per replica the layer moves (gain and cost in one unit, per layer). The decision
and its reason are kept as ``last_replace``; the swap is atomic (the placement and its version
change together). The placement is persisted on every swap,
the window every ``PERSIST_EVERY`` batches (it is large; losing a few recent batches only
delays a re-placement).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.errors import DomainError
from service.schemas import (
    EpBatch,
    EpReplaceDecision,
    EpRouting,
    EpSessionCreate,
    EpSessionInfo,
)
from service.settings import Settings
from service.store import SQLiteStore
from solvers.eplb.batch_placement import routed_balancedness
from solvers.eplb.deepseek import rebalance_experts
from solvers.eplb.routing import route_batch
from solvers.eplb.runtime import moved_replicas, rebalance_window

log = logging.getLogger("moesched.ep_sessions")
PERSIST_EVERY = 16


@dataclass
class _Ep:
    spec: EpSessionCreate
    placement: np.ndarray  # [L, R]
    window: deque[np.ndarray]  # of [L, E]
    balance: deque[float]  # routed balancedness of each window batch, current placement
    version: int
    num_batches: int
    moved_last: int = 0
    last_replace: EpReplaceDecision | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class EpSessions:
    """EP sessions over the SQLite store, one background worker for re-placements."""

    def __init__(self, store: SQLiteStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replace")
        self._live: dict[str, _Ep] = {}
        self._replacing: set[str] = set()
        self._lock = threading.Lock()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def create(self, spec: EpSessionCreate) -> EpSessionInfo:
        uniform = np.ones((spec.num_layers, spec.num_experts))
        placement, _, _ = rebalance_experts(uniform, spec.num_replicas, 1, 1, spec.num_gpus)
        sid = uuid.uuid4().hex
        ep = _Ep(spec, placement, deque(maxlen=spec.window), deque(maxlen=spec.window), 1, 0)
        self._save(sid, ep)
        with self._lock:
            self._live[sid] = ep
        return self._info(sid, ep)

    def _save(self, sid: str, ep: _Ep) -> None:
        shape = (0, ep.spec.num_layers, ep.spec.num_experts)
        window = np.stack(list(ep.window)) if ep.window else np.zeros(shape, dtype=np.int64)
        self.store.ep_put(
            sid, ep.spec.model_dump_json(), ep.placement, window, ep.version, ep.num_batches
        )

    def _get(self, sid: str) -> _Ep:
        ep = self._live.get(sid)
        if ep is not None:
            return ep
        spec_json = self.store.ep_spec(sid)
        if spec_json is None:
            raise DomainError(404, "not_found", "path.session_id", f"no EP session '{sid}'")
        spec = EpSessionCreate.model_validate_json(spec_json)
        got = self.store.ep_get(sid, (spec.num_layers, spec.num_experts))
        assert got is not None
        _, placement, window, version, nbatches = got
        ep = _Ep(
            spec,
            placement,
            deque(window, maxlen=spec.window),
            deque(maxlen=spec.window),
            version,
            nbatches,
        )
        for batch in ep.window:
            ep.balance.append(self._balance(placement, spec.num_gpus, batch))
        with self._lock:
            return self._live.setdefault(sid, ep)

    @staticmethod
    def _balance(placement: np.ndarray, num_gpus: int, hist: np.ndarray) -> float:
        return float(
            np.mean(
                [
                    routed_balancedness(placement[layer], num_gpus, hist[layer][None])
                    for layer in range(len(hist))
                ]
            )
        )

    def _info(self, sid: str, ep: _Ep) -> EpSessionInfo:
        return EpSessionInfo(
            id=sid,
            version=ep.version,
            num_batches=ep.num_batches,
            physical_to_logical=ep.placement.tolist(),
            moved_replicas_last=ep.moved_last,
            last_replace=ep.last_replace,
        )

    def info(self, sid: str) -> EpSessionInfo:
        ep = self._get(sid)
        with ep.lock:
            return self._info(sid, ep)

    def batch(self, sid: str, batch: EpBatch) -> EpRouting:
        ep = self._get(sid)
        hist = (
            np.asarray(batch.histogram, dtype=np.int64)
            if batch.histogram
            else np.zeros((0, 0), dtype=np.int64)
        )
        want = (ep.spec.num_layers, ep.spec.num_experts)
        if hist.shape != want:
            raise DomainError(
                422, "validation", "body.histogram", f"shape {list(hist.shape)}, want {list(want)}"
            )
        with ep.lock:
            routes = [
                route_batch(ep.placement[layer], ep.spec.num_gpus, hist[layer])
                for layer in range(want[0])
            ]
            per_layer = [
                float(r.gpu_loads.mean() / r.max_load) if r.max_load else 1.0 for r in routes
            ]
            ep.window.append(hist)
            ep.balance.append(float(np.mean(per_layer)))
            ep.num_batches += 1
            version = ep.version
            window_balance = float(np.mean(ep.balance))
            if ep.num_batches % PERSIST_EVERY == 0:
                self._save(sid, ep)
        started = False
        if window_balance < ep.spec.rebalance_below and len(ep.window) >= max(
            4, ep.spec.window // 2
        ):
            with self._lock:
                if sid not in self._replacing:
                    self._replacing.add(sid)
                    started = True
            if started:
                self.pool.submit(self._replace, sid, ep)
        return EpRouting(
            tokens_per_slot=[r.tokens_per_slot.tolist() for r in routes],
            balancedness=per_layer,
            version=version,
            window_balancedness=window_balance,
            replace_started=started,
        )

    def _replace(self, sid: str, ep: _Ep) -> None:
        try:
            with ep.lock:
                window = np.stack(list(ep.window))
                old = ep.placement.copy()
                at_batch = ep.num_batches
            spec = ep.spec
            share = min(spec.deadline_s, self.settings.max_deadline_s) / spec.num_layers
            decision, new = decide_replacement(window, old, spec, share, at_batch)
            # Publish and persist together: a reader never sees a placement not yet stored.
            with ep.lock:
                ep.last_replace = decision
                if decision.adopted:
                    balance = [self._balance(new, spec.num_gpus, b) for b in window]
                    ep.placement, ep.version = new, ep.version + 1
                    ep.moved_last = decision.moved
                    ep.balance = deque(balance, maxlen=spec.window)
                    self._save(sid, ep)
        except Exception:  # the old placement stays; the next drop tries again
            log.exception("re-placement of EP session %s failed", sid)
        finally:
            with self._lock:
                self._replacing.discard(sid)


def decide_replacement(
    window: np.ndarray, old: np.ndarray, spec: EpSessionCreate, search_s: float, at_batch: int
) -> tuple[EpReplaceDecision, np.ndarray]:
    """Per layer: fit to the window, align with the current slots, and adopt the layer when its
    routed balancedness over the window gains at least ``min_gain + move_cost * moved``.

    Args:
        window: ``[W, L, E]`` the recent batch histograms; ``old``: ``[L, R]`` current slots.
    Returns:
        the decision and the placement ``[L, R]`` (the old one where a layer is not adopted).
    """
    fit = rebalance_window(
        window,
        old,
        spec.num_gpus,
        spec.num_replicas,
        move_cost=spec.move_cost,
        search_s_per_layer=search_s,
        sample=len(window),
    )
    assert fit.balancedness_current is not None
    before = fit.balancedness_current
    moves = (fit.phy2log != old).sum(axis=1)
    gain = fit.balancedness - before
    need = spec.min_gain + spec.move_cost * moves
    adopt = (moves > 0) & (gain >= need)
    new = np.where(adopt[:, None], fit.phy2log, old)
    moved = moved_replicas(old, new)
    if adopt.any():
        why = (
            f"{int(adopt.sum())} of {len(adopt)} layers gain >= min_gain {spec.min_gain} + "
            f"move_cost {spec.move_cost} x moved; window balancedness "
            f"{before.mean():.4f} -> {np.where(adopt, fit.balancedness, before).mean():.4f}"
        )
    elif (moves > 0).any():
        best = int(np.argmax(gain - need))
        why = (
            f"no layer pays for its moves: best is layer {best}, gain {gain[best]:.4f} < "
            f"{need[best]:.4f} (min_gain {spec.min_gain} + {int(moves[best])} moved x "
            f"{spec.move_cost})"
        )
    else:
        why = "the current placement is already the best found on this window"
    decision = EpReplaceDecision(
        at_batch=at_batch,
        adopted=bool(adopt.any()),
        gain=float(np.where(adopt, gain, 0.0).mean()),
        moved=moved,
        moved_unaligned=fit.moved_replicas_unaligned,
        layers_adopted=np.flatnonzero(adopt).tolist(),
        why=why,
    )
    return decision, new
