"""Workflow: loading API-format graphs, bindings, overrides, seeds, prefixes and frame tokens."""

from __future__ import annotations

import copy
import doctest
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, PngImagePlugin

from comfy_cluster import workflow as workflow_module
from comfy_cluster.errors import BindingError, WorkflowError
from comfy_cluster.workflow import MAX_RANDOM_SEED, SeedMode, Workflow, is_link, parse_assignment


def comp_graph() -> dict[str, Any]:
    """sh010 comp: plate blurred, blended over a matte, grain added, saved and previewed."""
    return {
        "10": {"class_type": "LoadImage", "inputs": {"image": "sh010/plate.####.png"}, "_meta": {"title": "Plate"}},
        "12": {"class_type": "LoadImage", "inputs": {"image": "sh010/matte.####.png"}, "_meta": {"title": "Matte"}},
        "11": {"class_type": "ImageBlur", "inputs": {"image": ["10", 0], "blur_radius": 3, "sigma": 1.0},
               "_meta": {"title": "Defocus.v2"}},
        "13": {"class_type": "ImageBlend", "inputs": {"image1": ["11", 0], "image2": ["12", 0],
                                                      "blend_factor": 0.5, "blend_mode": "normal"}},
        "3": {"class_type": "ImageAddNoise", "inputs": {"image": ["13", 0], "seed": 42, "strength": 0.1},
              "_meta": {"title": "Grain"}},
        "7": {"class_type": "RandomNoise", "inputs": {"noise_seed": 1234}},
        "20": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "sh010/comp"},
               "_meta": {"title": "Comp Out"}},
        "21": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }


@pytest.fixture
def wf() -> Workflow:
    return Workflow.from_dict(comp_graph(), name="sh010_comp.json")


def test_docstring_examples_hold() -> None:
    result = doctest.testmod(workflow_module)
    assert result.attempted >= 4
    assert result.failed == 0


