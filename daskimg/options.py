"""Frozen, keyword-only settings for each stage, validated when they are made."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypedDict, TypeVar

from .errors import ConfigError

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_COMPRESSION",
    "FORMATS",
    "INPUT_FORMATS",
    "RESIZE_MODES",
    "FetchChanges",
    "FetchOptions",
    "PreprocessChanges",
    "PreprocessOptions",
    "options_dict",
    "replace_options",
]

RESIZE_MODES = ("center_crop", "pad", "stretch")
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP")
RESAMPLE = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
INPUT_FORMATS = ("txt", "csv", "tsv", "jsonl", "parquet")
COMPRESSIONS = ("lz4", "zstd", "none")
# Photos barely compress: lz4 is fast and gains little; zstd gains more for more CPU (docs/benchmarks.md).
DEFAULT_COMPRESSION = "lz4"
ResizeMode = Literal["center_crop", "pad", "stretch"]
Color = tuple[int, int, int]


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be {bound}, got {value!r}")


def _color(name: str, value: Any) -> Color:
    if isinstance(value, int):
        value = (value, value, value)
    try:
        rgb = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be three integers 0-255, got {value!r}") from None
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise ConfigError(f"{name} must be three integers 0-255, got {value!r}")
    return rgb[0], rgb[1], rgb[2]


@dataclass(frozen=True, kw_only=True)
class FetchOptions:
    """How one URL is downloaded.

    Parameters
    ----------
    timeout
        Seconds to wait for a connection, and for each read from the socket.
    deadline
        Seconds one URL may take in all, retries and redirects included.
    max_bytes
        Largest body accepted, in bytes; larger bodies are not read.
    retries
        Extra attempts after connection errors, 429 and 5xx answers.
    backoff
        First backoff in seconds; doubled at each retry, with jitter.
    max_retry_after
        Cap, in seconds, on a server's ``Retry-After``.
    max_redirects
        Redirects followed before giving up.
    concurrency
        Transfers in flight per fetch task (a worker runs one fetch task per thread at most).
        256, the most rows a chunk has by default: a whole chunk is in flight at once, so a
        chunk costs about one round trip even from a far-away server.
    per_host
        Connections open to one host per fetch task (politeness). 256 too, so that a list from a
        single far-away host is not slowed down by round trips; lower it for hosts that mind.
    allow_private_network
        Allow loopback and private addresses (link-local stays refused).
    respect_noai
        Record ``X-Robots-Tag: noai`` / ``noimageai`` answers as opted out.
    user_agent
        The User-Agent header; it names daskimg by default.
    defer_after
        Seconds a chunk waits at most for its slowest URLs; 0 waits for every URL. Once 90% of
        a chunk's URLs are done, it waits three times as long as that took (at least 0.25 s)
        and no longer. The URLs still going are then fetched again on their own, with the whole
        ``timeout``, ``retries`` and ``deadline`` again, and their rows written into the chunk
        when they are done: one URL that never answers no longer holds up its chunk's other
        rows, in memory and on a worker thread, until its deadline.
    """

    timeout: float = 10.0
    deadline: float = 30.0
    max_bytes: int = 20 * 1024 * 1024
    retries: int = 2
    backoff: float = 0.5
    max_retry_after: float = 10.0
    max_redirects: int = 10
    concurrency: int = 256
    per_host: int = 256
    allow_private_network: bool = False
    respect_noai: bool = True
    user_agent: str = ""
    defer_after: float = 5.0

    def __post_init__(self) -> None:
        for name in ("timeout", "deadline", "max_bytes", "concurrency", "per_host"):
            _positive(name, getattr(self, name))
        for name in ("retries", "backoff", "max_retry_after", "max_redirects", "defer_after"):
            _positive(name, getattr(self, name), allow_zero=True)
        if not self.user_agent:
            from . import __version__

            ua = f"daskimg/{__version__} (+https://pypi.org/project/daskimg/)"
            object.__setattr__(self, "user_agent", ua)


@dataclass(frozen=True, kw_only=True)
class PreprocessOptions:
    """How downloaded bytes become one array.

    Parameters
    ----------
    height, width
        Output size in pixels.
    mode
        ``center_crop`` (scale the short side to fit, crop the centre), ``pad`` (keep the
        ratio, letterbox with ``fill``) or ``stretch`` (resize to the target, ignoring the ratio).
    resample
        Filter used to resize (OpenCV's; ``hamming`` is Pillow's).
    fill
        Letterbox colour of ``pad``.
    background
        Colour that transparent pixels are composited on.
    dtype
        ``uint8`` (0-255) or ``float32`` (0-1, then ``(x - mean) / std`` when given).
    mean, std
        Per-channel normalisation for ``float32``.
    channels_first
        Output ``(3, H, W)`` instead of ``(H, W, 3)``.
    formats
        Image formats accepted, as Pillow names them; anything else is refused.
    max_pixels
        Largest width x height decoded; checked from the header, before allocating.
    """

    height: int = 224
    width: int = 224
    mode: ResizeMode = "center_crop"
    resample: str = "bilinear"
    fill: Color = (0, 0, 0)
    background: Color = (255, 255, 255)
    dtype: Literal["uint8", "float32"] = "uint8"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    channels_first: bool = False
    formats: tuple[str, ...] = FORMATS
    max_pixels: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("height", "width", "max_pixels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.mode not in RESIZE_MODES:
            raise ConfigError(f"mode must be one of {', '.join(RESIZE_MODES)}, got {self.mode!r}")
        if self.resample not in RESAMPLE:
            raise ConfigError(f"resample must be one of {', '.join(RESAMPLE)}, got {self.resample!r}")
        if self.dtype not in ("uint8", "float32"):
            raise ConfigError(f"dtype must be uint8 or float32, got {self.dtype!r}")
        if (self.mean is not None or self.std is not None) and self.dtype != "float32":
            raise ConfigError("mean/std normalisation needs dtype='float32'")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                try:
                    triple = tuple(float(v) for v in value)
                except (TypeError, ValueError):
                    raise ConfigError(f"{name} must be three numbers, got {value!r}") from None
                if len(triple) != 3:
                    raise ConfigError(f"{name} must be three numbers, got {value!r}")
                object.__setattr__(self, name, triple)
        if self.std is not None and any(v == 0 for v in self.std):
            raise ConfigError(f"std must not contain 0, got {self.std!r}")
        object.__setattr__(self, "fill", _color("fill", self.fill))
        object.__setattr__(self, "background", _color("background", self.background))
        formats = tuple(f.upper() for f in self.formats)
        object.__setattr__(self, "formats", formats)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of one output image."""
        if self.channels_first:
            return (3, self.height, self.width)
        return (self.height, self.width, 3)


