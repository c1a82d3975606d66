"""``lmforge train --nproc N``: running the same command in N local processes under torchrun.

The ranks run with ``python -P`` and this package first on ``PYTHONPATH`` (a folder holding a
``lmforge/`` directory cannot shadow it); torchrun runs in a session of its own, with Ctrl-C and
SIGTERM forwarded; a rank's failure is one line and that rank's exit code, not torchrun's traceback.
What the ranks do once started (process groups, collectives) is ``lmforge.distributed``'s.
May import ``errors`` only (and torch's launcher, when run).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from typing import Any


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """torchrun for ``nproc`` local processes running ``python -P -u -m lmforge ARGS``, with a
    rendezvous on the loopback address (a free port).

    Every interpreter runs with ``-P`` (no working directory on ``sys.path``): started from a
    folder that holds a ``lmforge/`` directory (a clone, an old copy), the ranks would otherwise
    import that instead of the package this launcher runs (``launch`` puts the launcher's own
    package first on ``PYTHONPATH``). torchrun itself is run through ``run_torchrun``, which turns
    a rank's failure into one line and that rank's exit code instead of a traceback."""
    return [
        sys.executable,
        "-P",
        "-c",
        "import sys; from lmforge.launch import run_torchrun; sys.exit(run_torchrun())",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "127.0.0.1:0",  # port 0: pick a free one
        "--rdzv-id",
        f"lmforge-{os.getpid()}",
        "--max-restarts",
        "0",
        # the worker's command line is given whole (torchrun would run `python -u -m`, without -P);
        # "--": torchrun's argparse would otherwise read lmforge options as its own abbreviated
        # ones (--run is "ambiguous: --run-path, --run_path"); it drops the "--" itself
        "--no-python",
        "--",
        sys.executable,
        "-P",
        "-u",
        "-m",
        "lmforge",
        *args,
    ]


def _package_path(environ: dict[str, str]) -> str:
    """``PYTHONPATH`` with the folder this ``lmforge`` package was imported from first, unless it
    is a site-packages folder (there ``-P`` finds it anyway): the ranks import what the launcher
    runs, a checkout on ``PYTHONPATH`` or an editable install included, never the cwd's copy."""
    import site
    from pathlib import Path

    import lmforge

    root = str(Path(lmforge.__file__).resolve().parent.parent)
    site_dirs = {str(Path(p).resolve()) for p in [*site.getsitepackages(), site.getusersitepackages()]}
    rest = environ.get("PYTHONPATH", "")
    if root in site_dirs:
        return rest
    return os.pathsep.join([root, *([rest] if rest else [])])


def _failure_exit(failures: dict[int, Any]) -> tuple[int, str]:
    """The exit code and the one line for the ranks that failed (torchrun's ``ProcessFailure``s):
    a rank stopped by a signal it handled exits 130/143 and so does the launcher; a rank killed
    by a signal is 128 + its number; otherwise the first failing rank's own code."""
    # the first to fail; at the same second (the agent stamps them when it finds them), a rank
    # killed by a signal before one that exited, and both before one the agent stopped (SIGTERM)
    rank, first = min(
        failures.items(),
        key=lambda item: (
            item[1].timestamp,
            item[1].exitcode == -signal.SIGTERM,
            item[1].exitcode >= 0,
            item[0],
        ),
    )
    code = first.exitcode if first.exitcode >= 0 else 128 - first.exitcode
    how = (
        f"was killed by signal {signal.Signals(-first.exitcode).name}"
        if first.exitcode < 0 and -first.exitcode in signal.Signals._value2member_map_
        else f"exited with code {code}"
    )
    others = sorted(r for r in failures if r != rank)
    also = (
        f" (then rank{'s' if len(others) > 1 else ''} {', '.join(map(str, others))} stopped)"
        if others
        else ""
    )
    return code, f"lmforge: rank {rank} {how}{also}"


def run_torchrun(argv: list[str] | None = None) -> int:
    """torchrun's ``main`` without its traceback: the agent's failure report (``ChildFailedError``,
    a page of it) becomes one line on stderr, and the exit code is the failing rank's (143 for a
    SIGTERM it saved after, 137 for a SIGKILL) instead of 1. Used by ``torchrun_command``."""
    import logging

    # the agent's own log lines ("Sending process N closing signal SIGTERM", "failed (exitcode:
    # -9) local_rank: 1 ...") repeat what the one line says; each of its loggers reads LOGLEVEL
    os.environ.setdefault("LOGLEVEL", "CRITICAL")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    level = os.environ["LOGLEVEL"]
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(level)
    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as exc:
        code, line = _failure_exit(exc.failures)
        if code not in (130, 143):  # a stop the ranks reported themselves
            print(line, file=sys.stderr)
        return code
    return 0


def launch(nproc: int, args: list[str]) -> int:
    """Run ``lmforge ARGS`` in ``nproc`` processes under torchrun and return the exit code.

    torchrun runs in a session of its own, so a Ctrl-C on the terminal reaches it once,
    through us (a second copy from the terminal would make the workers abort instead of
    saving). SIGINT and SIGTERM are forwarded (SIGHUP as SIGTERM); after one of them the exit code is
    128 + its number (130 / 143), as for a single process. A signal to one rank alone gives
    that rank's code (143 after a SIGTERM, 137 after a SIGKILL)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default too, without its warning
    env["PYTHONPATH"] = _package_path(env)
    proc = subprocess.Popen(torchrun_command(nproc, args), env=env, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        # a hang-up (closed terminal) stops the run like SIGTERM: saved, not lost
        signum = signal.SIGTERM if signum == signal.SIGHUP else signum
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, forward) for s in forwarded}
    try:
        rc = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if received:
        return 128 + received[0]
    return rc
