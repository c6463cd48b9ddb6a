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
change together). The placement is persisted on every swap;
every batch is appended to the store before it is acknowledged (the store keeps only the
window), so an acknowledged batch survives a killed server. The window is bounded by batches
and by bytes (``Settings.ep_window_max_batches``, ``Settings.ep_window_max_bytes``).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from service.answers import array_json, json_with
from service.errors import DomainError
from service.schemas import (
    EpBatch,
    EpReplaceDecision,
    EpRouting,
    EpSessionCreate,
    EpSessionInfo,
)
from service.sessions import SessionManager, make_room
from service.settings import Settings
from service.store import (
    DB_FIXED_BYTES,
    SEAL_BYTES,
    SessionStore,
    row_bound_bytes,
    wal_bound_bytes,
)
from solvers.eplb.batch_placement import routed_balancedness
from solvers.eplb.deepseek import rebalance_experts
from solvers.eplb.routing import route_batch
from solvers.eplb.runtime import moved_replicas, rebalance_window

if TYPE_CHECKING:
    from service.admission import Admission


def route_layers(
    placement: np.ndarray, num_gpus: int, hist: np.ndarray
) -> tuple[list[list[int]], list[float]]:
    """Route one batch ``hist [L, E]`` over ``placement [L, R]``: tokens per slot per layer
    and each layer's balancedness (mean / max GPU load)."""
    routes = [route_batch(placement[layer], num_gpus, hist[layer]) for layer in range(len(hist))]
    per_layer = [float(r.gpu_loads.mean() / r.max_load) if r.max_load else 1.0 for r in routes]
    return [r.tokens_per_slot.tolist() for r in routes], per_layer


def placement_text_bound(spec: EpSessionCreate) -> int:
    """Most bytes of a placement's JSON: ``L`` lists of ``R`` expert ids below ``E``, each with
    its separator (", "), and the brackets."""
    digits = len(str(max(spec.num_experts - 1, 0)))
    return 2 + spec.num_layers * (4 + spec.num_replicas * (digits + 2))


log = logging.getLogger("moesched.ep_sessions")
REPLACE_MOVES = 64  # candidate moves per layer of one re-placement (deterministic budget)
BATCH_BYTES_PER_COUNT = 4  # the window's histograms are int32 (a count is at most 2**24)
WINDOW_DTYPE = np.int32
# In memory, besides a window batch's counts: its array header, its deque slot and its
# balancedness (a float and a slot); measured 112 + 8 + 24 + 8 bytes on CPython 3.11.
BATCH_MEMORY_OVERHEAD_BYTES = 256


@dataclass(frozen=True, slots=True)
class EpBounds:
    """What EP sessions may hold under ``settings``: window batches, memory and disk bytes."""

    settings: Settings

    def window_of(self, spec: EpSessionCreate) -> int:
        """Batches the window keeps: the spec's, within the settings' batch and byte bounds."""
        return min(
            spec.window,
            self.settings.ep_window_max_batches,
            self.settings.ep_window_max_bytes // batch_bytes(spec),
        )

    def memory_bytes(self, spec: EpSessionCreate) -> int:
        """Most bytes one session holds in memory: its window (4 bytes a count plus each
        batch's overhead), its placement ``[L, R]`` (int64) and that placement's JSON."""
        window = self.window_of(spec) * (batch_bytes(spec) + BATCH_MEMORY_OVERHEAD_BYTES)
        return window + 8 * spec.num_layers * spec.num_replicas + placement_text_bound(spec)

    def disk_bytes(self, spec: EpSessionCreate) -> int:
        """Most bytes one session occupies in the main database file: its window's rows
        (int32 counts and a seal each) and its session row (spec and placement JSON)."""
        rows = self.window_of(spec) * row_bound_bytes(batch_bytes(spec) + SEAL_BYTES)
        return rows + session_row_bytes(spec)

    def db_bytes(self, specs: list[EpSessionCreate]) -> int:
        """Most bytes of the database files (main file and write-ahead log) holding these EP
        sessions and nothing else: each one's ``disk_bytes``, the fixed pages, and the log's
        bound (``Settings.db_wal_max_bytes`` plus the largest single commit: a session row
        or a batch row)."""
        rows = [session_row_bytes(s) for s in specs]
        rows += [row_bound_bytes(batch_bytes(s) + SEAL_BYTES) for s in specs]
        main = DB_FIXED_BYTES + sum(self.disk_bytes(s) for s in specs)
        return main + wal_bound_bytes(self.settings.db_wal_max_bytes, max(rows, default=0))


