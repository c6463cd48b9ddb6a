"""Sidecar sessions: running counts per (layer, expert), drift detection, background re-solve.

The counts are the dataset-free statistics: each observation decays them and adds the
latest histogram. Drift is the mean over layers of the total variation distance between the
normalized running counts and the normalized counts the current plan was solved for. When it
exceeds the policy's threshold, one background re-solve starts (never two at once for a
session); its plan must pass the executor before it is swapped in, atomically, with the
counts it was solved for and version + 1.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np

from hwmodel.spec import Hardware, ModelSpec
from hwmodel.workload import Workload
from service.answers import json_with
from service.errors import DomainError
from service.schemas import (
    Observation,
    ObservationAck,
    PlacementResponse,
    SessionCreate,
    SessionInfo,
)
from service.settings import Settings
from service.solving import (
    PlacementCase,
    check_limits,
    layout_granules,
    named_layout,
    place_case,
)
from service.store import CountsUpdate, SessionRow, SessionStore, WouldWait

if TYPE_CHECKING:
    from service.admission import Admission
    from service.ep_sessions import EpSessions

log = logging.getLogger("moesched.sessions")
COUNT_CAP = float(2**50)  # running counts stop growing here: always finite, drift always defined


def _array(value: object, field: str, dtype: type) -> np.ndarray:
    """A nested list as an array; ragged lists are the client's error (422), not ours."""
    try:
        return np.asarray(value, dtype=dtype)
    except (ValueError, OverflowError) as exc:
        raise DomainError(
            422, "validation", field, f"not a rectangular array of numbers: {exc}"
        ) from None


def _nested(value: list[Any], depth: int, dtype: type) -> np.ndarray:
    """A nested list of numbers (typed by the schema) as an array, built with ``np.fromiter``
    over its items once every level is seen to be rectangular (several times faster than
    ``np.asarray``, which discovers the shape item by item).

    Raises:
        ValueError, TypeError: ragged, or not lists down to ``depth``.
    """
    rows: list[Any] = [value]  # the lists at the current level
    shape: list[int] = []
    for level in range(depth):
        width = len(rows[0])
        if len(set(map(len, rows))) != 1:
            raise ValueError("ragged")
        shape.append(width)
        if level < depth - 1:
            if width == 0:
                return np.asarray(value, dtype=dtype)  # empty: asarray's shape
            rows = list(chain.from_iterable(rows))
    count = math.prod(shape)
    return np.fromiter(chain.from_iterable(rows), dtype=dtype, count=count).reshape(shape)


def _packed_ids(text: str, shape: list[int]) -> np.ndarray:
    """``expert_ids_b64`` as ids ``[num_tokens, num_moe_layers, top_k]`` (int64).

    Raises:
        DomainError: 422 naming the field, for text that is not standard base64 or whose
            bytes are not one little-endian int16 per id of ``shape``.
    """
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DomainError(
            422,
            "validation",
            "body.expert_ids_b64",
            "not standard base64 (A-Z a-z 0-9 + /, = padding)",
        ) from None
    want = 2 * math.prod(shape)
    if len(raw) != want:
        raise DomainError(
            422, "validation", "body.expert_ids_b64",
            f"{len(raw)} bytes, want {want}: one little-endian int16 per id of "
            f"expert_ids_shape {list(shape)}",
        )  # fmt: skip
    return np.frombuffer(raw, dtype="<i2").reshape(shape).astype(np.int64)


def _grid(value: list[Any], field: str, depth: int, dtype: type) -> np.ndarray:
    """``_nested``, or ``_array``'s answer (a 422 naming ``field``) when it is not one."""
    try:
        return _nested(value, depth, dtype)
    except (ValueError, TypeError):
        return _array(value, field, dtype)


def normalized(counts: np.ndarray) -> np.ndarray:
    """Counts ``[L, E]`` with every row scaled to sum 1 (an all-zero row stays zero)."""
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1e-12)


