"""FrameSpec and FramePattern: the one parser for frame ranges and frame-numbered names."""

from __future__ import annotations

import doctest
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comfy_cluster import frames
from comfy_cluster.frames import MAX_FRAMES, FramePattern, FrameSpec


def test_docstring_examples_hold() -> None:
    result = doctest.testmod(frames)
    assert result.attempted >= 5
    assert result.failed == 0


class TestFrameSpecParse:
    @pytest.mark.parametrize("text, expected", [
        ("1001-1005", (1001, 1002, 1003, 1004, 1005)),
        ("1001-1010x3", (1001, 1004, 1007, 1010)),
        ("1001-1011x3", (1001, 1004, 1007, 1010)),
        ("1,5,9-12", (1, 5, 9, 10, 11, 12)),
        ("7", (7,)),
        ("-3-4", (-3, -2, -1, 0, 1, 2, 3, 4)),
        ("-10--5", (-10, -9, -8, -7, -6, -5)),
        ("-7", (-7,)),
        ("1-3 20-24x2", (1, 2, 3, 20, 22, 24)),
        ("  1-3 ,\t20-24x2  ", (1, 2, 3, 20, 22, 24)),
        ("5 1 3 3 1-2", (1, 2, 3, 5)),
        ("1001-1001", (1001,)),
    ])
    def test_studio_ranges(self, text: str, expected: tuple[int, ...]) -> None:
        assert FrameSpec.parse(text).frames == expected

    @pytest.mark.parametrize("text, message", [
        ("10-1x", "frame range '10-1x': step is missing after 'x'"),
        ("1-10x0", "step must be at least 1, got 0"),
        ("1-10xa", "step 'a' is not a whole number"),
        ("10-1", "range ends at 1, before its start 10"),
        ("1x2", "a step needs a range"),
        ("", "no frames given"),
        ("   ", "no frames given"),
        ("1,,2", "empty entry between commas"),
        ("1,", "empty entry between commas"),
        ("sh010", "'sh010' is not a frame number or range"),
        ("1.5", "'1.5' is not a frame number or range"),
        ("1-10X2", "is not a frame number or range"),
        ("1001-1100 1200-1100", "in '1200-1100': range ends at 1100"),
        ("\u0661-\u0663", "is not a frame number or range"),
    ])
    def test_bad_ranges_say_what_and_where(self, text: str, message: str) -> None:
        with pytest.raises(ValueError) as err:
            FrameSpec.parse(text)
        assert message in str(err.value)

    def test_absurd_sizes_are_refused_before_expanding(self) -> None:
        with pytest.raises(ValueError, match="999,999,999 frames is more than the limit of 1,000,000"):
            FrameSpec.parse("1-999999999")
        with pytest.raises(ValueError, match="more than the limit"):
            FrameSpec.parse("-100000000000000000000000-100000000000000000000000")
        with pytest.raises(ValueError, match="more than the limit"):
            FrameSpec.parse("1-600000 600001-1200000")
        assert len(FrameSpec.parse(f"1-{MAX_FRAMES}")) == MAX_FRAMES
        assert len(FrameSpec.parse("1-999999999x1000")) == 1_000_000

    def test_not_a_string(self) -> None:
        with pytest.raises(TypeError, match="must be a str"):
            FrameSpec.parse(1001)  # type: ignore[arg-type]


class TestFrameSpecText:
    @pytest.mark.parametrize("text, canonical", [
        ("1001-1100", "1001-1100"),
        ("1001-1100x2", "1001-1099x2"),
        ("1,5,9-12", "1,5,9-12"),
        ("1 2", "1-2"),
        ("1,3", "1,3"),
        ("1,3,5", "1-5x2"),
        ("1,2,4,6,8,9", "1-2,4,6,8-9"),
        ("-10--5 -3-4", "-10--5,-3-4"),
        ("20-30 0", "0,20-30"),
    ])
    def test_str_is_compact_and_canonical(self, text: str, canonical: str) -> None:
        spec = FrameSpec.parse(text)
        assert str(spec) == canonical
        assert FrameSpec.parse(canonical) == spec

    def test_repr_rebuilds(self) -> None:
        spec = FrameSpec.parse("1001-1100x2")
        assert repr(spec) == "FrameSpec.parse('1001-1099x2')"
        assert eval(repr(spec), {"FrameSpec": FrameSpec}) == spec

    def test_nuke_form_uses_spaces(self) -> None:
        assert FrameSpec.parse("1-10,20-30x2").to_nuke() == "1-10 20-30x2"
        assert FrameSpec.parse("1-10,20-30x2").to(range_sep=":", step_sep=":", block_sep=";") == "1:10;20:30:2"


