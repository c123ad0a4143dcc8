"""The Render node's settings rules, with no Nuke at all."""

from __future__ import annotations

import dataclasses

from nuke_menu import settings as s

BASE = s.RenderSettings(node="ComfyUIRender1", workflow="/wf/invert_api.json",
                        bindings=(s.InputBinding(0, "LoadImage.image"),), values=(), mode=s.Mode.RANGE,
                        first=1001, last=1100, step=2, frame=1001, iterations=4, seed_mode="random",
                        output="/renders/sh010/comfy.####.png", target="auto", chunk=1)


def test_bindings_parse_and_every_bad_line_is_named():
    found, problems = s.parse_bindings("# inputs\n0 = LoadImage.image\n1: mask.image\n\n0 = X.image\n5 = A.b\nnope")
    assert found == (s.InputBinding(0, "LoadImage.image"), s.InputBinding(1, "mask.image"))
    assert problems == ["bindings line 5: input 0 is bound twice",
                        "bindings line 6: input 5 does not exist (inputs are 0-2)",
                        "bindings line 7: 'nope' is not '<input> = NODE.INPUT'"]


def test_a_good_range_has_no_problems_and_its_frames():
    assert s.check(BASE) == []
    assert BASE.frames.first == 1001 and BASE.frames.last == 1099 and len(BASE.frames) == 50
    assert BASE.target_arg is None and dataclasses.replace(BASE, target="gpu-02").target_arg == "gpu-02"


def test_every_problem_is_reported_together():
    bad = dataclasses.replace(BASE, workflow=" ", first=20, last=10, step=0, chunk=0, seed_mode="lucky",
                              output="/renders/still.png")
    problems = s.check(bad)
    assert len(problems) == 6
    assert any("needs a frame token" in p for p in problems)
    assert any("last frame 10 is before first frame 20" in p for p in problems)


def test_single_frame_output_may_be_a_still_and_iterations_need_a_count():
    assert s.check(dataclasses.replace(BASE, mode=s.Mode.SINGLE, output="/r/still.png")) == []
    assert s.check(dataclasses.replace(BASE, mode=s.Mode.ITERATIONS, iterations=0)) == [
        "iterations: count must be 1 or more, got 0"]


def test_default_output_sits_beside_the_script():
    assert s.default_output("C:\\shows\\sh010\\comp_v003.nk", "R1") == "C:/shows/sh010/comfy/R1/comp_v003_R1.####.png"
    assert s.default_output("Root", "R1") == ""
