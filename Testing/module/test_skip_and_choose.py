"""Issue 14 item 5 through the module's Logic on a real backend: Skip, and choosing a case from the queue table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ActiveSegLib import BackendRequestError

from .test_logic_loop import ANNOTATOR, logic  # noqa: F401  (the fixture: a Logic with a local backend)


def test_skip_gives_the_case_back_and_next_does_not_serve_it_straight_back(logic: tuple[Any, Path]) -> None:  # noqa: F811
    core, _ = logic
    client = core.session.client
    first = core.cases.load_next_case(ANNOTATOR)
    assert first is not None and client.case(first.case_id).lease_holder == ANNOTATOR
    second = core.cases.skip_current()
    assert second is not None and second.case_id != first.case_id
    assert client.case(first.case_id).lease_holder is None  # released for others
    assert client.case(second.case_id).lease_holder == ANNOTATOR
    third = core.cases.skip_current()
    assert third is not None and third.case_id not in (first.case_id, second.case_id)
    # the skipped case stays free for a colleague
    assert client.lease_next("bob").case_id == first.case_id


def test_choosing_a_case_leases_it_and_releases_the_one_shown(logic: tuple[Any, Path]) -> None:  # noqa: F811
    core, _ = logic
    client = core.session.client
    shown = core.cases.load_next_case(ANNOTATOR)
    ids = [c.case_id for c in client.cases().cases if c.case_id != shown.case_id]
    chosen = core.cases.load_case(ids[-1], ANNOTATOR)  # what a double-click in the queue table does
    assert chosen.case_id == ids[-1] and core.cases.current is chosen
    assert client.case(ids[-1]).lease_holder == ANNOTATOR and client.case(shown.case_id).lease_holder is None
    client.lease(ids[0], "bob")
    with pytest.raises(BackendRequestError, match="bob"):
        core.cases.load_case(ids[0], ANNOTATOR)
    assert core.cases.current is chosen and client.case(ids[-1]).lease_holder == ANNOTATOR  # nothing lost


def test_skip_without_a_case_says_so(logic: tuple[Any, Path]) -> None:  # noqa: F811
    from ActiveSegLib.errors import ClientError

    core, _ = logic
    with pytest.raises(ClientError, match="nothing to skip"):
        core.cases.skip_current()
