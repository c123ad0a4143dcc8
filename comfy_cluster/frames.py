"""Frame sets and frame-numbered file names, each parsed in one place.

``FrameSpec`` is a set of whole frames written the way Nuke and the farm write them::

    1001-1100        every frame from 1001 to 1100, inclusive
    1001-1100x2      every second frame: 1001, 1003, ... 1099
    1,5,9-12         single frames and ranges, separated by commas ...
    1-10 20-30x2     ... or by spaces, as Nuke's FrameRanges does
    -3-4  -10--5     negative frames (the first '-' is a sign)

The frames are kept **sorted and unique**: a render wants each frame once, and the
dispatcher decides the order in which they are sent, not the text. ``str(spec)`` gives the
compact canonical spec (``1-3,5-9x2``), which parses back to an equal object, and
``repr(spec)`` rebuilds it: ``FrameSpec.parse('1001-1100x2')``.

``FramePattern`` is a file name holding at most one frame token:

    ``####``        padding = number of hashes (Nuke, ``#`` alone = no padding)
    ``%04d``/``%d`` printf, as Nuke's Write node also accepts
    ``$F4``/``$F``  Houdini
    ``@@@@``        only with ``FramePattern.parse(text, at_sign=True)``: ``@`` shows up in
                    real paths (``user@host``, ``plate@2x``) too often to be a token by default

A pattern is stored as prefix + padding + suffix, so every host form (``to_nuke()``,
``to_printf()``) comes from the same model, and ``match(name)`` is the exact inverse of
``format(frame)``. A name without a token is a single still: ``format`` returns it as is.

Several images per frame: ``with_index(k)`` names the k-th image of a frame. ``k == 0`` is
the pattern itself; ``k >= 1`` adds ``_k`` to the end of the file stem, before the frame
token and its separator (``/r/sh010_comfy.####.png`` -> ``/r/sh010_comfy_1.####.png``). A
pattern that holds an ``{index}`` placeholder gets ``k`` substituted there instead, for every
``k`` including 0 (``/r/sh010_{index}.####.png`` -> ``/r/sh010_0.####.png``).

Nothing here touches the disk; finding files that match a pattern is the caller's job.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal

#: The most frames one spec may hold; a typo such as ``1-999999999`` should fail, not hang.
MAX_FRAMES = 1_000_000
#: The widest padding a pattern may ask for.
MAX_PADDING = 32

_RANGE_RE = re.compile(r"(-?\d+)(?:-(-?\d+))?")
_EXAMPLES = "expected e.g. 1001, 1001-1100 or 1001-1100x2"


@dataclass(frozen=True)
class FrameSpec:
    """A sorted, duplicate-free set of frames with a canonical text form.

    >>> spec = FrameSpec.parse("1-5 3, 9-13x2")
    >>> spec.frames
    (1, 2, 3, 4, 5, 9, 11, 13)
    >>> str(spec)
    '1-5,9-13x2'
    """

    frames: tuple[int, ...]

    def __post_init__(self) -> None:
        frames = tuple(self.frames)
        object.__setattr__(self, "frames", frames)
        if not frames:
            raise ValueError("a frame range needs at least one frame")
        if len(frames) > MAX_FRAMES:
            raise ValueError(f"{len(frames)} frames is more than the limit of {MAX_FRAMES:,}")
        if any(not isinstance(f, int) or isinstance(f, bool) for f in frames):
            raise ValueError(f"frames must be whole numbers, got {frames[:5]!r}")
        if any(a >= b for a, b in zip(frames, frames[1:])):
            raise ValueError("FrameSpec.frames must be sorted and unique; use FrameSpec.from_frames()")

    # -- constructors -------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> FrameSpec:
        """Parse ``1001-1100x2``, ``1,5,9-12``, ``1-10 20-30x2`` or ``-10--5``.

        Raises ValueError naming the text, the bad block and the problem.
        """
        if not isinstance(text, str):
            raise TypeError(f"frame range must be a str, got {type(text).__name__}")
        blocks = text.replace(",", " , ").split()
        words = [b for b in blocks if b != ","]
        if not words:
            raise ValueError(f"frame range {text!r}: no frames given ({_EXAMPLES})")
        _check_commas(text, blocks)
        ranges = [_parse_block(text, word, len(words) > 1) for word in words]
        # len(range) overflows past sys.maxsize, so count by arithmetic.
        total = sum((r.stop - 1 - r.start) // r.step + 1 for r in ranges)
        if total > MAX_FRAMES:
            raise ValueError(f"frame range {text!r}: {total:,} frames is more than the limit of {MAX_FRAMES:,}")
        return cls(tuple(sorted(set().union(*ranges))))

    @classmethod
    def from_frames(cls, frames: Iterable[int]) -> FrameSpec:
        """Build a spec from any frame numbers, in any order, duplicates allowed.

        >>> str(FrameSpec.from_frames([1005, 1001, 1003, 1003]))
        '1001-1005x2'
        """
        values = []
        for frame in frames:
            if isinstance(frame, bool) or not isinstance(frame, int):
                raise ValueError(f"frame {frame!r} is not a whole number")
            values.append(frame)
            if len(values) > MAX_FRAMES:
                raise ValueError(f"more than the limit of {MAX_FRAMES:,} frames")
        return cls(tuple(sorted(set(values))))

    @classmethod
    def from_range(cls, first: int, last: int, step: int = 1) -> FrameSpec:
        """Frames ``first..last`` (inclusive) every ``step``, as Nuke's ``(first, last, incr)``."""
        return cls.parse(f"{first}-{last}x{step}")

    # -- the set ------------------------------------------------------------------------

    @property
    def first(self) -> int:
        return self.frames[0]

    @property
    def last(self) -> int:
        return self.frames[-1]

    def __iter__(self) -> Iterator[int]:
        return iter(self.frames)

    def __len__(self) -> int:
        return len(self.frames)

    def __contains__(self, frame: object) -> bool:
        if isinstance(frame, bool) or not isinstance(frame, int):
            return False
        i = bisect.bisect_left(self.frames, frame)
        return i < len(self.frames) and self.frames[i] == frame

    def chunks(self, size: int) -> list[FrameSpec]:
        """Split into consecutive groups of ``size`` frames (the last may be shorter).

        One group becomes one prompt when a workflow renders several frames per prompt.

        >>> [str(c) for c in FrameSpec.parse("1-10").chunks(4)]
        ['1-4', '5-8', '9-10']
        """
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"chunk size must be a whole number >= 1, got {size!r}")
        return [FrameSpec(self.frames[i:i + size]) for i in range(0, len(self.frames), size)]

    # -- text -----------------------------------------------------------------------------

    def to(self, range_sep: str = "-", step_sep: str = "x", block_sep: str = ",") -> str:
        """The spec in another host's syntax; ``str()`` is ``to()`` with the defaults."""
        parts = []
        for start, end, step in _runs(self.frames):
            if start == end:
                parts.append(str(start))
            elif step == 1:
                parts.append(f"{start}{range_sep}{end}")
            else:
                parts.append(f"{start}{range_sep}{end}{step_sep}{step}")
        return block_sep.join(parts)

    def to_nuke(self) -> str:
        """Nuke's FrameRanges form: blocks separated by spaces (``1-10 20-30x2``)."""
        return self.to(block_sep=" ")

    def __str__(self) -> str:
        return self.to()

    def __repr__(self) -> str:
        return f"FrameSpec.parse({str(self)!r})"


