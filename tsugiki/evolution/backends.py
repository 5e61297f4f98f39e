"""Where candidates are evaluated: in this process, in local worker processes, or on a Ray cluster.

Every backend runs the same :func:`evaluate_task` on a :class:`Task` and returns a :class:`Result`;
the runner orders results by task index, so the history does not depend on which worker finished
first. Each evaluation runs with the same number of torch threads (``search.threads``) whatever the
backend, so CPU reductions add up in the same order and parallel runs equal serial ones.

Backends are registered by the name ``search.backend`` gives (:data:`BACKENDS`): ``local`` (this process for
one worker, else a pool of local processes) and ``ray``.

A candidate that raises, returns NaN or runs past ``search.timeout`` seconds gets ``fitness=None`` and
its error; the timeout is a SIGALRM in the evaluating process's main thread (it interrupts Python code
between operations, not a single long C call). A local worker that dies fails its candidate and is
replaced.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from tsugiki.errors import EvolutionError
from tsugiki.evolution.config import from_data
from tsugiki.evolution.front import summary
from tsugiki.evolution.problems import SetupError, make_problem
from tsugiki.registry import Registry
from tsugiki.threads import torch_threads


@dataclass(frozen=True)
class Task:
    """One evaluation. ``per_item``: return the per-item scores (of the items at ``items``, all when None)
    too; ``source``: score that source as it is instead of the candidate ``x`` (calibration)."""

    index: int
    x: tuple[float, ...]
    split: str = "fitness"
    seed: int = 0
    per_item: bool = False
    items: tuple[int, ...] | None = None
    source: str | None = None


@dataclass(frozen=True)
class Result:
    fitness: float | None
    error: str | None
    seconds: float
    fatal: bool = False  # the problem itself cannot be set up (models do not load): the run stops
    scores: tuple[float, ...] | None = None  # per-item scores of a per_item task; fitness is their mean
    objectives: tuple[float, ...] | None = None  # a multi-objective fitness's values; fitness: their summary


class CandidateTimeout(Exception):
    pass


class _time_limit:
    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.active = bool(seconds) and threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")

    def _fire(self, signum, frame):
        raise CandidateTimeout(f"timed out after {self.seconds:g} s")

    def __enter__(self):
        if self.active:
            self.previous = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, float(self.seconds))
        return self

    def __exit__(self, *exc):
        if self.active:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
        return False


def evaluate_task(problem, task: Task, *, timeout: float | None, threads: int) -> Result:
    """Decode, evaluate and time one candidate; never raises for a failing candidate."""
    start = time.perf_counter()
    try:
        with torch_threads(threads), _time_limit(timeout):
            values = problem.space.decode(task.x) if task.source is None else {}
            if not task.per_item and problem.objective_names:
                objs = problem.evaluate_objectives(values, task.split, task.seed)
                return Result(summary(objs, problem.directions), None, time.perf_counter() - start, objectives=tuple(objs))
            if not task.per_item:
                return Result(problem.evaluate(values, task.split, task.seed), None, time.perf_counter() - start)
            scores = problem.evaluate_items(values, task.split, task.seed, items=task.items, source=task.source)
        return Result(math.fsum(scores) / len(scores), None, time.perf_counter() - start, scores=tuple(scores))
    except (KeyboardInterrupt, SystemExit):
        raise
    except SetupError as e:
        return Result(None, str(e), time.perf_counter() - start, fatal=True)
    except BaseException as e:  # noqa: BLE001 - a failing candidate must not stop the run
        msg = f"{type(e).__name__}: {e}"
        tb = traceback.extract_tb(e.__traceback__)
        if tb:
            msg += f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})"
        return Result(None, msg, time.perf_counter() - start)


def in_index_order(results: Iterable[tuple[Task, Result]], first: int) -> Iterator[tuple[Task, Result]]:
    """A backend's ``map`` results in task-index order from ``first`` on, whatever order workers finish
    in (so logs do not depend on it); a fatal result (the problem cannot be set up) stops the run."""
    buffered: dict[int, tuple[Task, Result]] = {}
    for task, res in results:
        if res.fatal:
            raise EvolutionError(res.error)
        buffered[task.index] = (task, res)
        while first in buffered:
            yield buffered.pop(first)
            first += 1


# ------------------------------------------------------------------------------ serial
class SerialBackend:
    """Evaluates in this process, one candidate at a time."""

    name = "serial"

    def __init__(self, problem, *, timeout: float | None = None, threads: int = 1, keep_problem: bool = False):
        self.problem, self.timeout, self.threads, self.keep_problem = problem, timeout, threads, keep_problem

    def map(self, tasks: Sequence[Task]) -> Iterator[tuple[Task, Result]]:
        for t in tasks:
            yield t, evaluate_task(self.problem, t, timeout=self.timeout, threads=self.threads)

    def close(self) -> None:
        if not self.keep_problem:  # see evolve(keep=...)
            self.problem.close()  # a resident engine (vLLM's KV cache: GBs) goes when the run ends


# ------------------------------------------------------------------------------ local processes
_WORKER: dict[str, Any] = {}


def _init_worker(config_data: Mapping, run_dir: str, timeout: float | None, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(timeout=timeout, threads=threads)
    try:
        _WORKER["problem"] = make_problem(from_data(config_data), Path(run_dir))
    except Exception as e:  # noqa: BLE001 - reported with the first task instead of a dead pool
        _WORKER["error"] = f"worker setup failed: {type(e).__name__}: {e}"


def _run_in_worker(task: Task) -> Result:
    if "error" in _WORKER:
        return Result(None, _WORKER["error"], 0.0, fatal=True)
    return evaluate_task(_WORKER["problem"], task, timeout=_WORKER["timeout"], threads=_WORKER["threads"])


_DIED = ("worker process died (killed, crashed, or could not start: a script that runs workers > 1 must guard "
         "its top level with `if __name__ == '__main__':`)")


class ProcessBackend:
    """A pool of ``workers`` local processes (``spawn``), each building the problem once."""

    name = "local"

    def __init__(self, config, run_dir: Path, *, workers: int, timeout: float | None = None, threads: int = 1):
        self.args = (dict(config.data), str(run_dir), timeout, threads)
        self.workers = workers
        self.pool = self._new_pool()

    @classmethod
    def create(cls, problem, config, run_dir: Path, *, workers: int, timeout: float | None, threads: int,
               keep_problem: bool = False):
        """``local``: one worker evaluates in this process (:class:`SerialBackend`, on ``problem``), more in a pool."""
        if workers <= 1:
            return SerialBackend(problem, timeout=timeout, threads=threads, keep_problem=keep_problem)
        return cls(config, run_dir, workers=workers, timeout=timeout, threads=threads)

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=self.args)

    def map(self, tasks: Sequence[Task]) -> Iterator[tuple[Task, Result]]:
        pending: dict[Future, Task] = {self.pool.submit(_run_in_worker, t): t for t in tasks}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            broken = False
            for f in done:
                t = pending.pop(f)
                try:
                    yield t, f.result()
                except BrokenProcessPool:
                    broken = True
                    yield t, Result(None, _DIED, math.nan)
            if broken:  # the pool is unusable: fail what it still held and start a new one
                for f, t in pending.items():
                    yield t, Result(None, _DIED, math.nan)
                pending.clear()
                self.pool.shutdown(wait=False, cancel_futures=True)
                self.pool = self._new_pool()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------ ray
class RayBackend:
    """``workers`` Ray actors running the same worker code; the run dir and model paths must be
    readable at the same paths on every node (a shared filesystem). Uses the cluster named by
    ``RAY_ADDRESS`` if set, else starts a local one."""

    name = "ray"

    def __init__(self, config, run_dir: Path, *, workers: int, timeout: float | None = None, threads: int = 1):
        try:
            import ray
        except ImportError:
            raise EvolutionError("--backend ray needs the optional dependency ray (pip install 'tsugiki[ray]')") from None
        self.ray = ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if not os.environ.get("RAY_ADDRESS"):
                kwargs["num_cpus"] = max(workers * threads, 1)
            ray.init(**kwargs)
            self._owns = True
        else:
            self._owns = False

        @ray.remote(num_cpus=threads)
        class _Actor:
            def __init__(self, *args):
                _init_worker(*args)

            def run(self, task):
                return _run_in_worker(task)

        args = (dict(config.data), str(run_dir), timeout, threads)
        self.actors = [_Actor.remote(*args) for _ in range(workers)]

    @classmethod
    def create(cls, problem, config, run_dir: Path, *, workers: int, timeout: float | None, threads: int,
               keep_problem: bool = False):
        """Actors build their own problem from the config: ``problem`` (this process's) is not used."""
        return cls(config, run_dir, workers=workers, timeout=timeout, threads=threads)

    def map(self, tasks: Sequence[Task]) -> Iterator[tuple[Task, Result]]:
        ray = self.ray
        queue = list(tasks)
        pending: dict[Any, tuple[Any, Task]] = {}
        free = list(self.actors)
        while queue or pending:
            while queue and free:
                actor, t = free.pop(), queue.pop(0)
                pending[actor.run.remote(t)] = (actor, t)
            done, _ = ray.wait(list(pending), num_returns=1)
            actor, t = pending.pop(done[0])
            free.append(actor)
            try:
                yield t, ray.get(done[0])
            except Exception as e:  # noqa: BLE001 - an actor that died fails its candidate
                yield t, Result(None, f"ray worker failed: {type(e).__name__}: {e}", math.nan)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        if self._owns:
            self.ray.shutdown()


#: ``search.backend`` names -> backend classes (each class's ``create`` makes a backend from the same arguments).
#: :data:`tsugiki.evolution.search_config.BACKEND_NAMES` lists the same names for the config, which cannot import
#: this module (it imports the config); a test checks they agree.
BACKENDS: Registry[type] = Registry("backend")
for _cls in (ProcessBackend, RayBackend):
    BACKENDS.register(_cls.name, _cls)


def make_backend(name: str, problem, config, run_dir: Path, *, workers: int, timeout: float | None, threads: int,
                 keep_problem: bool = False):
    """The backend registered as ``name`` (UnknownNameError with a suggestion otherwise)."""
    return BACKENDS.get(name).create(problem, config, run_dir, workers=workers, timeout=timeout, threads=threads,
                                     keep_problem=keep_problem)
