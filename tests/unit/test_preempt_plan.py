"""core.preempt.plan, the pure planner: one scan of Postfix's queue and the remembered state in,
what to hold, what to release and the next state out (exact values, no clocks)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from smtpplus_milter.core.preempt import Held, Message, Plan, PreemptPolicy, PreemptState, plan, tally, urgent_waiting

POLICY = PreemptPolicy(pause=frozenset({"low"}), resume_after=5.0, release_batch=2)
FULL = ("incoming", "active", "deferred", "hold")
QUICK = ("incoming", "active", "hold")  # what the daemon scans between full scans
NOW = 1000.0


def msg(
    queue_id: str, postfix_queue: str, queue: str | None, arrival: float, *, due: bool = True, locked: bool = False
) -> Message:
    return Message(queue_id, postfix_queue, queue, arrival, due, locked)


def found(*messages: Message) -> dict[str, Message]:
    return {m.queue_id: m for m in messages}


def paused(*held: Held, since: float = 900.0, last_urgent: float | None = 990.0, **more: object) -> PreemptState:
    return PreemptState(held, since, last_urgent, **more)  # type: ignore[arg-type]


# Quiet for exactly POLICY.settle: enough to release holds none of which came from active.
SETTLED = NOW - 2.0


# A queue with one of everything the pause must leave alone.
BYSTANDERS = (
    msg("N1", "incoming", "normal", 1.0),
    msg("X1", "active", None, 2.0),  # not SMTP+ mail, or its file was unreadable
    msg("HD", "deferred", "high", 3.0),  # urgent, but waiting for its retry time
    msg("OP", "hold", "low", 4.0),  # an operator's own hold
)


@pytest.mark.parametrize(
    ("messages", "state", "expected"),
    [
        pytest.param(
            found(*BYSTANDERS, msg("L1", "incoming", "low", 5.0), msg("L2", "deferred", "low", 6.0)),
            PreemptState(),
            Plan((), (), PreemptState(), urgent=0),
            id="no-high-mail-nothing-held",
        ),
        pytest.param(
            found(msg("H1", "deferred", "high", 1.0), msg("L1", "incoming", "low", 2.0)),
            PreemptState(),
            Plan((), (), PreemptState(), urgent=0),
            id="high-only-in-deferred-no-pause",
        ),
        pytest.param(
            found(
                *BYSTANDERS,
                msg("H1", "incoming", "high", 50.0),
                msg("L3", "incoming", "low", 30.0),
                msg("L1", "active", "low", 10.0),
                msg("L2", "deferred", "low", 20.0, due=False),
                msg("HA", "hold", "high", 5.0),
            ),
            PreemptState(),
            Plan(
                ("L1", "L2", "L3"),
                (),
                paused(
                    Held("L1", 10.0, from_active=True),
                    Held("L2", 20.0),
                    Held("L3", 30.0),
                    since=NOW,
                    last_urgent=NOW,
                    quiet_since=NOW,
                ),
                urgent=1,
            ),
            id="high-in-incoming-pauses-every-low-in-arrival-order",
        ),
        pytest.param(
            found(*BYSTANDERS, msg("H1", "active", "high", 50.0), msg("L1", "deferred", "low", 10.0)),
            PreemptState(),
            Plan(("L1",), (), paused(Held("L1", 10.0), since=NOW, last_urgent=NOW, quiet_since=NOW), urgent=1),
            id="high-in-active-pauses",
        ),
        pytest.param(
            found(
                msg("H1", "active", "high", 1.0), msg("H2", "incoming", "high", 2.0), msg("L2", "active", "low", 9.0)
            ),
            PreemptState(),
            Plan(
                ("L2",),
                (),
                paused(Held("L2", 9.0, from_active=True), since=NOW, last_urgent=NOW, quiet_since=NOW),
                urgent=2,
            ),
            id="urgent-counts-waiting-high-mail",
        ),
        pytest.param(
            found(msg("Lb", "incoming", "low", 7.0), msg("La", "incoming", "low", 7.0), msg("H1", "active", "high", 1)),
            PreemptState(),
            Plan(
                ("La", "Lb"),
                (),
                paused(Held("La", 7.0), Held("Lb", 7.0), since=NOW, last_urgent=NOW, quiet_since=NOW),
                urgent=1,
            ),
            id="same-arrival-ordered-by-id",
        ),
        pytest.param(
            found(
                msg("H1", "active", "high", 1.0),
                msg("L1", "hold", "low", 10.0),
                msg("L4", "incoming", "low", 40.0),
                msg("L3", "deferred", "low", 30.0),
            ),
            paused(Held("L1", 10.0)),
            Plan(
                ("L3", "L4"),
                (),
                paused(Held("L1", 10.0), Held("L3", 30.0), Held("L4", 40.0), last_urgent=NOW, quiet_since=NOW),
                urgent=1,
            ),
            id="during-a-pause-new-low-arrivals-are-held",
        ),
        pytest.param(
            found(msg("L1", "hold", "low", 10.0), msg("L4", "incoming", "low", 40.0)),
            paused(Held("L1", 10.0), last_urgent=NOW - 4.9),
            Plan(
                ("L4",),
                (),
                paused(Held("L1", 10.0), Held("L4", 40.0), last_urgent=NOW - 4.9, quiet_since=NOW),
                urgent=0,
            ),
            id="high-left-but-not-resume_after-ago-still-paused",
        ),
        pytest.param(
            found(msg("L1", "hold", "low", 10.0), msg("L2", "hold", "low", 20.0), msg("L3", "hold", "low", 30.0)),
            paused(Held("L3", 30.0), Held("L1", 10.0), Held("L2", 20.0), last_urgent=NOW - 5.0, quiet_since=SETTLED),
            Plan(
                (),
                ("L1", "L2"),
                # The watch is taken now, as the pause ends; what was released leaves it.
                PreemptState((Held("L3", 30.0),), None, NOW - 5.0, frozenset({"L1", "L2"}), SETTLED, frozenset({"L3"})),
                urgent=0,
            ),
            id="resume_after-seconds-later-quiet-counted-in-the-pause-release-oldest-first-one-batch",
        ),
        pytest.param(
            found(msg("L1", "hold", "low", 10.0), msg("L2", "hold", "low", 20.0)),
            paused(Held("L1", 10.0, from_active=True), Held("L2", 20.0), last_urgent=None),
            Plan(
                (),
                (),
                PreemptState(
                    (Held("L1", 10.0, from_active=True), Held("L2", 20.0)),
                    None,
                    None,
                    frozenset(),
                    NOW,
                    frozenset({"L1", "L2"}),
                ),
                urgent=0,
            ),
            id="restored-pause-without-last-urgent-resumes-at-once-then-waits-settle",
        ),
        pytest.param(
            found(msg("H1", "incoming", "high", 1.0), msg("L1", "hold", "low", 10.0), msg("L2", "deferred", "low", 2)),
            paused(Held("L1", 10.0), last_urgent=None),
            Plan(("L2",), (), paused(Held("L1", 10.0), Held("L2", 2.0), last_urgent=NOW, quiet_since=NOW), urgent=1),
            id="restored-pause-with-high-waiting-stays",
        ),
        pytest.param(
            found(msg("L1", "hold", "low", 10.0), msg("L2", "hold", "low", 20.0), msg("R1", "incoming", "low", 1.0)),
            PreemptState(
                (Held("L1", 10.0), Held("L2", 20.0)), None, 900.0, frozenset({"R1"}), SETTLED, frozenset({"L1", "L2"})
            ),
            Plan(
                (),
                ("L1",),
                PreemptState((Held("L2", 20.0),), None, 900.0, frozenset({"R1", "L1"}), SETTLED, frozenset({"L2"})),
                urgent=0,
            ),
            id="released-not-yet-taken-counts-against-the-batch",
        ),
        pytest.param(
            found(msg("L1", "hold", "low", 10.0), msg("R1", "deferred", "low", 1.0), msg("R2", "deferred", "low", 2.0)),
            PreemptState((Held("L1", 10.0),), None, 900.0, frozenset({"R1", "R2"}), SETTLED, frozenset({"L1"})),
            Plan(
                (),
                (),
                PreemptState((Held("L1", 10.0),), None, 900.0, frozenset({"R1", "R2"}), SETTLED, frozenset({"L1"})),
                urgent=0,
            ),
            id="deferred-and-due-still-waits-for-qmgr",
        ),
        pytest.param(
            found(
                msg("L1", "hold", "low", 10.0),
                msg("L2", "hold", "low", 20.0),
                msg("R1", "active", "low", 1.0),
                msg("R2", "deferred", "low", 2.0, due=False),
            ),
            PreemptState(
                (Held("L1", 10.0), Held("L2", 20.0)),
                None,
                900.0,
                frozenset({"R1", "R2", "R3"}),
                SETTLED,
                frozenset({"L1", "L2"}),
            ),
            # Nothing left held: quiet and watch start from scratch at the next pause.
            Plan((), ("L1", "L2"), PreemptState((), None, 900.0, frozenset({"L1", "L2"})), urgent=0),
            id="taken-into-active-not-due-or-gone-leave-the-meter",
        ),
        pytest.param(
            found(
                msg("L1", "hold", "low", 10.0),
                msg("L2", "deferred", "low", 20.0),  # an operator released our hold
                msg("N1", "hold", "normal", 5.0),
            ),
            PreemptState(
                (Held("L1", 10.0), Held("L2", 20.0), Held("L3", 30.0)),
                None,
                900.0,
                quiet_since=SETTLED,
                watch=frozenset({"L1", "L2", "L3"}),
            ),
            Plan(
                (),
                ("L1",),
                PreemptState((), None, 900.0, frozenset({"L1"})),
                urgent=0,
                forgotten=("L2", "L3"),
            ),
            id="held-found-elsewhere-or-gone-forgotten-never-released",
        ),
        pytest.param(
            found(msg("H1", "active", "high", 1.0), msg("L1", "hold", "low", 10.0)),
            paused(Held("L1", 10.0), Held("L9", 90.0)),
            Plan((), (), paused(Held("L1", 10.0), last_urgent=NOW, quiet_since=NOW), urgent=1, forgotten=("L9",)),
            id="forgotten-during-a-pause",
        ),
        pytest.param(
            found(msg("H1", "active", "high", 1.0), msg("L1", "incoming", "low", 10.0)),
            paused(last_urgent=990.0, releasing=frozenset({"L1", "R1"})),
            Plan(
                ("L1",),
                (),
                paused(Held("L1", 10.0), last_urgent=NOW, releasing=frozenset(), quiet_since=NOW),
                urgent=1,
            ),
            id="a-released-message-still-waiting-is-held-again",
        ),
    ],
)
def test_full_scan(messages: dict[str, Message], state: PreemptState, expected: Plan) -> None:
    assert plan(messages, FULL, state, POLICY, NOW) == expected


@pytest.mark.parametrize(
    ("messages", "state", "expected"),
    [
        pytest.param(
            found(msg("L1", "hold", "low", 10.0)),
            PreemptState((Held("L1", 10.0),), None, 900.0, frozenset({"R1"}), SETTLED, frozenset({"L1"})),
            Plan((), ("L1",), PreemptState((), None, 900.0, frozenset({"R1", "L1"})), urgent=0),
            id="unknown-releasing-kept-without-deferred",
        ),
        pytest.param(
            found(msg("L1", "hold", "low", 10.0)),
            PreemptState((Held("L1", 10.0),), None, 900.0, frozenset({"R1", "R2"}), SETTLED, frozenset({"L1"})),
            Plan(
                (),
                (),
                PreemptState((Held("L1", 10.0),), None, 900.0, frozenset({"R1", "R2"}), SETTLED, frozenset({"L1"})),
                urgent=0,
            ),
            id="unknown-releasing-fill-the-batch",
        ),
        pytest.param(
            found(msg("H1", "active", "high", 1.0), msg("L1", "hold", "low", 10.0)),
            paused(Held("L1", 10.0), Held("L2", 20.0)),
            Plan((), (), paused(Held("L1", 10.0), Held("L2", 20.0), last_urgent=NOW, quiet_since=NOW), urgent=1),
            id="held-not-found-kept-perhaps-in-deferred",
        ),
        pytest.param(
            found(msg("L1", "hold", "low", 10.0), msg("L3", "hold", "low", 30.0)),
            PreemptState(
                (Held("L1", 10.0), Held("L2", 20.0), Held("L3", 30.0)),
                None,
                900.0,
                quiet_since=SETTLED,
                watch=frozenset({"L1", "L2", "L3"}),
            ),
            Plan(
                (),
                ("L1", "L3"),
                PreemptState((Held("L2", 20.0),), None, 900.0, frozenset({"L1", "L3"}), SETTLED, frozenset({"L2"})),
                urgent=0,
            ),
            id="only-what-this-scan-saw-on-hold-is-released",
        ),
    ],
)
def test_quick_scan(messages: dict[str, Message], state: PreemptState, expected: Plan) -> None:
    assert plan(messages, QUICK, state, POLICY, NOW) == expected


def test_a_pause_with_more_queues() -> None:
    policy = PreemptPolicy(pause=frozenset({"low", "normal"}), resume_after=5.0)
    messages = found(*BYSTANDERS, msg("H1", "active", "high", 1.0))
    assert plan(messages, FULL, PreemptState(), policy, NOW).hold == ("N1",)


def test_the_whole_story() -> None:
    """Pause, new arrivals held, the high mail leaves, resume_after, metered release in arrival order."""
    low = [msg(f"L{n}", "deferred", "low", float(n)) for n in range(1, 6)]
    high = msg("H1", "incoming", "high", 100.0)
    state = PreemptState()
    step = plan(found(high, *low[:3]), FULL, state, POLICY, 100.0)
    assert (step.hold, step.state.paused_since) == (("L1", "L2", "L3"), 100.0)
    on_hold = [msg(m.queue_id, "hold", "low", m.arrival) for m in low[:3]]
    step = plan(found(high, *on_hold, *low[3:]), FULL, step.state, POLICY, 101.0)
    assert step.hold == ("L4", "L5")
    on_hold = [msg(m.queue_id, "hold", "low", m.arrival) for m in low]
    step = plan(found(*on_hold), QUICK, step.state, POLICY, 105.0)  # H1 delivered after 101
    assert (step.hold, step.release, step.state.paused) == ((), (), True)
    step = plan(found(*on_hold), QUICK, step.state, POLICY, 106.0)
    assert (step.release, step.state.paused) == (("L1", "L2"), False)
    # L1 went to active and is being delivered (no longer watched: it was released), L2 waits in
    # deferred: one place in the batch.
    moved = [msg("L1", "active", "low", 1.0, locked=True), msg("L2", "deferred", "low", 2.0), *on_hold[2:]]
    step = plan(found(*moved), FULL, step.state, POLICY, 106.2)
    assert (step.release, step.state.releasing) == (("L3",), frozenset({"L2", "L3"}))
    assert (step.state.quiet_since, step.state.watch) == (101.0, frozenset({"L4", "L5"}))
    step = plan(found(*on_hold[3:]), FULL, step.state, POLICY, 106.4)  # L1, L2, L3 delivered
    assert (step.release, step.state) == (("L4", "L5"), PreemptState((), None, 101.0, frozenset({"L4", "L5"})))


LOW_HELD_FROM_ACTIVE = Held("L1", 10.0, from_active=True)


@pytest.mark.parametrize(
    ("messages", "scanned", "state", "expected"),
    [
        pytest.param(
            found(msg("H1", "active", "high", 1.0), msg("L1", "hold", "low", 10.0, locked=True)),
            FULL,
            paused(LOW_HELD_FROM_ACTIVE, quiet_since=950.0),
            Plan((), (), paused(LOW_HELD_FROM_ACTIVE, last_urgent=NOW, quiet_since=None), urgent=1),
            id="pause-a-held-file-still-delivered-resets-quiet",
        ),
        pytest.param(
            found(
                msg("H1", "active", "high", 1.0),
                msg("L1", "hold", "low", 10.0),
                msg("L2", "active", "low", 20.0, locked=True),
            ),
            FULL,
            paused(LOW_HELD_FROM_ACTIVE, quiet_since=950.0),
            Plan(
                ("L2",),
                (),
                paused(LOW_HELD_FROM_ACTIVE, Held("L2", 20.0, from_active=True), last_urgent=NOW, quiet_since=None),
                urgent=1,
            ),
            id="pause-a-new-low-in-active-being-delivered-resets-quiet",
        ),
        pytest.param(
            found(
                msg("H1", "active", "high", 1.0, locked=True),
                msg("N1", "active", "normal", 2.0, locked=True),
                msg("X1", "active", None, 3.0, locked=True),
                msg("L1", "hold", "low", 10.0),
            ),
            FULL,
            paused(LOW_HELD_FROM_ACTIVE, quiet_since=950.0),
            Plan((), (), paused(LOW_HELD_FROM_ACTIVE, last_urgent=NOW, quiet_since=950.0), urgent=1),
            id="pause-deliveries-of-other-queues-leave-quiet-alone",
        ),
        pytest.param(
            found(msg("H1", "active", "high", 1.0), msg("L1", "hold", "low", 10.0), msg("L2", "incoming", "low", 20.0)),
            FULL,
            paused(LOW_HELD_FROM_ACTIVE, quiet_since=950.0),
            Plan(
                ("L2",), (), paused(LOW_HELD_FROM_ACTIVE, Held("L2", 20.0), last_urgent=NOW, quiet_since=NOW), urgent=1
            ),
            id="pause-a-new-hold-restarts-quiet",
        ),
        pytest.param(
            found(msg("L1", "hold", "low", 10.0), msg("L2", "hold", "low", 20.0)),
            FULL,
            paused(LOW_HELD_FROM_ACTIVE, Held("L2", 20.0), last_urgent=NOW - 5.0, quiet_since=NOW - 2.02),
            Plan((), ("L1", "L2"), PreemptState((), None, NOW - 5.0, frozenset({"L1", "L2"})), urgent=0),
            id="resume-quiet-counted-in-the-pause-settled-release-at-once",
        ),
        pytest.param(
            found(msg("L1", "hold", "low", 10.0), msg("L2", "hold", "low", 20.0)),
            FULL,
            paused(LOW_HELD_FROM_ACTIVE, Held("L2", 20.0), last_urgent=NOW - 5.0, quiet_since=SETTLED),
            Plan(
                (),
                (),
                PreemptState(
                    (LOW_HELD_FROM_ACTIVE, Held("L2", 20.0)),
                    None,
                    NOW - 5.0,
                    frozenset(),
                    SETTLED,
                    frozenset({"L1", "L2"}),
                ),
                urgent=0,
            ),
            id="resume-one-held-from-active-needs-10ms-more",
        ),
        pytest.param(
            found(msg("L1", "hold", "low", 10.0), msg("L9", "active", "low", 90.0, locked=True)),
            FULL,
            PreemptState((LOW_HELD_FROM_ACTIVE,), None, 900.0, quiet_since=NOW - 2.02, watch=frozenset({"L1"})),
            Plan((), ("L1",), PreemptState((), None, 900.0, frozenset({"L1"})), urgent=0),
            id="after-resume-a-new-low-delivery-is-not-watched",
        ),
        pytest.param(
            found(msg("L1", "hold", "low", 10.0), msg("L5", "active", "low", 50.0, locked=True)),
            FULL,
            PreemptState((LOW_HELD_FROM_ACTIVE,), None, 900.0, quiet_since=950.0, watch=frozenset({"L1", "L5"})),
            Plan(
                (),
                (),
                PreemptState((LOW_HELD_FROM_ACTIVE,), None, 900.0, quiet_since=None, watch=frozenset({"L1", "L5"})),
                urgent=0,
            ),
            id="after-resume-a-watched-file-still-locked-blocks-release",
        ),
        pytest.param(
            found(msg("L1", "hold", "low", 10.0)),
            FULL,
            PreemptState((LOW_HELD_FROM_ACTIVE,), None, 900.0, quiet_since=None, watch=frozenset({"L1", "L5"})),
            Plan(
                (),
                (),
                PreemptState((LOW_HELD_FROM_ACTIVE,), None, 900.0, quiet_since=NOW, watch=frozenset({"L1"})),
                urgent=0,
            ),
            id="full-scan-a-watched-file-that-left-is-dropped-quiet-starts",
        ),
        pytest.param(
            found(msg("L1", "hold", "low", 10.0)),
            QUICK,
            PreemptState((LOW_HELD_FROM_ACTIVE,), None, 900.0, quiet_since=950.0, watch=frozenset({"L1", "L5"})),
            Plan(
                (),
                ("L1",),
                PreemptState((), None, 900.0, frozenset({"L1"})),
                urgent=0,
            ),
            id="quick-scan-a-watched-file-not-found-is-kept-and-not-locked",
        ),
        pytest.param(
            found(msg("L1", "hold", "low", 10.0), msg("L5", "deferred", "low", 50.0)),
            FULL,
            PreemptState((LOW_HELD_FROM_ACTIVE,), None, 900.0, quiet_since=None, watch=frozenset({"L1", "L5"})),
            Plan(
                (),
                (),
                PreemptState((LOW_HELD_FROM_ACTIVE,), None, 900.0, quiet_since=NOW, watch=frozenset({"L1", "L5"})),
                urgent=0,
            ),
            id="a-watched-file-deferred-is-no-longer-locked",
        ),
    ],
)
def test_quiet(messages: dict[str, Message], scanned: tuple[str, ...], state: PreemptState, expected: Plan) -> None:
    assert plan(messages, scanned, state, POLICY, NOW) == expected


# 2,500 held from active: 5 s more than settle's 2 s (2 ms each); the 10 held from elsewhere add nothing.
MANY = tuple(Held(f"A{n:04}", float(n), from_active=True) for n in range(2500)) + tuple(
    Held(f"D{n:03}", 1000.0 + n) for n in range(10)
)


@pytest.mark.parametrize(
    ("quiet_since", "release"),
    [
        pytest.param(NOW - 6.99, (), id="6.99s-quiet-not-enough"),
        pytest.param(NOW - 7.0, ("A0000", "A0001"), id="7s-quiet-settled"),
    ],
)
def test_settle_grows_with_the_messages_held_from_active(quiet_since: float, release: tuple[str, ...]) -> None:
    messages = found(*(msg(h.queue_id, "hold", "low", h.arrival) for h in MANY))
    state = PreemptState(MANY, None, 900.0, quiet_since=quiet_since, watch=frozenset(messages))
    step = plan(messages, FULL, state, POLICY, NOW)
    assert step.release == release
    assert step.state.quiet_since == quiet_since
    assert len(step.state.held) == len(MANY) - len(release)


STOPPING_QUEUE = found(
    msg("H1", "active", "high", 1.0),  # urgent mail still going out: no longer keeps the pause
    msg("L1", "hold", "low", 10.0),
    msg("L2", "hold", "low", 20.0),
    msg("L3", "hold", "low", 30.0),
)
STOPPING_HELD = (LOW_HELD_FROM_ACTIVE, Held("L2", 20.0), Held("L3", 30.0))


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        pytest.param(
            paused(*STOPPING_HELD, last_urgent=NOW - 0.2, quiet_since=None),
            Plan(
                (),
                (),
                PreemptState(STOPPING_HELD, None, NOW - 0.2, frozenset(), NOW, frozenset({"L1", "L2", "L3"})),
                urgent=0,
            ),
            id="not-quiet-yet-nothing-released",
        ),
        pytest.param(
            paused(*STOPPING_HELD, last_urgent=NOW - 0.2, quiet_since=NOW - 2.0),
            Plan(
                (),
                (),
                PreemptState(STOPPING_HELD, None, NOW - 0.2, frozenset(), NOW - 2.0, frozenset({"L1", "L2", "L3"})),
                urgent=0,
            ),
            id="quiet-but-not-settled-for-one-held-from-active",
        ),
        pytest.param(
            paused(*STOPPING_HELD, last_urgent=NOW - 0.2, quiet_since=NOW - 2.02, releasing=frozenset({"R1", "R2"})),
            Plan(
                (),
                ("L1", "L2", "L3"),
                PreemptState((), None, NOW - 0.2, frozenset({"R1", "R2", "L1", "L2", "L3"})),
                urgent=0,
            ),
            id="settled-everything-at-once-past-a-full-batch",
        ),
    ],
)
def test_stopping(state: PreemptState, expected: Plan) -> None:
    assert plan(STOPPING_QUEUE, QUICK, state, POLICY, NOW, stopping=True) == expected


def test_a_restart_waits_settle_from_its_first_scan() -> None:
    """The state file gives back the holds only: quiet and watch are unknown, so they start now."""
    on_hold = found(msg("L1", "hold", "low", 10.0), msg("L2", "hold", "low", 20.0))
    restored = PreemptState((LOW_HELD_FROM_ACTIVE, Held("L2", 20.0)), None, None)
    step = plan(on_hold, FULL, restored, POLICY, NOW)
    assert step == Plan((), (), replace(restored, quiet_since=NOW, watch=frozenset({"L1", "L2"})), urgent=0)
    step = plan(on_hold, QUICK, step.state, POLICY, NOW + 2.0)
    assert step.release == ()
    step = plan(on_hold, QUICK, step.state, POLICY, NOW + 2.02)
    assert step == Plan((), ("L1", "L2"), PreemptState((), None, None, frozenset({"L1", "L2"})), urgent=0)


@pytest.mark.parametrize(
    ("pause", "quiet_since"),
    [
        # Normal mail shares Postfix's default transport with mail that is not SMTP+ mail: a delivery
        # of such mail under way can be ahead of the held normal messages' pending ones.
        pytest.param(frozenset({"normal"}), None, id="normal-paused-other-mail-counts"),
        # The low queue has a transport of its own: other mail's deliveries are not ahead of its.
        pytest.param(frozenset({"low"}), NOW, id="low-paused-other-mail-ignored"),
    ],
)
def test_other_mail_counts_only_where_it_shares_the_transport(pause: frozenset[str], quiet_since: float | None) -> None:
    policy = PreemptPolicy(pause=pause, resume_after=5.0, release_batch=2)
    queue = next(iter(pause))
    state = paused(Held("Q1", 10.0, True), since=900.0, last_urgent=990.0)
    messages = found(
        msg("H1", "active", "high", 1.0), msg("Q1", "hold", queue, 10.0), msg("X1", "active", None, 2.0, locked=True)
    )
    decided = plan(messages, FULL, state, policy, NOW)
    assert decided.state.quiet_since == quiet_since
    assert decided.hold == () and decided.release == ()


def test_tally_counts_our_holds_with_their_queue_and_the_operators_only_as_postfix_holds() -> None:
    messages = found(*BYSTANDERS, msg("L1", "hold", "low", 5.0), msg("H1", "active", "high", 6.0))
    counted = tally(messages, ["L1", "GONE"])  # GONE: held by us once, no longer on hold
    assert dict(counted.postfix) == {"incoming": 1, "active": 2, "deferred": 1, "hold": 2}
    assert dict(counted.queues) == {"high": (2, 0), "normal": (1, 0), "low": (1, 1)}  # OP is the operator's
    assert (counted.other, counted.held) == (1, 1)
    assert urgent_waiting(messages) == 1  # HD waits in deferred for its retry time: not counted
