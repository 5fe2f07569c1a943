"""One run over several machines: every node started alike, and a lost node stopping the others at once.

    with NodeWatch(training_args) as nodes:          # run.py: heartbeats; a worker whose torchrun died stops
        nodes.agree(flags_of(m, d, t), digests, start)    # the same flags, files, folder and start everywhere
        with nodes.lost_as_error(kept, step):        # a node gone mid-run: one error line naming it
            trainer.train(...)

Under `torchrun --nnodes N` each node runs the same command, and each node's torchrun (its launcher) starts
that node's workers. What one machine never shows is handled here:

- **A launcher gone.** torchrun starts its workers in sessions of their own, so a launcher killed alone
  (`kill -9`, a crashed agent) leaves them training on without it, and the other nodes' launchers then wait
  minutes for it at their exit. Each worker checks its parent process every second and exits, saying why, once
  it is gone; the other nodes then stop as for a lost node.
- **A node lost mid-run.** The other workers' next collective fails with the transport's error ("Connection
  closed by peer"). Every worker adds to a heartbeat counter in the job's store (the TCPStore at MASTER_ADDR:
  MASTER_PORT that torchrun runs) every second; a worker whose collective failed waits a few beats, names the
  nodes whose counters stopped (`NodeLostError`), and says which checkpoint the same command resumes from.
- **Nodes started differently.** A node with another flag, other data, another template file or another model
  would train another run in lockstep (or hang at the first collective whose shape differs). Before training every
  process compares its flags, the digests of the files they name (--data_path, --eval_data_path and
  --prompt_template by their bytes; a --model_name_or_path folder by its config, weight file sizes and tokenizer
  files, not the weights' times, which each node's own copy has its own of: `model_digest`) and where it would
  start with rank 0's (`NodeWatch.agree`); a difference, or a refusal on any node, stops every node with the same
  error. Whether a resume is this run's is decided by rank 0's record (`from_rank_0`).
- **An --output_dir that is not shared.** Nodes that each write their own local folder would all start afresh,
  agree, and train, each saving only its own part of every checkpoint. Rank 0 leaves a token file with a random
  name in --output_dir while the processes compare notes; a process that does not find it there stops every node.

A node that vanishes without closing its connections (a network partition, a power cut) is noticed only by the
collective's own timeout (--ddp_timeout, 30 minutes by default).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import os
import secrets
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import torch.distributed as dist

from alpaca_lib.core.errors import UsageError
from alpaca_lib.core.modeling import model_folder_digest
from alpaca_lib.training.identity import plain_value

HEARTBEAT_S = 1.0  # how often each worker checks its launcher and beats
SILENT_BEATS = 3  # a process whose counter did not move over this many beats is gone
STORE_TIMEOUT_S = 5 * HEARTBEAT_S  # how long a heartbeat waits for the job's store
# Flags that differ between the processes of one job by design (torchrun sets them per process).
PER_PROCESS_FLAGS = ("local_rank",)
# What a flag's file holds when its digest differs between nodes (`NodeWatch.agree`'s `digests`).
DIGESTED_FILES = {"--data_path": "other data", "--prompt_template": "another template",
                  "--model_name_or_path": "another model", "--eval_data_path": "other evaluation data"}
TOKEN_PREFIX = ".alpaca-nodes-"  # rank 0's token in --output_dir (a random name), while the processes compare notes


class NodeLostError(UsageError):
    """A node of a multi-node run stopped mid-run; the message names it and says how to resume."""


class NodesDisagreeError(UsageError):
    """The nodes of one job were started with different flags, data or template files, or see different output
    folders."""


# A model folder's tokenizer files, compared by their bytes between nodes (a chat template lives in them).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
                   "tokenizer.model", "special_tokens_map.json")


def model_digest(model: str) -> str:
    """What the nodes compare of --model_name_or_path: for a local folder, its config.json and weight files' names and
    sizes (`model_folder_digest` without the times, which each node's own copy has its own of) and its tokenizer
    files' bytes; "" for a hub id (its name is compared as a flag)."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return ""
    digest = hashlib.sha256(model_folder_digest(folder, times=False).encode())
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            digest.update(f"{name}:{hashlib.sha256((folder / name).read_bytes()).hexdigest()}\n".encode())
    return digest.hexdigest()


def flags_of(*arg_objects) -> dict:
    """Every flag's value (`--name`: value, JSON-like) of train.py's parsed argument dataclasses, save the ones
    torchrun sets per process (`PER_PROCESS_FLAGS`)."""
    return {f"--{f.name}": plain_value(getattr(obj, f.name)) for obj in arg_objects for f in dataclasses.fields(obj)
            if f.init and f.name not in PER_PROCESS_FLAGS}


def _this_process(rank: int) -> dict:
    """This process's rank, node (torchrun's GROUP_RANK) and host."""
    node = int(os.environ.get("GROUP_RANK", rank // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))))
    return {"rank": rank, "node": node, "host": socket.gethostname()}


def _where(process: dict) -> str:
    return f"node {process['node']} ({process['host']})"


def _job_store(timeout_s: float):
    """A new client of the job's store (MASTER_ADDR:MASTER_PORT), keys under this run's heartbeat prefix; None
    when the launcher named none. Raises what TCPStore raises when the store cannot be reached in `timeout_s`."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not addr or not port:
        return None
    store = dist.TCPStore(addr, int(port), is_master=False, timeout=datetime.timedelta(seconds=timeout_s),
                          wait_for_workers=False)
    attempt = f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return dist.PrefixStore(f"alpaca/heartbeat/{attempt}/", store)


class NodeWatch:
    """The multi-process side of one train.py run; in a single process every method does nothing.

    Args:
        training_args: train.py's TrainingArguments (`world_size`, `process_index`).
    """

    def __init__(self, training_args):
        self.world_size = training_args.world_size
        self.me = _this_process(training_args.process_index)
        self.processes: List[dict] = [self.me]  # every process's rank, node and host, once `agree` gathered them
        self._parent = os.getppid()
        # True once a stop signal was caught (run.py sets it): a worker on its way to a checkpoint then finishes it
        # even if its launcher is gone (a second SIGTERM makes torchrun exit before its workers).
        self.stopping: Callable[[], bool] = lambda: False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "NodeWatch":
        if self.world_size > 1:
            self._thread = threading.Thread(target=self._watch, name="alpaca-node-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            # Joined, not left to die with the interpreter: a daemon thread still inside the store's C++ code when
            # Python finalizes is unwound by force there, which aborts the process ("terminate called without an
            # active exception") after a run that succeeded. One beat and one store timeout bound the wait.
            self._thread.join(timeout=HEARTBEAT_S + STORE_TIMEOUT_S)
            self._thread = None

    # ---- the watch: the launcher alive, and a heartbeat ----

    def _watch(self) -> None:
        store, orphaned = None, False
        while not self._stop.wait(HEARTBEAT_S):
            if not orphaned and os.getppid() != self._parent:
                orphaned = True
                self._orphaned()
            try:
                store = store or _job_store(timeout_s=STORE_TIMEOUT_S)
                if store is not None:
                    store.add(f"beat/{self.me['rank']}", 1)
            except Exception:  # the store is unreachable now: beat again next time
                store = None

    def _orphaned(self) -> None:
        gone = (f"train.py: rank {self.me['rank']} on {_where(self.me)}: this node's torchrun (pid {self._parent}) "
                "is gone")
        if self.stopping():
            print(f"{gone}; finishing the checkpoint a stop signal asked for, then stopping.", file=sys.stderr,
                  flush=True)
            return
        print(f"{gone}, so this process stops instead of training on without it; the other nodes stop when they "
              "miss it. Run the same command on every node again to resume from the last complete checkpoint.",
              file=sys.stderr, flush=True)
        os._exit(1)  # at once: the main thread may be blocked in a collective

    # ---- before training: every node alike ----

    def from_rank_0(self, value):
        """`value` as rank 0 has it (`value` itself in a single process); call it on every process."""
        if self.world_size <= 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, flags: dict, digests: Dict[str, str], start, refusal: Optional[UsageError] = None) -> None:
        """Checks that every process was started alike and sees the same --output_dir; call it on every process.

        Args:
            flags: `flags_of(model_args, data_args, training_args)`.
            digests: flag -> the SHA-256 of the file it names, as this process read it ("--data_path": the
                training data's, "--prompt_template": the template file's, "" for alpaca and chat).
            start: where this process would start (`StartPoint`); None with `refusal`.
            refusal: the error this process's own checks raised (a refused resume), if any.
        Raises:
            `refusal` where there is one; on the other processes the first node's refusal as a UsageError naming
            it. NodesDisagreeError: other flags or files (each listed), an --output_dir where some process does not
            see rank 0's token, or another start seen on some node.
        """
        if self.world_size <= 1:
            if refusal is not None:
                raise refusal
            return
        out = flags.get("--output_dir")
        token = [_leave_token(out) if self.me["rank"] == 0 else None]
        dist.broadcast_object_list(token, src=0)  # after rank 0 wrote it: the others look for it now
        mine = {**self.me, "flags": flags, "digests": digests,
                "start": dataclasses.asdict(start) if start is not None else None,
                "refusal": str(refusal) if refusal is not None else None,
                "sees_output_dir": token[0] is None or _sees_token(out, token[0])}
        gathered: List[Optional[dict]] = [None] * self.world_size
        try:
            dist.all_gather_object(gathered, mine)  # returns once every process has looked
        finally:
            if self.me["rank"] == 0 and token[0] is not None:
                with contextlib.suppress(OSError):
                    os.unlink(Path(out, TOKEN_PREFIX + token[0]))
        self.processes = [{k: p[k] for k in ("rank", "node", "host")} for p in gathered]
        if refusal is not None:
            raise refusal
        refused = next((p for p in gathered if p["refusal"] is not None), None)
        if refused is not None:
            raise UsageError(f"{_where(refused)} refused to start, so every node stops: {refused['refusal']}")
        problem = _disagreement(gathered)
        if problem is not None:
            raise NodesDisagreeError(problem)

    # ---- during training: a lost node ----

    @contextlib.contextmanager
    def lost_as_error(self, kept: Callable[[], str], step: Callable[[], int]) -> Iterator[None]:
        """Turns a collective that failed because a node is gone into `NodeLostError` naming it.

        Args:
            kept: says what --output_dir holds to resume from (called only then).
            step: the optimizer step reached.
        """
        try:
            yield
        except RuntimeError as e:  # what a collective raises when a peer's connection closes
            if self.world_size <= 1:
                raise
            silent = self._silent_ranks()
            if silent == []:  # every process is alive: not a lost node
                raise
            raise NodeLostError(self._lost_message(silent, e, step(), kept())) from e

    def _silent_ranks(self) -> Optional[List[int]]:
        """The ranks whose heartbeat stopped; None when the job's store itself is unreachable."""
        try:
            store = _job_store(timeout_s=STORE_TIMEOUT_S)
            if store is None:
                return []
            keys = [f"beat/{r}" for r in range(self.world_size)]
            before = [store.add(k, 0) for k in keys]
            time.sleep((SILENT_BEATS + 0.5) * HEARTBEAT_S)
            after = [store.add(k, 0) for k in keys]
        except Exception:
            return None
        return [r for r in range(self.world_size) if after[r] == before[r]]

    def _lost_message(self, silent: Optional[List[int]], error: BaseException, step: int, kept: str) -> str:
        # The transport's own words, to its first full stop: "[pair.cc:553] Connection closed by peer [10.0.0.2]:4455".
        failure = (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0][:300]
        if silent is None:
            lost = (f"lost the job's store at {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}: the "
                    "node whose torchrun holds it (the rendezvous host) is gone")
        else:
            by_node: dict = {}
            for process in self.processes:
                if process["rank"] in silent:
                    by_node.setdefault((process["node"], process["host"]), []).append(str(process["rank"]))
            lost = "lost " + ", ".join(f"node {node} ({host}, rank{'s' if len(r) > 1 else ''} {', '.join(r)})"
                                       for (node, host), r in by_node.items())
            if not by_node:  # before `agree` gathered who runs where: only the ranks are known
                lost = f"lost rank{'s' if len(silent) > 1 else ''} {', '.join(map(str, silent))}"
            lost += f": its processes stopped (no heartbeat for {SILENT_BEATS * HEARTBEAT_S:g} s)"
        return (f"{lost}, and a collective operation of rank {self.me['rank']} on {_where(self.me)} failed at step "
                f"{step} ({failure}). Training stopped on every node; {kept}. Run the same command on every node "
                "again to resume.")


def _leave_token(folder: Optional[str]) -> Optional[str]:
    """Writes a token file with a new random name into `folder` (rank 0, which holds the folder's lock: tokens an
    earlier run left behind are removed); returns its name's random part, None if it cannot be written."""
    if not folder:
        return None
    nonce = secrets.token_hex(8)
    try:
        for stale in Path(folder).glob(TOKEN_PREFIX + "*"):
            stale.unlink()
        Path(folder, TOKEN_PREFIX + nonce).write_text(nonce)
    except OSError:  # not this check's to report: saving into the folder fails with its own error
        return None
    return nonce


def _sees_token(folder: Optional[str], nonce: str) -> bool:
    """Whether `folder`, as this process sees it, holds the token that rank 0 wrote (`_leave_token`)."""
    try:
        return Path(folder, TOKEN_PREFIX + nonce).read_text() == nonce
    except (OSError, TypeError):
        return False


def _shown(flag: str, value) -> str:
    return "(hidden)" if "token" in flag else repr(value) if value == "" else str(value)


def _disagreement(gathered: List[dict]) -> Optional[str]:
    """What differs between rank 0 and the other processes, in one message; None if nothing does."""
    base = gathered[0]
    differs = []
    for flag, value in base["flags"].items():
        others = {}
        for p in gathered[1:]:
            if p["flags"].get(flag) != value:
                others.setdefault(_where(p), p["flags"].get(flag))
        if others:
            differs.append(f"{flag} {_shown(flag, value)} on {_where(base)}, "
                           + ", ".join(f"{_shown(flag, v)} on {where}" for where, v in others.items()))
    # The same path holding other bytes: copies of the data (or of the template file) that differ between nodes.
    for flag, sha in base["digests"].items():
        path = base["flags"].get(flag)
        others = {_where(p): p["digests"].get(flag) for p in gathered[1:]
                  if p["digests"].get(flag) != sha and p["flags"].get(flag) == path}
        if others:
            differs.append(f"{flag} {path} holds {DIGESTED_FILES.get(flag, 'another file')}: sha256 {sha[:12]} on "
                           f"{_where(base)}, " + ", ".join(f"{str(s)[:12]} on {where}" for where, s in others.items()))
    if differs:
        return ("the nodes of this job were started with different commands: " + "; ".join(differs) + ". Fix: start "
                "train.py with the same flags and the same data on every node (only torchrun's own flags, such as "
                "--node_rank, differ), then run the command again on every node.")
    out = base["flags"].get("--output_dir")
    same_folder = ("Every node must read and write the same folder: put --output_dir on a file system that all nodes "
                   "mount at the same path, then run the command again on every node.")
    blind = list(dict.fromkeys(_where(p) for p in gathered[1:] if not p["sees_output_dir"]))
    if blind:
        return (f"--output_dir {out} is not shared between the nodes: {', '.join(blind)} "
                f"{'does' if len(blind) == 1 else 'do'} not see the file {_where(base)} wrote there. {same_folder}")
    others = {_where(p): p["start"] for p in gathered[1:] if p["start"] != base["start"]}
    if others:
        return (f"the nodes see different things in --output_dir {out}: {_start(base['start'])} on {_where(base)}, "
                + ", ".join(f"{_start(s)} on {where}" for where, s in others.items()) + f". {same_folder}")
    return None


def _start(start: dict) -> str:
    if start["finished_step"] is not None:
        return f"a finished run (final model at step {start['finished_step']})"
    if start["checkpoint"] is not None:
        return f"resume from {os.path.basename(start['checkpoint'])}"
    return "no checkpoint (start afresh)"