def batch_bytes(spec: EpSessionCreate) -> int:
    """Bytes of one window batch's counts (int32 ``[L, E]``)."""
    return BATCH_BYTES_PER_COUNT * spec.num_layers * spec.num_experts


def session_row_bytes(spec: EpSessionCreate) -> int:
    """Most bytes of an EP session's own row: its spec and placement JSON."""
    return row_bound_bytes(len(spec.model_dump_json()) + placement_text_bound(spec))


@dataclass
class _Ep:
    spec: EpSessionCreate
    placement: np.ndarray  # [L, R]
    window: deque[np.ndarray]  # of [L, E]
    # Routed balancedness of each window batch under the current placement (None: an empty
    # batch, which is no evidence of balance; ``window_balancedness`` skips it).
    balance: deque[float | None]
    version: int
    num_batches: int
    moved_last: int = 0
    last_replace: EpReplaceDecision | None = None
    placement_json: bytes | None = None  # the placement encoded (by the worker that made it)
    lock: threading.Lock = field(default_factory=threading.Lock)


class EpSessions:
    """EP sessions over the SQLite store, one background worker for re-placements."""

    def __init__(self, store: SessionStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replace")
        self._live: dict[str, _Ep] = {}
        self._replacing: set[str] = set()
        self._lock = threading.Lock()
        self.sessions: SessionManager | None = None  # sharing the store (for expiry)
        # Re-placements run in its worker processes when set (bounded, stoppable); else here.
        self.admission: Admission | None = None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def window_of(self, spec: EpSessionCreate) -> int:
        """Batches the window keeps (``EpBounds.window_of``)."""
        return EpBounds(self.settings).window_of(spec)

    def check(self, spec: EpSessionCreate) -> None:
        """Refuse (413) a session whose smallest window (4 batches) exceeds the byte bound."""
        if self.window_of(spec) < 4:
            raise DomainError(
                413, "too_large", "body.num_experts",
                f"4 batches of {spec.num_layers} x {spec.num_experts} counts exceed the window "
                f"bound of {self.settings.ep_window_max_bytes} bytes",
            )  # fmt: skip

    def create(self, spec: EpSessionCreate) -> EpSessionInfo:
        """Check, place here and store (the HTTP route places in a worker)."""
        self.prepare(spec)
        uniform = np.ones((spec.num_layers, spec.num_experts))
        placement, _, _ = rebalance_experts(uniform, spec.num_replicas, 1, 1, spec.num_gpus)
        return self.info(self.adopt(spec, placement))

    def prepare(self, spec: EpSessionCreate) -> None:
        """Check a new session's window bound and make room for it (429 when full)."""
        self.check(spec)
        make_room(self.store, self.settings, self.sessions, self)

    def adopt(
        self, spec: EpSessionCreate, placement: np.ndarray, placement_json: bytes | None = None
    ) -> str:
        """Store a new session with its first placement ``[L, R]`` (and that placement's JSON,
        when a worker encoded it); its id."""
        sid = uuid.uuid4().hex
        keep = self.window_of(spec)
        ep = _Ep(spec, placement, deque(maxlen=keep), deque(maxlen=keep), 1, 0)
        ep.placement_json = placement_json
        self.store.ep_create(sid, spec.model_dump_json(), placement, placement_json)
        with self._lock:
            self._live[sid] = ep
        return sid

    def forget(self, session_ids: list[str]) -> None:
        """Drop the in-memory view of EP sessions the store no longer has."""
        with self._lock:
            for sid in session_ids:
                self._live.pop(sid, None)

    def delete(self, sid: str) -> None:
        """Forget an EP session and its window (404 when unknown)."""
        self.forget([sid])
        if not self.store.ep_delete(sid):
            raise DomainError(404, "not_found", "path.session_id", f"no EP session '{sid}'")

    def _get(self, sid: str) -> _Ep:
        ep = self._live.get(sid)
        if ep is not None:
            return ep
        spec_json = self.store.ep_spec(sid)
        if spec_json is None:
            raise DomainError(404, "not_found", "path.session_id", f"no EP session '{sid}'")
        spec = EpSessionCreate.model_validate_json(spec_json)
        got = self.store.ep_get(sid, (spec.num_layers, spec.num_experts))
        if got is None:
            raise DomainError(404, "not_found", "path.session_id", f"no EP session '{sid}'")
        placement, keep = got.placement, self.window_of(spec)
        ep = _Ep(
            spec,
            placement,
            deque((b.astype(WINDOW_DTYPE) for b in got.window), maxlen=keep),
            deque(maxlen=keep),
            got.version,
            got.num_batches,
            got.moved_last,
        )
        for batch in ep.window:
            ep.balance.append(self._balance(placement, spec.num_gpus, batch))
        with self._lock:
            return self._live.setdefault(sid, ep)

    @staticmethod
    def _balance(placement: np.ndarray, num_gpus: int, hist: np.ndarray) -> float | None:
        """Mean over layers of a batch's routed balancedness ``hist [L, E]``; None when the
        batch routed no token (an idle step)."""
        if not hist.any():
            return None
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

    def info_json(self, sid: str) -> bytes:
        """``info`` as JSON, the placement spliced in as the worker that made it encoded it
        (encoded here once when the session was loaded from the store)."""
        ep = self._get(sid)
        with ep.lock:
            if ep.placement_json is None:
                ep.placement_json = array_json(ep.placement)
            head = EpSessionInfo(
                id=sid, version=ep.version, num_batches=ep.num_batches, physical_to_logical=[],
                moved_replicas_last=ep.moved_last, last_replace=ep.last_replace,
            )  # fmt: skip
            return json_with(head, physical_to_logical=ep.placement_json)

    def batch(self, sid: str, batch: EpBatch) -> EpRouting:
        """Route one batch here and record it (the HTTP route routes in a worker)."""
        hist, placement, version, num_gpus = self.prepare_batch(sid, batch)
        tokens, per_layer = route_layers(placement, num_gpus, hist)
        return self.record_batch(sid, hist, version, tokens, per_layer)

    def prepare_batch(self, sid: str, batch: EpBatch) -> tuple[np.ndarray, np.ndarray, int, int]:
        """The batch as ``hist [L, E]`` (422 on a wrong shape), and the placement ``[L, R]``,
        its version and the GPU count to route it with."""
        ep = self._get(sid)
        want = (ep.spec.num_layers, ep.spec.num_experts)
        try:
            hist = np.asarray(batch.histogram, dtype=np.int64).reshape(len(batch.histogram), -1)
        except ValueError:
            lengths = sorted({len(row) for row in batch.histogram})
            raise DomainError(
                422, "validation", "body.histogram",
                f"rows of lengths {lengths[:5]} (ragged), want {list(want)}",
            ) from None  # fmt: skip
        if hist.shape != want:
            raise DomainError(
                422, "validation", "body.histogram", f"shape {list(hist.shape)}, want {list(want)}"
            )
        with ep.lock:
            return hist, ep.placement, ep.version, ep.spec.num_gpus

    def record_batch(
        self,
        sid: str,
        hist: np.ndarray,
        version: int,
        tokens_per_slot: list[list[int]],
        per_layer: list[float],
    ) -> EpRouting:
        """Store a routed batch (before it is acknowledged), add it to the window, and start a
        re-placement when the window's balance dropped."""
        window_balance, started = self.record(sid, hist, per_layer)
        return EpRouting(
            tokens_per_slot=tokens_per_slot,
            balancedness=per_layer,
            version=version,
            window_balancedness=window_balance,
            replace_started=started,
        )

    def record(self, sid: str, hist: np.ndarray, per_layer: list[float]) -> tuple[float, bool]:
        """Store, add to the window, maybe start a re-placement: (window balance, started)."""
        ep = self._get(sid)
        with ep.lock:
            # Stored before it is acknowledged (and before memory changes: a refused write
            # leaves the session as it was).
            if not self.store.ep_append(sid, ep.num_batches + 1, hist, ep.window.maxlen or 1):
                self.forget([sid])
                raise DomainError(404, "not_found", "path.session_id", f"no EP session '{sid}'")
            ep.window.append(hist.astype(WINDOW_DTYPE))  # the bound counts 4 bytes a count
            ep.balance.append(float(np.mean(per_layer)) if hist.any() else None)
            ep.num_batches += 1
            window_balance = window_balancedness(ep.balance)
        started = False
        if window_balance < ep.spec.rebalance_below and len(ep.window) >= max(
            4, (ep.window.maxlen or 4) // 2
        ):
            with self._lock:
                if sid not in self._replacing:
                    self._replacing.add(sid)
                    started = True
            if started:
                self.pool.submit(self._replace, sid, ep)
        return window_balance, started

    def _replace(self, sid: str, ep: _Ep) -> None:
        try:
            with ep.lock:
                window = np.stack(list(ep.window)).astype(np.int64)
                old = ep.placement.copy()
                at_batch = ep.num_batches
            spec = ep.spec
            deadline_s = min(spec.deadline_s, self.settings.max_deadline_s)
            args = (window, old, spec, at_batch)
            if self.admission is None:
                decision, new = decide_replacement(*args)
                new_json, balance = None, [self._balance(new, spec.num_gpus, b) for b in window]
            else:  # in a solve slot's worker, stopped at the deadline (None: no slot free)
                got = self.admission.run_background("solve", deadline_s, replace_in_worker, *args)
                if got is None:
                    return  # every solve slot is busy: the next batch below the bar retries
                decision, new, new_json, balance = got
            # Publish and persist together: a reader never sees a placement not yet stored.
            with ep.lock:
                ep.last_replace = decision
                if decision.adopted and self.store.ep_swap(
                    sid, new, ep.version + 1, decision.moved, new_json
                ):
                    ep.placement, ep.version = new, ep.version + 1
                    ep.placement_json = new_json
                    ep.moved_last = decision.moved
                    ep.balance = deque(balance, maxlen=ep.window.maxlen)
        except Exception:  # the old placement stays; the next drop tries again
            log.exception("re-placement of EP session %s failed", sid)
        finally:
            with self._lock:
                self._replacing.discard(sid)


def window_balancedness(balance: Iterable[float | None]) -> float:
    """The window's balancedness: the mean over its batches that routed tokens (1.0 when none
    did). Idle steps, balanced by definition, would otherwise hold an imbalanced window above
    the re-placement bar."""
    busy = [b for b in balance if b is not None]
    return float(np.mean(busy)) if busy else 1.0


def replace_in_worker(
    window: np.ndarray, old: np.ndarray, spec: EpSessionCreate, at_batch: int
) -> tuple[EpReplaceDecision, np.ndarray, bytes, list[float | None]]:
    """``decide_replacement`` in a worker process, with what adopting needs: the new
    placement's JSON and the window's balancedness under it (per batch)."""
    decision, new = decide_replacement(window, old, spec, at_batch)
    balance = [EpSessions._balance(new, spec.num_gpus, b) for b in window]
    return decision, new, array_json(new), balance


def decide_replacement(
    window: np.ndarray, old: np.ndarray, spec: EpSessionCreate, at_batch: int
) -> tuple[EpReplaceDecision, np.ndarray]:
    """Per layer: fit to the window, align with the current slots, and adopt the layer when its
    routed balancedness over the window gains at least ``min_gain + move_cost * moved``.
    The fit runs on a move budget (``REPLACE_MOVES`` per layer), never on the clock, so the
    same window gives the same decision on an idle and a busy machine.

    Args:
        window: ``[W, L, E]`` the recent batch histograms; ``old``: ``[L, R]`` current slots.
    Returns:
        the decision and the placement ``[L, R]`` (the old one where a layer is not adopted).
    """
    busy = window[window.reshape(len(window), -1).any(axis=1)]
    if len(busy):  # idle steps (no token routed) say nothing about a placement
        window = busy
    fit = rebalance_window(
        window,
        old,
        spec.num_gpus,
        spec.num_replicas,
        move_cost=spec.move_cost,
        search_moves_per_layer=REPLACE_MOVES,
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
