"""An API-format ComfyUI workflow, and the edits a render makes to it.

The model is the graph ComfyUI's ``POST /prompt`` takes::

    {"10": {"class_type": "LoadImage", "inputs": {"image": "plate.png"}, "_meta": {"title": "Plate"}},
     "11": {"class_type": "ImageBlur", "inputs": {"image": ["10", 0], "blur_radius": 3, "sigma": 1.0}},
     "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "comp"}}}

An input whose value is a 2-element list ``[node_id, output_index]`` is a *link*; ComfyUI
reads every list as a link, so a literal list is sent wrapped as ``{"__value__": [...]}``.

A ``Workflow`` is never changed in place: every ``with_*`` method returns a new one, so one
loaded graph can be turned into a prompt per frame or per iteration on several threads.

Inputs are named by a *binding* ``NODE.INPUT``. ``NODE`` is a node id (``3``), a title
(``Plate``, from ``_meta.title``) or a class type that occurs once (``KSampler``), tried in
that order; the text is split at its last dot, so titles may contain dots.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import logging
import os
import random
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, Mapping, Union

from .errors import BindingError, WorkflowError
from .frames import FramePattern

log = logging.getLogger(__name__)

#: Core and common custom node classes that produce outputs (ComfyUI's ``OUTPUT_NODE``).
OUTPUT_CLASSES = frozenset({
    "SaveImage", "PreviewImage", "MaskPreview", "SaveAnimatedWEBP", "SaveAnimatedPNG",
    "SaveImageWebsocket", "PreviewAny", "SaveLatent", "SaveVideo", "SaveWEBM", "SaveAudio",
    "SaveAudioMP3", "SaveAudioOpus", "PreviewAudio", "SaveGLB", "Preview3D",
    "SaveEXR", "SaveEXRFrames", "SaveTiff", "VHS_VideoCombine",
})
#: Output classes whose history entry lists the files they wrote under ``images``: a finished
#: prompt must deliver at least one file from each of them.
FILE_OUTPUT_CLASSES = frozenset({
    "SaveImage", "PreviewImage", "SaveAnimatedWEBP", "SaveAnimatedPNG", "SaveVideo", "SaveWEBM",
})
#: Node classes whose ``image`` input names a file in the server's input directory.
LOAD_IMAGE_CLASSES = frozenset({"LoadImage", "LoadImageMask"})
#: Input names that hold a sampler seed.
SEED_INPUTS = ("seed", "noise_seed")
#: Largest random seed we choose: ComfyUI takes 0..2**64-1, JSON numbers are exact to 2**53.
MAX_RANDOM_SEED = 2**53 - 1
_SEED_MODULUS = 2**64
#: How many nodes an error message lists before it says "and N more".
_LIST_LIMIT = 25

#: A binding: ``"NODE.INPUT"`` or a ``(node, input)`` pair.
Binding = Union[str, tuple[str, str]]


class SeedMode(str, Enum):
    """How ``with_seeds`` changes seeds from one iteration to the next."""

    RANDOM = "random"
    INCREMENT = "increment"
    FIXED = "fixed"


def parse_assignment(text: str) -> tuple[str, Any]:
    """Split ``NODE.INPUT=VALUE``; the value is JSON when it parses as JSON, else a string.

    The text is split at the first ``=``, so a value may itself contain ``=``.

    >>> parse_assignment("3.seed=42")
    ('3.seed', 42)
    >>> parse_assignment("Plate.image=sh010/plate.1001.png")
    ('Plate.image', 'sh010/plate.1001.png')
    >>> parse_assignment('Grade.values=[1, 2]')
    ('Grade.values', [1, 2])
    """
    spec, has_equals, raw = text.partition("=")
    spec = spec.strip()
    if not has_equals or "." not in spec:
        raise BindingError(f"assignment {text!r} must look like NODE.INPUT=VALUE, e.g. 3.seed=42")
    return spec, _json_or_text(raw)


def _json_or_text(raw: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(name)

    try:
        return json.loads(raw, parse_constant=refuse)
    except ValueError:
        return raw


def copy_graph(graph: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of an API-format graph.

    Graphs are JSON by construction (checked on load), so a JSON round trip is an exact
    copy, and it runs in C: about ten times cheaper than ``copy.deepcopy`` on the
    dispatcher's per-frame path.
    """
    return json.loads(json.dumps(graph))


