#!/usr/bin/env python3
"""Install the real ComfyUI 0.3.64 and the real worker-comfyui 5.8.5 handler for the contract tests.

The contract suite (tests/contract/) runs every protocol check against the project's emulators
and against these real programs, so the two cannot agree on a misreading. Layout under the home
(``COMFY_CLUSTER_REAL_HOME``, default ``~/.cache/comfy-cluster-real``)::

    comfyui-venv/                 torch + torchvision (CPU is enough) + ComfyUI's requirements
    handler-venv/                 runpod~=1.7.12, websocket-client, requests
    src/comfyui-0.3.64/           the pinned source tree (main.py)
    src/worker-comfyui-5.8.5/     handler.py and src/network_volume.py
    real-components.json          the stamp: what is installed; a matching stamp is reused at once

Idempotent: with a matching stamp it returns in well under a second; otherwise each step reuses
what is already there (an unpacked tree, a venv whose pip finds everything satisfied). Sources come
from the vendored tarballs (default ``../shared/vendor/`` beside the repository, or ``$COMFY_CLUSTER_VENDOR``), a source
directory, or a git clone of the pinned commit where the network allows. Standard library only:
it runs before the project is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "COMFY_CLUSTER_REAL_HOME"
DEFAULT_HOME = Path("~/.cache/comfy-cluster-real")
REPO = Path(__file__).resolve().parents[1]
VENDOR_ENV = "COMFY_CLUSTER_VENDOR"


def _vendor_dir() -> Path:
    """``$COMFY_CLUSTER_VENDOR``, else the nearest ``shared/vendor`` beside the repository or an ancestor."""
    if os.environ.get(VENDOR_ENV):
        return Path(os.environ[VENDOR_ENV])
    for parent in REPO.parents:
        if (parent / "shared" / "vendor").is_dir():
            return parent / "shared" / "vendor"
    return REPO.parent / "shared" / "vendor"


VENDOR = _vendor_dir()

COMFYUI_VERSION = "0.3.64"
COMFYUI_COMMIT = "a125cd84"
COMFYUI_GIT = "https://github.com/Comfy-Org/ComfyUI.git"
HANDLER_VERSION = "5.8.5"
HANDLER_GIT = "https://github.com/runpod-workers/worker-comfyui.git"
TORCH = ("torch==2.14.1", "torchvision==0.29.1")
# ComfyUI's requirements.txt minus these (torch is pinned above; torchaudio is not needed on the CPU).
SKIPPED_REQUIREMENTS = ("torch", "torchaudio")
# requests: imported by app/frontend_management.py yet missing from 0.3.64's requirements.txt;
# websocket-client: the comfy_cluster core's one runtime dependency ComfyUI lacks (the custom-node
# package imports the core in ComfyUI's Python).
COMFYUI_EXTRA = ("requests", "websocket-client")
LAYOUT_VERSION = 1

STAMP = {
    "layout": LAYOUT_VERSION,
    "comfyui": f"{COMFYUI_VERSION}-{COMFYUI_COMMIT}",
    "worker_comfyui": HANDLER_VERSION,
    "torch": TORCH[0].split("==")[1],
    "torchvision": TORCH[1].split("==")[1],
    "comfyui_extra": list(COMFYUI_EXTRA),
}


@dataclass(frozen=True)
class Layout:
    """Where each real component lives under one home directory."""

    home: Path

    @classmethod
    def from_env(cls, home: str | os.PathLike[str] | None = None) -> Layout:
        raw = home or os.environ.get(HOME_ENV) or DEFAULT_HOME
        return cls(Path(raw).expanduser().resolve())

    @property
    def stamp(self) -> Path:
        return self.home / "real-components.json"

    @property
    def comfyui_venv(self) -> Path:
        return self.home / "comfyui-venv"

    @property
    def handler_venv(self) -> Path:
        return self.home / "handler-venv"

    @property
    def comfyui_python(self) -> Path:
        return self.comfyui_venv / "bin" / "python"

    @property
    def handler_python(self) -> Path:
        return self.handler_venv / "bin" / "python"

    @property
    def comfyui_src(self) -> Path:
        return self.home / "src" / f"comfyui-{COMFYUI_VERSION}"

    @property
    def handler_src(self) -> Path:
        return self.home / "src" / f"worker-comfyui-{HANDLER_VERSION}"

    def problem(self) -> str | None:
        """Why this install cannot be used, or None when the stamp and every path are in place."""
        try:
            stamp = json.loads(self.stamp.read_text())
        except FileNotFoundError:
            return f"no stamp {self.stamp}"
        except (OSError, ValueError) as exc:
            return f"unreadable stamp {self.stamp}: {exc}"
        if stamp != STAMP:
            return f"stamp {self.stamp} records {stamp}, expected {STAMP}"
        needed = (self.comfyui_python, self.handler_python, self.comfyui_src / "main.py", self.handler_src / "handler.py")
        missing = [str(p) for p in needed if not p.exists()]
        return f"missing {', '.join(missing)}" if missing else None


def _say(message: str) -> None:
    print(f"[setup-real] {message}", flush=True)


def _run(cmd: list[str], **kwargs: object) -> None:
    _say("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def _unpack(source: Path | None, dest: Path, top: str, git_url: str, ref: str) -> None:
    """Put the source tree at ``dest``: from a tarball, a directory, or a git clone of ``ref``."""
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        if source is not None and source.is_file():
            _say(f"unpacking {source}")
            with tarfile.open(source) as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(staging, filter="data")
                else:
                    tar.extractall(staging)  # noqa: S202 - Python < 3.10.12: our own vendored tarball
            tree = staging / top
            if not tree.is_dir():
                raise SystemExit(f"{source}: expected a top-level {top}/ directory")
        elif source is not None and source.is_dir():
            _say(f"copying {source}")
            tree = staging / top
            shutil.copytree(source, tree, symlinks=True)
        else:
            _say(f"no local source for {top}; cloning {git_url} at {ref}")
            tree = staging / top
            _run(["git", "clone", "--quiet", git_url, str(tree)])
            _run(["git", "-C", str(tree), "checkout", "--quiet", ref])
        tree.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _venv(venv: Path, python: str) -> Path:
    pip = venv / "bin" / "pip"
    if not pip.exists():
        _run([python, "-m", "venv", str(venv)])
    return pip


def _pip(pip: Path, *args: str) -> None:
    _run([str(pip), "install", "--disable-pip-version-check", "--quiet", *args])


def _comfyui_requirements(src: Path, out: Path) -> Path:
    """ComfyUI's requirements.txt without the lines for the packages in SKIPPED_REQUIREMENTS."""
    kept = []
    for line in (src / "requirements.txt").read_text().splitlines():
        name = line.split("#")[0].strip()
        for sep in "<>=!~;[ ":
            name = name.split(sep)[0]
        if name.lower() not in SKIPPED_REQUIREMENTS:
            kept.append(line)
    out.write_text("\n".join(kept) + "\n")
    return out