def _check_commas(text: str, blocks: list[str]) -> None:
    """Refuse ``1,,2``, ``,1`` and ``1,``: a stray comma is more likely a typo than intent."""
    previous = ","
    for block in blocks + [","]:
        if block == "," and previous == ",":
            raise ValueError(f"frame range {text!r}: empty entry between commas ({_EXAMPLES})")
        previous = block


def _parse_block(text: str, block: str, several: bool) -> range:
    where = f"frame range {text!r}: in {block!r}" if several else f"frame range {text!r}"
    range_part, has_step, step_text = block.partition("x")
    step = 1
    if has_step:
        if not step_text:
            raise ValueError(f"{where}: step is missing after 'x'")
        if not step_text.isdigit() or not step_text.isascii():
            raise ValueError(f"{where}: step {step_text!r} is not a whole number")
        step = int(step_text)
        if step < 1:
            raise ValueError(f"{where}: step must be at least 1, got {step}")
    match = _RANGE_RE.fullmatch(range_part)
    if match is None or not range_part.isascii():
        raise ValueError(f"{where}: {range_part!r} is not a frame number or range ({_EXAMPLES})")
    start = int(match.group(1))
    if match.group(2) is None:
        if has_step:
            raise ValueError(f"{where}: a step needs a range, e.g. {start}-{start + 10}x{step}")
        return range(start, start + 1)
    end = int(match.group(2))
    if end < start:
        raise ValueError(f"{where}: range ends at {end}, before its start {start}")
    return range(start, end + 1, step)