class TestFrameSpecSet:
    def test_container_protocol(self) -> None:
        spec = FrameSpec.parse("1001-1009x2")
        assert list(spec) == [1001, 1003, 1005, 1007, 1009]
        assert len(spec) == 5
        assert 1003 in spec and 1004 not in spec and 999 not in spec and 2000 not in spec
        assert "1003" not in spec and True not in FrameSpec.parse("1")
        assert (spec.first, spec.last) == (1001, 1009)

    def test_from_frames_sorts_and_dedups(self) -> None:
        assert FrameSpec.from_frames([1005, 1001, 1003, 1003]) == FrameSpec.parse("1001-1005x2")
        assert FrameSpec.from_frames(iter(range(10, 0, -1))).frames == tuple(range(1, 11))

    @pytest.mark.parametrize("bad", [[], [1, 2.5], [True], ["1001"]])
    def test_from_frames_refuses_non_frames(self, bad: list) -> None:
        with pytest.raises(ValueError):
            FrameSpec.from_frames(bad)

    def test_direct_construction_must_be_sorted(self) -> None:
        assert FrameSpec([1, 2]) == FrameSpec((1, 2)) and hash(FrameSpec([1, 2])) == hash(FrameSpec((1, 2)))
        with pytest.raises(ValueError, match="sorted and unique"):
            FrameSpec((3, 1))
        with pytest.raises(ValueError, match="sorted and unique"):
            FrameSpec((1, 1))

    def test_from_range_matches_nuke_triple(self) -> None:
        assert FrameSpec.from_range(1001, 1010, 3).frames == (1001, 1004, 1007, 1010)
        with pytest.raises(ValueError, match="step must be at least 1"):
            FrameSpec.from_range(1, 10, 0)

    def test_chunks_are_consecutive_groups(self) -> None:
        chunks = FrameSpec.parse("1001-1010").chunks(4)
        assert [c.frames for c in chunks] == [(1001, 1002, 1003, 1004), (1005, 1006, 1007, 1008), (1009, 1010)]
        assert [str(c) for c in FrameSpec.parse("1-9x2").chunks(2)] == ["1,3", "5,7", "9"]
        assert FrameSpec.parse("1-3").chunks(10) == [FrameSpec.parse("1-3")]

    @pytest.mark.parametrize("size", [0, -1, 1.5, True])
    def test_chunk_size_must_be_positive(self, size: object) -> None:
        with pytest.raises(ValueError, match="chunk size"):
            FrameSpec.parse("1-10").chunks(size)  # type: ignore[arg-type]


_frame_lists = st.lists(st.integers(min_value=-5000, max_value=5000), min_size=1, max_size=200)


@given(_frame_lists)
@settings(database=None)
def test_framespec_round_trips_through_text(values: list[int]) -> None:
    spec = FrameSpec.from_frames(values)
    assert spec.frames == tuple(sorted(set(values)))
    assert FrameSpec.parse(str(spec)) == spec
    assert FrameSpec.parse(spec.to_nuke()) == spec
    assert str(FrameSpec.parse(str(spec))) == str(spec)


_blocks = st.tuples(st.integers(-2000, 2000), st.integers(0, 300), st.integers(1, 12))


@given(st.lists(_blocks, min_size=1, max_size=8), st.sampled_from([",", " ", ", "]))
@settings(database=None)
def test_parse_expands_like_python_ranges(blocks: list[tuple[int, int, int]], sep: str) -> None:
    text = sep.join(f"{start}-{start + length}x{step}" for start, length, step in blocks)
    expected = set()
    for start, length, step in blocks:
        expected.update(range(start, start + length + 1, step))
    assert FrameSpec.parse(text).frames == tuple(sorted(expected))