def install(layout: Layout, *, comfyui_source: Path | None, handler_source: Path | None, python: str) -> float:
    """Bring the install at ``layout`` up to STAMP; returns the seconds it took."""
    started = time.monotonic()
    layout.home.mkdir(parents=True, exist_ok=True)
    layout.stamp.unlink(missing_ok=True)
    _unpack(comfyui_source, layout.comfyui_src, f"comfyui-{COMFYUI_VERSION}", COMFYUI_GIT, COMFYUI_COMMIT)
    _unpack(handler_source, layout.handler_src, f"worker-comfyui-{HANDLER_VERSION}", HANDLER_GIT, HANDLER_VERSION)

    pip = _venv(layout.comfyui_venv, python)
    _pip(pip, *TORCH)
    requirements = _comfyui_requirements(layout.comfyui_src, layout.home / "comfyui-requirements.txt")
    _pip(pip, "-r", str(requirements), *TORCH, *COMFYUI_EXTRA)
    _run([str(layout.comfyui_python), "-c",
          "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"])

    pip = _venv(layout.handler_venv, python)
    _pip(pip, "-r", str(layout.handler_src / "requirements.txt"))
    _run([str(layout.handler_python), "-c", "import runpod, websocket, requests; print('runpod', runpod.__version__)"])

    layout.stamp.write_text(json.dumps(STAMP, indent=2) + "\n")
    problem = layout.problem()
    if problem:
        raise SystemExit(f"install at {layout.home} is still incomplete: {problem}")
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=None, help=f"install here (default ${HOME_ENV} or {DEFAULT_HOME})")
    parser.add_argument("--comfyui-source", type=Path, default=VENDOR / f"comfyui-{COMFYUI_VERSION}-{COMFYUI_COMMIT}.tar.gz",
                        help="ComfyUI tarball or source directory (missing: git clone of the pinned commit)")
    parser.add_argument("--handler-source", type=Path, default=VENDOR / f"worker-comfyui-{HANDLER_VERSION}.tar.gz",
                        help="worker-comfyui tarball or source directory (missing: git clone of the tag)")
    parser.add_argument("--python", default=sys.executable, help="interpreter the venvs are made from")
    parser.add_argument("--force", action="store_true", help="re-check every step even with a matching stamp")
    args = parser.parse_args(argv)
    layout = Layout.from_env(args.home)
    started = time.monotonic()
    if not args.force and layout.problem() is None:
        _say(f"reusing {layout.home} ({time.monotonic() - started:.2f} s)")
        return 0
    sources = [p if p.exists() else None for p in (args.comfyui_source, args.handler_source)]
    seconds = install(layout, comfyui_source=sources[0], handler_source=sources[1], python=args.python)
    _say(f"installed at {layout.home} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
