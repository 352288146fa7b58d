"""The placement engine: where a model's copies should live (pure: no I/O, no clock).

Every function here is a deterministic function of a :class:`Snapshot` (what the caller's
etcd mirror says about instances and models, plus the time ``now_ms`` it passes in) and a
:class:`PlacementConfig`. Nothing is read from a clock, the environment or the network, and
the answer does not depend on the order in which instances or models are listed (ties are
broken by id). The caller (router on a cache miss, controller in the background) turns the
answer into etcd transactions and load/unload calls; if those fail because the world moved
on, it re-reads the mirror and asks again.

Three questions are answered:

* :func:`choose_instance` -- where to load one more copy of a model (cache miss, scale-up,
  re-homing).
* :func:`plan_scaling` -- which copies to add (per-copy request rate over a threshold; a
  second copy for models in regular use) and which to drop (cold copies, only when space
  is short).
* :func:`plan_rehoming` -- which models lost copies with instances whose lease expired,
  and where their new copies go.

Runtime labels (as ModelMesh places models): an instance advertises labels, ``rt:<runtime>``,
``mt:<format>``, ``mt:<format>:<version>`` and ``pv:<protocol>``; a model's type names the
labels it needs (:func:`model_labels`), and a copy goes only to an instance whose labels
contain all of them.

GPU memory: an instance with a GPU publishes its device capacity and use apart from host
memory, and a model measured on one a device size apart from its host size. On an instance
with a GPU such a model must fit both (free or made free by LRU eviction, of the kind that
is short); on an instance without one it runs on the CPU, so all its bytes are host bytes
there (:func:`needs_on`).

Units: bytes for sizes, milliseconds for times (``*_ms``), requests per minute for rates.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from mesh.domain.lru import choose_victims

__all__ = [
    "LABEL_PREFIXES",
    "AddCopy",
    "Choice",
    "CopyView",
    "InstanceView",
    "ModelView",
    "NoFit",
    "PlacementConfig",
    "RemoveCopy",
    "Rehome",
    "ScalingPlan",
    "Snapshot",
    "choose_instance",
    "copies_of",
    "fleet_free_bytes",
    "format_labels",
    "lost_copies",
    "model_labels",
    "needs_on",
    "parse_labels",
    "plan_rehoming",
    "plan_scaling",
    "supports",
    "with_load",
    "without_copy",
]

_MINUTE_MS = 60_000

#: Prefixes of the labels a model type may be written in: runtime, model format, protocol.
LABEL_PREFIXES = ("rt:", "mt:", "pv:")


# ---------------------------------------------------------------------------------------
# Runtime labels
# ---------------------------------------------------------------------------------------


def model_labels(model_type: str) -> frozenset[str]:
    """The labels an instance must advertise to take a model of ``model_type``.

    A label expression, as modelmesh-serving writes it (``rt:triton-2.x``, ``mt:onnx:1``,
    ``mt:sklearn|pv:grpc-v2``), needs every ``|``-separated label. A plain format
    (``onnx``, ``pytorch``, ``onnx:1``) needs ``mt:<format>``: its version is the runtime's
    business, as it always was here. Labels compare case-insensitively (they are folded to
    lower case); an empty type needs nothing (the runtime tells the format from the files).
    """
    text = model_type.strip().lower()
    if not text:
        return frozenset()
    if "|" in text or text.startswith(LABEL_PREFIXES):
        return frozenset(part.strip() for part in text.split("|") if part.strip())
    return frozenset({"mt:" + text.split(":", 1)[0].strip()})


def parse_labels(text: str) -> tuple[str, ...]:
    """Labels from a comma-separated list (``rt:triton-2.x,pv:grpc-v2``), folded to lower case,
    in order and without repeats; ValueError naming a label that holds ``|`` or white space."""
    labels: list[str] = []
    for part in text.split(","):
        label = part.strip().lower()
        if not label:
            continue
        if "|" in label or any(c.isspace() for c in label):
            raise ValueError(f"label {label!r} may not hold '|' or white space (give labels comma-separated)")
        if label not in labels:
            labels.append(label)
    return tuple(labels)


def format_labels(labels: Iterable[str]) -> str:
    """Labels as one expression (``mt:onnx|pv:grpc-v2``), sorted, for messages."""
    return "|".join(sorted(labels)) or "(none)"


# ---------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlacementConfig:
    """Every threshold the placement engine uses, each written once (unit and reason).

    The settings object of a process builds one of these; tests build their own.
    """

    scale_up_rate_per_copy: float = 2000.0
    """Requests/minute per copy above which a model gets another copy. ModelMesh's default:
    one runtime copy comfortably serves ~33 req/s of a small model; above that, latency
    is dominated by queueing on the copy, and a copy elsewhere halves it."""

    scale_down_fraction: float = 0.5
    """A surplus copy is "cold" when the per-copy rate *after* removing it would still be
    below ``scale_up_rate_per_copy * scale_down_fraction`` (dimensionless). The gap between
    the two thresholds is hysteresis, so a model near the threshold does not flap."""

    max_copies_per_model: int | None = None
    """Upper bound on copies of one model (None: one per eligible instance). Bounds the
    memory a single very hot model may take from the others."""

    regular_use_window_ms: int = 10 * _MINUTE_MS
    """A model used within this many ms, at ``regular_use_min_rate`` or more, is "in
    regular use" and gets a second copy for availability, so losing one instance does not
    turn its next request into a cold load."""

    regular_use_min_rate: float = 1.0
    """Requests/minute a model needs to count as in regular use: one stray request
    in the window is not a reason to hold its bytes twice."""

    recent_use_window_ms: int = 60 * _MINUTE_MS
    """A model used within this many ms keeps at least one copy when the controller trims
    copies, and is re-homed when its instance dies. Older models are left to load on demand
    (their copies remain ordinary LRU victims)."""

    min_free_fraction: float = 0.10
    """Fraction of fleet capacity kept free for cache misses. Below it "space is short":
    cold copies are trimmed, and second copies are not added when that would go below it.
    Misses that find free space load without waiting for an eviction."""

    max_loads_in_progress: int = 2
    """Loads in progress on one instance before it is ranked after idle ones. Loads share
    the instance's disk, network and CPU; a third concurrent load mostly waits."""

    max_adds_per_plan: int = 16
    """Copies one :func:`plan_scaling` call may add in total; bounds the load storm after a
    traffic spike or controller restart (the next cycle continues)."""

    def __post_init__(self) -> None:
        if self.scale_up_rate_per_copy <= 0:
            raise ValueError("scale_up_rate_per_copy must be > 0")
        if not 0 <= self.scale_down_fraction < 1:
            raise ValueError("scale_down_fraction must be in [0, 1)")
        if self.max_copies_per_model is not None and self.max_copies_per_model < 1:
            raise ValueError("max_copies_per_model must be >= 1 or None")
        if not 0 <= self.min_free_fraction < 1:
            raise ValueError("min_free_fraction must be in [0, 1)")
        if self.max_loads_in_progress < 1 or self.max_adds_per_plan < 0:
            raise ValueError("max_loads_in_progress must be >= 1, max_adds_per_plan >= 0")