class FetchChanges(TypedDict, total=False):
    """Keyword arguments of :meth:`daskimg.Job.fetch`: any field of :class:`FetchOptions`."""

    timeout: float
    deadline: float
    max_bytes: int
    retries: int
    backoff: float
    max_retry_after: float
    max_redirects: int
    concurrency: int
    per_host: int
    allow_private_network: bool
    respect_noai: bool
    user_agent: str
    defer_after: float


class PreprocessChanges(TypedDict, total=False):
    """Keyword arguments of :meth:`daskimg.Job.preprocess`: any field of :class:`PreprocessOptions`."""

    height: int
    width: int
    mode: ResizeMode
    resample: str
    fill: Color
    background: Color
    dtype: Literal["uint8", "float32"]
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    channels_first: bool
    formats: tuple[str, ...]
    max_pixels: int


_Options = TypeVar("_Options", FetchOptions, PreprocessOptions)


def replace_options(opts: _Options, changes: Mapping[str, Any]) -> _Options:
    """``opts`` with ``changes``, validated again.

    Raises
    ------
    ConfigError
        For a name that is not an option (with the closest one), or a value out of range.
    """
    known = [f.name for f in dataclasses.fields(opts)]
    for name in changes:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"options are {', '.join(known)}"
            raise ConfigError(f"{type(opts).__name__} has no option {name!r}; {hint}")
    return dataclasses.replace(opts, **changes)


def options_dict(opts: Any) -> dict[str, Any]:
    """JSON-friendly form of any options dataclass."""
    return {f.name: _jsonable(getattr(opts, f.name)) for f in dataclasses.fields(opts)}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value

