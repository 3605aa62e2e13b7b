"""Priority preemption, decided: which queued messages to put on hold and which to release, now.

While mail of the ``high`` queue waits for delivery or is being delivered (it is in Postfix's
``incoming`` or ``active`` queue), no new delivery of a paused queue (``priority.preempt.pause``,
e.g. ``[low]``) may start: every message of such a queue in ``incoming``, ``active`` or
``deferred`` goes on hold, the hold queue being Postfix's own way to keep mail from delivery
without bouncing, expiring or renaming it. Deliveries already under way finish. High mail in
``deferred`` (waiting for its retry time) does not pause anything: it does not compete for
delivery capacity until its time comes, and an unreachable urgent destination must not stop bulk
mail for days.

``resume_after`` seconds after the last high message left, the held messages are released in
the order they arrived (Postfix's arrival time), metered: at most ``release_batch`` released
messages wait for the queue manager at a time, so the oldest go first instead of all of them at
once in the queue directory's order. A message held while it waited for a retry keeps its retry
time (postsuper moves it back to ``deferred`` unchanged).

**Never release what the queue manager may still have in memory.** A message held from the
``active`` queue stays in the queue manager's memory until each of its pending deliveries has been
handed to a delivery agent (which finds the file gone and skips it); those wait behind the
deliveries under way to the same destination. If such a message is released and taken into the
active queue again before that, the queue manager files the new copy's recipients under the old
in-memory job of the same queue id and removes the queue file: the message is lost (seen here with
Postfix 3.7 when a hold was released within a second). So the held messages of the paused queues
are released only after *quiet*: no file of those queues that was there when the pause ended
(the deliveries that could be ahead of the pending ones) has been locked by a delivery agent for
``settle`` seconds plus ``settle_per_message`` per message held from ``active`` (the pending ones
are then skipped at the agents' pace, a few milliseconds each). During the pause every file of the
paused queues counts: nothing new of theirs starts then. Quiet counts from the latest hold at the
earliest (a message's pending deliveries are skipped only once it is on hold), and a released
message leaves the watch (its new deliveries come after what is still held). Agents lock the
queue file while they deliver (flock on Linux); the adapter reads those locks from
``/proc/locks`` without taking any.

Only messages this component held are ever released (:attr:`PreemptState.held`): an operator's
own holds are left alone. The plan is a value; the adapter (:mod:`smtpplus_milter.services.preempt`)
writes the state file, runs ``postsuper`` and kicks the queue manager.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

URGENT = "high"
# Postfix queues where a message waits for delivery or is being delivered.
WAITING = ("incoming", "active")
# Postfix queues a paused message is taken from.
HOLDABLE = ("incoming", "active", "deferred")


@dataclass(frozen=True, slots=True)
class PreemptPolicy:
    pause: frozenset[str]
    resume_after: float
    release_batch: int = 100
    settle: float = 2.0
    # Measured with Postfix 3.7: 1,957 messages held from active were all skipped by the agents
    # within 2 s (about 0.6 ms each, two at a time); 2 ms leaves a margin of three.
    settle_per_message: float = 0.002


@dataclass(frozen=True, slots=True)
class Message:
    """One message in Postfix's queue, as the planner needs it."""

    queue_id: str
    postfix_queue: str  # incoming, active, deferred, hold
    queue: str | None  # high, normal, low; None: not SMTP+ mail (or unreadable)
    arrival: float
    due: bool = True  # deferred mail: its retry time has come (qmgr takes it at its next scan)
    locked: bool = False  # a delivery agent has the file open: a delivery is under way


@dataclass(frozen=True, slots=True)
class Held:
    queue_id: str
    arrival: float
    from_active: bool = False  # held from the active queue: the queue manager had it in memory


@dataclass(frozen=True, slots=True)
class PreemptState:
    """What the component remembers. ``held`` and ``paused_since`` survive a restart (state file)."""

    held: tuple[Held, ...] = ()
    paused_since: float | None = None
    last_urgent: float | None = None
    # Released by us and not yet taken into the active queue: the release meter (memory only).
    releasing: frozenset[str] = field(default_factory=frozenset)
    # Since when no watched file of the paused queues was locked (None: one is, or not known yet).
    quiet_since: float | None = None
    # After a pause (or a restart): the files of the paused queues present then, whose deliveries
    # may be ahead of the held messages' pending ones. None while paused (every file counts).
    watch: frozenset[str] | None = None

    @property
    def paused(self) -> bool:
        return self.paused_since is not None