# ---------------------------------------------------------------------------------------
# Snapshot
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CopyView:
    """One copy of a model on an instance, as the instance last published it."""

    size_bytes: int
    last_used_ms: int
    in_flight: int = 0
    """Requests being served by this copy; a copy with any is never removed."""
    loading: bool = False
    """True while the load is in progress (its bytes are in ``loading_bytes``)."""
    device_bytes: int = 0
    """GPU bytes the copy holds (or reserves), apart from ``size_bytes``."""


@dataclass(frozen=True)
class InstanceView:
    """One runtime instance as published under ``instances/<id>``.

    ``used_bytes`` counts loaded copies (and any runtime overhead the instance reports);
    ``loading_bytes`` counts loads in progress. Free space is ``capacity_bytes -
    used_bytes - loading_bytes`` and may be negative in a stale record (treated as 0).
    ``labels`` are the runtime labels it advertises (``mt:onnx``, ``rt:triton-2.x``, ...,
    lower case); an empty set takes only models whose type needs no label. ``copies`` is
    frozen into a read-only mapping (so views compare by value but are not hashable; key
    them by ``id``).
    """

    id: str
    capacity_bytes: int
    used_bytes: int = 0
    loading_bytes: int = 0
    zone: str = ""
    labels: frozenset[str] = frozenset()
    copies: Mapping[str, CopyView] = field(default_factory=dict)
    request_rate: float = 0.0
    """Requests/minute across all copies on the instance."""
    shutting_down: bool = False
    device_capacity_bytes: int = 0
    """GPU bytes models may hold; 0: no GPU (models run on the CPU, in host memory)."""
    device_used_bytes: int = 0
    """GPU bytes held or reserved, loads in progress included."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", frozenset(label.lower() for label in self.labels))
        object.__setattr__(self, "copies", MappingProxyType(dict(self.copies)))

    @property
    def free_bytes(self) -> int:
        """Bytes neither held nor reserved (never negative)."""
        return max(0, self.capacity_bytes - self.used_bytes - self.loading_bytes)

    @property
    def has_device(self) -> bool:
        return self.device_capacity_bytes > 0

    @property
    def device_free_bytes(self) -> int:
        """GPU bytes neither held nor reserved (never negative; 0 without a GPU)."""
        return max(0, self.device_capacity_bytes - self.device_used_bytes)

    @property
    def loads_in_progress(self) -> int:
        return sum(1 for c in self.copies.values() if c.loading)


@dataclass(frozen=True)
class ModelView:
    """A registered model as the placement engine sees it.

    ``model_type`` is the registered type, a plain format or a label expression; ``labels``
    are what it needs of an instance (:func:`model_labels`). ``last_used_ms`` is None for a
    model never used; ``rate_per_min`` is the request rate over all its copies
    (requests/minute, e.g. from the routers' counters).
    """

    id: str
    model_type: str
    size_estimate_bytes: int
    last_used_ms: int | None = None
    rate_per_min: float = 0.0
    recorded_instance_ids: frozenset[str] = frozenset()
    """Instances the registry record says hold a copy; lets :func:`lost_copies` notice
    copies on instances that vanished before this process saw their last record."""
    labels: frozenset[str] = field(init=False, repr=False, compare=False)
    device_size_estimate_bytes: int = 0
    """GPU bytes the model held where it was last loaded on one, apart from host bytes."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "recorded_instance_ids", frozenset(self.recorded_instance_ids))
        object.__setattr__(self, "labels", model_labels(self.model_type))


@dataclass(frozen=True)
class Snapshot:
    """Instances and models at time ``now_ms``; instances are kept sorted by id."""

    now_ms: int
    instances: tuple[InstanceView, ...] = ()
    models: Mapping[str, ModelView] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "instances", tuple(sorted(self.instances, key=lambda i: i.id)))
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))

    def instance(self, instance_id: str) -> InstanceView | None:
        for inst in self.instances:
            if inst.id == instance_id:
                return inst
        return None


