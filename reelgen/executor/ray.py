"""``executor = "ray"``: one long-lived engine actor per GPU across a Ray cluster.

Shape (all actors live in the Ray namespace ``reelgen``):

* **engine actors** ``reelgen-engine-<i>``: each holds one ``reelgen.attempt.Worker`` with its engine
  loaded once, and runs the worker's own loop in a thread: claim from the store, heartbeat, render,
  store, complete, all fenced by the attempt number exactly as in a worker subprocess. One GPU per
  actor (``num_gpus=1``; on a cluster without GPUs, ``num_cpus=1``). They are **detached**, so
  neither an API replica's death nor the dispatcher's kills a generation in progress.
* the **dispatcher** ``reelgen-dispatcher`` (detached, ``num_cpus=0``, restarted by Ray if its
  process dies): keeps the wanted number of engine actors alive (adopting the ones that already
  exist by name, replacing dead ones), forwards wake-ups, and runs the sweeper, which requeues
  the task of an actor that died once its lease runs out (or fails it at ``max_attempts``).
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
        if self.worker.drain("asked to drain by the dispatcher"):
            threading.Thread(target=self._enforce_grace, name="grace", daemon=True).start()

    def _enforce_grace(self) -> None:
        threading.Event().wait(self.worker.settings.shutdown_grace_seconds)
        self.worker.stop_current()  # it stops at its next step boundary and hands its task back


class Dispatcher:
    """Keeps ``count`` engine actors alive, forwards wake-ups, and runs the sweeper."""

    def __init__(self, settings: Settings) -> None:
        from reelgen.storage import pick
        from reelgen.store.db import Database
        from reelgen.sweeper import Sweeper

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s dispatcher %(name)s: %(message)s")
        self.ray = import_ray()
        self.settings = settings
        gpus = int(self.ray.cluster_resources().get("GPU", 0))
        self.use_gpus = gpus > 0
        self.count = settings.ray_actors or gpus or len(settings.device_list)
        self._lock = threading.Lock()  # engines/worker_ids: the supervisor thread vs. method calls
        self.engines: dict[str, Any] = {}
        self.worker_ids: dict[str, str] = {}
        self.deaths = 0
        self.db = Database.from_settings(settings)
        self.sweeper = Sweeper(settings, self.db, pick(settings))
        self.sweeper.start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="reelgen-dispatcher", daemon=True)
        self._thread.start()
        log.info("dispatcher up: %d engine actor(s) on %s", self.count, "GPUs" if self.use_gpus else "CPU slots")

    # called by API replicas
    def notify(self) -> None:
        with self._lock:
            handles = list(self.engines.values())
        for handle in handles:
            handle.wake.remote()

    def status(self) -> dict[str, Any]:
        """The engine actors by name with their worker ids, and how many deaths were seen."""
        with self._lock:
            return {"count": self.count, "workers": dict(self.worker_ids), "deaths": self.deaths}

    def shutdown(self) -> None:
        """Drain and remove every engine actor (an operator's full stop; replicas never call it)."""
        self._stop.set()
        self._thread.join()
        with self._lock:
            handles = list(self.engines.values())
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
            # one per GPU: a GPU node that joined the cluster gets its engine actors here
            self.count = max(self.count, int(ray.cluster_resources().get("GPU", 0)))
        for i in range(self.count):
            name = engine_name(i)
            with self._lock:
                if name in self.engines:
                    continue
            resources: dict[str, Any] = {"num_gpus": 1} if self.use_gpus else {"num_cpus": 1}
            device = "cuda:0" if self.use_gpus else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES per actor
            handle = (
                ray.remote(EngineActor)
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
            log.info("engine actor %s: started or adopted", name)
            with self._lock:
                self.engines[name] = handle

    def _check_engines(self) -> None:
        ray = self.ray
        with self._lock:
            pings = {handle.ping.remote(): name for name, handle in self.engines.items()}
        ready, _ = ray.wait(list(pings), num_returns=len(pings), timeout=PING_TIMEOUT_SECONDS)
        for ref in ready:
            name = pings[ref]
            try:
                worker_id = ray.get(ref)
                with self._lock:
                    self.worker_ids[name] = worker_id
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
                self._replace(name, exc)

    def _replace(self, name: str, why: BaseException) -> None:
        """An engine actor died (or its loop stopped): its task's lease will expire and the sweeper
        requeue it as a new attempt; start a fresh actor under the same name."""
        with self._lock:
            self.deaths += 1
            worker_id = self.worker_ids.pop(name, "?")
            handle = self.engines.pop(name)
        log.error("engine actor %s (%s) is gone (%s); starting a new one", name, worker_id, type(why).__name__)
        try:
            self.ray.kill(handle, no_restart=True)
        except Exception:  # already dead
            log.debug("engine actor %s was already dead", name)


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