@dataclass(frozen=True, slots=True)
class Plan:
    hold: tuple[str, ...]
    release: tuple[str, ...]
    state: PreemptState
    urgent: int  # high messages waiting or being delivered now
    forgotten: tuple[str, ...] = ()  # held by us, but no longer in the hold queue


def urgent_waiting(messages: Mapping[str, Message]) -> int:
    """High messages waiting for delivery or being delivered (in incoming or active)."""
    return sum(1 for m in messages.values() if m.queue == URGENT and m.postfix_queue in WAITING)


QUEUES = ("high", "normal", "low")


@dataclass(frozen=True, slots=True)
class Tally:
    """Messages per Postfix queue and per SMTP+ queue, for ``queue status`` and the gauges.

    *queues*: per SMTP+ queue, (messages, of them held by preemption): mail in incoming, active
    or deferred plus our holds; an operator's holds are not waiting for delivery and count only in
    *postfix*. *other*: mail that is not SMTP+ mail (or unreadable), outside the operator's holds.
    """

    postfix: Mapping[str, int]
    queues: Mapping[str, tuple[int, int]]
    other: int
    held: int


def tally(messages: Mapping[str, Message], held: Collection[str]) -> Tally:
    """Count *messages*; *held*: the queue ids preemption holds (those not on hold are ignored)."""
    ours = {queue_id for queue_id in held if queue_id in messages and messages[queue_id].postfix_queue == "hold"}
    postfix = dict.fromkeys(("incoming", "active", "deferred", "hold"), 0)
    per_queue = {name: [0, 0] for name in QUEUES}
    other = 0
    for message in messages.values():
        postfix[message.postfix_queue] += 1
        if message.postfix_queue == "hold" and message.queue_id not in ours:
            continue
        if message.queue in per_queue:
            per_queue[message.queue][0] += 1
            per_queue[message.queue][1] += message.queue_id in ours
        else:
            other += 1
    return Tally(postfix, {name: (count, of_held) for name, (count, of_held) in per_queue.items()}, other, len(ours))


def plan(
    messages: Mapping[str, Message],
    scanned: Collection[str],
    state: PreemptState,
    policy: PreemptPolicy,
    now: float,
    *,
    stopping: bool = False,
) -> Plan:
    """The next step, from one scan of Postfix's queue.

    *messages*: the complete messages found, by queue id; *scanned*: the Postfix queues that scan
    covered (a quick scan leaves out ``deferred``; what it did not look at, it does not conclude
    about). *stopping*: the component is stopping; high mail no longer keeps anything paused (not
    even for ``resume_after``) and everything that may be released is released at once (still
    only after quiet).
    """
    urgent = 0 if stopping else urgent_waiting(messages)
    held, forgotten = _still_held(messages, scanned, state.held)
    releasing = _still_waiting(messages, scanned, state.releasing)
    paused_since = state.paused_since
    last_urgent = state.last_urgent
    if urgent:
        last_urgent = now
        if paused_since is None:
            paused_since = now
    elif paused_since is not None and (stopping or last_urgent is None or now - last_urgent >= policy.resume_after):
        paused_since = None  # a stop does not wait resume_after: it may be longer than the stop may take
    if paused_since is not None:
        known = {h.queue_id for h in held}
        newly = sorted(
            (
                m
                for m in messages.values()
                if m.queue in policy.pause and m.postfix_queue in HOLDABLE and m.queue_id not in known
            ),
            key=lambda m: (m.arrival, m.queue_id),
        )
        held = held + tuple(Held(m.queue_id, m.arrival, m.postfix_queue == "active") for m in newly)
        releasing = releasing - {m.queue_id for m in newly}
        hold = tuple(m.queue_id for m in newly)
        busy = any(m.locked for m in _in_memory(messages, policy))
        # A message held now has its pending deliveries skipped from now on: quiet counted before
        # its hold says nothing about them. (Any hold, not only from active: the queue manager may
        # have taken an incoming or deferred one into active between the scan and postsuper.)
        since = now if newly or state.quiet_since is None else state.quiet_since
        quiet_since = None if busy else since
        new_state = PreemptState(held, paused_since, last_urgent, releasing, quiet_since, None)
        return Plan(hold, (), new_state, urgent, forgotten)
    watch = state.watch
    if watch is None:
        # The pause just ended, or we just started: what may be ahead of the pending deliveries.
        watch = frozenset(m.queue_id for m in _in_memory(messages, policy))
    else:
        watch = frozenset(queue_id for queue_id in watch if queue_id in messages or "deferred" not in scanned)
    busy = any(messages[queue_id].locked for queue_id in watch if queue_id in messages)
    quiet_since = None if busy else (state.quiet_since if state.quiet_since is not None else now)
    needed = policy.settle + policy.settle_per_message * sum(1 for h in held if h.from_active)
    if held and (quiet_since is None or now - quiet_since < needed):
        new_state = PreemptState(held, None, last_urgent, releasing, quiet_since, watch)
        return Plan((), (), new_state, urgent, forgotten)
    room = len(held) if stopping else max(0, policy.release_batch - len(releasing))
    ordered = sorted(held, key=lambda h: (h.arrival, h.queue_id))
    # Only what this scan saw in the hold queue: a hold kept because a quick scan did not find it
    # (it is elsewhere or gone) is decided by the next full scan, not released blindly (it would
    # take a place in the batch, and an id no longer ours on hold is never ours to release).
    on_hold = [h.queue_id for h in ordered if _seen_on_hold(messages, h.queue_id)]
    release = tuple(on_hold[:room])
    released = frozenset(release)
    remaining = tuple(h for h in ordered if h.queue_id not in released)
    # A released message's pending deliveries of before its hold were skipped in the quiet that
    # allowed its release; its new deliveries are behind, not ahead of, what is still held, and
    # must not hold the next batch back.
    watch = watch - released
    if not remaining:
        quiet_since, watch = None, None  # the next pause starts from scratch
    new_state = PreemptState(remaining, None, last_urgent, releasing | released, quiet_since, watch)
    return Plan((), release, new_state, urgent, forgotten)