# ---------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """Load the copy on ``instance_id``.

    ``evict`` is the eviction the engine expects the instance to need (LRU victims on the
    published state, empty when the copy fits in free space). The instance decides again on
    its own fresher state; this is the engine's reasoning, not an order.
    """

    instance_id: str
    evict: tuple[str, ...] = ()


@dataclass(frozen=True)
class NoFit:
    """No instance can take the copy now; ``reason`` says why, for status and logs.
    ``for_room``: instances with the model's labels exist but none has room now (a wait may
    help); ``unsupported``: no instance that is not shutting down has the model's labels
    (no runtime for it in the fleet); ``no_instances`` (with ``unsupported``): there is no
    instance that is not shutting down at all; neither: the instances with its labels are
    all excluded or hold a copy already."""

    reason: str
    for_room: bool = False
    unsupported: bool = False
    no_instances: bool = False


@dataclass(frozen=True)
class AddCopy:
    model_id: str
    instance_id: str
    evict: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class RemoveCopy:
    model_id: str
    instance_id: str
    reason: str


@dataclass(frozen=True)
class ScalingPlan:
    """Copies to add and to remove; ``skipped`` says which wanted adds found no home."""

    adds: tuple[AddCopy, ...] = ()
    removes: tuple[RemoveCopy, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()
    """(model id, reason) for each add the plan wanted but could not place."""


@dataclass(frozen=True)
class Rehome:
    """``model_id`` lost copies on ``lost_from``; load a new one per ``choice``."""

    model_id: str
    lost_from: tuple[str, ...]
    choice: Choice | NoFit


# ---------------------------------------------------------------------------------------
# Helpers over a snapshot
# ---------------------------------------------------------------------------------------


def copies_of(model_id: str, instances: Iterable[InstanceView]) -> list[InstanceView]:
    """Instances holding a copy (loaded or loading) of ``model_id``, in input order."""
    return [i for i in instances if model_id in i.copies]


def fleet_free_bytes(instances: Iterable[InstanceView]) -> tuple[int, int]:
    """(free bytes, capacity bytes) over instances that are not shutting down."""
    free = cap = 0
    for inst in instances:
        if not inst.shutting_down:
            free += inst.free_bytes
            cap += inst.capacity_bytes
    return free, cap


def needs_on(inst: InstanceView, size_bytes: int, device_bytes: int) -> tuple[int, int]:
    """(host bytes, GPU bytes) a model of those sizes takes on ``inst``: as they are where
    there is a GPU; all in host memory where there is none (it runs on the CPU there)."""
    if inst.has_device:
        return size_bytes, device_bytes
    return size_bytes + device_bytes, 0


def with_load(inst: InstanceView, model_id: str, size_bytes: int, evict: Iterable[str],
              now_ms: int, device_bytes: int = 0) -> InstanceView:
    """The instance after evicting ``evict`` and starting a load of ``model_id``
    (``device_bytes``: its GPU bytes, :func:`needs_on`).

    Lets a caller placing several copies in one pass see its own earlier decisions.
    """
    host, device = needs_on(inst, size_bytes, device_bytes)
    copies = dict(inst.copies)
    used, device_used = inst.used_bytes, inst.device_used_bytes
    for victim in evict:
        gone = copies.pop(victim)
        used -= gone.size_bytes
        device_used -= gone.device_bytes
    copies[model_id] = CopyView(host, now_ms, 0, loading=True, device_bytes=device)
    return replace(inst, used_bytes=used, loading_bytes=inst.loading_bytes + host,
                   device_used_bytes=device_used + device, copies=copies)


def without_copy(inst: InstanceView, model_id: str) -> InstanceView:
    """The instance after unloading its copy of ``model_id``."""
    copies = dict(inst.copies)
    gone = copies.pop(model_id)
    device_used = inst.device_used_bytes - gone.device_bytes
    if gone.loading:
        return replace(inst, loading_bytes=inst.loading_bytes - gone.size_bytes,
                       device_used_bytes=device_used, copies=copies)
    return replace(inst, used_bytes=inst.used_bytes - gone.size_bytes, device_used_bytes=device_used,
                   copies=copies)


def supports(inst: InstanceView, model: ModelView) -> bool:
    """The instance advertises every label the model's type needs."""
    return model.labels <= inst.labels


