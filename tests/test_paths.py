"""paths.py: local <-> remote mapping by whole components."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from comfy_cluster.config import PathMapping
from comfy_cluster.errors import TransferError
from comfy_cluster.paths import PathMapper, is_absolute, normalize

STUDIO = PathMapper([
    PathMapping(local="U:/", remote="/home/kmmuser/ComfyUI/"),
    PathMapping(local="P:\\projects", remote="/mnt/projects"),
    PathMapping(local="P:/projects/sh010/plates", remote="/fast/plates/sh010"),
    PathMapping(local="\\\\nas01\\vfx", remote="/mnt/nas01/vfx"),
])


@pytest.mark.parametrize("local, remote", [
    ("U:/input/plate.1001.exr", "/home/kmmuser/ComfyUI/input/plate.1001.exr"),
    ("u:\\input\\plate.1001.exr", "/home/kmmuser/ComfyUI/input/plate.1001.exr"),
    ("U:", "/home/kmmuser/ComfyUI"),
    ("U:\\", "/home/kmmuser/ComfyUI"),
    ("p:/Projects/sh020/comp.nk", "/mnt/projects/sh020/comp.nk"),
    ("P:/projects/sh010/plates/a.####.exr", "/fast/plates/sh010/a.####.exr"),   # longest prefix wins
    ("P:/projects/sh010/plates", "/fast/plates/sh010"),
    ("P:/projects/sh010/platesX/a.exr", "/mnt/projects/sh010/platesX/a.exr"),  # whole components only
    ("//nas01/vfx/lib/lut.cube", "/mnt/nas01/vfx/lib/lut.cube"),
    ("\\\\NAS01\\VFX\\lib\\lut.cube", "/mnt/nas01/vfx/lib/lut.cube"),
    ("P:/projects/./sh010//x/../comp.nk", "/mnt/projects/sh010/comp.nk"),
    ("P:/projects/sh030/", "/mnt/projects/sh030/"),
])
def test_to_remote(local: str, remote: str) -> None:
    assert STUDIO.to_remote(local) == remote


@pytest.mark.parametrize("remote, local", [
    ("/home/kmmuser/ComfyUI/output/render_00001_.png", "U:/output/render_00001_.png"),
    ("/home/kmmuser/ComfyUI", "U:/"),
    ("/mnt/projects/sh020/comp.nk", "P:/projects/sh020/comp.nk"),
    ("/fast/plates/sh010/a.1001.exr", "P:/projects/sh010/plates/a.1001.exr"),
    ("/mnt/nas01/vfx/lib/lut.cube", "//nas01/vfx/lib/lut.cube"),
    ("\\mnt\\projects\\x", "P:/projects/x"),
])
def test_to_local_uses_the_local_spelling_with_forward_slashes(remote: str, local: str) -> None:
    assert STUDIO.to_local(remote) == local


def test_posix_remote_side_is_case_sensitive() -> None:
    with pytest.raises(TransferError, match=r"'/MNT/projects/x' is not under any remote mapping"):
        STUDIO.to_local("/MNT/projects/x")


@pytest.mark.parametrize("path", ["U:/proj", "U:/project"])
def test_prefix_must_end_at_a_component(path: str) -> None:
    mapper = PathMapper([PathMapping(local="U:/proj", remote="/srv/proj")])
    if path == "U:/proj":
        assert mapper.to_remote(path + "/a.png") == "/srv/proj/a.png"
    else:
        assert mapper.try_map(path + "/a.png") is None
        with pytest.raises(TransferError, match=r"not under any local mapping \(mapped local folders: U:/proj\)"):
            mapper.to_remote(path + "/a.png")


@pytest.mark.parametrize("path", ["shots/sh010/a.png", "a.png", "", "V:/other/a.png", "/etc/passwd",
                                  "//othernas/vfx/a", "U:/a\nb", "http://U:/x", "Uu:/x"])
def test_unmapped_strings(path: str) -> None:
    assert STUDIO.try_map(path) is None


def test_map_strings_deep_copies_and_touches_only_mapped_paths() -> None:
    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "comfy_cluster/cc_abc.png"}},
        "2": {"class_type": "LoadLut", "inputs": {"path": "\\\\nas01\\vfx\\lib\\lut.cube", "n": 3, "f": 0.5,
                                                   "link": ["1", 0], "flag": True, "none": None}},
        "3": {"class_type": "Text", "inputs": {"text": "a castle, U: drive is great", "list": [
            "P:/projects/sh010/plates/a.exr", ("U:/x",), "/not/mapped"]}},
        "U:/keys/stay": "U:/values/move",
    }
    mapped = STUDIO.map_strings(workflow)
    assert mapped["1"] == workflow["1"] and mapped["1"] is not workflow["1"]
    assert mapped["2"]["inputs"] == {"path": "/mnt/nas01/vfx/lib/lut.cube", "n": 3, "f": 0.5,
                                     "link": ["1", 0], "flag": True, "none": None}
    assert mapped["3"]["inputs"]["text"] == "a castle, U: drive is great"
    assert mapped["3"]["inputs"]["list"] == ["/fast/plates/sh010/a.exr", ("/home/kmmuser/ComfyUI/x",), "/not/mapped"]
    assert mapped["U:/keys/stay"] == "/home/kmmuser/ComfyUI/values/move"
    assert workflow["2"]["inputs"]["path"] == "\\\\nas01\\vfx\\lib\\lut.cube"   # the input is untouched
    back = STUDIO.map_strings(mapped, "to_local")
    assert back["2"]["inputs"]["path"] == "//nas01/vfx/lib/lut.cube"
    with pytest.raises(ValueError, match="direction"):
        STUDIO.map_strings(workflow, "sideways")  # type: ignore[arg-type]


def test_relative_mapping_is_refused() -> None:
    with pytest.raises(TransferError, match="is not an absolute path"):
        PathMapper([PathMapping.model_construct(local="shots", remote="/mnt/shots")])


def test_helpers() -> None:
    assert is_absolute("U:") and is_absolute("\\\\nas\\share") and is_absolute("/")
    assert not is_absolute("U:shots") and not is_absolute("shots") and not is_absolute("")
    assert normalize("U:\\shots\\.\\sh010\\..\\sh020\\") == "U:/shots/sh020/"
    assert normalize("relative\\stays") == "relative\\stays"
    assert not PathMapper([]) and STUDIO
    assert "U:/" in repr(STUDIO)


# --- properties ---

_component = st.text(alphabet=st.characters(blacklist_characters="/\\\x00\n\r", blacklist_categories=("Cs",)),
                     min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))
_components = st.lists(_component, max_size=6)


@st.composite
def _local_root(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["drive", "unc", "posix"]))
    parts = draw(st.lists(_component, max_size=3))
    if kind == "drive":
        return draw(st.sampled_from("CDPUZ")) + ":/" + "/".join(parts)
    if kind == "unc":
        return "//" + draw(_component) + "/" + draw(_component) + ("/" + "/".join(parts) if parts else "")
    return "/" + "/".join(parts)


def _respell(path: str, backslash: bool, lower_root: bool) -> str:
    """The same place spelled another way: other separators, other drive-letter case."""
    if backslash and not path.startswith("/") or backslash and path.startswith("//"):
        path = path.replace("/", "\\")
    if lower_root and len(path) > 1 and path[1] == ":":
        path = path[0].lower() + path[1:]
    return path


@settings(max_examples=300, deadline=None)
@given(root=_local_root(), remote=st.lists(_component, max_size=3), rest=_components,
       backslash=st.booleans(), lower_root=st.booleans())
def test_round_trip_local_remote_local(root: str, remote: list[str], rest: list[str],
                                       backslash: bool, lower_root: bool) -> None:
    mapper = PathMapper([PathMapping(local=root, remote="/srv/" + "/".join(remote))])
    local = root.rstrip("/") + "/" + "/".join(rest)
    spelled = _respell(local, backslash, lower_root)
    there = mapper.to_remote(spelled)
    assert there.startswith("/srv") and "\\" not in there
    back = mapper.to_local(there)
    assert back == normalize(local)
    assert mapper.to_remote(back) == there


@settings(max_examples=300, deadline=None)
@given(root=_local_root(), last=_component, extra=_component, rest=_components)
def test_never_maps_a_non_component_prefix(root: str, last: str, extra: str, rest: list[str]) -> None:
    prefix = root.rstrip("/") + "/" + last
    mapper = PathMapper([PathMapping(local=prefix, remote="/srv/x")])
    longer = prefix + extra + ("/" + "/".join(rest) if rest else "")
    is_windows = root[1:2] == ":" or root.startswith("//")
    same = (last + extra).lower() == last.lower() if is_windows else last + extra == last
    if not same:
        assert mapper.try_map(longer) is None