class TestLoading:
    def test_from_dict_copies_and_never_shares(self) -> None:
        graph = comp_graph()
        wf = Workflow.from_dict(graph)
        graph["10"]["inputs"]["image"] = "changed.png"
        assert wf.to_dict()["10"]["inputs"]["image"] == "sh010/plate.####.png"
        out = wf.to_dict()
        out["11"]["inputs"]["image"][0] = "99"
        assert wf.to_dict() == comp_graph()

    def test_from_file_and_load(self, tmp_path: Path) -> None:
        path = tmp_path / "sh010_comp_api.json"
        path.write_text(json.dumps(comp_graph()), encoding="utf-8")
        from_file = Workflow.from_file(path)
        assert from_file.to_dict() == comp_graph()
        assert from_file.name == str(path)
        assert Workflow.load(path) == from_file
        assert Workflow.load(str(path)) == from_file
        assert Workflow.load(comp_graph()) == from_file
        assert Workflow.load(json.dumps(comp_graph())) == from_file
        assert Workflow.load(from_file) is from_file

    def test_from_png_saved_by_comfyui(self, tmp_path: Path) -> None:
        path = tmp_path / "comp_00001_.png"
        info = PngImagePlugin.PngInfo()
        info.add_text("prompt", json.dumps(comp_graph()))
        Image.new("RGB", (4, 4)).save(path, pnginfo=info)
        assert Workflow.from_file(path).to_dict() == comp_graph()
        bare = tmp_path / "bare.png"
        Image.new("RGB", (4, 4)).save(bare)
        with pytest.raises(WorkflowError, match="holds no ComfyUI prompt"):
            Workflow.from_file(bare)

    def test_ui_format_is_refused_with_the_fix(self, tmp_path: Path) -> None:
        ui = {"last_node_id": 9, "last_link_id": 9, "nodes": [{"id": 3, "type": "KSampler"}], "links": [],
              "version": 0.4}
        path = tmp_path / "sh010_comp.json"
        path.write_text(json.dumps(ui), encoding="utf-8")
        with pytest.raises(WorkflowError) as err:
            Workflow.from_file(path)
        assert "this is a UI-format workflow; export it with Workflow > Export (API)" in str(err.value)
        assert str(path) in str(err.value)

    def test_prompt_body_is_refused_with_the_fix(self) -> None:
        with pytest.raises(WorkflowError, match="pass its 'prompt' member"):
            Workflow.from_dict({"prompt": comp_graph(), "client_id": "abc"})

    @pytest.mark.parametrize("graph, message", [
        ({}, "the graph has no nodes"),
        ({"3": "KSampler"}, "node '3' must be an object with class_type and inputs, got str"),
        ({"3": {"inputs": {}}}, "node '3' has no class_type"),
        ({"3": {"class_type": "", "inputs": {}}}, "node '3' has no class_type"),
        ({"3": {"class_type": "KSampler"}}, "node '3' (KSampler): inputs must be an object, got NoneType"),
        ({"3": {"class_type": "KSampler", "inputs": []}}, "inputs must be an object, got list"),
        ({3: {"class_type": "A", "inputs": {}}, "3": {"class_type": "B", "inputs": {}}}, "node id '3' appears twice"),
        ({"3": {"class_type": "LoadImage", "inputs": {"image": {1, 2}}}},
         "node '3' (LoadImage): inputs must be JSON values: Object of type set is not JSON serializable"),
    ])
    def test_bad_shapes_name_the_node(self, graph: dict, message: str) -> None:
        with pytest.raises(WorkflowError) as err:
            Workflow.from_dict(graph)
        assert message in str(err.value)

    def test_not_a_mapping(self) -> None:
        with pytest.raises(WorkflowError, match="expected a JSON object of nodes, got list"):
            Workflow.from_dict([1, 2])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="cannot load a workflow from int"):
            Workflow.load(3)  # type: ignore[arg-type]

    def test_bad_files_say_which(self, tmp_path: Path) -> None:
        broken = tmp_path / "broken.json"
        broken.write_text('{"3": {"class_type": "KSampler",\n "inputs": }', encoding="utf-8")
        with pytest.raises(WorkflowError, match=r"workflow file '.*broken.json': not valid JSON at line 2 column 12"):
            Workflow.from_file(broken)
        with pytest.raises(WorkflowError, match=r"cannot read workflow file '.*missing.json'"):
            Workflow.from_file(tmp_path / "missing.json")

    def test_integer_node_ids_become_strings(self) -> None:
        wf = Workflow.from_dict({1: {"class_type": "EmptyImage", "inputs": {"width": 64}}})
        assert wf.node_ids() == ["1"]


class TestQueries:
    def test_class_types_and_outputs(self, wf: Workflow) -> None:
        assert wf.class_types() == {"LoadImage", "ImageBlur", "ImageBlend", "ImageAddNoise", "RandomNoise",
                                    "SaveImage", "PreviewImage"}
        assert wf.output_nodes() == ["20", "21"]
        assert wf.output_nodes(extra_classes={"ImageBlend"}) == ["13", "20", "21"]

    def test_node_ids_are_in_natural_order(self, wf: Workflow) -> None:
        assert wf.node_ids() == ["3", "7", "10", "11", "12", "13", "20", "21"]
        assert len(wf) == 8

    def test_load_image_inputs(self, wf: Workflow) -> None:
        assert wf.load_image_inputs() == [("10", "image"), ("12", "image")]

    def test_seed_inputs_are_literal_ints_only(self, wf: Workflow) -> None:
        assert wf.seed_inputs() == [("3", "seed"), ("7", "noise_seed")]
        assert wf.seed_values() == {"3.seed": 42, "7.noise_seed": 1234}
        graph = comp_graph()
        graph["3"]["inputs"]["seed"] = ["7", 0]
        graph["7"]["inputs"]["noise_seed"] = True
        assert Workflow.from_dict(graph).seed_inputs() == []

    def test_describe_and_title(self, wf: Workflow) -> None:
        assert wf.describe("10") == '10 LoadImage "Plate"'
        assert wf.describe("13") == "13 ImageBlend"
        assert wf.title("13") is None
        assert wf.inputs("11") == {"image": ["10", 0], "blur_radius": 3, "sigma": 1.0}

    def test_digest_is_stable_and_ignores_titles(self, wf: Workflow) -> None:
        reordered = dict(reversed(list(comp_graph().items())))
        assert Workflow.from_dict(reordered).digest() == wf.digest()
        retitled = comp_graph()
        retitled["10"]["_meta"]["title"] = "BG plate"
        assert Workflow.from_dict(retitled).digest() == wf.digest()
        assert wf.with_values({"Grain.seed": 43}).digest() != wf.digest()
        assert len(wf.digest()) == 64

    def test_equality_and_repr(self, wf: Workflow) -> None:
        assert wf == Workflow.from_dict(comp_graph())
        assert hash(wf) == hash(Workflow.from_dict(comp_graph()))
        assert wf != wf.with_values({"3.seed": 1})
        assert repr(wf) == f"<Workflow 'sh010_comp.json' 8 nodes sha256:{wf.digest()[:12]}>"