def _used_within(model: ModelView, window_ms: int, now_ms: int) -> bool:
    return model.last_used_ms is not None and now_ms - model.last_used_ms <= window_ms


# ---------------------------------------------------------------------------------------
# Choosing an instance
# ---------------------------------------------------------------------------------------


def choose_instance(
    model: ModelView,
    instances: Sequence[InstanceView],
    config: PlacementConfig = PlacementConfig(),
    *,
    allow_eviction: bool = True,
    exclude: Iterable[str] = (),
    protect: Collection[str] = (),
) -> Choice | NoFit:
    """Choose the instance for one more copy of ``model``.

    Guarantees on a :class:`Choice`: the instance is not shutting down, is not in
    ``exclude``, has every label of ``model.labels``, holds no copy of the model yet, and the copy
    fits in its free space (capacity minus used minus loads in progress) or, when
    ``allow_eviction``, in free space plus what LRU eviction of idle copies frees;
    ``evict`` is then that minimal LRU victim set, never holding a model in ``protect``.
    Where the instance has a GPU, the model's device bytes fit its free device memory the
    same way (eviction frees what is short of either kind); without one, they count as
    host bytes (:func:`needs_on`).

    Preference, strongest first:
      1. fits without eviction (evicting a warm copy makes someone else's next call a miss);
      2. a zone that holds no copy of the model (copies spread across failure domains);
      3. an instance with fewer than ``max_loads_in_progress`` loads running;
      4. most free bytes (loads reserve space, so concurrent misses spread out instead of
         piling onto one instance), for a model with device bytes most free device bytes
         first (so it goes to a GPU, where it ran); when every candidate is full: the one whose newest
         victim is oldest (evicting copies nobody used for longest), then fewer victims;
      5. lower request rate on the instance; 6. instance id (determinism).

    Returns :class:`NoFit` with the reason when no instance qualifies.
    """
    excluded = frozenset(exclude)
    # A copy on an instance that is shutting down is leaving; its zone does not count.
    zones_with_copy = {i.zone for i in instances
                       if model.id in i.copies and not i.shutting_down}
    ranked: list[tuple[tuple[object, ...], Choice]] = []
    saw_support = saw_candidate = saw_room = False
    for inst in instances:
        if inst.shutting_down or not supports(inst, model):
            continue
        saw_support = True
        if inst.id in excluded or model.id in inst.copies:
            continue
        saw_candidate = True
        size, device = needs_on(inst, model.size_estimate_bytes, model.device_size_estimate_bytes)
        free, device_free = inst.free_bytes, inst.device_free_bytes
        if size <= free and device <= device_free:
            victims: list[str] = []
            space_key: tuple[object, ...] = (0, -device_free if model.device_size_estimate_bytes else 0, -free, 0)
        elif allow_eviction and size <= inst.capacity_bytes and device <= inst.device_capacity_bytes:
            found = choose_victims(inst.copies, size - free, protect=protect, needed_device_bytes=device - device_free)
            if found is None:
                continue
            victims = found
            newest_victim = max(inst.copies[v].last_used_ms for v in victims)
            space_key = (1, 0, newest_victim, len(victims))
        else:
            continue
        saw_room = True
        key = (
            space_key[0],  # evicting someone's warm copy costs more than a copy in the same zone
            inst.zone in zones_with_copy,
            inst.loads_in_progress >= config.max_loads_in_progress,
            *space_key[1:],
            inst.request_rate,
            inst.id,
        )
        ranked.append((key, Choice(inst.id, tuple(victims))))
    if ranked:
        return min(ranked, key=lambda kc: kc[0])[1]
    if not any(not inst.shutting_down for inst in instances):
        return NoFit(f"no live instance at all to take {model.id!r}", unsupported=True, no_instances=True)
    if not saw_support:
        return NoFit(f"no live instance has the labels {format_labels(model.labels)} that model"
                     f" {model.id!r} of type {model.model_type!r} needs", unsupported=True)
    if not saw_candidate:
        return NoFit(f"every instance with the labels {format_labels(model.labels)} is excluded"
                     f" or holds a copy of {model.id!r} already")
    assert not saw_room
    how = "even after evicting idle copies" if allow_eviction else "in free space"
    device = f", {model.device_size_estimate_bytes} on a GPU" if model.device_size_estimate_bytes else ""
    return NoFit(f"no instance has room for {model.id!r} ({model.size_estimate_bytes} bytes{device}) {how}",
                 for_room=True)


