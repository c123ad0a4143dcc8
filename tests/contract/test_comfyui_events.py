"""The websocket the client follows prompts by, against the emulator and the real ComfyUI 0.3.64.

Events are taken through PromptTracker (one socket per client id, routed by prompt id) and
written down as (type, node) pairs; progress_state as the state of each node it lists.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from comfy_cluster.errors import ExecutionFailed, Interrupted
from comfy_cluster.tracker import PromptTracker
from comfy_cluster.wire import Event
from tests.contract.conftest import DEADLINE, HOLD_NODE, Target, image_chain, png_bytes, unique, wait_running
from tests.helpers import wait_until

CHAIN = ["1", "2", "3", "4"]   # image_chain's nodes before its SaveImage "5"


class Recorder:
    """Every event of one prompt, in arrival order, as comparable tuples."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)

    def summary(self) -> list[tuple[Any, ...]]:
        with self.lock:
            events = list(self.events)
        out: list[tuple[Any, ...]] = []
        for event in events:
            data = event.data
            if event.type == "progress_state":
                out.append(("progress_state", tuple(sorted((n, s["state"]) for n, s in data["nodes"].items()))))
            elif event.type in ("executing", "executed"):
                out.append((event.type, data.get("node")))
            elif event.type == "execution_cached":
                out.append((event.type, tuple(data["nodes"])))
            elif event.type in ("execution_error", "execution_interrupted"):
                out.append((event.type, data["node_id"]))
            else:
                out.append((event.type,))
        return out


def _progress(done: list[str], running: str | None = None) -> tuple[str, tuple[tuple[str, str], ...]]:
    states = [(n, "finished") for n in done] + ([(running, "running")] if running else [])
    return ("progress_state", tuple(sorted(states)))


def _node_run(done: list[str], node: str, output: bool = False) -> list[tuple[Any, ...]]:
    """What one executed node sends: running, executing, [executed], finished."""
    return [_progress(done, node), ("executing", node), *([("executed", node)] if output else []),
            _progress([*done, node])]


def _watched(tracker: PromptTracker, prompt_id: str):
    recorder = Recorder()
    return tracker.watch(prompt_id, on_event=recorder), recorder


def _outcome(watch, recorder: Recorder):
    """The watch's result, once the recorder has the last event (a watch unregisters when it returns)."""
    wait_until(lambda: ("executing", None) in recorder.summary(), timeout=DEADLINE, what="the final executing event")
    return watch.wait(DEADLINE)


def _uploaded(target: Target, data: bytes | None = None) -> str:
    client = target.client()
    return client.upload_image(data if data is not None else png_bytes(21), unique("ws") + ".png").load_image_value


def test_run_then_cached_rerun(target: Target, tracker) -> None:
    tr = tracker()
    prompt = image_chain(_uploaded(target), unique("contract/ws"))
    prompt_id = unique("run")
    watch, run = _watched(tr, prompt_id)
    tr.client.submit(prompt, client_id=tr.client_id, prompt_id=prompt_id)
    entry = _outcome(watch, run)

    expected = [("execution_start",), ("execution_cached", ())]
    for i, node in enumerate(CHAIN):
        expected += _node_run(CHAIN[:i], node)
    expected += [*_node_run(CHAIN, "5", output=True), ("execution_success",), ("executing", None)]
    assert run.summary() == expected
    [image] = entry.images
    assert image.node_id == "5"

    again_id = unique("cached")
    watch, cached = _watched(tr, again_id)
    tr.client.submit(prompt, client_id=tr.client_id, prompt_id=again_id)
    again = _outcome(watch, cached)
    assert cached.summary() == [("execution_start",), ("execution_cached", ("1", "2", "3", "4", "5")),
                                ("executed", "5"), _progress(["5"]), ("execution_success",), ("executing", None)]
    assert again.images == entry.images   # the cache re-sends the old file names
    progress = [e for e in cached.events if e.type == "progress_state"][0].data["nodes"]["5"]
    assert (progress["value"], progress["max"]) == (1, 1)