class TestFramePatternParse:
    @pytest.mark.parametrize("text, prefix, padding, suffix", [
        ("/r/sh010_comfy.####.png", "/r/sh010_comfy.", 4, ".png"),
        ("/r/sh010_comfy.%04d.png", "/r/sh010_comfy.", 4, ".png"),
        ("/r/sh010_comfy.%d.png", "/r/sh010_comfy.", 1, ".png"),
        ("/r/sh010_comfy.%4d.png", "/r/sh010_comfy.", 4, ".png"),
        ("$JOB/render/sh010.$F4.exr", "$JOB/render/sh010.", 4, ".exr"),
        ("$JOB/render/sh010.$F.exr", "$JOB/render/sh010.", 1, ".exr"),
        ("C:\\shots\\sh010\\comp.#####.exr", "C:\\shots\\sh010\\comp.", 5, ".exr"),
        ("#.png", "", 1, ".png"),
    ])
    def test_every_token_style_lands_in_one_model(self, text: str, prefix: str, padding: int, suffix: str) -> None:
        pattern = FramePattern.parse(text)
        assert (pattern.prefix, pattern.padding, pattern.suffix) == (prefix, padding, suffix)
        assert pattern.has_token
        assert str(pattern) == text.replace("%4d", "%04d")

    def test_houdini_variables_that_are_not_frames_stay_literal(self) -> None:
        pattern = FramePattern.parse("/r/$FPS_$FSTART_$F4x/sh010.$F4.png")
        assert pattern.prefix == "/r/$FPS_$FSTART_$F4x/sh010."
        assert pattern.format(7) == "/r/$FPS_$FSTART_$F4x/sh010.0007.png"
        assert not FramePattern.parse("/r/sh010.$F4x.png").has_token
        with pytest.raises(ValueError, match="name character right after"):
            FramePattern("/r/a.", 4, "0.png", "houdini")

    def test_at_sign_is_opt_in(self) -> None:
        still = FramePattern.parse("/mnt/plate@2x/sh010.png")
        assert not still.has_token
        pattern = FramePattern.parse("/r/sh010.@@@@.png", at_sign=True)
        assert pattern.format(12) == "/r/sh010.0012.png"
        assert repr(pattern) == "FramePattern.parse('/r/sh010.@@@@.png', at_sign=True)"
        assert eval(repr(pattern), {"FramePattern": FramePattern}) == pattern

    @pytest.mark.parametrize("text, tokens", [
        ("/r/sh010.####.%04d.png", "'####' at 9, '%04d' at 14"),
        ("/r/##/sh010.##.png", "'##' at 3, '##' at 12"),
        ("/r/sh010.$F4.####.exr", "'$F4' at 9, '####' at 13"),
    ])
    def test_two_tokens_are_refused(self, text: str, tokens: str) -> None:
        with pytest.raises(ValueError) as err:
            FramePattern.parse(text)
        assert f"pattern {text!r} has 2 frame tokens ({tokens}); use exactly one" == str(err.value)

    def test_absurd_padding_is_refused(self) -> None:
        with pytest.raises(ValueError, match="padding 99 is wider than 32"):
            FramePattern.parse("/r/a.%099d.png")

    def test_direct_construction_is_checked(self) -> None:
        with pytest.raises(ValueError, match="second frame token"):
            FramePattern("/r/a.####.", 4, ".png", "printf")
        with pytest.raises(ValueError, match="padding must be between"):
            FramePattern("/r/a.", 0, ".png", "hash")


class TestFramePatternFormat:
    def test_padding_and_negative_frames(self) -> None:
        pattern = FramePattern.parse("/r/sh010_comfy.####.png")
        assert pattern.format(1001) == "/r/sh010_comfy.1001.png"
        assert pattern.format(7) == "/r/sh010_comfy.0007.png"
        assert pattern.format(-1) == "/r/sh010_comfy.-001.png"
        assert pattern.format(123456) == "/r/sh010_comfy.123456.png"
        assert FramePattern.parse("/r/a.%d.png").format(7) == "/r/a.7.png"

    def test_still_is_returned_unchanged(self) -> None:
        still = FramePattern.parse("/r/sh010_keyframe.png")
        assert not still.has_token and still.padding == 0 and still.token == ""
        assert still.format(1001) == "/r/sh010_keyframe.png"
        assert still.to_nuke() == still.to_printf() == "/r/sh010_keyframe.png"
        assert still.match("/r/sh010_keyframe.png") is None

    def test_host_forms(self) -> None:
        pattern = FramePattern.parse("/r/sh010.$F4.exr")
        assert pattern.to_nuke() == "/r/sh010.####.exr"
        assert pattern.to_printf() == "/r/sh010.%04d.exr"
        assert str(pattern) == "/r/sh010.$F4.exr"
        assert FramePattern.parse("/r/a.#.exr").to_printf() == "/r/a.%d.exr"
        assert FramePattern.parse(pattern.to_nuke()).format(3) == pattern.format(3)

    def test_repr_rebuilds(self) -> None:
        pattern = FramePattern.parse("/r/sh010.%04d.exr")
        assert repr(pattern) == "FramePattern.parse('/r/sh010.%04d.exr')"
        assert eval(repr(pattern), {"FramePattern": FramePattern}) == pattern

    def test_match_is_the_exact_inverse_of_format(self) -> None:
        pattern = FramePattern.parse("/r/sh010.####.png")
        assert pattern.match("/r/sh010.1001.png") == 1001
        assert pattern.match("/r/sh010.-001.png") == -1
        assert pattern.match("/r/sh010.123456.png") == 123456
        assert pattern.match("/r/sh010.1.png") is None          # never written by this pattern
        assert pattern.match("/r/sh010.01001.png") is None
        assert pattern.match("/r/sh010.10a1.png") is None
        assert pattern.match("/r/sh010..png") is None
        assert pattern.match("/r/sh020.1001.png") is None
        assert pattern.match("/r/sh010.1001.exr") is None
        assert FramePattern.parse("/r/a.%d.png").match("/r/a.1.png") == 1