# ---------------------------------------------------------------------------------------
# Scaling
# ---------------------------------------------------------------------------------------


def _wanted_copies(model: ModelView, have: int, draining: int, config: PlacementConfig,
                   now_ms: int, cap: int) -> tuple[int, str, bool]:
    """(copies ``model`` should have, why, whether adding them may evict LRU copies)."""
    if have == 0:
        if draining and _used_within(model, config.recent_use_window_ms, now_ms):
            return min(1, cap), "only copies are on instances shutting down", True
        # No copy: the next request loads one on demand; re-homing covers lost copies.
        return 0, "", False
    if model.rate_per_min / have > config.scale_up_rate_per_copy:
        want = math.ceil(model.rate_per_min / config.scale_up_rate_per_copy)
        return min(want, cap), (
            f"{model.rate_per_min / have:.0f} req/min per copy over"
            f" {config.scale_up_rate_per_copy:.0f}"
        ), True
    if have == 1 and _regular_use(model, config, now_ms):
        # Availability, not load: worth free space, not worth evicting someone's copy.
        return min(2, cap), "second copy for a model in regular use", False
    return have, "", False


def _regular_use(model: ModelView, config: PlacementConfig, now_ms: int) -> bool:
    return (_used_within(model, config.regular_use_window_ms, now_ms)
            and model.rate_per_min >= config.regular_use_min_rate)