def drift(
    counts: np.ndarray, reference: np.ndarray, reference_normalized: np.ndarray | None = None
) -> float:
    """Mean over layers of total variation distance between the normalized rows (0 .. 1);
    ``reference_normalized``: ``normalized(reference)`` when the caller holds it already."""
    b = normalized(reference) if reference_normalized is None else reference_normalized
    d = normalized(counts) - b
    return float(0.5 * np.abs(d, out=d).sum(axis=1).mean())


def expected_workload(counts: np.ndarray, batch_tokens: int, top_k: int) -> Workload:
    """The batch a plan is solved for: ``batch x top_k`` routings per layer spread over the
    experts in proportion to the counts (largest remainders), at most ``batch`` per expert."""
    rows = []
    for row in counts:
        p = row / row.sum() if row.sum() > 0 else np.full(len(row), 1 / len(row))
        want = p * batch_tokens * top_k
        base = np.minimum(np.floor(want), batch_tokens).astype(np.int64)
        left = batch_tokens * top_k - int(base.sum())
        for e in np.argsort(-(want - base), kind="stable"):
            if left <= 0:
                break
            if base[e] < batch_tokens:
                base[e] += 1
                left -= 1
        rows.append(tuple(int(v) for v in base))
    return Workload(
        layer_ids=tuple(range(len(rows))), tokens_per_expert=tuple(rows), num_tokens=batch_tokens
    )


@dataclass
class _Live:
    """What an observation needs, kept in memory (the store stays the source of truth)."""

    spec: SessionCreate
    case: PlacementCase  # the session's problem, resolved once; each re-solve swaps the workload
    plan_counts: np.ndarray
    version: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    # normalized(plan_of), kept while the store hands back that same plan_counts array
    plan_of: np.ndarray | None = None
    plan_normalized: np.ndarray | None = None

    def reference(self, plan_counts: np.ndarray) -> np.ndarray:
        """``normalized(plan_counts)``, computed once per plan the store hands back."""
        if self.plan_of is not plan_counts or self.plan_normalized is None:
            self.plan_of, self.plan_normalized = plan_counts, normalized(plan_counts)
        return self.plan_normalized