class TestWithIndex:
    @pytest.mark.parametrize("text, k, expected", [
        ("/r/sh010_comfy.####.png", 1, "/r/sh010_comfy_1.####.png"),
        ("/r/sh010_comfy_####.png", 2, "/r/sh010_comfy_2_####.png"),
        ("/r/sh010_comfy-%04d.exr", 3, "/r/sh010_comfy_3-%04d.exr"),
        ("/r/####.png", 1, "/r/####_1.png"),
        ("####.png", 1, "####_1.png"),
        ("/r/####/beauty.png", 1, "/r/####/beauty_1.png"),
        ("/r/sh010.####", 1, "/r/sh010_1.####"),
        ("/r/sh010_keyframe.png", 1, "/r/sh010_keyframe_1.png"),
        ("/r/v1.2/keyframe", 4, "/r/v1.2/keyframe_4"),
        ("/r/sh010_{index}.####.png", 0, "/r/sh010_0.####.png"),
        ("/r/sh010_{index}.####.png", 2, "/r/sh010_2.####.png"),
        ("/r/{index}/sh010.####.png", 1, "/r/1/sh010.####.png"),
    ])
    def test_names_the_kth_image(self, text: str, k: int, expected: str) -> None:
        assert str(FramePattern.parse(text).with_index(k)) == expected

    def test_zero_is_the_pattern_itself(self) -> None:
        pattern = FramePattern.parse("/r/sh010_comfy.####.png")
        assert pattern.with_index(0) is pattern

    @pytest.mark.parametrize("k", [-1, 1.0, True])
    def test_index_must_be_a_count(self, k: object) -> None:
        with pytest.raises(ValueError, match="image index"):
            FramePattern.parse("/r/a.####.png").with_index(k)  # type: ignore[arg-type]

    def test_indexed_names_never_collide(self) -> None:
        pattern = FramePattern.parse("/r/sh010_comfy.####.png")
        names = {pattern.with_index(k).format(f) for k in range(4) for f in range(1001, 1011)}
        assert len(names) == 40


_text = st.text(alphabet=st.characters(blacklist_characters="#%$@{}\n", blacklist_categories=("Cs",)), max_size=20)


@given(_text, _text, st.integers(1, 10), st.sampled_from(["hash", "printf", "houdini"]),
       st.integers(-10**6, 10**9))
@settings(max_examples=300, database=None)
def test_pattern_format_and_match_round_trip(prefix: str, suffix: str, padding: int, style: str, frame: int) -> None:
    token = {"hash": "#" * padding, "printf": f"%0{padding}d", "houdini": f"$F{padding}"}[style]
    if style == "houdini" and re.match(r"[A-Za-z0-9_]", suffix):
        suffix = "." + suffix  # "$F4x" is a Houdini variable named F4x, not a frame token
    pattern = FramePattern.parse(prefix + token + suffix)
    assert (pattern.prefix, pattern.padding, pattern.suffix) == (prefix, padding, suffix)
    name = pattern.format(frame)
    assert pattern.match(name) == frame
    assert FramePattern.parse(str(pattern)) == pattern
    assert FramePattern.parse(pattern.to_nuke()).format(frame) == name
    assert FramePattern.parse(pattern.to_printf()).format(frame) == name
