"""What reaches the terminal: the command's own lines and errors by default, Dagster's and the libraries' logs
with -v; the one place that sets up logging for the demo and every `neucodec-platform` subcommand."""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import TextIO

#: Loggers whose debug lines `-v` shows and the demo's log file keeps: Dagster's and this project's packages.
DEBUG_LOGGERS = ("dagster", "neucodec_assets", "gpu_executor", "resources")
LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


@contextmanager
def console(verbose: bool, log_file: Path | None = None) -> Iterator[Callable[[str], None]]:
    """What reaches the terminal, for every subcommand and the demo (the one place that sets up logging).

    Quiet (the default): the command's own lines and errors. With ``log_file``, everything else written while this is
    open goes into that file: Python logging (Dagster's and this project's at DEBUG), Python warnings, and whatever
    libraries or child processes (the demo's code server) write to stdout or stderr, such as progress bars; log
    records of level ERROR also reach the terminal, but for those marked ``terminal=False`` (the demo reports the
    runs' failures itself). Without ``log_file`` only records of level ERROR reach stderr.
    Verbose: all of it on the terminal (and in ``log_file`` too, where there is one).
    Yields the function that prints one line of the command's own output to the terminal.
    """
    root = logging.getLogger()
    saved_levels = {name: logging.getLogger(name).level for name in ("", *DEBUG_LOGGERS)}
    handlers: list[logging.Handler] = []
    with ExitStack() as stack:
        say: Callable[[str], None] = print
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            log_stream = stack.enter_context(open(log_file, "a", buffering=1, encoding="utf-8", errors="replace"))
            handlers.append(logging.StreamHandler(log_stream))
            if not verbose:
                terminal_out, terminal_err = stack.enter_context(_std_streams_into(log_stream))
                say = _printer(terminal_out)
                handlers.append(_handler(terminal_err, logging.ERROR))
                handlers[-1].addFilter(lambda record: getattr(record, "terminal", True))
        if verbose:
            handlers.append(_handler(sys.stderr, logging.NOTSET))
        elif log_file is None:
            handlers.append(_handler(sys.stderr, logging.ERROR))
        formatter = logging.Formatter(LOG_FORMAT)
        for handler in handlers:
            handler.setFormatter(formatter)
            root.addHandler(handler)
        if verbose or log_file is not None:
            root.setLevel(logging.INFO)
            for name in DEBUG_LOGGERS:
                logging.getLogger(name).setLevel(logging.DEBUG)
        logging.captureWarnings(True)  # warnings become records of py.warnings, at WARNING: below the quiet bar
        try:
            yield say
        finally:
            logging.captureWarnings(False)
            for handler in handlers:
                root.removeHandler(handler)
                handler.flush()
            for name, level in saved_levels.items():
                logging.getLogger(name).setLevel(level)


def _printer(stream: TextIO) -> Callable[[str], None]:
    def say(line: str) -> None:
        print(line, file=stream, flush=True)

    return say


def _handler(stream: TextIO, level: int) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setLevel(level)
    return handler


@contextmanager
def _std_streams_into(target: TextIO) -> Iterator[tuple[TextIO, TextIO]]:
    """Points stdout and stderr at ``target`` (at the file-descriptor level, so that C extensions and child processes
    follow); yields streams to the terminal's stdout and stderr as they were."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        fds = (sys.stdout.fileno(), sys.stderr.fileno())
    except (AttributeError, OSError, io.UnsupportedOperation):
        fds = None
    if fds is None:  # not real files (pytest's capsys, a notebook): only Python's own writes can be moved
        terminal = (sys.stdout, sys.stderr)
        with redirect_stdout(target), redirect_stderr(target):
            yield terminal
        return
    saved = [os.dup(fd) for fd in fds]
    terminal = (os.fdopen(os.dup(saved[0]), "w", buffering=1, encoding="utf-8", errors="replace"),
                os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding="utf-8", errors="replace"))
    try:
        target.flush()
        for fd in fds:
            os.dup2(target.fileno(), fd)
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, fd_saved in zip(fds, saved):
            os.dup2(fd_saved, fd)
            os.close(fd_saved)
        for stream in terminal:
            stream.close()
