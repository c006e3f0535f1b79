"""Process lifecycle: one worker in-process, or N forked workers sharing the port.

Why fork and not ``multiprocessing``: the parent validates the config once, then
forks workers that each build their own event loop (uvloop when installed) and
bind the same address with SO_REUSEPORT, so the kernel spreads connections.
The parent only supervises: it forwards SIGTERM (drain, then exit) and SIGHUP
(reload) to the workers and restarts a worker that died, with a backoff so a
crash loop cannot spin the CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from pathlib import Path

from guard.config import Config, load_config
from guard.logsetup import setup_logging
from guard.yamlsource import SourceError

log = logging.getLogger("guard")


def _install_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


FULL_COLLECTION_EVERY = 100
"""Collections of the middle generation between two full ones (CPython's default: 10)."""


def settle_heap() -> None:
    """Collect once, then move everything alive into the permanent generation (``gc.freeze``),
    and make full collections rarer.

    What start-up (or a reload) built -- compiled rules, IP lists, GeoIP readers, pydantic
    models, imported modules -- lives as long as the process.  Left in the oldest
    generation, every full collection walks all of it again while requests wait: on a
    slow core, tens of milliseconds of loop stall and a p99 that shows it.  Frozen, a full
    collection walks only what requests left behind.  Objects a reload replaces are still
    freed by reference counting; the collection here takes whatever cycles they formed
    (``gc.unfreeze`` first, so the previous freeze is collected too).

    What traffic builds is not frozen.  The memory store keeps its state in tables that
    CPython does not track (``guard.store.memory``), so a full store adds nothing to a full
    collection; before that layout it added 17-35 ms at 120,000 keys (``bench/soak.py``).
    What a full collection still reads is what requests leave behind and the bounded caches
    (parsed addresses and subnets: about 1.5 ms when all three are full).  With
    ``FULL_COLLECTION_EVERY`` middle collections between two full ones, a full collection
    comes about every 45 s at soak load instead of every 5 s.  Cyclic garbage that lived
    long enough to reach the oldest generation waits that much longer to be freed.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


async def serve(config_path: Path, config: Config, worker: int = 0) -> int:
    """Run one worker until SIGTERM/SIGINT; SIGHUP reloads the config from ``config_path``."""
    from guard.http.server import GuardServer

    server = GuardServer(config, reuse_port=True)
    server.config_path = config_path
    try:
        await server.start()
    except OSError as exc:
        log.error("cannot listen: %s", exc, extra={"worker": worker})
        return 2
    settle_heap()
    log.info(
        "guard serving",
        extra={
            "worker": worker, "pid": os.getpid(), "listen": str(config.listen), "admin": str(config.admin.listen),
            "upstream": config.upstream, "store": config.store.backend,
        },
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: asyncio.Queue[None] = asyncio.Queue(maxsize=1)

    def on_stop() -> None:
        stop.set()

    def on_hup() -> None:
        with contextlib.suppress(asyncio.QueueFull):
            reloads.put_nowait(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    loop.add_signal_handler(signal.SIGHUP, on_hup)

    async def reloader() -> None:
        while True:
            await reloads.get()
            try:
                new = await asyncio.to_thread(load_config, config_path)
            except SourceError as exc:
                for p in exc.problems:
                    log.error("reload rejected, old config stays live: %s", p, extra={"worker": worker})
                _count_reload(server, ok=False)
                continue
            try:
                await server.reload(new)
            except SourceError as exc:
                for p in exc.problems:
                    log.error("reload rejected, old config stays live: %s", p, extra={"worker": worker})
                _count_reload(server, ok=False)
                continue
            except Exception:
                log.exception("reload failed, old config stays live", extra={"worker": worker})
                _count_reload(server, ok=False)
                continue
            _count_reload(server, ok=True)
            settle_heap()
            log.info("config reloaded", extra={"worker": worker})

    reload_task = loop.create_task(reloader())

    def watched() -> list[Path]:
        from guard.engine.runtime import watched_files

        return watched_files(server.config, config_path)

    async def changed() -> None:
        log.info("config or rule files changed; reloading", extra={"worker": worker})
        on_hup()

    from guard.filewatch import watch

    watch_task = loop.create_task(watch(watched, changed))
    await stop.wait()
    log.info("draining", extra={"worker": worker, "grace_s": config.timeouts.shutdown_grace})
    for task in (reload_task, watch_task):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await server.stop(config.timeouts.shutdown_grace)
    log.info("stopped", extra={"worker": worker})
    return 0


def _count_reload(server: object, ok: bool) -> None:
    obs = getattr(server, "observability", None)
    if obs is not None:
        obs.fanout.reload(ok)


def _worker_main(config_path: Path, config: Config, worker: int) -> int:
    _install_uvloop()
    try:
        return asyncio.run(serve(config_path, config, worker))
    except KeyboardInterrupt:
        return 0


def run(config_path: Path, workers: int = 1, allow_split_state: bool = False) -> int:
    try:
        config = load_config(config_path)
    except SourceError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        print(f"guard: {config_path}: {len(exc.problems)} problem(s); not starting", file=sys.stderr)
        return 2
    setup_logging(config.log)
    if workers > 1:
        if config.store.backend == "memory" and not allow_split_state:
            print(
                "guard: --workers > 1 with store.backend: memory would split counters and bans across "
                "workers (each would see 1/N of an attack). Use store.backend: redis, or pass "
                "--allow-split-state to accept that.",
                file=sys.stderr,
            )
            return 2
        if config.listen.port == 0 or config.admin.listen.port == 0:
            print("guard: --workers > 1 needs fixed ports (listen and admin.listen are 0)", file=sys.stderr)
            return 2
        return _supervise_with_metrics(config_path, config, workers)
    return _worker_main(config_path, config, 0)


def _supervise_with_metrics(config_path: Path, config: Config, workers: int) -> int:
    """Workers write their metrics and live views to one folder, so any worker can answer for all."""
    import shutil
    import tempfile

    configured = config.observe.multiproc_dir
    folder = Path(configured) if configured else Path(tempfile.mkdtemp(prefix="guard-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.db"):
        old.unlink()
    shutil.rmtree(folder / "live", ignore_errors=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    try:
        return _supervise(config_path, config, workers)
    finally:
        if configured is None:
            shutil.rmtree(folder, ignore_errors=True)


def _fork_worker(config_path: Path, config: Config, worker: int) -> int:
    pid = os.fork()
    if pid == 0:  # child
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        code = 1
        try:
            code = _worker_main(config_path, config, worker)
        except BaseException:
            log.exception("worker crashed", extra={"worker": worker})
        finally:
            logging.shutdown()
            os._exit(code)
    return pid


def _metrics_dead(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from guard.observe.metrics import mark_process_dead

        mark_process_dead(pid)


def _supervise(config_path: Path, config: Config, workers: int) -> int:
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False
    pending: list[int] = []

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        pending.append(sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)

    for i in range(workers):
        children[_fork_worker(config_path, config, i)] = i
    log.info("supervisor started", extra={"pid": os.getpid(), "workers": workers})

    restarts: dict[int, list[float]] = {}
    deadline: float | None = None
    while children:
        while pending:
            received = pending.pop(0)
            for pid in list(children):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, received)
            if received in (signal.SIGTERM, signal.SIGINT) and deadline is None:
                deadline = time.monotonic() + config.timeouts.shutdown_grace + 5
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            if deadline is not None and time.monotonic() > deadline:
                for p in list(children):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p, signal.SIGKILL)
            time.sleep(0.05)
            continue
        worker = children.pop(pid, None)
        _metrics_dead(pid)
        if worker is None or stopping:
            continue
        code = os.waitstatus_to_exitcode(status)
        history = [t for t in restarts.get(worker, []) if t > time.monotonic() - 60]
        if len(history) >= 5:
            log.error("worker keeps dying; giving up on it", extra={"worker": worker, "exit": code})
            continue
        delay = min(0.1 * 2 ** len(history), 5.0)
        log.error("worker died; restarting", extra={"worker": worker, "exit": code, "in_s": delay})
        time.sleep(delay)
        history.append(time.monotonic())
        restarts[worker] = history
        children[_fork_worker(config_path, config, worker)] = worker
    log.info("supervisor stopped")
    return 0