def plan_scaling(snapshot: Snapshot, config: PlacementConfig = PlacementConfig()) -> ScalingPlan:
    """Copies to add and remove, from per-copy request rates and free space.

    Adds (hottest per-copy rate first, at most ``max_adds_per_plan``):
      * while ``rate_per_min / copies > scale_up_rate_per_copy``: enough copies to bring it
        under (capped by ``max_copies_per_model``); these may evict LRU copies;
      * one second copy for a model in regular use, only into free space and only if the
        fleet stays above ``min_free_fraction`` free;
      * one copy elsewhere for a recently used model whose only copies are on instances
        shutting down (may evict).
    Removes, only while the fleet is below ``min_free_fraction`` free, coldest first:
      * surplus copies whose model would stay under the scale-down rate without them,
        never below one copy for a model used within ``recent_use_window_ms``, and the
        only copy of models not used within it.
    Never removes a copy with requests in flight or a load in progress, and never plans an
    add and a remove for the same model. Each decision sees the previous ones (the plan
    is applied to a working copy of the snapshot as it is built).
    """
    now = snapshot.now_ms
    work: dict[str, InstanceView] = {i.id: i for i in snapshot.instances}
    live = [i for i in snapshot.instances if not i.shutting_down]
    eligible_count = {m.id: sum(1 for i in live if supports(i, m))
                      for m in snapshot.models.values()}

    def holders(model_id: str, draining: bool = False) -> int:
        return sum(1 for i in work.values()
                   if i.shutting_down == draining and model_id in i.copies)

    # -- adds ----------------------------------------------------------------------------
    adds: list[AddCopy] = []
    skipped: list[tuple[str, str]] = []
    demand = sorted(
        (-m.rate_per_min / max(1, holders(m.id)), m.id) for m in snapshot.models.values()
    )
    for _, model_id in demand:
        m = snapshot.models[model_id]
        cap = eligible_count[model_id]
        if config.max_copies_per_model is not None:
            cap = min(cap, config.max_copies_per_model)
        have = holders(model_id)
        want, why, may_evict = _wanted_copies(m, have, holders(model_id, draining=True),
                                              config, now, cap)
        while have < want and len(adds) < config.max_adds_per_plan:
            if not may_evict:
                free, total = fleet_free_bytes(work.values())
                if free - m.size_estimate_bytes < config.min_free_fraction * total:
                    skipped.append((model_id, f"{why}: space is short"))
                    break
            # A copy more of a hot model must not cost a recently used model its last copy.
            last_copies = frozenset(
                other.id for other in snapshot.models.values()
                if other.id != model_id and holders(other.id) == 1
                and _used_within(other, config.recent_use_window_ms, now))
            choice = choose_instance(m, list(work.values()), config, allow_eviction=may_evict,
                                     protect=last_copies)
            if isinstance(choice, NoFit):
                skipped.append((model_id, choice.reason))
                break
            inst = work[choice.instance_id]
            work[inst.id] = with_load(inst, model_id, m.size_estimate_bytes, choice.evict, now,
                                      m.device_size_estimate_bytes)
            adds.append(AddCopy(model_id, inst.id, choice.evict, why))
            have += 1

    # -- removes -------------------------------------------------------------------------
    removes: list[RemoveCopy] = []
    added = {a.model_id for a in adds}
    free, total = fleet_free_bytes(work.values())
    target_free = config.min_free_fraction * total
    if free < target_free:
        down_rate = config.scale_up_rate_per_copy * config.scale_down_fraction
        candidates: list[tuple[tuple[object, ...], str, str, str]] = []
        for m in snapshot.models.values():
            if m.id in added:
                continue
            holders = [i for i in work.values() if not i.shutting_down and m.id in i.copies]
            have = len(holders)
            recent = _used_within(m, config.recent_use_window_ms, now)
            floor = 1 if recent else 0
            if have <= floor:
                continue
            # Only copies whose model stays under the scale-down rate without them.
            surplus = 0
            for n in range(have, floor, -1):
                if n - 1 == 0 or m.rate_per_min / (n - 1) < down_rate:
                    surplus += 1
                else:
                    break
            if surplus == 0:
                continue
            removable = sorted(
                (i for i in holders
                 if i.copies[m.id].in_flight == 0 and not i.copies[m.id].loading),
                # Relieve the fullest instance first; keep the most recently used copy.
                key=lambda i: (i.free_bytes, i.copies[m.id].last_used_ms, i.id),
            )
            why = "cold copy while space is short" if recent else (
                "unused model while space is short")
            last = m.last_used_ms if m.last_used_ms is not None else -1
            for inst in removable[:surplus]:
                candidates.append(((m.rate_per_min, last, m.id, inst.id), m.id, inst.id, why))
        for _, model_id, inst_id, why in sorted(candidates):
            if free >= target_free:
                break
            inst = work[inst_id]
            size = inst.copies[model_id].size_bytes
            work[inst_id] = without_copy(inst, model_id)
            free += size
            removes.append(RemoveCopy(model_id, inst_id, why))

    return ScalingPlan(tuple(adds), tuple(removes), tuple(skipped))