class TestResolve:
    def test_by_id_title_and_unique_class(self, wf: Workflow) -> None:
        assert wf.resolve("20") == "20"
        assert wf.resolve("Comp Out") == "20"
        assert wf.resolve("Defocus.v2") == "11"
        assert wf.resolve("ImageBlur") == "11"
        assert wf.resolve("SaveImage") == "20"

    def test_ambiguous_class_lists_candidates(self, wf: Workflow) -> None:
        with pytest.raises(BindingError) as err:
            wf.resolve("LoadImage")
        assert str(err.value) == ("'LoadImage' matches nodes 10 (\"Plate\"), 12 (\"Matte\"); "
                                  "use the node id or title in sh010_comp.json")

    def test_ambiguous_title_asks_for_the_id(self) -> None:
        graph = comp_graph()
        graph["12"]["_meta"]["title"] = "Plate"
        with pytest.raises(BindingError) as err:
            Workflow.from_dict(graph).resolve("Plate")
        assert str(err.value) == "'Plate' matches nodes 10 (\"Plate\"), 12 (\"Plate\"); use the node id"

    def test_id_wins_over_title_and_title_over_class(self) -> None:
        graph = {
            "1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "a"}, "_meta": {"title": "2"}},
            "2": {"class_type": "LoadImage", "inputs": {"image": "x.png"}, "_meta": {"title": "SaveImage"}},
        }
        wf = Workflow.from_dict(graph)
        assert wf.resolve("2") == "2"
        assert wf.resolve("SaveImage") == "2"

    def test_missing_lists_nodes_and_suggests(self, wf: Workflow) -> None:
        with pytest.raises(BindingError) as err:
            wf.resolve("plate")
        message = str(err.value)
        assert message.startswith("no node 'plate' in the workflow in sh010_comp.json "
                                  "(did you mean 'Plate'? names are case-sensitive); nodes: ")
        assert '3 ImageAddNoise "Grain", 7 RandomNoise, 10 LoadImage "Plate"' in message
        assert '20 SaveImage "Comp Out", 21 PreviewImage' in message
        with pytest.raises(BindingError, match="did you mean 'Comp Out'"):
            wf.resolve("Comp Ou")

    def test_long_node_lists_are_cut(self) -> None:
        graph = {str(i): {"class_type": "EmptyImage", "inputs": {}} for i in range(40)}
        with pytest.raises(BindingError, match=r"24 EmptyImage, and 15 more$"):
            Workflow.from_dict(graph).resolve("Plate")