def _runs(frames: tuple[int, ...]) -> Iterator[tuple[int, int, int]]:
    """Runs ``(start, end, step)`` over sorted frames, the way a person would write them.

    Consecutive frames come first (``9-12``, even ``1-2``). Other frames form a stepped
    range when three or more are evenly spaced and none of them starts a consecutive run,
    so ``1,5,9,10,11,12`` reads ``1,5,9-12`` rather than ``1-9x4,10-12``.
    """
    n = len(frames)

    def starts_consecutive(k: int) -> bool:
        return k + 1 < n and frames[k + 1] - frames[k] == 1

    i = 0
    while i < n:
        j = i
        if starts_consecutive(i):
            while starts_consecutive(j):
                j += 1
            yield frames[i], frames[j], 1
            i = j + 1
            continue
        if i + 1 < n:
            step = frames[i + 1] - frames[i]
            while j + 1 < n and frames[j + 1] - frames[j] == step and not starts_consecutive(j + 1):
                j += 1
        if j - i >= 2:
            yield frames[i], frames[j], frames[i + 1] - frames[i]
            i = j + 1
        else:
            yield frames[i], frames[i], 1
            i += 1


Style = Literal["hash", "printf", "houdini", "at", "none"]

# ``$F`` is a token only when no name character follows: ``$FPS`` and ``$F4x`` are variables.
_TOKEN_RE = re.compile(r"(?P<hash>#+)|%(?P<printf>\d*)d|\$F(?P<houdini>\d*)(?![A-Za-z0-9_])")
_NAME_CHAR_RE = re.compile(r"[A-Za-z0-9_]")
_TOKEN_AT_RE = re.compile(_TOKEN_RE.pattern + r"|(?P<at>@+)")
_SEPARATORS = "._- "
_INDEX = "{index}"