def is_link(value: Any) -> bool:
    """True for ``[node_id, output_index]``, ComfyUI's way of wiring one node to another."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool))


class Workflow:
    """An immutable API-format graph: bindings, overrides, seeds, output nodes and frames."""

    def __init__(self, graph: Mapping[str, Any], *, name: str = "") -> None:
        """Validate and copy ``graph``; ``name`` (a file name, say) only appears in messages."""
        self.name = name
        self._graph: dict[str, dict[str, Any]] = _validated(graph, name)

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, name: str = "") -> Workflow:
        """A workflow from an already-parsed API-format graph (deep-copied)."""
        return cls(data, name=name)

    @classmethod
    def from_file(cls, path: str | Path) -> Workflow:
        """Read an API-format ``.json``, or a ``.png`` saved by ComfyUI (its ``prompt`` chunk)."""
        path = Path(path)
        if path.suffix.lower() == ".png":
            return cls(_prompt_from_png(path), name=str(path))
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise WorkflowError(f"cannot read workflow file '{path}': {err}") from err
        return cls(_json_object(text, f"workflow file '{path}'"), name=str(path))

    @classmethod
    def load(cls, source: Workflow | Mapping[str, Any] | str | os.PathLike[str]) -> Workflow:
        """A workflow from a Workflow, a graph dict, JSON text, or a file path."""
        if isinstance(source, Workflow):
            return source
        if isinstance(source, Mapping):
            return cls.from_dict(source)
        if isinstance(source, str) and source.lstrip().startswith("{"):
            return cls(_json_object(source, "workflow text"))
        if isinstance(source, (str, os.PathLike)):
            return cls.from_file(Path(source))
        raise TypeError(f"cannot load a workflow from {type(source).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the graph, ready to send as the ``prompt`` of ``POST /prompt``."""
        return copy_graph(self._graph)

    def _replace(self, graph: dict[str, dict[str, Any]]) -> Workflow:
        """A new Workflow over ``graph``, which the caller built and no longer touches."""
        new = object.__new__(Workflow)
        new.name = self.name
        new._graph = graph
        return new

    # -- looking at nodes -----------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._graph)

    def node_ids(self) -> list[str]:
        """Node ids in natural order (``2`` before ``10``)."""
        return sorted(self._graph, key=_natural_key)

    def class_type(self, node: str) -> str:
        """The class of a node named by id, title or unique class (see ``resolve``)."""
        return self._graph[self.resolve(node)]["class_type"]

    def title(self, node: str) -> str | None:
        """The node's ``_meta.title`` (what the artist named it in the UI), if any."""
        meta = self._graph[self.resolve(node)].get("_meta")
        title = meta.get("title") if isinstance(meta, dict) else None
        return title if isinstance(title, str) and title else None

    def inputs(self, node: str) -> dict[str, Any]:
        """A copy of one node's inputs."""
        return copy.deepcopy(self._graph[self.resolve(node)]["inputs"])

    def describe(self, node: str) -> str:
        """``10 LoadImage "Plate"``: how messages name a node."""
        nid = self.resolve(node)
        title, class_type = self.title(nid), self.class_type(nid)
        label = f"{nid} {class_type}"
        return f'{label} "{title}"' if title and title != class_type else label

    def class_types(self) -> frozenset[str]:
        """Every node class the graph needs; a server missing one cannot run it."""
        return frozenset(node["class_type"] for node in self._graph.values())

    def output_nodes(self, extra_classes: Iterable[str] = ()) -> list[str]:
        """Ids of output nodes (``OUTPUT_CLASSES`` plus ``extra_classes``), in natural order."""
        classes = OUTPUT_CLASSES | frozenset(extra_classes)
        return [nid for nid in self.node_ids() if self.class_type(nid) in classes]

    def file_output_nodes(self) -> list[str]:
        """Ids of the nodes (``FILE_OUTPUT_CLASSES``) that must each deliver a file, in natural order."""
        return [n for n in self.output_nodes() if self.class_type(n) in FILE_OUTPUT_CLASSES]

    def load_image_inputs(self, extra_classes: Iterable[str] = ()) -> list[tuple[str, str]]:
        """``(node_id, "image")`` for every LoadImage-like node: where input files go."""
        classes = LOAD_IMAGE_CLASSES | frozenset(extra_classes)
        return [(nid, "image") for nid in self.node_ids()
                if self.class_type(nid) in classes and "image" in self._graph[nid]["inputs"]]

    def seed_inputs(self) -> list[tuple[str, str]]:
        """``(node_id, input)`` for every ``seed``/``noise_seed`` input holding a literal int."""
        found = []
        for nid in self.node_ids():
            inputs = self._graph[nid]["inputs"]
            for name in SEED_INPUTS:
                value = inputs.get(name)
                if isinstance(value, int) and not isinstance(value, bool):
                    found.append((nid, name))
        return found

    def seed_values(self) -> dict[str, int]:
        """``{"3.seed": 42, ...}``: the seeds as bindings, for the journal and ``with_values``."""
        return {f"{nid}.{name}": self._graph[nid]["inputs"][name] for nid, name in self.seed_inputs()}

    def digest(self) -> str:
        """sha256 of what ComfyUI executes (class types and inputs; titles left out).

        Stable across key order and Python runs, so a journal can tell whether a resumed
        render still has the same workflow.
        """
        core = {nid: {"class_type": n["class_type"], "inputs": n["inputs"]} for nid, n in self._graph.items()}
        text = json.dumps(core, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    # -- bindings -------------------------------------------------------------------------

    def resolve(self, ref: str) -> str:
        """The node id that ``ref`` names: a node id, a title, or a class type found once.

        >>> wf = Workflow({"10": {"class_type": "LoadImage", "inputs": {"image": "a.png"},
        ...                       "_meta": {"title": "Plate"}}})
        >>> wf.resolve("10"), wf.resolve("Plate"), wf.resolve("LoadImage")
        ('10', '10', '10')
        """
        ref = str(ref).strip()
        if ref in self._graph:
            return ref
        for field, matches in (("title", [n for n in self.node_ids() if self.title(n) == ref]),
                               ("class", [n for n in self.node_ids() if self.class_type(n) == ref])):
            if len(matches) == 1:
                return matches[0]
            if matches:
                listed = ", ".join(self._short(n) for n in matches)
                hint = "use the node id" if field == "title" else "use the node id or title"
                raise BindingError(f"{ref!r} matches nodes {listed}; {hint}{self._where()}")
        raise BindingError(f"no node {ref!r} in the workflow{self._where()}{self._suggest(ref)}; "
                           f"nodes: {self._node_list()}")

    def binding(self, spec: Binding, *, allow_new: bool = False) -> tuple[str, str]:
        """``"NODE.INPUT"`` (or a ``(node, input)`` pair) -> ``(node_id, input_name)``.

        The input must exist on that node: ComfyUI silently ignores unknown inputs, so a
        typo would otherwise render with the default. ``allow_new=True`` permits adding an
        input the node does not list yet (an optional input left out of the export).
        """
        node_ref, input_name = _split_binding(spec)
        nid = self.resolve(node_ref)
        inputs = self._graph[nid]["inputs"]
        if input_name not in inputs and not allow_new:
            names = ", ".join(inputs) or "none"
            close = difflib.get_close_matches(input_name, list(inputs), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise BindingError(f"node {self.describe(nid)} has no input {input_name!r}{self._where()} "
                               f"(inputs: {names}){hint}")
        return nid, input_name

    # -- edits (each returns a new Workflow) ------------------------------------------------

    def with_values(self, values: Mapping[str, Any] | Mapping[tuple[str, str], Any] | Mapping[Binding, Any], *,
                    replace_links: bool = False,
                    allow_new: bool = False) -> Workflow:
        """Set literal inputs: ``{"3.seed": 42, "Plate.image": "sh010/plate.png"}``.

        A list (or tuple) value is wrapped as ``{"__value__": [...]}`` so ComfyUI reads it as a
        literal. Keys may also be ``(node, input)`` pairs, as ``load_image_inputs()`` returns.
        A linked input is only replaced with ``replace_links=True``: overwriting a wire by
        accident silently cuts part of the graph out of the render.
        """
        graph = copy_graph(self._graph)
        for spec, value in values.items():
            nid, name = self.binding(spec, allow_new=allow_new)
            current = graph[nid]["inputs"].get(name)
            if is_link(current) and not replace_links:
                raise BindingError(
                    f"node {self.describe(nid)} input {name!r} is linked to node {current[0]} output "
                    f"{current[1]}{self._where()}; pass replace_links=True to replace the link with a value")
            graph[nid]["inputs"][name] = _literal(value)
            _check_json(graph[nid]["inputs"][name], f"node {self.describe(nid)} input {name!r}")
        return self._replace(graph)

    def with_output_prefix(self, prefix: str) -> Workflow:
        """Set ``filename_prefix`` on every output node that has one (SaveImage and kin).

        The dispatcher gives each job its own prefix (``comfy_cluster/<batch>/1001_0``) so
        ComfyUI's cache never hands back an older file and two jobs never share names. A
        prefix fed by a link is replaced too: a shared prefix would break both guarantees.
        """
        if not isinstance(prefix, str) or not prefix.strip():
            raise ValueError(f"output prefix must be a non-empty string, got {prefix!r}")
        parts = prefix.replace("\\", "/").split("/")
        if prefix.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise ValueError(f"output prefix {prefix!r} must stay inside the server's output directory")
        graph = copy_graph(self._graph)
        changed = []
        for nid in self.node_ids():
            inputs = graph[nid]["inputs"]
            if "filename_prefix" in inputs:
                inputs["filename_prefix"] = prefix
                changed.append(nid)
        if not changed:
            log.debug("workflow %s: no node has a filename_prefix to set", self.name or "(unnamed)")
        return self._replace(graph)

    def with_seeds(self, iteration: int, mode: SeedMode | str = SeedMode.RANDOM, *,
                   base_seed: int | None = None, rng: random.Random | None = None) -> Workflow:
        """The seeds for iteration ``iteration`` (0, 1, 2...) of an iteration render.

        - ``random``: a fresh seed in ``0..2**53-1`` per seed input. With ``base_seed`` the
          seeds are derived from (base_seed, iteration, node, input), so a render can be
          reproduced; otherwise they come from ``rng`` (default: the OS's randomness).
        - ``increment``: the workflow's seed (or ``base_seed``) plus ``iteration``.
        - ``fixed``: unchanged (or ``base_seed`` everywhere, when given).
        """
        mode = _seed_mode(mode)
        if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
            raise ValueError(f"iteration must be a whole number >= 0, got {iteration!r}")
        if base_seed is not None and (isinstance(base_seed, bool) or not isinstance(base_seed, int)
                                      or not 0 <= base_seed < _SEED_MODULUS):
            raise ValueError(f"base_seed must be a whole number in 0..2**64-1, got {base_seed!r}")
        seeds = self.seed_inputs()
        if not seeds:
            log.debug("workflow %s: no seed inputs; seed mode %s changes nothing", self.name or "(unnamed)", mode.value)
            return self
        source = rng if rng is not None else random.SystemRandom()
        graph = copy_graph(self._graph)
        for nid, name in seeds:
            original = graph[nid]["inputs"][name]
            if mode is SeedMode.RANDOM:
                if base_seed is None:
                    seed = source.randrange(MAX_RANDOM_SEED + 1)
                else:
                    seed = _derived_seed(base_seed, iteration, nid, name)
            elif mode is SeedMode.INCREMENT:
                seed = ((original if base_seed is None else base_seed) + iteration) % _SEED_MODULUS
            else:
                seed = original if base_seed is None else base_seed
            graph[nid]["inputs"][name] = seed
        return self._replace(graph)

    def with_frame(self, frame: int) -> Workflow:
        """Put ``frame`` into every literal path-like string input that holds a frame token.

        ``"plates/sh010.####.png"`` becomes ``"plates/sh010.1001.png"`` (``%04d`` and ``$F4``
        too, through ``FramePattern``). Only single-line values that look like a path (a
        separator, an extension, or no spaces) are touched, so a prompt such as
        ``"shot #3, dusk"`` is left alone. A path with two frame tokens is an error.
        """
        graph = copy_graph(self._graph)
        for nid in self.node_ids():
            inputs = graph[nid]["inputs"]
            for name, value in inputs.items():
                if not isinstance(value, str) or not _looks_like_path(value):
                    continue
                try:
                    pattern = FramePattern.parse(value)
                except ValueError as err:
                    raise WorkflowError(f"node {self.describe(nid)} input {name!r}{self._where()}: {err}") from err
                if pattern.has_token:
                    inputs[name] = pattern.format(frame)
        return self._replace(graph)

    # -- values -----------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Workflow):
            return NotImplemented
        return self._graph == other._graph

    def __hash__(self) -> int:
        return hash(self.digest())

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return f"<Workflow{name} {len(self._graph)} nodes sha256:{self.digest()[:12]}>"

    # -- message helpers --------------------------------------------------------------------

    def _where(self) -> str:
        return f" in {self.name}" if self.name else ""

    def _short(self, node_id: str) -> str:
        title = self.title(node_id)
        return f'{node_id} ("{title}")' if title else node_id

    def _node_list(self) -> str:
        ids = self.node_ids()
        listed = ", ".join(self.describe(n) for n in ids[:_LIST_LIMIT])
        more = len(ids) - _LIST_LIMIT
        return listed + (f", and {more} more" if more > 0 else "")

    def _suggest(self, ref: str) -> str:
        names = set(self._graph)
        names.update(t for t in map(self.title, self._graph) if t)
        names.update(self.class_types())
        folded = {n.casefold(): n for n in names}
        if ref.casefold() in folded:
            return f" (did you mean {folded[ref.casefold()]!r}? names are case-sensitive)"
        close = difflib.get_close_matches(ref, sorted(names), n=1)
        return f" (did you mean {close[0]!r}?)" if close else ""


def _validated(graph: Mapping[str, Any], name: str) -> dict[str, dict[str, Any]]:
    """A deep copy of ``graph`` after checking it is an API-format graph."""
    where = f"workflow {name}" if name else "workflow"
    if not isinstance(graph, Mapping):
        raise WorkflowError(f"{where}: expected a JSON object of nodes, got {type(graph).__name__}")
    if isinstance(graph.get("nodes"), list) or isinstance(graph.get("links"), list):
        raise WorkflowError(f"{where}: this is a UI-format workflow; export it with Workflow > Export (API)")
    if "prompt" in graph and isinstance(graph["prompt"], Mapping) and "class_type" not in graph["prompt"]:
        raise WorkflowError(f"{where}: this looks like a /prompt request body; pass its 'prompt' member")
    if not graph:
        raise WorkflowError(f"{where}: the graph has no nodes")
    checked: dict[str, dict[str, Any]] = {}
    for key, node in graph.items():
        nid = str(key)
        if nid in checked:
            raise WorkflowError(f"{where}: node id {nid!r} appears twice")
        if not isinstance(node, Mapping):
            raise WorkflowError(f"{where}: node {nid!r} must be an object with class_type and inputs, "
                                f"got {type(node).__name__}")
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            raise WorkflowError(f"{where}: node {nid!r} has no class_type")
        inputs = node.get("inputs")
        if not isinstance(inputs, Mapping):
            raise WorkflowError(f"{where}: node {nid!r} ({class_type}): inputs must be an object, "
                                f"got {type(inputs).__name__}")
        _check_json(inputs, f"{where}: node {nid!r} ({class_type})")
        checked[nid] = copy.deepcopy(dict(node))
        checked[nid]["inputs"] = copy.deepcopy(dict(inputs))
    return checked


def _check_json(value: Any, where: str) -> None:
    """The graph is POSTed as JSON; a value that cannot be sent should fail here, by name."""
    try:
        json.dumps(value)
    except (TypeError, ValueError) as err:
        raise WorkflowError(f"{where}: inputs must be JSON values: {err}") from err


def _json_object(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise WorkflowError(f"{what}: not valid JSON at line {err.lineno} column {err.colno}: {err.msg}") from err


def _prompt_from_png(path: Path) -> Any:
    """The API-format graph ComfyUI's SaveImage writes into a PNG's ``prompt`` text chunk."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            text = image.info.get("prompt")
    except (OSError, UnidentifiedImageError) as err:
        raise WorkflowError(f"cannot read workflow image '{path}': {err}") from err
    if not isinstance(text, str):
        raise WorkflowError(f"image '{path}' holds no ComfyUI prompt (saved with --disable-metadata?)")
    return _json_object(text, f"prompt in image '{path}'")


def _split_binding(spec: Binding) -> tuple[str, str]:
    if isinstance(spec, tuple) and len(spec) == 2:
        return str(spec[0]), str(spec[1])
    if not isinstance(spec, str):
        raise BindingError(f"binding {spec!r} must be 'NODE.INPUT' or a (node, input) pair")
    node_ref, dot, input_name = spec.strip().rpartition(".")
    if not dot or not node_ref or not input_name:
        raise BindingError(f"binding {spec!r} must look like NODE.INPUT, e.g. '3.seed' or 'Plate.image'")
    return node_ref, input_name


def _literal(value: Any) -> Any:
    """Wrap a list (or tuple) so ComfyUI reads it as a value, not as a link."""
    if isinstance(value, (list, tuple)):
        return {"__value__": copy.deepcopy(list(value))}
    return copy.deepcopy(value)


def _seed_mode(mode: SeedMode | str) -> SeedMode:
    try:
        return SeedMode(mode)
    except ValueError:
        choices = ", ".join(m.value for m in SeedMode)
        raise ValueError(f"seed mode must be one of {choices}, got {mode!r}") from None


def _derived_seed(base_seed: int, iteration: int, node_id: str, name: str) -> int:
    text = f"{base_seed}:{iteration}:{node_id}:{name}".encode("utf-8")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") & MAX_RANDOM_SEED


def _looks_like_path(value: str) -> bool:
    if "\n" in value or not value.strip():
        return False
    last = value.replace("\\", "/").rsplit("/", 1)[-1]
    has_extension = "." in last and last.rsplit(".", 1)[1].isalnum()
    return "/" in value or "\\" in value or has_extension or not any(c.isspace() for c in value)


def _natural_key(node_id: str) -> tuple[Any, ...]:
    """``2`` < ``10`` < ``10:3`` < ``abc``: numeric ids by value, others after, by text."""
    head = node_id.split(":", 1)[0]
    return (0, int(head), node_id) if head.isdigit() else (1, 0, node_id)


__all__ = [
    "LOAD_IMAGE_CLASSES",
    "FILE_OUTPUT_CLASSES",
    "OUTPUT_CLASSES",
    "SEED_INPUTS",
    "SeedMode",
    "Workflow",
    "is_link",
    "parse_assignment",
]