class TestBinding:
    def test_node_and_input(self, wf: Workflow) -> None:
        assert wf.binding("3.seed") == ("3", "seed")
        assert wf.binding("Plate.image") == ("10", "image")
        assert wf.binding("Defocus.v2.blur_radius") == ("11", "blur_radius")
        assert wf.binding(("Comp Out", "filename_prefix")) == ("20", "filename_prefix")

    def test_unknown_input_lists_the_inputs(self, wf: Workflow) -> None:
        with pytest.raises(BindingError) as err:
            wf.binding("Grain.sed")
        assert str(err.value) == ('node 3 ImageAddNoise "Grain" has no input \'sed\' in sh010_comp.json '
                                  "(inputs: image, seed, strength); did you mean 'seed'?")

    def test_allow_new_lets_an_optional_input_in(self, wf: Workflow) -> None:
        assert wf.binding("ImageBlend.mask", allow_new=True) == ("13", "mask")

    @pytest.mark.parametrize("spec", ["seed", ".seed", "3.", ""])
    def test_malformed(self, wf: Workflow, spec: str) -> None:
        with pytest.raises(BindingError, match="must look like NODE.INPUT"):
            wf.binding(spec)

    def test_binding_error_is_a_workflow_error_and_value_error(self, wf: Workflow) -> None:
        with pytest.raises(WorkflowError):
            wf.binding("Nope.image")
        with pytest.raises(ValueError):
            wf.binding("Nope.image")


class TestParseAssignment:
    @pytest.mark.parametrize("text, expected", [
        ("3.seed=42", ("3.seed", 42)),
        ("Grain.strength=0.25", ("Grain.strength", 0.25)),
        ("Plate.image=sh010/plate.1001.png", ("Plate.image", "sh010/plate.1001.png")),
        ('Comp Out.filename_prefix="sh010/v002"', ("Comp Out.filename_prefix", "sh010/v002")),
        ("ImageBlend.blend_mode=normal", ("ImageBlend.blend_mode", "normal")),
        ("ImageScale.crop=true", ("ImageScale.crop", True)),
        ("Node.extra=null", ("Node.extra", None)),
        ("Node.values=[1, 2]", ("Node.values", [1, 2])),
        ("Prompt.text=a=b", ("Prompt.text", "a=b")),
        ("Prompt.text=", ("Prompt.text", "")),
        (" 3.seed =42", ("3.seed", 42)),
        ("Node.value=NaN", ("Node.value", "NaN")),
        ("Node.value=Infinity", ("Node.value", "Infinity")),
    ])
    def test_values_are_json_when_they_parse(self, text: str, expected: tuple) -> None:
        assert parse_assignment(text) == expected

    @pytest.mark.parametrize("text", ["3.seed", "seed=42", "=42"])
    def test_malformed(self, text: str) -> None:
        with pytest.raises(BindingError, match="must look like NODE.INPUT=VALUE"):
            parse_assignment(text)


class TestWithValues:
    def test_returns_a_new_workflow(self, wf: Workflow) -> None:
        changed = wf.with_values({"Grain.seed": 7, "Plate.image": "sh020/plate.####.png", "11.sigma": 2.5})
        assert changed.inputs("3")["seed"] == 7
        assert changed.inputs("10")["image"] == "sh020/plate.####.png"
        assert changed.inputs("11")["sigma"] == 2.5
        assert wf.to_dict() == comp_graph()
        assert changed.name == wf.name

    def test_linked_inputs_are_kept_unless_asked(self, wf: Workflow) -> None:
        with pytest.raises(BindingError) as err:
            wf.with_values({"Defocus.v2.image": "plate.png"})
        assert str(err.value) == ('node 11 ImageBlur "Defocus.v2" input \'image\' is linked to node 10 output 0 '
                                  "in sh010_comp.json; pass replace_links=True to replace the link with a value")
        replaced = wf.with_values({"Defocus.v2.image": "plate.png"}, replace_links=True)
        assert replaced.inputs("11")["image"] == "plate.png"

    def test_lists_are_sent_as_values_not_links(self, wf: Workflow) -> None:
        changed = wf.with_values({"Grain.strength": [0.1, 0.2], "Grain.seed": ("7", 0)})
        assert changed.inputs("3")["strength"] == {"__value__": [0.1, 0.2]}
        assert changed.inputs("3")["seed"] == {"__value__": ["7", 0]}
        assert not is_link(changed.inputs("3")["strength"])

    def test_values_must_be_json(self, wf: Workflow, tmp_path: Path) -> None:
        with pytest.raises(WorkflowError) as err:
            wf.with_values({"Plate.image": tmp_path})
        assert str(err.value).startswith('node 10 LoadImage "Plate" input \'image\': inputs must be JSON values: ')
        assert "PosixPath" in str(err.value) or "WindowsPath" in str(err.value)

    def test_unknown_inputs_refused_unless_allowed(self, wf: Workflow) -> None:
        with pytest.raises(BindingError, match="has no input 'mask'"):
            wf.with_values({"ImageBlend.mask": "x"})
        assert wf.with_values({"ImageBlend.mask": "x"}, allow_new=True).inputs("13")["mask"] == "x"

    def test_assignments_feed_straight_in(self, wf: Workflow) -> None:
        values = dict(parse_assignment(t) for t in ["3.seed=9", "Comp Out.filename_prefix=sh010/v003"])
        changed = wf.with_values(values)
        assert changed.seed_values()["3.seed"] == 9
        assert changed.inputs("20")["filename_prefix"] == "sh010/v003"

    def test_given_values_are_copied(self, wf: Workflow) -> None:
        value = {"__value__": [1, 2]}
        changed = wf.with_values({"Grain.strength": value})
        value["__value__"].append(3)
        assert changed.inputs("3")["strength"] == {"__value__": [1, 2]}


