"""``executor = "ray"``: one long-lived engine per GPU (or per device group) across a Ray cluster.

Shape (all actors live in the Ray namespace ``reelgen``):

* **engine actors** ``reelgen-engine-<i>``: each holds one ``reelgen.attempt.Worker`` with its engine
  loaded once, and runs the worker's own loop in a thread: claim from the store, heartbeat, render,
  store, complete, all fenced by the attempt number exactly as in a worker subprocess. One GPU per
  actor (``num_gpus=1``; on a cluster without GPUs, ``num_cpus=1``). They are **detached**, so
  neither an API replica's death nor the dispatcher's kills a generation in progress.
* **device groups** (``settings.parallel``, world N): an engine is N rank actors in one STRICT_PACK
  placement group on one node, rank 0 named ``reelgen-engine-<i>`` and running the worker; the
  dispatcher treats the group as one engine (formed, pinged, retired and replaced whole).
  ``reelgen.executor.raygroup`` has the details.
* the **dispatcher** ``reelgen-dispatcher`` (detached, ``num_cpus=0``, restarted by Ray if its
  process dies): keeps the wanted number of engines alive (adopting the ones that already exist
  by name, replacing dead ones; a group whose rank died is replaced whole), forwards wake-ups, and
  runs the sweeper, which requeues the task of an engine that died once its lease runs out (or
  fails it at ``max_attempts``).
* each API replica's ``RayExecutor`` only connects to the cluster, makes sure the dispatcher
  exists (``get_if_exists``: replicas starting together share one) and forwards ``notify``.
  ``stop`` disconnects and leaves the actors running for the other replicas.

The store is the source of truth and its attempt counter the only retry budget: engine actors
have ``max_restarts=0`` and ``max_task_retries=0`` (Ray never re-runs a generation; the dispatcher
starts a *new* actor, which claims whatever the store says is pending), and no generation result
travels through Ray. Ray is imported only here (``pip install 'reelgen[ray]'``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from reelgen.errors import ErrorCode, ReelgenError
from reelgen.executor.raygroup import Placed, drain, place_group, retire

if TYPE_CHECKING:
    from reelgen.attempt import Worker
    from reelgen.config import Settings

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'reelgen[ray]'"
NAMESPACE = "reelgen"
DISPATCHER_NAME = "reelgen-dispatcher"
ENGINE_PREFIX = "reelgen-engine-"
#: How often the dispatcher checks its engine actors.
SUPERVISE_SECONDS = 1.0
#: A ping unanswered this long is not yet a death (the actor may still be loading its engine).
PING_TIMEOUT_SECONDS = 5.0


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ReelgenError(
            ErrorCode.INVALID_SETTINGS, f"executor 'ray' needs Ray, which is not installed: run {INSTALL_HINT}"
        ) from None
    return ray


def engine_name(index: int) -> str:
    return f"{ENGINE_PREFIX}{index}"


class EngineActor:
    """One engine on one GPU (or CPU slot): a ``Worker`` running its claim loop in a thread."""

    def __init__(self, settings: Settings, name: str, device: str) -> None:
        from reelgen.attempt import Worker

        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s {name} %(name)s: %(message)s")
        self.worker_id = f"ray:{name}:{uuid.uuid4().hex[:8]}"
        self.worker: Worker = Worker(settings, device=device, worker_id=self.worker_id)
        self.worker.load()
        self._thread = threading.Thread(target=self.worker.run, name="reelgen-worker", daemon=True)
        self._thread.start()

    def ping(self) -> str:
        """The worker id while the claim loop runs; raises once it has stopped (so it gets replaced)."""
        if not self._thread.is_alive():
            raise RuntimeError(f"{self.worker_id}: the worker loop has stopped")
        return self.worker_id

    def wake(self) -> None:
        self.worker.wake()

    def drain(self) -> None:
        """Stop claiming; the current task finishes or is handed back within the grace period."""
        drain(self.worker)


class Dispatcher:
    """Keeps ``count`` engines alive (one actor each, or a device group of ``size`` rank actors),
    forwards wake-ups, and runs the sweeper."""

    def __init__(self, settings: Settings) -> None:
        from reelgen.groupworker import group_size
        from reelgen.storage import pick
        from reelgen.store.db import Database
        from reelgen.sweeper import Sweeper

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s dispatcher %(name)s: %(message)s")
        self.ray = import_ray()
        self.settings = settings
        gpus = int(self.ray.cluster_resources().get("GPU", 0))
        self.use_gpus = gpus > 0
        #: devices per engine: > 1 with ``settings.parallel`` (``reelgen.executor.raygroup``)
        self.size = group_size(settings)
        self.count = settings.ray_actors or gpus // self.size or max(1, len(settings.device_list) // self.size)
        self._lock = threading.Lock()  # engines/worker_ids: the supervisor thread vs. method calls
        self.engines: dict[str, Placed] = {}
        self.worker_ids: dict[str, str] = {}
        self.deaths = 0
        self.db = Database.from_settings(settings)
        self.sweeper = Sweeper(settings, self.db, pick(settings))
        self.sweeper.start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="reelgen-dispatcher", daemon=True)
        self._thread.start()
        log.info(
            "dispatcher up: %d engine(s) of %d %s each",
            self.count, self.size, "GPU(s)" if self.use_gpus else "CPU slot(s)",
        )  # fmt: skip

    # called by API replicas
    def notify(self) -> None:
        with self._lock:
            handles = [placed.head for placed in self.engines.values()]
        for handle in handles:
            handle.wake.remote()

    def status(self) -> dict[str, Any]:
        """The ready engines by name with their worker ids, every engine's actors (and placement group),
        and how many engine deaths were seen (a group's counts once)."""
        with self._lock:
            return {
                "count": self.count,
                "size": self.size,
                "workers": dict(self.worker_ids),
                "engines": {name: placed.status() for name, placed in self.engines.items()},
                "deaths": self.deaths,
            }

    def shutdown(self) -> None:
        """Drain every engine (an operator's full stop; replicas never call it)."""
        self._stop.set()
        self._thread.join()
        with self._lock:
            handles = [placed.head for placed in self.engines.values()]
        for handle in handles:
            handle.drain.remote()
        self.sweeper.stop()

    # internals
    def _supervise(self) -> None:
        while not self._stop.is_set():
            try:
                self._ensure_engines()
                self._check_engines()
            except Exception:
                log.exception("supervising engine actors failed; retrying")
            self._stop.wait(SUPERVISE_SECONDS)

    def _ensure_engines(self) -> None:
        ray = self.ray
        if not self.settings.ray_actors and self.use_gpus:
            # one per GPU (or group of GPUs): a GPU node that joined the cluster gets its engines here
            self.count = max(self.count, int(ray.cluster_resources().get("GPU", 0)) // self.size)
        for i in range(self.count):
            name = engine_name(i)
            with self._lock:
                if name in self.engines:
                    continue
            if self.size > 1:
                placed = place_group(ray, self.settings, name, i, self.size, self.use_gpus)
            else:
                placed = Placed(name=name, actors=[self._start_actor(name)], names=[name])
            log.info("engine %s: started or adopted", name)
            with self._lock:
                self.engines[name] = placed

    def _start_actor(self, name: str) -> Any:
        resources: dict[str, Any] = {"num_gpus": 1} if self.use_gpus else {"num_cpus": 1}
        device = "cuda:0" if self.use_gpus else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES per actor
        return (
            self.ray.remote(EngineActor)
            .options(
                name=name,
                namespace=NAMESPACE,
                lifetime="detached",
                get_if_exists=True,  # adopt the actor a previous dispatcher started
                max_restarts=0,
                max_task_retries=0,
                max_concurrency=4,
                **resources,
            )
            .remote(self.settings, name, device)
        )

    def _check_engines(self) -> None:
        ray = self.ray
        with self._lock:
            pings = {
                actor.ping.remote(): (name, rank)
                for name, placed in self.engines.items()
                for rank, actor in enumerate(placed.actors)
            }
        ready, _ = ray.wait(list(pings), num_returns=len(pings), timeout=PING_TIMEOUT_SECONDS)
        answered: dict[str, int] = {}
        heads: dict[str, str | None] = {}
        dead: dict[str, BaseException] = {}
        for ref in ready:
            name, rank = pings[ref]
            try:
                answer = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
                dead.setdefault(name, exc)
                continue
            answered[name] = answered.get(name, 0) + 1
            if rank == 0:
                heads[name] = answer
        for name, why in dead.items():
            self._replace(name, why)
        with self._lock:
            for name, worker_id in heads.items():
                placed = self.engines.get(name)
                # a group is ready when rank 0's engine is loaded and every rank answers
                if placed is not None and worker_id is not None and answered[name] == len(placed.actors):
                    self.worker_ids[name] = worker_id

    def _replace(self, name: str, why: BaseException) -> None:
        """An engine actor died (or its loop stopped), or a rank of a group did: its task's lease will
        expire and the sweeper requeue it as a new attempt. End the engine whole (every rank, and the
        placement group); the next pass starts a fresh one under the same name."""
        with self._lock:
            self.deaths += 1
            worker_id = self.worker_ids.pop(name, "?")
            placed = self.engines.pop(name, None)
        if placed is None:
            return
        log.error("engine %s (%s) is gone (%s); starting a new one", name, worker_id, type(why).__name__)
        retire(self.ray, placed)


def ensure_dispatcher(settings: Settings) -> Any:
    """The cluster's dispatcher actor, created if none runs yet (safe when replicas race)."""
    ray = import_ray()
    return (
        ray.remote(Dispatcher)
        .options(
            name=DISPATCHER_NAME,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            max_task_retries=0,
            max_concurrency=4,
            num_cpus=0,
        )
        .remote(settings)
    )


class RayExecutor:
    """An API replica's handle on the cluster: connect, make sure the dispatcher runs, notify."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._dispatcher: Any = None
        self._connected_here = False

    def start(self) -> None:
        from reelgen.groupworker import group_size

        group_size(self.settings)  # a device group this build cannot form stops here, not in the dispatcher
        ray = import_ray()
        if not ray.is_initialized():
            ray.init(address=self.settings.ray_address, namespace=NAMESPACE, log_to_driver=False)
            self._connected_here = True
        self._dispatcher = ensure_dispatcher(self.settings)
        log.info("ray executor: dispatcher %s in namespace %s", DISPATCHER_NAME, NAMESPACE)

    @property
    def dispatcher(self) -> Any:
        if self._dispatcher is None:
            raise RuntimeError("the executor is not started")
        return self._dispatcher

    def notify(self) -> None:
        try:
            self.dispatcher.notify.remote()
        except Exception:  # the dispatcher is being restarted: the engines poll the store anyway
            log.warning("could not reach the dispatcher; engine actors will find the task at their next poll")

    def stop(self) -> None:
        """Disconnect; the detached dispatcher and engine actors keep serving the other replicas."""
        self._dispatcher = None
        if self._connected_here:
            import_ray().shutdown()
            self._connected_here = False


def wait_for_engines(dispatcher: Any, count: int, timeout: float) -> dict[str, str]:
    """Block until the dispatcher reports ``count`` live engine actors (operators' scripts, tests)."""
    ray = import_ray()
    deadline = time.monotonic() + timeout
    while True:
        workers: dict[str, str] = ray.get(dispatcher.status.remote())["workers"]
        if len(workers) >= count:
            return workers
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(workers)} of {count} engine actors came up within {timeout:.0f} s")
        time.sleep(0.2)