class SessionManager:
    """Sessions over a store, with one background worker pool for re-solves."""

    def __init__(self, store: SessionStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, settings.solver_workers // 2), thread_name_prefix="resolve"
        )
        self._resolving: set[str] = set()
        self._lock = threading.Lock()
        self._live: dict[str, _Live] = {}
        self.resolves = 0
        self.replica_id = uuid.uuid4().hex  # this process, as a re-solve lease holder
        # Longer than any re-solve may run; a holder that died frees it after this.
        self._lease_s = 2 * settings.max_deadline_s + 10.0
        self.ep: EpSessions | None = None  # the EP sessions sharing the store (for expiry)
        # Re-solves run in its worker processes when set (bounded, stoppable); else here.
        self.admission: Admission | None = None

    def _session(self, session_id: str) -> _Live:
        """The in-memory view of a session, loaded from the store on first use."""
        live = self._live.get(session_id)
        if live is not None:
            return live
        row = self._row(session_id)
        spec = SessionCreate.model_validate_json(row.spec_json)
        case = self.session_case(spec, row.plan_counts, new=False)
        live = _Live(spec, case, row.plan_counts, row.version)
        with self._lock:
            return self._live.setdefault(session_id, live)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def session_case(
        self,
        spec: SessionCreate,
        counts: np.ndarray,
        resolved: tuple[Hardware, ModelSpec] | None = None,
        new: bool = True,
    ) -> PlacementCase:
        """A session's placement problem for counts ``[L, E]``, resolved from its spec once
        (presets unless ``resolved`` gives them, granules, the layout's residency, the
        policy's options). A ``new`` session is held to the server's limits (413); one
        already stored was held to them when it was created."""
        hardware, model = resolved or (spec.resolved_hardware(), spec.resolved_model())
        granules = layout_granules(hardware, model, spec.layout, spec.policy.num_granules)
        case = PlacementCase(
            hardware, model, self.workload_of(spec, model.top_k, counts),
            named_layout(hardware, model, spec.layout, spec.cached_experts, granules), granules,
            spec.policy.backend, min(spec.policy.deadline_s, self.settings.max_deadline_s),
        )  # fmt: skip
        if new:
            check_limits(self.settings, hardware, model, case.workload)
        return case

    @staticmethod
    def workload_of(spec: SessionCreate, top_k: int, counts: np.ndarray) -> Workload:
        """The batch a plan for counts ``[L, E]`` is solved for."""
        return expected_workload(counts, spec.policy.plan_batch_tokens, top_k)

    def create(self, spec: SessionCreate) -> SessionInfo:
        """Validate, solve the first plan here, store (the HTTP route solves in a worker)."""
        counts, case = self.prepare(spec)
        return self.finish(spec, counts, place_case(case, self.settings), case)

    def prepare(self, spec: SessionCreate) -> tuple[np.ndarray, PlacementCase]:
        """Check a new session and make room for it; its seed counts ``[L, E]`` and the
        placement problem its first plan is solved from."""
        hardware, model = spec.resolved_hardware(), spec.resolved_model()
        shape = (model.num_moe_layers, model.num_routed_experts)
        if model.num_moe_layers > self.settings.max_layers:
            raise DomainError(
                413, "too_large", "body.model.num_moe_layers", "more layers than the limit"
            )
        if spec.initial_counts is not None:
            counts = _array(spec.initial_counts, "body.initial_counts", np.float64)
            if counts.shape != shape or not np.isfinite(counts).all() or (counts < 0).any():
                raise DomainError(
                    422,
                    "validation",
                    "body.initial_counts",
                    f"need finite counts >= 0 of shape {list(shape)}",
                )
        else:
            counts = np.ones(shape)
        case = self.session_case(spec, counts, (hardware, model))
        self.make_room()
        return counts, case

    def finish(
        self,
        spec: SessionCreate,
        counts: np.ndarray,
        response: PlacementResponse,
        case: PlacementCase | None = None,
    ) -> SessionInfo:
        """Store a new session with its first plan (and keep ``case``, its resolved problem)."""
        return self._info(self._store_new(spec, counts, response.model_dump_json(), case))

    def finish_json(
        self,
        spec: SessionCreate,
        counts: np.ndarray,
        plan_json: bytes,
        case: PlacementCase | None = None,
    ) -> bytes:
        """``finish`` for a plan a worker encoded; the answer as JSON, that plan spliced in."""
        return self._info_json(self._store_new(spec, counts, plan_json.decode(), case))

    def _store_new(
        self,
        spec: SessionCreate,
        counts: np.ndarray,
        plan_json: str,
        case: PlacementCase | None = None,
    ) -> SessionRow:
        row = SessionRow(
            uuid.uuid4().hex, spec.model_dump_json(), counts, counts.copy(), plan_json, 1, 0
        )
        self.store.create(row)
        if case is not None:
            with self._lock:
                self._live.setdefault(row.id, _Live(spec, case, counts.copy(), 1))
        return row

    def make_room(self) -> None:
        """Expire idle sessions; refuse (429) a new one when the store is still full."""
        make_room(self.store, self.settings, self, self.ep)

    def forget(self, session_ids: list[str]) -> None:
        """Drop the in-memory view of sessions the store no longer has."""
        with self._lock:
            for sid in session_ids:
                self._live.pop(sid, None)

    def _row(self, session_id: str) -> SessionRow:
        row = self.store.get(session_id)
        if row is None:
            raise DomainError(404, "not_found", "path.session_id", f"no session '{session_id}'")
        return row

    def _resolving_now(self, session_id: str) -> bool:
        """Whether a re-solve of the session is running. Read it *before* the row: a re-solve
        that ends between the two reads then shows as "resolving" with the old row, never as
        "not resolving" with a plan it already replaced."""
        with self._lock:
            return session_id in self._resolving

    def _info(self, row: SessionRow, resolving: bool = False) -> SessionInfo:
        assert row.plan_json is not None
        return SessionInfo(
            id=row.id,
            version=row.version,
            num_observations=row.num_observations,
            drift=drift(row.counts, row.plan_counts),
            resolving=resolving,
            plan=PlacementResponse.model_validate_json(row.plan_json),
        )

    def info(self, session_id: str) -> SessionInfo:
        resolving = self._resolving_now(session_id)
        return self._info(self._row(session_id), resolving)

    def info_json(self, session_id: str) -> bytes:
        """``info`` as JSON, the stored plan spliced in as stored (not decoded, re-encoded)."""
        resolving = self._resolving_now(session_id)
        return self._info_json(self._row(session_id), resolving)

    def _info_json(self, row: SessionRow, resolving: bool = False) -> bytes:
        assert row.plan_json is not None
        head = {
            "id": row.id,
            "version": row.version,
            "num_observations": row.num_observations,
            "drift": drift(row.counts, row.plan_counts),
            "resolving": resolving,
        }  # the fields of SessionInfo but its plan
        return json_with(head, plan=row.plan_json.encode())

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._live.pop(session_id, None)
        if not self.store.delete(session_id):
            raise DomainError(404, "not_found", "path.session_id", f"no session '{session_id}'")

    def observe(self, session_id: str, obs: Observation) -> ObservationAck:
        live = self._session(session_id)
        hist = self._histogram(obs, live.plan_counts.shape, live.case.model.top_k)
        with live.lock:  # one writer per session: concurrent observations lose no counts
            got = self.store.observe(
                session_id, hist, live.spec.policy.decay, COUNT_CAP, obs.observation_id
            )
            return self._counted(session_id, live, got)

    def observe_nowait(self, session_id: str, obs: Observation) -> ObservationAck:
        """``observe`` on the event loop, for a session already in memory whose lock and
        store are free (about a tenth of a millisecond: less than a hop to a worker thread).

        Raises:
            WouldWait: nothing was done; ``observe`` in a worker thread will wait instead.
            DomainError: as ``observe``.
        """
        live = self._live.get(session_id)
        if live is None or not live.lock.acquire(blocking=False):
            raise WouldWait
        try:
            hist = self._histogram(obs, live.plan_counts.shape, live.case.model.top_k)
            got = self.store.observe_nowait(
                session_id, hist, live.spec.policy.decay, COUNT_CAP, obs.observation_id
            )
            return self._counted(session_id, live, got)
        finally:
            live.lock.release()

    def _counted(self, session_id: str, live: _Live, got: CountsUpdate | None) -> ObservationAck:
        """The ack for a committed observation (under ``live.lock``); a re-solve started when
        the counts drifted past the policy's threshold."""
        if got is None:
            self.forget([session_id])
            raise DomainError(404, "not_found", "path.session_id", f"no session '{session_id}'")
        # The stored plan is the truth: another replica may have swapped it.
        live.plan_counts, live.version = got.plan_counts, got.version
        nobs, version = got.num_observations, got.version
        d = drift(got.counts, got.plan_counts, live.reference(got.plan_counts))
        started = False
        if d > live.spec.policy.drift_threshold:
            with self._lock:
                if session_id not in self._resolving:
                    self._resolving.add(session_id)
                    started = True
            if started:
                self.pool.submit(self._resolve, session_id, live)
        return ObservationAck(
            version=version, num_observations=nobs, drift=d, resolve_started=started,
            counted=got.counted,
        )  # fmt: skip

    def _histogram(self, obs: Observation, shape: tuple[int, ...], top_k: int) -> np.ndarray:
        if obs.histogram is not None:
            hist = _grid(obs.histogram, "body.histogram", 2, np.int64)  # (whole, <= 2**40)
            if hist.shape != shape:
                raise DomainError(
                    422,
                    "validation",
                    "body.histogram",
                    f"shape {list(hist.shape)}, want {list(shape)}",
                )
            if (hist < 0).any():
                raise DomainError(422, "validation", "body.histogram", "counts must be >= 0")
            return hist
        if obs.expert_ids_b64 is not None:
            assert obs.expert_ids_shape is not None
            field = "body.expert_ids_b64"
            ids = _packed_ids(obs.expert_ids_b64, obs.expert_ids_shape)
        else:
            assert obs.expert_ids is not None
            field = "body.expert_ids"
            ids = _grid(obs.expert_ids, field, 3, np.int64)
        if (
            ids.ndim != 3
            or ids.shape[1] != shape[0]
            or ids.shape[2] > top_k
            or ids.shape[0] > self.settings.max_tokens_per_observation
        ):
            raise DomainError(
                422, "validation", "body.expert_ids_shape" if obs.expert_ids_b64 else field,
                f"want [num_tokens <= {self.settings.max_tokens_per_observation}, {shape[0]}, "
                f"<= {top_k}]",
            )  # fmt: skip
        if ids.size and (ids.min() < 0 or ids.max() >= shape[1]):
            raise DomainError(422, "validation", field, f"ids must lie in [0, {shape[1]})")
        # One bincount over (layer, expert) cells: id + layer * num_experts.
        cells = ids + np.arange(shape[0], dtype=np.int64)[None, :, None] * shape[1]
        return np.bincount(cells.reshape(-1), minlength=shape[0] * shape[1]).reshape(shape)

    def _resolve(self, session_id: str, live: _Live) -> None:
        leased = False
        try:
            # One replica at a time re-solves a session; the lease outlives a slow solve.
            leased = self.store.try_lease(session_id, self.replica_id, self._lease_s)
            if not leased:
                return
            row = self.store.get(session_id)
            if row is None:
                return
            if drift(row.counts, row.plan_counts) <= live.spec.policy.drift_threshold:
                return  # another replica re-solved for these counts already
            counts = row.counts
            workload = self.workload_of(live.spec, live.case.model.top_k, counts)
            case = replace(live.case, workload=workload)
            if self.admission is None:
                valid, plan_json = place_json(case, self.settings)
            else:  # in a solve slot's worker, stopped at the deadline (None: no slot free)
                got = self.admission.run_background(
                    "solve", case.deadline_s, place_json, case, self.settings
                )
                if got is None:
                    return  # every solve slot is busy: the next drift retries
                valid, plan_json = got
            if valid:
                with live.lock:
                    version = self.store.swap_plan(session_id, plan_json, counts)
                    if version is not None:
                        live.plan_counts, live.version = counts, version
                self.resolves += 1
        except Exception:  # the old plan stays; the next drift tries again
            log.exception("re-solve of session %s failed", session_id)
        finally:
            if leased:
                self.store.release_lease(session_id, self.replica_id)
            with self._lock:
                self._resolving.discard(session_id)


