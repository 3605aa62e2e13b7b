"""``smtpplus-milter preempt``: bulk pauses while urgent mail goes out (docs/priority.md, "Preemption").

A process of its own, run as root (``postsuper`` is root-only), next to one Postfix instance. Every
:data:`TICK` seconds it looks at Postfix's queue directory (:mod:`~smtpplus_milter.infra.postfix_queue`:
file names, and each new file's ``X-SMTPPlus-Queue`` header once), lets the planner decide
(:func:`smtpplus_milter.core.preempt.plan`) and carries the plan out:

* **hold**: the held queue ids are written to the state file first (atomically replaced), then
  ``postsuper -h``. A crash in between leaves ids in the file that were never held; releasing
  them later finds nothing to release. The other order could leave mail on hold that nobody
  remembers.
* **release**: ``postsuper -H`` first, then the state file without those ids, then
  ``postkick public qmgr D`` so the queue manager takes them now instead of at its next deferred
  queue run (up to ``queue_run_delay``, 300 s by default).

On start the state file says what a previous run held: those ids are released once no high mail
waits and the deliveries ahead of them are over (the quiet rule of :mod:`smtpplus_milter.core.preempt`).
A clean stop (SIGTERM) ends the pause and releases everything held after quiet, waiting at most
:data:`STOP_WAIT` seconds; what is still held then stays in the state file for the next start.

What Postfix does with a message held in the active queue (read in Postfix 3.7's qmgr and delivery
agents, and seen in the tests): a delivery already under way finishes and records its result in
the queue file (the agent holds the file open); recipients not yet handed to an agent are
skipped without a delivery attempt (the agent logs ``warning: open active QUEUEID: No such file or
directory`` and the queue manager ``warning: qmgr_active_defer: rename ...``); the message then
waits in hold with its done recipients marked, and after its release only the others are tried.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from smtpplus_milter.config import Config
from smtpplus_milter.config.values import Preempt
from smtpplus_milter.core.preempt import Held, Message, Plan, PreemptPolicy, PreemptState, plan, tally, urgent_waiting
from smtpplus_milter.infra.files import FileProblem, Ownership, replace_atomically
from smtpplus_milter.infra.postfix_queue import (
    MESSAGE_QUEUES,
    PostfixCommandError,
    PostfixTools,
    QueuedMessage,
    QueueFileError,
    QueueFileInfo,
    locked_inodes,
    queued_file,
    read_info,
    scan,
    scan_names,
)
from smtpplus_milter.observe.metrics import PreemptMetrics

log = structlog.get_logger()

TICK = 0.2  # seconds between quick scans (incoming, active, hold)
FULL_EVERY = 5  # every fifth scan also reads deferred (stat per file: the expensive one)
QUICK = ("incoming", "active", "hold")
# How long a stop waits for the held messages to become releasable (the unit allows 60 s).
STOP_WAIT = 40.0
STATE_VERSION = 1


def policy_of(settings: Preempt) -> PreemptPolicy:
    return PreemptPolicy(pause=settings.pause, resume_after=settings.resume_after_seconds)


@dataclass(frozen=True)
class SavedState:
    """The state file: what this component holds, and since when the pause runs."""

    held: tuple[Held, ...]
    paused_since: float | None
    pause: tuple[str, ...] = ()
    pid: int | None = None
    updated: float | None = None


class StateFileError(Exception):
    pass


def read_state(path: Path) -> SavedState:
    """The state file at *path*; an empty state when there is none yet."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return SavedState((), None)
    except OSError as exc:
        raise StateFileError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(raw)
        held = tuple(
            Held(str(item["id"]), float(item["arrival"]), bool(item.get("from_active", True))) for item in data["held"]
        )
        paused_since = data.get("paused_since")
        return SavedState(
            held,
            float(paused_since) if paused_since is not None else None,
            tuple(data.get("pause") or ()),
            data.get("pid"),
            data.get("updated"),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise StateFileError(f"{path} is not a state file this version can read ({exc})") from None


def write_state(path: Path, state: SavedState) -> None:
    data = {
        "version": STATE_VERSION,
        "pid": state.pid,
        "updated": state.updated,
        "pause": list(state.pause),
        "paused_since": state.paused_since,
        "held": [
            {"id": item.queue_id, "arrival": item.arrival, "from_active": item.from_active} for item in state.held
        ],
    }
    try:
        replace_atomically(path, json.dumps(data).encode() + b"\n", new_file=Ownership(0o640, os.getuid(), os.getgid()))
    except FileProblem as exc:
        raise StateFileError(str(exc)) from None


class Classifier:
    """Each queue file's SMTP+ queue and arrival time, read once per queue id."""

    MAX_IDS = 500_000

    def __init__(self) -> None:
        self._known: dict[str, QueueFileInfo] = {}

    def known(self, queue_id: str) -> QueueFileInfo | None:
        return self._known.get(queue_id)

    def info(self, item: QueuedMessage) -> QueueFileInfo | None:
        """The file's queue and arrival, read now if not known yet; None when it left meanwhile."""
        info = self._known.get(item.queue_id)
        if info is None:
            try:
                info = read_info(item.path)
            except FileNotFoundError:
                return None  # it moved while we looked: the next scan finds it where it went
            except (QueueFileError, OSError) as exc:
                log.warning("preempt_unreadable_queue_file", queue_id=item.queue_id, reason=str(exc))
                info = QueueFileInfo(item.mtime, None)  # never held, never urgent
            if len(self._known) < self.MAX_IDS:
                self._known[item.queue_id] = info
        return info

    def messages(self, found: list[QueuedMessage], now: float) -> dict[str, Message]:
        result: dict[str, Message] = {}
        for item in found:
            info = self.info(item)
            if info is None:
                continue
            result[item.queue_id] = Message(
                item.queue_id,
                item.postfix_queue,
                info.queue,
                info.arrival,
                due=item.postfix_queue != "deferred" or item.mtime <= now,
            )
        return result

    def forget_except(self, present: Mapping[str, object]) -> None:
        """After a full scan: drop ids that left the queue (a short id may come back as another message)."""
        for queue_id in [queue_id for queue_id in self._known if queue_id not in present]:
            del self._known[queue_id]


class Preempter:
    """The loop: scan, plan, act. :meth:`serve` runs until :meth:`stop`; :meth:`close` releases all."""

    def __init__(
        self,
        settings: Preempt,
        metrics: PreemptMetrics,
        tools: PostfixTools | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.policy = policy_of(settings)
        self.metrics = metrics
        self.tools = tools or PostfixTools(settings.postfix_config_dir)
        self.clock = clock
        self.queue_dir = self.tools.queue_directory()
        if not os.access(self.queue_dir / "active", os.R_OK | os.X_OK):
            raise PermissionError(
                f"cannot read Postfix's queue directory {self.queue_dir}: preempt runs as root (postsuper is root-only)"
            )
        saved = read_state(settings.state_file)
        self.state = PreemptState(held=saved.held, paused_since=saved.paused_since)
        self.classifier = Classifier()
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # one step at a time: serve() and close()
        self._scans = 0
        self._last_tick: float | None = None

    # --- the loop ---------------------------------------------------------------------------

    def serve(self) -> None:
        if self.state.held:
            log.info("preempt_restored", held=len(self.state.held), paused=self.state.paused)
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                self.step()
            except Exception:  # one failed scan must not end the component: holds would stay
                log.exception("preempt_step_failed")
                self.metrics.errors.labels(step="scan").inc()
            self._stopping.wait(max(0.0, TICK - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stopping.set()

    def reload(self, settings: Preempt) -> None:
        with self._lock:
            self.settings = replace(
                self.settings, pause=settings.pause, resume_after_seconds=settings.resume_after_seconds
            )
            self.policy = policy_of(self.settings)

    def step(self) -> None:
        with self._lock:
            full = self._scans % FULL_EVERY == 0
            self._scans += 1
            now = self.clock()
            if not full and not self.state.paused and not self.state.held and not self._urgent_waiting():
                # Nothing held, nothing paused, no high mail: the planner would decide nothing.
                self._account(now)
                return
            messages, scanned = self._scan(MESSAGE_QUEUES if full else QUICK, now)
            if not full and not self.state.paused and urgent_waiting(messages):
                # A pause starts: deferred mail of the paused queues goes on hold too.
                messages, scanned = self._scan(MESSAGE_QUEUES, now)
                full = True
            self._account(now)
            decided = plan(messages, scanned, self.state, self.policy, now, stopping=self._stopping.is_set())
            self._act(decided, now)
            if full:
                self._observe(messages)

    def _urgent_waiting(self) -> bool:
        """The cheap look between full scans while idle: is there high mail in incoming or active?

        File names only (no stat, no objects per file); a file not seen before is read once.
        """
        for queue in ("incoming", "active"):
            for name in scan_names(self.queue_dir / queue):
                info = self.classifier.known(name)
                if info is None:
                    item = queued_file(self.queue_dir, queue, name)
                    if item is None:
                        continue  # still being written, or gone
                    info = self.classifier.info(item)
                if info is not None and info.queue == "high":
                    return True
        return False

    def _scan(self, queues: tuple[str, ...], now: float) -> tuple[dict[str, Message], tuple[str, ...]]:
        found = list(scan(self.queue_dir, queues))
        messages = self.classifier.messages(found, now)
        if set(queues) >= set(MESSAGE_QUEUES):
            self.classifier.forget_except(messages)
        if self.state.held or self.state.paused or urgent_waiting(messages):
            # Which deliveries are under way matters only around a pause (quiet before a release).
            # Read after the listing: a delivery that began before it is seen as under way.
            locked = locked_inodes(self.queue_dir)
            for item in found:
                if item.inode in locked and item.queue_id in messages:
                    messages[item.queue_id] = replace(messages[item.queue_id], locked=True)
        return messages, queues

    def _account(self, now: float) -> None:
        if self._last_tick is not None and self.state.paused:
            self.metrics.preempt_seconds.inc(max(0.0, now - self._last_tick))
        self._last_tick = now

    def _act(self, decided: Plan, now: float) -> None:
        before = self.state
        after = decided.state
        if decided.forgotten:
            log.info("preempt_forgotten", queue_ids=list(decided.forgotten[:20]), count=len(decided.forgotten))
        if after.paused and not before.paused:
            self.metrics.preemptions.inc()
            log.info("preempt_paused", urgent=decided.urgent, pause=sorted(self.policy.pause))
        if decided.hold:
            # The ids first, then the holds: a crash in between leaves ids that release finds no mail for.
            if not self._save(after, now):
                # Without a record of them nothing may be held; try again on the next scan.
                self.state = replace(after, held=before.held)
                return
            try:
                self.tools.hold(list(decided.hold))
            except PostfixCommandError as exc:
                log.error("preempt_hold_failed", reason=str(exc), count=len(decided.hold))
                self.metrics.errors.labels(step="hold").inc()
            else:
                self.metrics.held.inc(len(decided.hold))
                log.info("preempt_held", count=len(decided.hold), held=len(after.held))
            self.state = after
            return
        if decided.release:
            try:
                self.tools.release(list(decided.release))
            except PostfixCommandError as exc:
                log.error("preempt_release_failed", reason=str(exc), count=len(decided.release))
                self.metrics.errors.labels(step="release").inc()
                return  # still ours, still on hold: the next scan tries again
            self.metrics.released.inc(len(decided.release))
            self.state = after
            self._save(after, now)
            self._kick()
            log.info("preempt_released", count=len(decided.release), still_held=len(after.held))
            if before.paused:
                log.info("preempt_resumed", paused_seconds=round(now - (before.paused_since or now), 3))
            return
        if before.paused and not after.paused:
            log.info("preempt_resumed", paused_seconds=round(now - (before.paused_since or now), 3))
        changed = (before.held, before.paused_since) != (after.held, after.paused_since)
        self.state = after
        if changed:
            self._save(after, now)

    def _save(self, state: PreemptState, now: float) -> bool:
        saved = SavedState(state.held, state.paused_since, tuple(sorted(self.policy.pause)), os.getpid(), now)
        try:
            write_state(self.settings.state_file, saved)
        except StateFileError as exc:
            log.error("preempt_state_write_failed", reason=str(exc), path=str(self.settings.state_file))
            self.metrics.errors.labels(step="state").inc()
            return False
        return True

    def _kick(self) -> None:
        try:
            self.tools.kick_deferred()
        except PostfixCommandError as exc:
            # Not fatal: the queue manager's own deferred run takes the released mail later.
            log.warning("preempt_kick_failed", reason=str(exc))
            self.metrics.errors.labels(step="kick").inc()

    def _observe(self, messages: Mapping[str, Message]) -> None:
        counted = tally(messages, [item.queue_id for item in self.state.held])
        gauges = {**counted.postfix, **{name: count for name, (count, _held) in counted.queues.items()}}
        for queue, count in {**gauges, "held": counted.held}.items():
            self.metrics.messages.labels(queue=queue).set(count)
        for queue in ("normal", "low"):
            self.metrics.paused.labels(queue=queue).set(1 if self.state.paused and queue in self.policy.pause else 0)

    # --- stop -------------------------------------------------------------------------------

    def close(self, wait: float | None = None) -> None:
        """Release what this component holds before the process ends (a clean stop leaves nothing paused).

        High mail no longer keeps the pause, but the rule that protects mail still applies: held
        messages go back only after quiet (see :mod:`smtpplus_milter.core.preempt`). What is still
        held after *wait* seconds (default :data:`STOP_WAIT`) stays in the state file; the next
        start releases it.
        """
        self._stopping.set()
        deadline = time.monotonic() + (STOP_WAIT if wait is None else wait)
        while self.state.held and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                self.step()
            except Exception:
                log.exception("preempt_step_failed", at="stop")
            if self.state.held:
                time.sleep(max(0.0, TICK - (time.monotonic() - started)))
        if self.state.held:
            log.warning(
                "preempt_left_held",
                count=len(self.state.held),
                reason="deliveries were still under way; the next start releases them",
                state_file=str(self.settings.state_file),
            )


def queue_status(tools: PostfixTools, settings: Preempt | None, now: float) -> dict[str, Any]:
    """``queue status``: messages per SMTP+ queue and per Postfix queue, and what is paused.

    Read from the queue directory itself (so, as root) and the component's state file; it works
    whether or not the component runs (``preempt`` says whether a state file was found and who wrote it).
    """
    queue_dir = tools.queue_directory()
    if not os.access(queue_dir / "active", os.R_OK | os.X_OK):
        raise PermissionError(f"cannot read Postfix's queue directory {queue_dir}: run this as root")
    found = list(scan(queue_dir))
    messages = Classifier().messages(found, now)
    saved = read_state(settings.state_file) if settings is not None else SavedState((), None)
    counted = tally(messages, [item.queue_id for item in saved.held])
    paused = saved.paused_since is not None
    queues = {
        name: {"messages": count, "held": held, "paused": paused and name in saved.pause}
        for name, (count, held) in counted.queues.items()
    }
    return {
        "queues": queues,
        "other": counted.other,
        "postfix": dict(counted.postfix),
        "held_by_preempt": counted.held,
        "preempt": {
            "configured": settings is not None,
            "paused_since": saved.paused_since,
            "state_updated": saved.updated,
            "pid": saved.pid,
        },
    }


class PreemptService:
    """:class:`Preempter` as a :class:`smtpplus_milter.daemon.Service`."""

    def __init__(self, preempter: Preempter, load: Callable[[], Config], details: Mapping[str, object]) -> None:
        self.preempter = preempter
        self._load = load
        self._details = details

    def serve(self) -> None:
        self.preempter.serve()

    def stop(self) -> None:
        self.preempter.stop()

    def reload(self) -> None:
        try:
            config = self._load()
        except Exception as exc:  # the old settings stay
            log.error("config_reload_failed", kept="previous config", reason=str(exc))
            return
        if config.preempt is None:
            log.error(
                "config_reload_failed",
                kept="previous config",
                reason="priority.preempt is gone from the file: stop the service instead (it releases what it holds)",
            )
            return
        current = self.preempter.settings
        restart = [
            key
            for key, old, new in (
                ("postfix_config_dir", current.postfix_config_dir, config.preempt.postfix_config_dir),
                ("state_file", current.state_file, config.preempt.state_file),
                ("metrics_listen", current.metrics_listen, config.preempt.metrics_listen),
            )
            if old != new
        ]
        if restart:
            log.warning("config_reload_needs_restart", keys=[f"priority.preempt.{key}" for key in restart])
        self.preempter.reload(config.preempt)
        log.info(
            "config_reloaded",
            pause=sorted(config.preempt.pause),
            resume_after_seconds=config.preempt.resume_after_seconds,
        )

    def busy(self) -> int:
        return 0

    def close(self) -> None:
        self.preempter.close()

    def details(self) -> Mapping[str, object]:
        return self._details
