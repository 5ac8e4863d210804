"""The command line: ``daskimg INPUT OUTPUT [options]`` (also ``python -m daskimg``), and
``daskimg report OUTPUT [--html FILE]``: a page about an output (see :mod:`daskimg._report`).

Exit status: 0 when every chunk was written (URLs that failed are recorded in the
metadata, they do not fail the run); 1 when some chunks could not be written (run again
to redo them); 2 for a bad argument, an unreadable input, a refused output or a local
cluster whose workers did not start; 130 after
SIGINT (Ctrl-C) and 143 after SIGTERM (run again to resume). The first signal lets the
chunks whose bytes are fetched be written; a second one stops at once.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from ._gc import imports_frozen
from .errors import DaskimgError, Interrupted
from .options import (
    COMPRESSIONS,
    DEFAULT_COMPRESSION,
    FORMATS,
    INPUT_FORMATS,
    RESAMPLE,
    RESIZE_MODES,
    FetchOptions,
    PreprocessOptions,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["main", "parser", "report_main", "report_parser"]

_F = FetchOptions()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage block
        self.exit(2, f"daskimg: error: {message} (see --help)\n")


def _triple(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}")
    return values[0], values[1], values[2]


def _storage_options(text: str) -> dict[str, Any]:
    try:
        options = json.loads(text)
    except ValueError:
        options = None
    if not isinstance(options, dict):  # (the text may hold secrets: it is not repeated)
        raise argparse.ArgumentTypeError("expected a JSON object, as in '{\"anon\": true}'")
    return options


def _color(text: str) -> tuple[int, int, int]:
    r, g, b = _triple(text)
    return int(r), int(g), int(b)


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="daskimg",
        description="Download, decode and resize the images of a URL table into chunked arrays (zarr or npy), "
        "on a local Dask cluster or an existing one.",
        epilog="Example: daskimg urls.parquet out.zarr --size 224 --url-col url. Without INPUT and with --demo, "
        "runs on sample images served locally. 'daskimg report OUTPUT' writes an HTML page about an output "
        "(see daskimg report --help).",
    )
    p.add_argument("paths", nargs="*", metavar="INPUT OUTPUT",
                   help="URL table (txt/csv/tsv/jsonl/parquet, optionally .gz; file, glob, directory or fsspec URL) "
                   "and output path (local or fsspec URL)")
    p.add_argument("--version", action="version", version=f"daskimg {__version__}")
    p.add_argument("--demo", action="store_true", help="serve the built-in sample images locally and run on them; "
                   "takes only OUTPUT (default daskimg-demo.zarr)")

    g = p.add_argument_group("input")
    g.add_argument("--url-col", default="url", help="column holding the URLs (default: url); other columns are "
                   "carried into the metadata")
    g.add_argument("--input-format", choices=INPUT_FORMATS, help="override the format guessed from the suffix")
    g.add_argument("--storage-options", type=_storage_options, metavar="JSON",
                   help="fsspec storage options for INPUT and OUTPUT, e.g. '{\"endpoint_url\": \"http://minio:9000\", "
                   "\"key\": \"...\", \"secret\": \"...\"}' for an S3-compatible store; they reach every worker")
    g.add_argument("--input-storage-options", type=_storage_options, metavar="JSON",
                   help="storage options for INPUT only (instead of --storage-options)")
    g.add_argument("--output-storage-options", type=_storage_options, metavar="JSON",
                   help="storage options for OUTPUT only (instead of --storage-options)")

    g = p.add_argument_group("image")
    g.add_argument("--size", type=int, help="output height and width in pixels (default 224)")
    g.add_argument("--height", type=int, help="output height (overrides --size)")
    g.add_argument("--width", type=int, help="output width (overrides --size)")
    g.add_argument("--resize-mode", choices=RESIZE_MODES, default="center_crop",
                   help="center_crop: fill the target, crop the centre (default); pad: keep the whole image, "
                   "letterbox with --fill; stretch: resize to the target ignoring the aspect ratio")
    g.add_argument("--resample", choices=RESAMPLE, default="bilinear", help="resize filter (default bilinear)")
    g.add_argument("--fill", type=_color, default=(0, 0, 0), metavar="R,G,B", help="letterbox colour for pad")
    g.add_argument("--background", type=_color, default=(255, 255, 255), metavar="R,G,B",
                   help="colour that transparency is composited on (default white)")
    g.add_argument("--dtype", choices=("uint8", "float32"), default="uint8",
                   help="uint8 0-255 (default) or float32 scaled to 0-1")
    g.add_argument("--mean", type=_triple, metavar="R,G,B", help="float32 only: subtract this per channel")
    g.add_argument("--std", type=_triple, metavar="R,G,B", help="float32 only: divide by this per channel")
    g.add_argument("--channels-first", action="store_true", help="store (3, H, W) images instead of (H, W, 3)")
    g.add_argument("--formats", default=",".join(FORMATS),
                   help=f"image formats accepted, decided from the bytes (default {','.join(FORMATS)})")
    g.add_argument("--max-pixels", type=int, default=64 * 1024 * 1024,
                   help="refuse images with more pixels than this, before decoding (default 67108864)")

    g = p.add_argument_group("fetch")
    g.add_argument("--timeout", type=float, default=_F.timeout,
                   help=f"connect/read timeout, s (default {_F.timeout:g})")
    g.add_argument("--deadline", type=float, default=_F.deadline,
                   help=f"total time per URL with retries and redirects, s (default {_F.deadline:g})")
    g.add_argument("--max-bytes", type=int, default=_F.max_bytes,
                   help=f"largest body downloaded (default {_F.max_bytes})")
    g.add_argument("--retries", type=int, default=_F.retries,
                   help=f"retries after connection errors, 429 and 5xx (default {_F.retries})")
    g.add_argument("--concurrency", type=int, default=_F.concurrency,
                   help=f"transfers in flight per fetch task; a worker runs one per thread (default {_F.concurrency})")
    g.add_argument("--per-host", type=int, default=_F.per_host,
                   help=f"connections to one host per fetch task (politeness; default {_F.per_host}); a cluster "
                   "runs up to two fetch tasks per worker thread at once: one host sees at most this many times that")
    g.add_argument("--defer-after", type=float, default=_F.defer_after,
                   help="most seconds a chunk waits for its slowest URLs before it is written without them; they "
                   f"are fetched again on their own and written in later (0: wait for all; default {_F.defer_after:g})")
    g.add_argument("--allow-private-network", action="store_true",
                   help="allow loopback and private addresses (link-local, e.g. 169.254.169.254, stays refused)")
    g.add_argument("--ignore-noai", action="store_true", help="fetch images whose X-Robots-Tag says noai/noimageai")
    g.add_argument("--user-agent", default="", help="User-Agent header (default names daskimg and its version)")

    g = p.add_argument_group("output")
    g.add_argument("--format", choices=("zarr", "npy"), default="zarr", help="zarr v3 group (default) or .npy files")
    g.add_argument("--chunk", type=int, help="rows per partition and per output chunk (default: a power of two "
                   "making about 12 MiB of output, 16 to 256: 256 at 128 px, 64 at 224 px)")
    g.add_argument("--compression", choices=COMPRESSIONS, default=DEFAULT_COMPRESSION,
                   help=f"zarr chunk compression: lz4 (Blosc: fast, 1.15x on photos), zstd (bit-shuffled: 1.55x, "
                   f"slower) or none (default {DEFAULT_COMPRESSION})")
    g.add_argument("--overwrite", action="store_true", help="replace an output made with other settings")

    g = p.add_argument_group("cluster")
    g.add_argument("--scheduler", metavar="ADDRESS", help="run on this existing Dask scheduler (tcp://host:8786) "
                   "instead of a local cluster; its workers need daskimg installed")
    g.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    g.add_argument("--threads-per-worker", type=int, default=2, help="threads per local worker (default 2)")
    g.add_argument("--dashboard-address", default=":8787", help="local dashboard address (default :8787)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def report_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="daskimg report",
        description="Write one self-contained HTML page about an output: rows by status, the hosts with the most "
        "failures and why, sample error messages, a contact sheet of sample images, the sizes that came in and "
        "the throughput over the run. It needs no network to view.",
    )
    p.add_argument("output", metavar="OUTPUT", help="a daskimg output (local or fsspec URL)")
    p.add_argument("--html", metavar="FILE", help="where to write the page (default: OUTPUT's name + "
                   "'-report.html', in the current directory)")
    p.add_argument("--storage-options", type=_storage_options, metavar="JSON", help="fsspec storage options "
                   "for OUTPUT (credentials, endpoint ...)")
    p.add_argument("--samples", type=int, default=48, help="sample images on the contact sheet (default 48)")
    return p


def report_main(argv: Sequence[str]) -> int:
    """``daskimg report``: the page, and the counts on stdout."""
    args = report_parser().parse_args(argv)
    from pathlib import PurePosixPath

    from ._report import report

    name = PurePosixPath(args.output.rstrip("/")).name or "output"
    target = args.html or f"{name.rsplit('.', 1)[0] if '.' in name else name}-report.html"
    try:
        made = report(args.output, html=target, storage_options=args.storage_options, samples=args.samples)
    except DaskimgError as e:
        print(f"daskimg: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the page's own file
        print(f"daskimg: error: cannot write {target}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(made)
    print(f"daskimg: report written to {target}", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _table(args: argparse.Namespace, p: argparse.ArgumentParser) -> Iterator[tuple[str | pd.DataFrame, str]]:
    """The input and output the arguments name; for --demo, the demo server runs meanwhile."""
    output = _output_path(args)
    if output is None:
        p.error("--demo takes only OUTPUT" if args.demo else "expected INPUT and OUTPUT")
    if args.demo:
        from .demo import DemoServer

        with DemoServer() as server:
            yield server.table, output
        return
    yield args.paths[0], output


def _output_path(args: argparse.Namespace) -> str | None:
    """The output the arguments name, or None when they name none (:func:`_table` then says why)."""
    if args.demo:
        if len(args.paths) > 1:
            return None
        return args.paths[0] if args.paths else "daskimg-demo.zarr"
    return args.paths[1] if len(args.paths) == 2 else None


def _preprocess_options(args: argparse.Namespace) -> dict[str, Any]:
    size = args.size if args.size is not None else 224
    return {
        "height": args.height if args.height is not None else size,
        "width": args.width if args.width is not None else size,
        "mode": args.resize_mode, "resample": args.resample, "fill": args.fill, "background": args.background,
        "dtype": args.dtype, "mean": args.mean, "std": args.std, "channels_first": args.channels_first,
        "formats": tuple(f.strip() for f in args.formats.split(",") if f.strip()), "max_pixels": args.max_pixels,
    }


def _log_to_stderr() -> None:
    """daskimg's own warnings on stderr, one line each. Only daskimg's logger: Dask configures its own
    loggers when it is imported, unless the root logger has a handler, and then its INFO lines would
    flood the terminal."""
    logger = logging.getLogger("daskimg")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("daskimg: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


def _imports_unwatched(own_process: bool) -> contextlib.AbstractContextManager[None]:
    """In the command's own process: :func:`daskimg._gc.imports_frozen`; elsewhere nothing."""
    return imports_frozen() if own_process else contextlib.nullcontext()