def place_json(case: PlacementCase, settings: Settings) -> tuple[bool, str]:
    """A re-solve's plan (in a worker): whether it passed the executor, and its JSON."""
    response = place_case(case, settings)
    return response.report.valid, response.model_dump_json()


def expire(
    store: SessionStore,
    settings: Settings,
    sessions: SessionManager | None,
    ep_sessions: EpSessions | None,
) -> int:
    """Delete every session of both kinds idle longer than the TTL, from the store and from
    the managers' memory; returns how many went."""
    gone, ep_gone = store.expire(time.time() - settings.session_ttl_s)
    if sessions is not None:
        sessions.forget(gone)
    if ep_sessions is not None:
        ep_sessions.forget(ep_gone)
    if gone or ep_gone:
        log.info("expired %d sessions and %d EP sessions", len(gone), len(ep_gone))
    return len(gone) + len(ep_gone)


def make_room(
    store: SessionStore,
    settings: Settings,
    sessions: SessionManager | None,
    ep_sessions: EpSessions | None,
) -> None:
    """Expire idle sessions; refuse (429) a new one when sessions of both kinds still number
    ``settings.max_sessions``."""
    expire(store, settings, sessions, ep_sessions)
    if sum(store.count()) >= settings.max_sessions:
        raise DomainError(
            429, "too_many_sessions", "body",
            f"{settings.max_sessions} sessions exist (MOESCHED_MAX_SESSIONS); delete one or "
            f"wait for the TTL of {settings.session_ttl_s} s",
        )  # fmt: skip