def test_a_failing_node_sends_execution_error(target: Target, tracker) -> None:
    tr = tracker()
    not_an_image = _uploaded(target, b"this is not a PNG, whatever the name says")
    prompt_id = unique("error")
    watch, rec = _watched(tr, prompt_id)
    tr.client.submit(image_chain(not_an_image, unique("contract/ws")), client_id=tr.client_id, prompt_id=prompt_id)
    with pytest.raises(ExecutionFailed) as caught:
        _outcome(watch, rec)
    failed = caught.value
    assert (failed.node_id, failed.node_type, failed.exception_type) == ("1", "LoadImage", "PIL.UnidentifiedImageError")
    assert "cannot identify image file" in failed.exception_message
    assert "node 1 (LoadImage) raised PIL.UnidentifiedImageError" in str(failed)

    assert rec.summary() == [("execution_start",), ("execution_cached", ()), _progress([], "1"), ("executing", "1"),
                             ("execution_error", "1"), ("executing", None)]
    error = next(e for e in rec.events if e.type == "execution_error").data
    assert error["executed"] == [] and sorted(error["current_outputs"]) == ["1", "2", "3", "4", "5"]
    assert error["current_inputs"] == {"image": [not_an_image]}
    assert error["exception_message"].endswith("\n") and isinstance(error["traceback"], list)

    entry = wait_until(lambda: tr.client.get_history(prompt_id), timeout=DEADLINE, what="history of the failure")
    assert (entry.status_str, entry.completed, entry.outputs) == ("error", False, {})
    assert [kind for kind, _ in entry.messages] == ["execution_start", "execution_cached", "execution_error"]


def test_an_interrupted_prompt_sends_execution_interrupted(target: Target, tracker) -> None:
    tr = tracker()
    prompt = target.hold_prompt()
    prompt_id = unique("interrupt")
    watch, rec = _watched(tr, prompt_id)
    tr.client.submit(prompt, client_id=tr.client_id, prompt_id=prompt_id)
    wait_until(lambda: ("executing", HOLD_NODE) in rec.summary(), timeout=DEADLINE, what="the held node running")
    tr.client.interrupt(prompt_id)
    with pytest.raises(Interrupted, match=f"interrupted at node {HOLD_NODE}"):
        _outcome(watch, rec)
    assert rec.summary() == [("execution_start",), ("execution_cached", ()), _progress([], HOLD_NODE),
                             ("executing", HOLD_NODE), ("execution_interrupted", HOLD_NODE), ("executing", None)]
    data = next(e for e in rec.events if e.type == "execution_interrupted").data
    assert data["node_type"] == prompt[HOLD_NODE]["class_type"] and data["executed"] == []


def test_status_follows_every_queue_change_and_prompt_events_reach_only_their_client(target: Target,
                                                                                       tracker) -> None:
    statuses: list[int] = []
    mine = tracker(on_status=statuses.append)
    other = tracker()
    wait_until(lambda: statuses == [0], timeout=DEADLINE, what="the status sent on connect")

    hold_id = unique("hold")
    _, held = _watched(mine, hold_id)
    _, overheard = _watched(other, hold_id)
    mine.client.submit(target.hold_prompt(), client_id=mine.client_id, prompt_id=hold_id)
    wait_running(mine.client, hold_id)
    queued = mine.client.submit(image_chain(_uploaded(target), unique("contract/ws")), client_id=mine.client_id)
    wait_until(lambda: statuses[-1:] == [2], timeout=DEADLINE, what="status 2")
    mine.client.delete_pending([queued.prompt_id])
    wait_until(lambda: statuses[-2:] == [1, 1], timeout=DEADLINE, what="status 1 twice after the delete")
    mine.client.interrupt(hold_id)
    wait_until(lambda: statuses[-1:] == [0], timeout=DEADLINE, what="status 0 after the interrupt")
    # connect, put, get (moves it to running: still 1), put, delete (the last pending one goes by
    # wipe_queue, which sends its own status, then delete_queue_item's), done
    assert statuses == [0, 1, 1, 2, 1, 1, 0]

    # The other socket's messages come in server order: once its own probe is done, anything
    # of the held prompt would have arrived before.
    probe_id = unique("probe")
    probe_watch, probe = _watched(other, probe_id)
    other.client.submit(image_chain(_uploaded(target), unique("contract/ws")), client_id=other.client_id,
                        prompt_id=probe_id)
    _outcome(probe_watch, probe)
    assert ("executing", HOLD_NODE) in held.summary()
    assert overheard.summary() == []