class TestOutputPrefix:
    def test_every_save_node_gets_the_job_prefix(self, wf: Workflow) -> None:
        graph = comp_graph()
        graph["22"] = {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["3", 0], "filename_prefix": "x",
                                                                    "fps": 24.0}}
        graph["23"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": ["30", 0]}}
        graph["30"] = {"class_type": "PrimitiveString", "inputs": {"value": "shared"}}
        prefixed = Workflow.from_dict(graph).with_output_prefix("comfy_cluster/b7f3/1001_0")
        for nid in ("20", "22", "23"):
            assert prefixed.inputs(nid)["filename_prefix"] == "comfy_cluster/b7f3/1001_0"
        assert "filename_prefix" not in prefixed.inputs("21")
        assert wf.with_output_prefix("a").digest() != wf.with_output_prefix("b").digest()

    @pytest.mark.parametrize("prefix", ["", "  ", "/abs/comp", "\\\\server\\comp", "../escape/comp",
                                        "jobs/../../comp", "C:/comp", 3])
    def test_prefix_must_stay_in_the_output_dir(self, wf: Workflow, prefix: object) -> None:
        with pytest.raises(ValueError, match="output prefix"):
            wf.with_output_prefix(prefix)  # type: ignore[arg-type]

    def test_no_save_node_leaves_the_graph_alone(self) -> None:
        wf = Workflow.from_dict({"1": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
                                 "2": {"class_type": "EmptyImage", "inputs": {"width": 8}}})
        assert wf.with_output_prefix("job/1") == wf


class TestSeeds:
    def test_increment_adds_the_iteration(self, wf: Workflow) -> None:
        assert wf.with_seeds(0, "increment").seed_values() == {"3.seed": 42, "7.noise_seed": 1234}
        assert wf.with_seeds(5, SeedMode.INCREMENT).seed_values() == {"3.seed": 47, "7.noise_seed": 1239}
        assert wf.with_seeds(5, "increment", base_seed=100).seed_values() == {"3.seed": 105, "7.noise_seed": 105}

    def test_increment_wraps_at_comfyui_range(self) -> None:
        wf = Workflow.from_dict({"3": {"class_type": "ImageAddNoise", "inputs": {"seed": 2**64 - 1}}})
        assert wf.with_seeds(2, "increment").seed_values() == {"3.seed": 1}

    def test_fixed_keeps_or_pins(self, wf: Workflow) -> None:
        assert wf.with_seeds(3, "fixed") == wf
        assert wf.with_seeds(3, "fixed", base_seed=9).seed_values() == {"3.seed": 9, "7.noise_seed": 9}

    def test_random_uses_the_given_rng(self, wf: Workflow) -> None:
        first = wf.with_seeds(0, "random", rng=random.Random(1001)).seed_values()
        again = wf.with_seeds(0, "random", rng=random.Random(1001)).seed_values()
        other = wf.with_seeds(0, "random", rng=random.Random(1002)).seed_values()
        assert first == again != other
        assert first["3.seed"] != first["7.noise_seed"]
        assert all(0 <= s <= MAX_RANDOM_SEED for s in first.values())

    def test_random_without_rng_differs_per_iteration(self, wf: Workflow) -> None:
        seeds = {tuple(wf.with_seeds(i).seed_values().values()) for i in range(20)}
        assert len(seeds) == 20
        assert all(0 <= s <= MAX_RANDOM_SEED for pair in seeds for s in pair)

    def test_random_with_base_seed_is_reproducible(self, wf: Workflow) -> None:
        runs = [[wf.with_seeds(i, "random", base_seed=7).seed_values() for i in range(10)] for _ in range(2)]
        assert runs[0] == runs[1]
        assert len({tuple(v.values()) for v in runs[0]}) == 10
        assert wf.with_seeds(0, "random", base_seed=8).seed_values() != runs[0][0]
        assert all(0 <= s <= MAX_RANDOM_SEED for v in runs[0] for s in v.values())

    def test_seeds_never_touch_other_inputs(self, wf: Workflow) -> None:
        changed = wf.with_seeds(4, "random", base_seed=1).to_dict()
        original = comp_graph()
        for graph in (changed, original):
            graph["3"]["inputs"].pop("seed")
            graph["7"]["inputs"].pop("noise_seed")
        assert changed == original

    def test_no_seeds_is_no_change(self) -> None:
        wf = Workflow.from_dict({"1": {"class_type": "EmptyImage", "inputs": {"width": 8}}})
        assert wf.with_seeds(3) is wf

    @pytest.mark.parametrize("kwargs, message", [
        ({"iteration": 0, "mode": "shuffle"}, "seed mode must be one of random, increment, fixed, got 'shuffle'"),
        ({"iteration": -1}, "iteration must be a whole number >= 0"),
        ({"iteration": 0, "base_seed": -5}, "base_seed must be a whole number in 0..2**64-1"),
        ({"iteration": 0, "base_seed": 2**64}, "base_seed must be a whole number"),
    ])
    def test_bad_arguments(self, wf: Workflow, kwargs: dict, message: str) -> None:
        with pytest.raises(ValueError) as err:
            wf.with_seeds(**kwargs)
        assert message in str(err.value)


class TestWithFrame:
    def test_tokens_in_literal_paths_become_the_frame(self, wf: Workflow) -> None:
        graph = comp_graph()
        graph["12"]["inputs"]["image"] = "sh010/matte.%04d.png"
        graph["20"]["inputs"]["filename_prefix"] = "sh010/comp_$F4"
        framed = Workflow.from_dict(graph).with_frame(1001)
        assert framed.inputs("10")["image"] == "sh010/plate.1001.png"
        assert framed.inputs("12")["image"] == "sh010/matte.1001.png"
        assert framed.inputs("20")["filename_prefix"] == "sh010/comp_1001"
        assert wf.with_frame(-2).inputs("10")["image"] == "sh010/plate.-002.png"

    def test_links_numbers_and_prose_are_left_alone(self) -> None:
        graph = comp_graph()
        graph["30"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "shot #3 at dusk, 35mm", "clip": ["4", 0]}}
        graph["31"] = {"class_type": "PrimitiveString", "inputs": {"value": "notes:\nsh010.####.png"}}
        graph["32"] = {"class_type": "PrimitiveString", "inputs": {"value": {"__value__": ["a.####.png"]}}}
        before = copy.deepcopy(graph)
        framed = Workflow.from_dict(graph).with_frame(1001).to_dict()
        for nid in ("30", "31", "32", "11", "3"):
            assert framed[nid] == before[nid]

    def test_a_path_with_two_tokens_is_an_error_naming_the_input(self, wf: Workflow) -> None:
        broken = wf.with_values({"Plate.image": "sh010/####/plate.%04d.png"})
        with pytest.raises(WorkflowError) as err:
            broken.with_frame(1001)
        assert str(err.value).startswith('node 10 LoadImage "Plate" input \'image\' in sh010_comp.json: '
                                         "pattern 'sh010/####/plate.%04d.png' has 2 frame tokens")

    def test_each_frame_is_its_own_prompt(self, wf: Workflow) -> None:
        digests = {wf.with_frame(f).digest() for f in range(1001, 1011)}
        assert len(digests) == 10
        assert wf.with_frame(1001) == wf.with_frame(1001)