@dataclass(frozen=True)
class FramePattern:
    """A file name with at most one frame token, stored as prefix + padding + suffix.

    >>> p = FramePattern.parse("/r/sh010_comfy.%04d.png")
    >>> p.format(1001), p.format(-1)
    ('/r/sh010_comfy.1001.png', '/r/sh010_comfy.-001.png')
    >>> p.to_nuke()
    '/r/sh010_comfy.####.png'
    >>> p.match("/r/sh010_comfy.0042.png")
    42
    """

    prefix: str
    padding: int = 0
    suffix: str = ""
    style: Style = "none"

    def __post_init__(self) -> None:
        if self.style == "none":
            if self.padding != 0 or self.suffix:
                raise ValueError("a pattern without a frame token has padding 0 and no suffix")
        elif not 1 <= self.padding <= MAX_PADDING:
            raise ValueError(f"frame padding must be between 1 and {MAX_PADDING}, got {self.padding}")
        if self.style == "houdini" and _NAME_CHAR_RE.match(self.suffix):
            raise ValueError(f"pattern {str(self)!r}: a name character right after $F would change the token")
        token_re = _TOKEN_AT_RE if self.style == "at" else _TOKEN_RE
        for part in (self.prefix, self.suffix):
            found = token_re.search(part)
            if found:
                raise ValueError(f"pattern {str(self)!r}: {found.group(0)!r} is a second frame token")

    @classmethod
    def parse(cls, text: str, *, at_sign: bool = False) -> FramePattern:
        """Parse a path holding ``####``, ``%04d``, ``%d``, ``$F4``, ``$F`` (or ``@@@@``).

        Raises ValueError when the text holds two or more frame tokens.
        """
        if not isinstance(text, str):
            raise TypeError(f"frame pattern must be a str, got {type(text).__name__}")
        token_re = _TOKEN_AT_RE if at_sign else _TOKEN_RE
        found = list(token_re.finditer(text))
        if not found:
            return cls(text)
        if len(found) > 1:
            tokens = ", ".join(f"{m.group(0)!r} at {m.start()}" for m in found)
            raise ValueError(f"pattern {text!r} has {len(found)} frame tokens ({tokens}); use exactly one")
        m = found[0]
        style = m.lastgroup or ""   # one alternative always matched: found holds only matches
        digits = m.group(style)
        if style in ("hash", "at"):
            padding = len(digits)
        else:
            padding = int(digits) if digits and int(digits) > 0 else 1
        if padding > MAX_PADDING:
            raise ValueError(f"pattern {text!r}: padding {padding} is wider than {MAX_PADDING}")
        return cls(text[:m.start()], padding, text[m.end():], style)  # type: ignore[arg-type]

    @property
    def has_token(self) -> bool:
        return self.style != "none"

    @property
    def token(self) -> str:
        """The frame token in this pattern's own style (``''`` for a still)."""
        return _token(self.style, self.padding)

    def format(self, frame: int) -> str:
        """The file name of ``frame``; a negative frame keeps the width (``-001`` for 4)."""
        if not self.has_token:
            return self.prefix
        return f"{self.prefix}{frame:0{self.padding}d}{self.suffix}"

    def match(self, filename: str) -> int | None:
        """The frame number that ``format`` would have turned into ``filename``, else None.

        The comparison is exact: ``sh.1.png`` does not match ``sh.####.png``, because this
        pattern never writes that name. A still (no token) matches no frame.
        """
        if not self.has_token:
            return None
        lead, tail = len(self.prefix), len(self.suffix)
        if len(filename) <= lead + tail or not filename.startswith(self.prefix) or not filename.endswith(self.suffix):
            return None
        middle = filename[lead:len(filename) - tail]
        if not re.fullmatch(r"-?[0-9]+", middle):
            return None
        frame = int(middle)
        return frame if self.format(frame) == filename else None

    def with_index(self, k: int) -> FramePattern:
        """The pattern of the k-th image of each frame (see the module docstring)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"image index must be a whole number >= 0, got {k!r}")
        if _INDEX in self.prefix or _INDEX in self.suffix:
            return FramePattern(self.prefix.replace(_INDEX, str(k)), self.padding,
                                self.suffix.replace(_INDEX, str(k)), self.style)
        if k == 0:
            return self
        tag = f"_{k}"
        if not self.has_token:
            return FramePattern(_before_extension(self.prefix, tag, at_token=False))
        stem = self.prefix.rstrip(_SEPARATORS)
        in_last_component = not any(sep in self.suffix for sep in "/\\")
        if in_last_component and stem and stem[-1] not in "/\\":
            return FramePattern(stem + tag + self.prefix[len(stem):], self.padding, self.suffix, self.style)
        return FramePattern(self.prefix, self.padding, _before_extension(self.suffix, tag, at_token=True), self.style)

    def to_nuke(self) -> str:
        """``####`` form (Nuke's Write and Read ``file`` knobs)."""
        return self._render("hash")

    def to_printf(self) -> str:
        """``%04d`` form (Nuke's normalised knob value, ffmpeg, most farm tools)."""
        return self._render("printf")

    def _render(self, style: Style) -> str:
        if not self.has_token:
            return self.prefix
        return f"{self.prefix}{_token(style, self.padding)}{self.suffix}"

    def __str__(self) -> str:
        return self._render(self.style)

    def __repr__(self) -> str:
        extra = ", at_sign=True" if self.style == "at" else ""
        return f"FramePattern.parse({str(self)!r}{extra})"


def _token(style: Style, padding: int) -> str:
    if style in ("hash", "at"):
        return ("#" if style == "hash" else "@") * padding
    if style == "printf":
        return "%d" if padding == 1 else f"%0{padding}d"
    if style == "houdini":
        return "$F" if padding == 1 else f"$F{padding}"
    return ""


def _before_extension(path: str, tag: str, *, at_token: bool) -> str:
    """Insert ``tag`` before the extension of the last path component (or at its end).

    ``at_token``: ``path`` is the text right after a frame token, so when it has no
    separator its name already began at the token and a leading dot is the extension
    (``.png`` -> ``_1.png``), not a hidden file.
    """
    cut = max(path.rfind("/"), path.rfind("\\")) + 1
    name = path[cut:]
    dot = name.rfind(".")
    lowest = 0 if (at_token and cut == 0) else 1
    if dot < lowest:
        return path + tag
    return path[:cut] + name[:dot] + tag + name[dot:]


__all__ = ["MAX_FRAMES", "FramePattern", "FrameSpec"]
