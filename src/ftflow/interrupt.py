"""Stop cleanly before a time limit or a preemption: a complete checkpoint, then exit.

A periodic save every ``save_steps`` loses up to that many steps at every time-limit
kill. So the ``train`` and ``sanity`` jobs ask SLURM for a warning signal ahead of their
limit (``sbatch --signal=USR1@<lead>``, see :func:`lead_seconds`), and preemption sends
SIGTERM. On either, every training process finishes its current optimizer step, the
backend writes a complete checkpoint at that step, and the job exits with
:data:`EXIT_CODE`; the retry (or the requeued job) resumes from that checkpoint.

Who receives the signal, and why ``USR1@`` rather than ``B:USR1@``: the SLURM executor
plugin's batch script is a plain ``sh`` that runs Snakemake, which runs the job in an
``srun`` step. ``B:`` would signal only that shell (whose default action on USR1 is to
die, ending the job); without ``B:`` SLURM signals every process of the job's steps:
Snakemake inside the step, the rule's shell, ``torchrun`` and the workers. Snakemake
(:func:`ignore_in_snakemake`, called by the Snakefile inside a SLURM job) and the
launchers ignore USR1, which their children inherit; the trainer alone installs a
handler (:func:`install`).

The lead covers one step, one save and the exit: SLURM may send the signal up to a
minute early (its timer checks every 30 s), never late, so a margin of 60 s is added to
twice the longest save this run has measured (:func:`record_save_seconds`, written next
to its checkpoints by both backends, sanity stages included).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

#: The signals that ask for a checkpoint and a clean stop.
SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

#: The exit status of a job stopped by a signal after its checkpoint (EX_TEMPFAIL: the
#: retry resumes).
EXIT_CODE = 75

#: Seconds a save has taken at most, per checkpoints folder (JSON: ``{"seconds": s}``).
SAVE_TIME = "save_seconds.json"

#: SLURM sends the warning up to 60 s before the requested lead.
MARGIN_SECONDS = 60

#: The save time assumed before any save was measured.
UNMEASURED_SAVE_SECONDS = 120

_received: int | None = None


class Interrupted(RuntimeError):
    """Training stopped on a signal after writing a complete checkpoint."""


def _note(signum: int) -> None:
    global _received
    _received = signum
    name = signal.Signals(signum).name
    # os.write, not print: a signal handler may run in the middle of a print.
    os.write(2, f"[ftflow] {name}: checkpoint after this step, then stop\n".encode())


def _handler(signum, frame) -> None:
    if _received is not None:  # a second signal: stop asking, die as asked
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    _note(signum)


def install() -> None:
    """Handle USR1 and TERM in this training process (see the module docstring)."""
    for signum in SIGNALS:
        signal.signal(signum, _handler)


def note_before_installed() -> None:
    """Keep a library's own handlers of USR1 and TERM (Automodel's preemption checkpoint),
    and still log and record the signal the way :func:`install` does."""
    for signum in SIGNALS:
        theirs = signal.getsignal(signum)
        if callable(theirs) and theirs is not _handler:

            def both(signum, frame, theirs=theirs):
                _note(signum)
                theirs(signum, frame)

            signal.signal(signum, both)


def ignore_in_snakemake() -> None:
    """Inside a SLURM job, the warning signal is for the trainer only (module docstring)."""
    if os.environ.get("SLURM_JOB_ID"):
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def requested() -> str | None:
    """The name of the signal received, if one was."""
    return signal.Signals(_received).name if _received is not None else None


def any_process(flag: bool, device=None) -> bool:
    """``flag`` or-ed over every training process (they must stop at the same step:
    they meet in collectives)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    import torch

    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


#: Why the previous attempt stopped, for the retry's log (Snakemake empties a job's log
#: before each attempt).
STOPPED = "stopped.txt"


def record_stop(folder: Path, message: str) -> None:
    (Path(folder) / STOPPED).write_text(message + "\n")


def previous_stop(folder: Path, remove: bool) -> str | None:
    """What :func:`record_stop` wrote in ``folder``, if anything (then forgotten)."""
    path = Path(folder) / STOPPED
    try:
        message = path.read_text().strip()
    except OSError:
        return None
    if remove:
        path.unlink(missing_ok=True)
    return message


# ----------------------------------------------------------------- save time and lead


class SaveTimer:
    """Times one save; :meth:`stop` records it in ``folder`` (main process only)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.started: float | None = None

    def start(self) -> None:
        self.started = time.monotonic()

    def stop(self) -> None:
        if self.started is not None:
            record_save_seconds(self.folder, time.monotonic() - self.started)
            self.started = None


def record_save_seconds(folder: Path, seconds: float) -> None:
    """Keep the longest save seen in ``folder`` (a run's checkpoints folder)."""
    path = Path(folder) / SAVE_TIME
    longest = max(seconds, measured_save_seconds([folder]) or 0.0)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"seconds": round(longest, 3)}) + "\n")
    os.replace(tmp, path)


def measured_save_seconds(folders: Iterable[Path]) -> float | None:
    """The longest save recorded in any of ``folders``; None when none was."""
    found = []
    for folder in folders:
        try:
            found.append(float(json.loads((Path(folder) / SAVE_TIME).read_text())["seconds"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return max(found) if found else None


def lead_seconds(setting: int | str, runtime_minutes: int, save_seconds: float | None) -> int:
    """Seconds before the time limit at which SLURM warns the job; 0: no warning.

    ``setting`` is the resources' ``signal_lead``: ``auto`` (the margin plus twice the
    measured save time, or :data:`UNMEASURED_SAVE_SECONDS` before a save was measured),
    or seconds. Never more than half the time limit: a job must get to train.
    """
    if setting == "auto":
        save = UNMEASURED_SAVE_SECONDS if save_seconds is None else save_seconds
        lead = MARGIN_SECONDS + math.ceil(2 * save)
    else:
        lead = int(setting)
    return min(lead, runtime_minutes * 60 // 2) if lead > 0 else 0


def slurm_option(lead: int) -> str:
    """The sbatch option (the executor plugin's ``slurm_extra``); empty for no warning."""
    return f"--signal=USR1@{lead}" if lead > 0 else ""
