"""Device groups on Ray: one engine = N rank actors in one STRICT_PACK placement group.

With ``settings.parallel`` (world N) the dispatcher (``reelgen.executor.ray``) keeps each engine as a
**group**: a detached placement group ``reelgen-group-<i>`` of N bundles (``{"GPU": 1}`` each on a GPU
cluster, ``{"CPU": 1}`` without GPUs) packed onto one node, and one ``RankActor`` per bundle: rank 0 is
``reelgen-engine-<i>``, rank r ``reelgen-engine-<i>-rank-<r>`` (all detached, ``max_restarts=0``).

Forming a group never blocks the dispatcher: it calls ``rendezvous`` on every rank (rank 0 answers
with the free TCP port it took on the node; every rank with the GPUs Ray gave it) and passes those
answers, still unresolved, to every rank's ``join``; Ray runs ``join`` once all have answered. Each
rank then runs the device-group code the local executor's worker runs (``reelgen.groupworker``) in a
thread: rank 0 ``join_as_leader`` and an ordinary ``reelgen.attempt.Worker`` on the ``GroupLeader``
engine (it claims from the store, heartbeats, writes the output and records the outcome, exactly as a
one-device engine actor; a cancel or lost claim stops every rank at the same step), the others
``follow_leader``. On GPUs each rank makes the group's GPUs visible to itself (as Ray Train does) so
NCCL can use the GPUs' direct links; its device is its own GPU's index among them.

Failure: a rank that dies (``ray.kill``, a GPU fault) breaks the group's next collective: rank 0 ends
its process without recording an outcome (``GroupLeader``), a follower's loop ends with the error.
The dispatcher sees a rank's ping fail and retires the **whole** group (kills every rank, removes the
placement group), then forms a new one; the task's lease expires and the sweeper retries it as a new
attempt, so the store's attempt counter stays the only retry budget.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reelgen.attempt import Worker
    from reelgen.config import Settings
    from reelgen.groupworker import GroupLeader

log = logging.getLogger(__name__)

GROUP_PREFIX = "reelgen-group-"


def rank_name(name: str, rank: int) -> str:
    """The actor name of rank ``rank`` of engine ``name`` (rank 0 keeps the engine's own name)."""
    return name if rank == 0 else f"{name}-rank-{rank}"


def group_devices(gpu_ids: list[list[str]]) -> tuple[list[str], str | None]:
    """Each rank's device and the ``CUDA_VISIBLE_DEVICES`` every rank sets (None on CPU), from the GPU
    ids Ray gave each rank: the union in order, each rank on its own GPU's index in it."""
    if not any(gpu_ids):
        return ["cpu"] * len(gpu_ids), None
    visible = sorted({g for ids in gpu_ids for g in ids}, key=lambda g: (len(g), g))
    return [f"cuda:{visible.index(ids[0])}" for ids in gpu_ids], ",".join(visible)


class RankActor:
    """One rank of a device group; rank 0 also runs the group's ``Worker``."""

    def __init__(self, settings: Settings, name: str, rank: int) -> None:
        from reelgen.engines.parallel import free_port

        own = rank_name(name, rank)
        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s {own} %(name)s: %(message)s")
        self.settings, self.name, self.rank = settings, own, rank
        self.port = free_port() if rank == 0 else 0
        self.worker_id = f"ray:{name}:{uuid.uuid4().hex[:8]}"
        self.worker: Worker | None = None
        self._thread: threading.Thread | None = None

    def rendezvous(self) -> tuple[list[str], int]:
        """The GPU ids Ray gave this rank, and (rank 0) the port the group meets on."""
        import ray

        return [str(g) for g in ray.get_gpu_ids()], self.port

    def join(self, *answers: tuple[list[str], int]) -> None:
        """Start this rank's part (every rank's ``rendezvous`` answer, in rank order); a no-op once
        started, so a new dispatcher adopting the group may call it again."""
        if self._thread is not None:
            return
        devices, visible = group_devices([ids for ids, _ in answers])
        if visible is not None:  # before anything initialises CUDA in this process
            os.environ["CUDA_VISIBLE_DEVICES"] = visible
        target = self._lead if self.rank == 0 else self._follow
        self._thread = threading.Thread(target=target, args=(devices, answers[0][1]), name="reelgen-rank", daemon=True)
        self._thread.start()

    def _lead(self, devices: list[str], port: int) -> None:
        from reelgen.attempt import Worker
        from reelgen.groupworker import group_spec, join_as_leader

        leader: GroupLeader = join_as_leader(self.settings, devices, group_spec(self.settings, devices), port)
        self.worker = Worker(self.settings, device=",".join(devices), worker_id=self.worker_id)
        self.worker.load(leader)
        self.worker.run()
        leader.close()

    def _follow(self, devices: list[str], port: int) -> None:
        from reelgen.groupworker import follow_leader, group_spec

        try:
            follow_leader(self.settings, self.rank, devices, port, group_spec(self.settings, devices))
        except Exception:
            log.exception("rank %d: left the group", self.rank)
            raise

    def ping(self) -> str | None:
        """Rank 0: its worker id once the engine is loaded (None before); other ranks: their name.
        Raises once this rank's part has ended, so the dispatcher retires the group."""
        if self._thread is not None and not self._thread.is_alive():
            raise RuntimeError(f"{self.name}: rank {self.rank} has left the group")
        if self.rank == 0:
            return self.worker_id if self.worker is not None and self.worker.ready else None
        return self.name

    def wake(self) -> None:
        if self.worker is not None:
            self.worker.wake()

    def drain(self) -> None:
        """Rank 0: as an engine actor's drain; once the worker's loop ends the followers are told to stop."""
        if self.worker is not None:
            drain(self.worker)


def drain(worker: Worker) -> None:
    """An engine's drain (asked by the dispatcher): stop claiming; the current task finishes within the
    grace period, else it stops at its next step boundary and is handed back."""

    def enforce_grace() -> None:
        threading.Event().wait(worker.settings.shutdown_grace_seconds)
        worker.stop_current()

    if worker.drain("asked to drain by the dispatcher"):
        threading.Thread(target=enforce_grace, name="grace", daemon=True).start()


@dataclass
class Placed:
    """One engine as the dispatcher holds it: its actors (rank 0 first) and, for a group, its
    placement group."""

    name: str
    actors: list[Any]
    placement: Any = None
    #: the names of every actor (rank 0 first)
    names: list[str] = field(default_factory=list)

    @property
    def head(self) -> Any:
        return self.actors[0]

    def status(self) -> dict[str, Any]:
        return {"ranks": list(self.names), "placement_group": self.placement.id.hex() if self.placement else None}


def place_group(ray: Any, settings: Settings, name: str, index: int, size: int, use_gpus: bool) -> Placed:
    """The group for engine ``name``: its placement group and rank actors, made or adopted by name
    (a new dispatcher finds the running group), and asked to join. Returns at once."""
    from ray.util.placement_group import get_placement_group, placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from reelgen.executor.ray import NAMESPACE

    pg_name = f"{GROUP_PREFIX}{index}"
    try:
        pg = get_placement_group(pg_name)
    except ValueError:
        bundle = {"GPU": 1} if use_gpus else {"CPU": 1}
        pg = placement_group(
            [dict(bundle) for _ in range(size)], strategy="STRICT_PACK", name=pg_name, lifetime="detached"
        )
    resources: dict[str, Any] = {"num_gpus": 1, "num_cpus": 0} if use_gpus else {"num_cpus": 1}
    names = [rank_name(name, r) for r in range(size)]
    actors = [
        ray.remote(RankActor)
        .options(
            name=names[r],
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=0,
            max_task_retries=0,
            max_concurrency=4,
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=r),
            **resources,
        )
        .remote(settings, name, r)
        for r in range(size)
    ]
    answers = [actor.rendezvous.remote() for actor in actors]
    for actor in actors:
        actor.join.remote(*answers)
    log.info("device group %s: %d ranks in placement group %s (STRICT_PACK)", name, size, pg_name)
    return Placed(name=name, actors=actors, placement=pg, names=names)


def retire(ray: Any, placed: Placed) -> None:
    """End every actor of ``placed`` and remove its placement group (a group lives and dies whole)."""
    from ray.util.placement_group import remove_placement_group

    for actor in placed.actors:
        try:
            ray.kill(actor, no_restart=True)
        except Exception:  # already dead
            log.debug("an actor of %s was already dead", placed.name)
    if placed.placement is not None:
        try:
            remove_placement_group(placed.placement)
        except Exception:  # already removed
            log.debug("the placement group of %s was already removed", placed.name)