def test_is_link() -> None:
    assert is_link(["10", 0]) and is_link([10, 1])
    assert not is_link(["10", "0"]) and not is_link([1.0, 2]) and not is_link([True, 0])
    assert not is_link(["10", 0, 1]) and not is_link("10") and not is_link({"__value__": ["10", 0]})


def test_node_accessors_take_any_reference(wf: Workflow) -> None:
    assert wf.inputs("Comp Out") == wf.inputs("20")
    assert wf.class_type("Grain") == "ImageAddNoise"
    assert wf.describe("ImageBlend") == "13 ImageBlend"
    with pytest.raises(BindingError, match="no node '99'"):
        wf.inputs("99")


class TestOnAnEmulatedServer:
    """The edits a render makes give graphs a ComfyUI server runs, one fresh file per job."""

    @pytest.fixture
    def emu(self):
        from comfy_cluster.emulator.process import EmulatorThread

        server = EmulatorThread(name="gpu-01").start()
        try:
            yield server
        finally:
            server.stop()

    @staticmethod
    def run(emu: Any, graph: dict[str, Any]) -> list[Path]:
        """POST the graph, wait for its history entry, return the saved files."""
        import requests

        answer = requests.post(f"{emu.url}/prompt", json={"prompt": graph, "client_id": "test-workflow"}, timeout=10)
        assert answer.status_code == 200, answer.text
        prompt_id = answer.json()["prompt_id"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            history = requests.get(f"{emu.url}/history/{prompt_id}", timeout=10).json()
            if prompt_id in history and history[prompt_id]["status"]["completed"]:
                images = [img for out in history[prompt_id]["outputs"].values() for img in out.get("images", [])]
                return [emu.base_dir / img["type"] / img["subfolder"] / img["filename"] for img in images]
            threading.Event().wait(0.02)
        raise AssertionError(f"prompt {prompt_id} did not finish within 15 s")

    def test_per_frame_graphs_render_each_plate_to_its_own_file(self, emu: Any) -> None:
        plates = emu.base_dir / "input" / "sh010"
        plates.mkdir(parents=True)
        for frame, grey in ((1001, 40), (1002, 200)):
            Image.new("RGB", (8, 8), (grey, grey, grey)).save(plates / f"plate.{frame}.png")
        wf = Workflow.from_dict({
            "10": {"class_type": "LoadImage", "inputs": {"image": "sh010/plate.####.png"}, "_meta": {"title": "Plate"}},
            "11": {"class_type": "ImageInvert", "inputs": {"image": ["10", 0]}},
            "20": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "sh010/comp"},
                   "_meta": {"title": "Comp Out"}},
        })
        seen = {}
        for frame, attempt in ((1001, 0), (1002, 0), (1001, 1)):
            job = wf.with_frame(frame).with_output_prefix(f"comfy_cluster/b1/{frame}_{attempt}")
            [path] = self.run(emu, job.to_dict())
            assert path.parent == emu.base_dir / "output" / "comfy_cluster" / "b1"
            assert path.name.startswith(f"{frame}_{attempt}_") and path.is_file()
            with Image.open(path) as image:
                seen[(frame, attempt)] = image.getpixel((0, 0))[0]
        assert abs(seen[(1001, 0)] - (255 - 40)) <= 1
        assert abs(seen[(1002, 0)] - (255 - 200)) <= 1
        assert seen[(1001, 1)] == seen[(1001, 0)]   # the retry wrote its own new file