def main(argv: Sequence[str] | None = None, *, own_process: bool = False) -> int:
    """Run the CLI; returns the exit status.

    ``own_process`` says that this process is the command's alone (:func:`entry_point`). A local
    cluster's workers are then forked from a fork server that this process starts first
    (:func:`daskimg._worker_start.start_fork_server`), and the collector is paused while Dask and
    daskimg are imported (its full collections would walk the growing heap of modules only to free
    nothing); what they made is then frozen (``gc.freeze``), so that the collections during the run
    (the scheduler of a local cluster runs in this process) and the last one at exit no longer walk
    those long-lived objects.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["report"]:
        return report_main(argv[1:])
    p = parser()
    args = p.parse_args(argv)
    _log_to_stderr()
    try:
        # Settings are checked before the input is read or the output touched.
        fetch = FetchOptions(
            timeout=args.timeout, deadline=args.deadline, max_bytes=args.max_bytes, retries=args.retries,
            concurrency=args.concurrency, per_host=args.per_host, defer_after=args.defer_after,
            allow_private_network=args.allow_private_network or args.demo,
            respect_noai=not args.ignore_noai, user_agent=args.user_agent,
        )
        preprocess = PreprocessOptions(**_preprocess_options(args))
        for name in ("chunk", "workers", "threads_per_worker"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                p.error(f"--{name.replace('_', '-')} must be >= 1")
        output_path = _output_path(args)
        if output_path is not None:  # before anything starts for nothing
            from ._lock import refuse_busy

            refuse_busy(output_path)
        fork_server = False
        if own_process and not args.scheduler:  # a local cluster: its workers fork from the server
            from ._worker_start import start_fork_server

            fork_server = start_fork_server()
        with _imports_unwatched(own_process):
            from .cluster import start_client

        with start_client(args.scheduler, workers=args.workers, threads_per_worker=args.threads_per_worker,
                          dashboard_address=args.dashboard_address, fork_server=fork_server) as starting:
            with _imports_unwatched(own_process):
                from .job import read_urls  # while a local cluster's workers start

                client = starting.ready()  # the workers have joined
            with _table(args, p) as (table, output):
                job = read_urls(table, url_col=args.url_col, chunk=args.chunk, input_format=args.input_format,
                                storage_options=args.input_storage_options or args.storage_options)
                job = dataclasses.replace(job, fetch_options=fetch, preprocess_options=preprocess)

                def announce(client: Any) -> None:
                    print(f"daskimg: {job!r}\ndaskimg: dashboard at {client.dashboard_link}", file=sys.stderr,
                          flush=True)

                summary = job.run(
                    output, client=client, format=args.format, compression=args.compression,
                    overwrite=args.overwrite, storage_options=args.output_storage_options or args.storage_options,
                    progress=not args.no_progress, on_client=announce,
                )
    except DaskimgError as e:
        print(f"daskimg: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Interrupted: SIGINT or SIGTERM; a bare one: Ctrl-C before the run began
        print("daskimg: interrupted; run the same command again to resume", file=sys.stderr)
        return 128 + (e.signum if isinstance(e, Interrupted) else signal.SIGINT)
    print(summary)
    return 0 if summary.complete else 1


def entry_point() -> NoReturn:
    """The ``daskimg`` command and ``python -m daskimg``: :func:`main` in a process of its own, then exit
    with its status (``atexit`` handlers run as usual)."""
    code = main(own_process=True)
    gc.freeze()  # what the run made too: the collection at exit would walk it all, to free nothing
    sys.exit(code)


if __name__ == "__main__":
    entry_point()
