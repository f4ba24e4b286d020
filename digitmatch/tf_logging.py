"""TensorFlow's start-up lines: quiet unless ``--log-level DEBUG``.

TensorFlow's C++ runtime writes notices to stderr as it loads (absl's "All log messages before
absl::InitializeLog() is called are written to STDERR", oneDNN's "custom operations are on", ...),
before any logging is set up and whatever ``TF_CPP_MIN_LOG_LEVEL`` says; a newcomer reads them as
errors. :func:`quiet_tensorflow` sets ``TF_CPP_MIN_LOG_LEVEL`` (3 unless debugging; one set by
the user is kept) and sends stderr through a line filter while ``tensorflow`` is first imported,
dropping only those notices; every other line passes as it comes.
"""

from __future__ import annotations

import os
import sys

# What TensorFlow's C++ runtime writes to stderr as it loads, whatever TF_CPP_MIN_LOG_LEVEL says
# (absl writes it before absl::InitializeLog() is called): absl's notice about that, and INFO lines
# in absl's format, such as "I0000 00:00:1796161752.930929 30319 port.cc:153] oneDNN custom
# operations are on ...". Left out unless --log-level DEBUG; warnings and errors pass.
TF_LOAD_NOTICE = (r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR\s*$"
                  r"|I\d{4} [\d:.]+ +\d+ [\w.-]+:\d+\] ")

# The filter stderr goes through while TensorFlow loads: a process of its own, so that what it was
# given still reaches the terminal if TensorFlow aborts the process (an unsupported CPU).
_LINE_FILTER = """
import os, re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
notice, rest = re.compile(sys.argv[1].encode()), b""
while True:
    chunk = os.read(0, 65536)
    *lines, rest = (rest + chunk).split(b"\\n")
    kept = b"".join(line + b"\\n" for line in lines if not notice.match(line))
    if not chunk and rest and not notice.match(rest):
        kept += rest
    while kept:
        kept = kept[os.write(1, kept):]
    if not chunk:
        break
"""


def _filter_stderr(pattern: str):
    """Send file descriptor 2 through :data:`_LINE_FILTER`, which drops the lines matching
    ``pattern`` and passes every other line on as it comes. Returns the function that puts stderr
    back (None when stderr was left as it was)."""
    import subprocess

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):
        return None
    read_end, write_end = os.pipe()
    try:
        line_filter = subprocess.Popen([sys.executable, "-I", "-S", "-c", _LINE_FILTER, pattern],
                                       stdin=read_end, stdout=saved, stderr=saved)
    except OSError:
        for fd in (read_end, write_end, saved):
            os.close(fd)
        return None
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)

    def restore() -> None:
        try:
            sys.stderr.flush()
        except (AttributeError, OSError, ValueError):
            pass
        os.dup2(saved, 2)
        os.close(saved)
        try:
            line_filter.wait(5)  # all it was given is out before anything else is written
        except subprocess.TimeoutExpired:
            pass  # a process started meanwhile holds the pipe: the filter ends with it

    return restore


class _QuietTensorFlowLoad:
    """On ``sys.meta_path``: when ``tensorflow`` is first imported, its import runs with stderr
    through :func:`_filter_stderr` (dropping :data:`TF_LOAD_NOTICE` lines); then it steps aside.
    It finds nothing itself: the module and its loader are the ones the import system finds."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        import importlib.util

        spec = importlib.util.find_spec(name)
        loader = getattr(spec, "loader", None)
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec

        def quiet_exec_module(module) -> None:
            restore = _filter_stderr(TF_LOAD_NOTICE)
            try:
                exec_module(module)
            finally:
                vars(loader).pop("exec_module", None)
                if restore:
                    restore()

        try:
            loader.exec_module = quiet_exec_module
        except AttributeError:
            pass
        return spec


def quiet_tensorflow(debug: bool) -> None:
    """TensorFlow's C++ logs for this process and the ones it starts: all of them with ``debug``
    (--log-level DEBUG); otherwise none of its INFO, WARNING or ERROR lines (an error that fails an
    operation is raised in Python all the same) and none of its load notices. An explicit
    TF_CPP_MIN_LOG_LEVEL is kept. Call it before anything imports TensorFlow."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if debug else "3")
    if not debug and "tensorflow" not in sys.modules and os.name == "posix" and not any(
            isinstance(finder, _QuietTensorFlowLoad) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowLoad())