# ---------------------------------------------------------------------------------------
# Re-homing
# ---------------------------------------------------------------------------------------


def lost_copies(snapshot: Snapshot, gone: Iterable[InstanceView] = ()) -> dict[str, tuple[str, ...]]:
    """Models that lost copies, mapped to the instance ids they were lost from (sorted).

    A copy is lost when it was on an instance in ``gone`` (last records of instances whose
    lease expired, from the caller's mirror) or on an instance in a model's
    ``recorded_instance_ids`` that is not among ``snapshot.instances``. A copy that is
    on a live instance is never reported lost.
    """
    live_ids = {i.id for i in snapshot.instances}
    lost: dict[str, set[str]] = {}
    for inst in gone:
        if inst.id in live_ids:
            continue
        for model_id in inst.copies:
            lost.setdefault(model_id, set()).add(inst.id)
    for m in snapshot.models.values():
        for inst_id in m.recorded_instance_ids - live_ids:
            lost.setdefault(m.id, set()).add(inst_id)
    return {m: tuple(sorted(ids)) for m, ids in sorted(lost.items())}


def plan_rehoming(
    snapshot: Snapshot,
    gone: Iterable[InstanceView] = (),
    config: PlacementConfig = PlacementConfig(),
) -> tuple[Rehome, ...]:
    """New homes for copies lost with instances that are gone.

    Only models still registered and used within ``recent_use_window_ms`` are re-homed
    (others load on demand if ever used again). Each lost copy gets one new home, up to
    ``max_copies_per_model``; the model's only copy (none left alive) may evict LRU copies,
    extra copies go only into free space. Most recently used models are placed first so
    they win the free space. A lost copy with no home gets a ``Rehome`` whose choice is
    :class:`NoFit`, so the caller can report it.
    """
    now = snapshot.now_ms
    work: dict[str, InstanceView] = {i.id: i for i in snapshot.instances}
    lost = lost_copies(snapshot, gone)
    order = sorted(
        (m for m in lost if m in snapshot.models
         and _used_within(snapshot.models[m], config.recent_use_window_ms, now)),
        key=lambda m: (-(snapshot.models[m].last_used_ms or 0), m),
    )
    out: list[Rehome] = []
    for model_id in order:
        m = snapshot.models[model_id]
        want = len(lost[model_id])
        have = sum(1 for i in work.values() if not i.shutting_down and model_id in i.copies)
        if config.max_copies_per_model is not None:
            want = min(want, config.max_copies_per_model - have)
        for _ in range(want):
            choice = choose_instance(m, list(work.values()), config, allow_eviction=have == 0)
            out.append(Rehome(model_id, lost[model_id], choice))
            if isinstance(choice, NoFit):
                break
            inst = work[choice.instance_id]
            work[inst.id] = with_load(inst, model_id, m.size_estimate_bytes, choice.evict, now,
                                      m.device_size_estimate_bytes)
            have += 1
    return tuple(out)