def _in_memory(messages: Mapping[str, Message], policy: PreemptPolicy) -> list[Message]:
    """Files whose deliveries the paused queues' pending ones may wait behind: in active, or held from there.

    Those of the paused queues themselves: each SMTP+ queue but normal has a transport of its own.
    Normal mail shares Postfix's default transport with mail that is not SMTP+ mail (inbound relay,
    bounces, unreadable files), so when normal is paused, those count too.
    """
    shares_transport = "normal" in policy.pause
    return [
        m
        for m in messages.values()
        if (m.queue in policy.pause or (shares_transport and m.queue is None)) and m.postfix_queue in ("active", "hold")
    ]


def _seen_on_hold(messages: Mapping[str, Message], queue_id: str) -> bool:
    found = messages.get(queue_id)
    return found is not None and found.postfix_queue == "hold"


def _still_held(
    messages: Mapping[str, Message], scanned: Collection[str], held: tuple[Held, ...]
) -> tuple[tuple[Held, ...], tuple[str, ...]]:
    """Our holds minus those that are no longer in the hold queue.

    A held message found in another queue was released by someone else (an operator's
    ``postsuper -H``); one found nowhere left the queue (deleted, or its delivery finished while it
    was held). Both are forgotten: releasing them later could release someone else's hold.
    """
    if "hold" not in scanned:
        return held, ()
    everywhere = set(scanned) >= {"incoming", "active", "deferred", "hold"}
    kept: list[Held] = []
    forgotten: list[str] = []
    for item in held:
        found = messages.get(item.queue_id)
        if found is not None and found.postfix_queue == "hold":
            kept.append(item)
        elif found is not None or everywhere:
            forgotten.append(item.queue_id)
        else:
            kept.append(item)  # perhaps in a queue this scan did not look at: decide next time
    return tuple(kept), tuple(forgotten)


def _still_waiting(
    messages: Mapping[str, Message], scanned: Collection[str], releasing: frozenset[str]
) -> frozenset[str]:
    """Released messages the queue manager has not taken into its active queue yet."""
    waiting = set()
    for queue_id in releasing:
        found = messages.get(queue_id)
        if found is None:
            if "deferred" not in scanned:
                waiting.add(queue_id)  # most likely still in deferred, which this scan skipped
            continue
        if found.postfix_queue == "incoming" or (found.postfix_queue == "deferred" and found.due):
            waiting.add(queue_id)
    return frozenset(waiting)
