"""train.py over two machines, rehearsed on one: two torchrun launchers on loopback, one shared folder.

    bash scripts/test.sh tests/test_multinode.py                  # the default part: one job, and the parts
    bash scripts/test.sh tests/test_multinode.py -m slow          # refusal, FSDP, DeepSpeed, faults, Slurm

A job is two `torchrun --nnodes 2 --nproc_per_node 1 --node_rank <0|1>` launchers with a c10d rendezvous on
127.0.0.1, sharing one --output_dir and one preprocessing cache folder, as nodes share a network file system. Node
0's launcher starts first and holds the rendezvous store, as the first host of an allocation does; c10d numbers the
nodes in the order of their launchers' (host, pid), so on one machine node 0 is the launcher started first.
Workers run through tests/multinode_launch.py (FSDP allowed on CPU, a slow cache build where asked).

Every process a test starts is bounded by a timeout, and every process of a job (the launchers, their workers, a
worker left behind by a killed launcher) is killed when the test ends, however it ends.

The default suite runs one job (about 20 s on 2 cores, with the one-process reference run in the warm Python): DDP
over 2 nodes x 1 process against one process with the same global batch, the cache entry written once and the
log line; and cheap checks of the parts (the cache lock between two threads, a worker whose launcher dies, the
message naming nodes started differently, two processes comparing notes over gloo, the Slurm script's options).
Marked slow, since each runs one to three more jobs of 15 to 40 s: a node started with other flags, data and template
file refused on both nodes, an --output_dir on each node's own disk refused on both, FSDP and DeepSpeed ZeRO-3 over
two nodes, a node lost mid-run (node 1's launcher killed; node 0's, which holds the store), SIGTERM to one node, and
configs/slurm_alpaca_7b.sbatch run with stand-ins for srun and scontrol.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from alpaca_lib.training.checkpoints import MANIFEST_NAME, list_checkpoints, problem_with
from alpaca_lib.training.start import FINISHED_NAME
from conftest import REPO_ROOT, descendants, logged_steps, run_script, write_alpaca_subset

# On one worker, one after another: each job is four processes on two cores.
pytestmark = pytest.mark.xdist_group("torchrun")

TRAIN = str(REPO_ROOT / "train.py")
LAUNCH = str(REPO_ROOT / "tests" / "multinode_launch.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
JOB_TIMEOUT_S = 300  # one job, start to end (about 20 to 40 s here)
HOST = socket.gethostname()
FSDP = ["--fsdp", "full_shard auto_wrap", "--fsdp_transformer_layer_cls_to_wrap", "LlamaDecoderLayer"]
# Two nodes and one process, tokenized losses and weights compared: 4 examples a step, 3 steps.
SHORT = ["--max_steps", "3", "--save_strategy", "no"]
# The fault runs: 16 examples, 4 a step (2 per node), 3 epochs = 12 steps, a checkpoint every 3.
TOTAL_STEPS, SAVE_STEPS = 12, 3
SAVING = ["--num_train_epochs", "3", "--save_strategy", "steps", "--save_steps", str(SAVE_STEPS),
          "--save_total_limit", "2"]


def _flags(model, data, out: Path, cache: Path, per_device: int, extra=()) -> list[str]:
    return [
        "--model_name_or_path", str(model), "--data_path", str(data), "--output_dir", str(out),
        "--per_device_train_batch_size", str(per_device), "--learning_rate", "1e-3", "--logging_steps", "1",
        "--report_to", "none", "--model_max_length", "192", "--preprocessing_cache_dir", str(cache), "--seed", "0",
        "--disable_tqdm", "True",
        # As in test_resume.py: Adam's epsilon at 1e-6 keeps float noise in a near-zero gradient from becoming a step.
        "--adam_epsilon", "1e-6", *extra,
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie that no one reaped does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class Job:
    """Two torchrun launchers (node ranks 0 and 1) of train.py; `flags[n]` is node n's train.py command line.

    Args:
        root: where the logs go (`<name>.node<n>.log`) and the default working folder.
        cwds: each node's working folder (default `root`).
        env: added to the environment of both.
    """

    def __init__(self, root: Path, name: str, flags: list[list[str]], cwds=None, env=None):
        self.root, self.name, self.flags = root, name, flags
        self.cwds = cwds or [root, root]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.logs = [root / f"{name}.node{n}.log" for n in (0, 1)]
        self.procs: list[subprocess.Popen] = []
        self.seen: set[int] = set()  # workers noted while alive: a killed launcher's worker is no longer below it

    def start(self) -> "Job":
        port = _free_port()
        for n in (0, 1):
            cmd = [*TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(n), "--rdzv_backend",
                   "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", self.name, LAUNCH, TRAIN,
                   *self.flags[n]]
            with open(self.logs[n], "w") as log:
                self.procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                                   cwd=self.cwds[n], env=self.env, start_new_session=True))
            if n == 0:
                self._wait_listening(port)
        return self

    def _wait_listening(self, port: int, timeout_s: float = 60) -> None:
        """Until node 0's launcher holds the rendezvous port (so it, not node 1's, runs the store)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.procs[0].poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.05)
        assert self.procs[0].poll() is None, f"node 0's launcher ended at once:\n{self.log(0)[-3000:]}"
        raise AssertionError(f"node 0's launcher did not open port {port} in {timeout_s} s")

    def log(self, node: int) -> str:
        return self.logs[node].read_text(errors="replace")

    def worker(self, node: int, timeout_s: float = 120) -> int:
        """The pid of node `node`'s worker (the train.py process below its launcher), once it runs."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for pid in descendants(self.procs[node].pid):
                with contextlib.suppress(OSError):
                    if TRAIN.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                        self.seen.add(pid)
                        return pid
            time.sleep(0.1)
        raise AssertionError(f"no worker below node {node}'s launcher after {timeout_s} s")

    def wait(self, timeout_s: float = JOB_TIMEOUT_S) -> list[int]:
        """Both launchers' exit codes; a job still running after `timeout_s` is killed and the test fails."""
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"job {self.name} still running after {timeout_s} s:\n" + self.tails()) from None
        return [p.returncode for p in self.procs]

    def tails(self) -> str:
        return "\n".join(f"--- node {n} ---\n{self.log(n)[-4000:]}" for n in (0, 1))

    def kill(self) -> None:
        """SIGKILL to every process of the job still running (those of this job only: their command line names
        its --output_dir)."""
        pids = set(self.seen)
        for proc in self.procs:
            pids |= {proc.pid, *descendants(proc.pid)}
        for pid in pids:
            with contextlib.suppress(OSError):
                if self.flags[0][self.flags[0].index("--output_dir") + 1].encode() in Path(
                        f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)


@pytest.fixture
def jobs():
    """Makes `Job`s; whatever they started is killed when the test ends."""
    started: list[Job] = []

    def make(*args, **kwargs) -> Job:
        started.append(Job(*args, **kwargs))
        return started[-1]

    yield make
    for job in started:
        job.kill()


def _run_job(job: Job, expect=(0, 0)) -> list[str]:
    codes = job.start().wait()
    assert codes == list(expect), job.tails()
    return [job.log(0), job.log(1)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    four, sixteen = (write_alpaca_subset(root / f"{name}.json", slice(n)) for name, n in (("four", 4), ("sixteen", 16)))
    return root, four, sixteen


def _losses(out: Path) -> list[float]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


def _max_weight_difference(out: Path, ref: Path) -> float:
    got, want = load_file(out / "model.safetensors"), load_file(ref / "model.safetensors")
    assert got.keys() == want.keys()
    return max((got[k] - want[k]).abs().max().item() for k in want)


def _assert_like_one_process(out: Path, single: Path, base: Path) -> None:
    """The two-node run's losses and final weights are the one-process run's (same global batch, same data)."""
    losses, reference = _losses(out), _losses(single)
    assert len(reference) == 3 and abs(reference[2] - reference[0]) > 0.05  # the reference moves at every step
    # The same 4 examples per step: only the order of float additions differs (measured: 9.5e-7 in the loss).
    assert losses == pytest.approx(reference, abs=1e-5)
    # Measured: 1.5e-7 (DDP and FSDP) after 3 steps at a learning rate of 1e-3; a missed or doubled step moves
    # weights by 1e-3.
    difference = _max_weight_difference(out, single)
    print(f"{out.name}: largest loss difference {max(abs(a - b) for a, b in zip(losses, reference)):.3g}, largest "
          f"weight difference {difference:.3g} to one process")
    assert difference < 2e-5
    saved, before = load_file(out / "model.safetensors"), load_file(base / "model.safetensors")
    assert all((saved[k][: w.shape[0]] - w).abs().max() > 1e-4 for k, w in before.items())  # training moved them


@pytest.fixture(scope="module")
def single(setup, tiny_llama_dir, warm):
    """One process, 4 examples per step, 3 steps: the run two nodes of 2 examples each must equal (made once)."""
    root, four, _ = setup
    out = root / "single"
    warm.run_script([sys.executable, TRAIN, *_flags(tiny_llama_dir, four, out, root / "cache-single", 4, SHORT)], root)
    return out


def test_two_nodes_train_as_one_process_and_tokenize_once(setup, single, tiny_llama_dir, jobs):
    """DDP over 2 nodes x 1 process: one process's losses and weights, and one cache entry written by one node and
    read by the other. Building the entry is slowed by 2 s (tests/multinode_launch.py), so that the second node
    reaches it while the first still writes it: it must wait and read it, not build its own."""
    root, four, _ = setup
    out, cache = root / "ddp", root / "cache-shared"
    logs = _run_job(jobs(root, "ddp", [_flags(tiny_llama_dir, four, out, cache, 2, SHORT)] * 2,
                         env={"SLOW_CACHE_BUILD_S": "2"}))
    assert "training with DDP (MULTI_CPU) over 2 nodes x 1 process on cpu" in logs[0]
    said = [re.findall(r"four\.json: .*; preprocessing cache: (\w+)", log) for log in logs]
    assert sorted(said[0] + said[1]) == ["hit", "miss"], said
    assert [p.suffix for p in cache.iterdir()] == [".bin"]  # one entry; no lock or temporary file left
    assert not list(out.glob(".alpaca-nodes-*"))  # node 0's token, seen by node 1, is gone
    _assert_like_one_process(out, single, tiny_llama_dir)


@pytest.mark.slow
def test_a_node_started_with_other_flags_is_refused_on_both_nodes(setup, tiny_llama_dir, jobs):
    """Node 1 with another --learning_rate, a data.json (the same relative --data_path) that holds other records
    than node 0's, an eval.json (--eval_data_path) likewise, a tpl.json (the same relative --prompt_template) with
    another word in it and a model folder (the same relative --model_name_or_path) whose config says more: both nodes
    stop before the model loads, with the same
    error line naming each. Slow: a job of about 15 s (the message itself is pinned in the default suite,
    test_nodes_started_differently_...)."""
    import hashlib

    from alpaca_lib.core.prompt import PROMPT_DICT
    from alpaca_lib.training.nodes import model_digest

    root = setup[0]
    folders = [root / "refused-node0", root / "refused-node1"]
    for n, folder in enumerate(folders):
        folder.mkdir()
        shutil.copytree(tiny_llama_dir, folder / "model")
        if n == 1:  # another model: its config says more
            config = folder / "model" / "config.json"
            config.write_text(config.read_text().replace("{", '{"note": "another", ', 1))
        write_alpaca_subset(folder / "data.json", slice(4 * n, 4 * n + 4))
        write_alpaca_subset(folder / "eval.json", slice(20 + n, 22 + n))
        template = {**PROMPT_DICT, "response_split": "### Response:"}
        if n == 1:  # another copy of the template file, one word changed
            template["prompt_no_input"] = template["prompt_no_input"].replace("Write", "Give")
        (folder / "tpl.json").write_text(json.dumps(template))
    out = root / "refused"
    one_step = ["--max_steps", "1", "--prompt_template", "tpl.json", "--eval_data_path", "eval.json"]
    flags = [_flags("model", "data.json", out, root / "cache-refused", 2, one_step),
             _flags("model", "data.json", out, root / "cache-refused", 2, [*one_step, "--learning_rate", "2e-3"])]
    logs = _run_job(jobs(root, "refused", flags, cwds=folders), expect=(1, 1))
    from alpaca_lib.data.sources import open_source

    sha = [open_source(str(f / "data.json")).key()[:12] for f in folders]
    eval_sha = [open_source(str(f / "eval.json")).key()[:12] for f in folders]
    tpl = [hashlib.sha256((f / "tpl.json").read_bytes()).hexdigest()[:12] for f in folders]
    model = [model_digest(str(f / "model"))[:12] for f in folders]
    expected = (
        f"error: the nodes of this job were started with different commands: --learning_rate 0.001 on node 0 "
        f"({HOST}), 0.002 on node 1 ({HOST}); --data_path data.json holds other data: sha256 {sha[0]} on node 0 "
        f"({HOST}), {sha[1]} on node 1 ({HOST}); --prompt_template tpl.json holds another template: sha256 {tpl[0]} "
        f"on node 0 ({HOST}), {tpl[1]} on node 1 ({HOST}); --model_name_or_path model holds another model: sha256 "
        f"{model[0]} on node 0 ({HOST}), {model[1]} on node 1 ({HOST}); --eval_data_path eval.json holds other "
        f"evaluation data: sha256 {eval_sha[0]} on node 0 ({HOST}), {eval_sha[1]} on node 1 ({HOST}). Fix: start "
        "train.py with the same flags and the same data "
        "on every node (only torchrun's own flags, such as --node_rank, differ), then run the command again on every "
        "node."
    )
    for log in logs:
        assert [line for line in log.splitlines() if line.startswith("error:")] == [expected], log[-3000:]
        assert logged_steps(log) == 0
    assert not out.exists()  # refused before anything was written


@pytest.mark.slow
def test_each_nodes_own_copy_of_the_model_is_the_same_model_when_the_run_is_started_again(setup, tiny_llama_dir,
                                                                                            jobs):
    """The same relative --model_name_or_path on each node names the node's own copy of the model, made at another
    time (as a download or a plain `cp -r` on each node makes it): the nodes agree, and the command run again finds
    the run finished on both. Before, node 1 compared its copy's file times with those rank 0 recorded and refused,
    as if the finished run had been trained from another model, and so every node stopped. Slow: a job of about
    20 s, then one of about 10 s that loads nothing."""
    root, four, _ = setup
    folders = [root / "own-copy-node0", root / "own-copy-node1"]
    for n, folder in enumerate(folders):
        shutil.copytree(tiny_llama_dir, folder / "model")
        if n == 1:  # copied later: other file times
            for path in (folder / "model").iterdir():
                stat = path.stat()
                os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 3600 * 10**9))
    out = root / "own-copy"
    flags = [_flags("model", four, out, root / "cache-own-copy", 2, ["--max_steps", "1", "--save_strategy", "no"])] * 2
    _run_job(jobs(root, "own-copy", flags, cwds=folders))
    logs = _run_job(jobs(root, "own-copy-again", flags, cwds=folders))
    said = f"train.py: {out} already holds the final model of this run (step 1); nothing to train."
    assert said in logs[0], logs[0][-3000:]
    assert not [line for log in logs for line in log.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_an_output_dir_on_each_nodes_own_disk_is_refused_on_both_nodes(setup, tiny_llama_dir, jobs):
    """The same command with a relative --output_dir, run from another folder on each node: two folders, as a local
    disk on each node would be. Both nodes would start afresh and agree on everything else (before, they trained,
    each saving only its own part of every checkpoint); both stop before the model loads, with the same error line,
    and leave no folder behind. Slow: a job of about 15 s."""
    root, four, _ = setup
    folders = [root / "local-node0", root / "local-node1"]
    for folder in folders:
        folder.mkdir()
    flags = _flags(tiny_llama_dir, four, Path("out"), root / "cache-local", 2, ["--max_steps", "1"])
    logs = _run_job(jobs(root, "local", [flags] * 2, cwds=folders), expect=(1, 1))
    expected = (
        f"error: --output_dir out is not shared between the nodes: node 1 ({HOST}) does not see the file node 0 "
        f"({HOST}) wrote there. Every node must read and write the same folder: put --output_dir on a file system "
        "that all nodes mount at the same path, then run the command again on every node.")
    for log in logs:
        assert [line for line in log.splitlines() if line.startswith("error:")] == [expected], log[-3000:]
        assert logged_steps(log) == 0
    assert not any((folder / "out").exists() for folder in folders)  # refused before anything was written


def test_two_processes_missing_one_cache_entry_build_it_once(tokenizer, tmp_path, monkeypatch):
    """Two callers of encode_file that miss the same entry together (threads here; nodes sharing a cache folder
    under torchrun): the first builds it, the second waits for its lock and reads it."""
    import threading

    import alpaca_lib.data.cache as cache

    data = write_alpaca_subset(tmp_path / "four.json", slice(4))
    original, builds = cache._encode_to_cache, []

    def slow_build(*args, **kwargs):
        builds.append(threading.current_thread().name)
        time.sleep(1.0)  # the second caller arrives while the entry is being written
        return original(*args, **kwargs)

    monkeypatch.setattr(cache, "_encode_to_cache", slow_build)
    said = {}

    def encode(name):
        said[name] = cache.encode_file(data, tokenizer, 256, tmp_path / "cache").stats["cache"]

    first = threading.Thread(target=encode, args=("first",), name="first")
    second = threading.Thread(target=encode, args=("second",), name="second")
    first.start()
    while not builds:
        time.sleep(0.01)
    second.start()
    first.join(60)
    second.join(60)
    assert builds == ["first"] and said == {"first": "miss", "second": "hit"}
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".bin"]  # the lock file is gone with its holder


def test_the_log_names_nodes_and_processes_per_node():
    from alpaca_lib.training.trainlog import describe_launch

    assert describe_launch("MULTI_CPU", 2, "cpu", 1) == "training with DDP (MULTI_CPU) over 2 nodes x 1 process on cpu"
    assert describe_launch("FSDP", 8, "cuda:0", 4) == "training with FSDP over 2 nodes x 4 processes on cuda:0"
    assert describe_launch("MULTI_CPU", 2, "cpu", 2) == "training with DDP (MULTI_CPU) over 2 processes on cpu"
    assert describe_launch("MULTI_CPU", 2, "cpu") == "training with DDP (MULTI_CPU) over 2 processes on cpu"


def _process(rank, node, lr=0.001, token="secret", sha="a" * 64, template="c" * 64, start=None, sees=True):
    """One process's part of what `NodeWatch.agree` gathers."""
    return {"rank": rank, "node": node, "host": "h", "refusal": None, "sees_output_dir": sees,
            "flags": {"--data_path": "data.json", "--learning_rate": lr, "--output_dir": "/shared/out",
                      "--hub_token": token, "--prompt_template": "tpl.json"},
            "digests": {"--data_path": sha, "--prompt_template": template},
            "start": start or {"checkpoint": None, "finished_step": None, "save_only": False}}


def test_nodes_started_differently_are_named_with_each_difference():
    """What `NodeWatch.agree` raises on every process (the gathering itself: test_nodes_compare_notes_...): flags
    by name and value per node (a token's value hidden), other data or another template file at the same path by
    digest, then an --output_dir where some node does not see rank 0's token, then one that looks different."""
    from alpaca_lib.training.nodes import _disagreement

    fix = ("Fix: start train.py with the same flags and the same data on every node (only torchrun's own flags, "
           "such as --node_rank, differ), then run the command again on every node.")
    same = [_process(0, 0), _process(1, 0), _process(2, 1), _process(3, 1)]
    assert _disagreement(same) is None
    other = [_process(0, 0), _process(1, 0, token="another"), _process(2, 1, lr=0.002, sha="b" * 64),
             _process(3, 1, lr=0.002, template="d" * 64, sees=False)]
    assert _disagreement(other) == (
        "the nodes of this job were started with different commands: --learning_rate 0.001 on node 0 (h), 0.002 on "
        "node 1 (h); --hub_token (hidden) on node 0 (h), (hidden) on node 0 (h); --data_path data.json holds other "
        "data: sha256 aaaaaaaaaaaa on node 0 (h), bbbbbbbbbbbb on node 1 (h); --prompt_template tpl.json holds "
        f"another template: sha256 cccccccccccc on node 0 (h), dddddddddddd on node 1 (h). {fix}")
    same_folder = ("Every node must read and write the same folder: put --output_dir on a file system that all "
                   "nodes mount at the same path, then run the command again on every node.")
    blind = [_process(0, 0), _process(1, 0), _process(2, 1, sees=False), _process(3, 1, sees=False),
             _process(4, 2, sees=False)]
    assert _disagreement(blind) == (
        "--output_dir /shared/out is not shared between the nodes: node 1 (h), node 2 (h) do not see the file node 0 "
        f"(h) wrote there. {same_folder}")
    elsewhere = [_process(0, 0, start={"checkpoint": "/shared/out/checkpoint-6", "finished_step": None,
                                       "save_only": False}), _process(1, 1)]
    assert _disagreement(elsewhere) == (
        "the nodes see different things in --output_dir /shared/out: resume from checkpoint-6 on node 0 (h), no "
        f"checkpoint (start afresh) on node 1 (h). {same_folder}")


def test_the_nodes_compare_a_model_folder_by_its_config_weight_sizes_and_tokenizer_not_by_times(tiny_llama_dir,
                                                                                                   tmp_path):
    from alpaca_lib.training.nodes import model_digest

    copy = Path(shutil.copytree(tiny_llama_dir, tmp_path / "copy"))
    for path in copy.iterdir():  # each node's own copy, made at another time
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 3600 * 10**9))
    assert model_digest(str(copy)) == model_digest(str(tiny_llama_dir)) != ""
    config = json.loads((copy / "tokenizer_config.json").read_text())
    (copy / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "{{ messages }}"}))
    assert model_digest(str(copy)) != model_digest(str(tiny_llama_dir))  # another chat template
    assert model_digest("owner/model") == ""  # a hub id: its name is compared as a flag


# Two processes of one job (gloo on loopback, as node 0 and node 1 of one host) calling `NodeWatch.agree` with the
# flags and digests each case gives this rank; each prints what every call raised.
_AGREEING = """\
import json, sys, types
import torch.distributed as dist
from alpaca_lib.training.nodes import NodeWatch
rank, port, cases = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
said = []
for case in cases:
    try:
        NodeWatch(types.SimpleNamespace(world_size=2, process_index=rank)).agree(*case[rank], start=None)
        said.append(None)
    except Exception as e:
        said.append(f"{type(e).__name__}: {e}")
print(json.dumps(said), flush=True)
dist.destroy_process_group()
"""


def test_nodes_compare_notes_on_template_files_and_the_output_folder(tmp_path):
    """`NodeWatch.agree` over two real processes (gloo): the same shared folder passes and leaves no token behind;
    a template file with other bytes at the same path, and a relative --output_dir that is another folder for
    each node (each its own working folder: a local disk per node), are refused on both with one message. Cheap:
    two interpreters that import torch only, about 3 s."""
    shared, cwds = tmp_path / "shared", [tmp_path / "node0", tmp_path / "node1"]
    for folder in (shared, *cwds):
        (folder / "out").mkdir(parents=True)

    def flags(out):
        return {"--data_path": "data.json", "--prompt_template": "tpl.json", "--output_dir": str(out)}

    def digests(template):
        return {"--data_path": "a" * 64, "--prompt_template": template}

    cases = [
        [[flags(shared / "out"), digests("c" * 64)]] * 2,  # alike
        [[flags(shared / "out"), digests("c" * 64)], [flags(shared / "out"), digests("d" * 64)]],
        [[flags("out"), digests("c" * 64)]] * 2,  # "out": a folder of its own in each working folder
    ]
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", _AGREEING, str(rank), str(port), json.dumps(cases)],
                              cwd=cwds[rank], env={**os.environ, "GROUP_RANK": str(rank), "PYTHONPATH": str(REPO_ROOT)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    try:
        outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    said = [json.loads(output.strip().splitlines()[-1]) for output in outputs]
    fix = ("Fix: start train.py with the same flags and the same data on every node (only torchrun's own flags, "
           "such as --node_rank, differ), then run the command again on every node.")
    expected = [
        None,
        "NodesDisagreeError: the nodes of this job were started with different commands: --prompt_template tpl.json "
        f"holds another template: sha256 cccccccccccc on node 0 ({HOST}), dddddddddddd on node 1 ({HOST}). {fix}",
        f"NodesDisagreeError: --output_dir out is not shared between the nodes: node 1 ({HOST}) does not see the "
        f"file node 0 ({HOST}) wrote there. Every node must read and write the same folder: put --output_dir on a "
        "file system that all nodes mount at the same path, then run the command again on every node.",
    ]
    assert said == [expected, expected], outputs
    assert [sorted(p.name for p in (folder / "out").iterdir()) for folder in (shared, *cwds)] == [[], [], []]


# A torchrun worker stand-in: NodeWatch running, "stopping" (a stop signal caught) when its argument says so.
_WORKER = """\
import sys, time, types
from alpaca_lib.training.nodes import NodeWatch
with NodeWatch(types.SimpleNamespace(world_size=2, process_index=1)) as nodes:
    nodes.stopping = lambda: sys.argv[1] == "stopping"
    print("watching", flush=True)
    time.sleep(120)
"""
# Its launcher stand-in: starts the two workers, prints their pids, waits to be killed.
_LAUNCHER = f"""\
import subprocess, sys, time
env = {{"RANK": "1", "GROUP_RANK": "1", "WORLD_SIZE": "2"}}
workers = [subprocess.Popen([sys.executable, "-c", {_WORKER!r}, kind], env={{**__import__("os").environ, **env}},
                            stdout=open(sys.argv[1] + kind, "w"), stderr=subprocess.STDOUT, start_new_session=True)
           for kind in ("training", "stopping")]
print(*(w.pid for w in workers), flush=True)
time.sleep(120)
"""


def test_a_worker_whose_launcher_died_stops_unless_it_is_saving_a_checkpoint(tmp_path):
    """The launcher of two workers is killed (-9): the training one exits within two beats, saying why; the one
    that caught a stop signal goes on to write its checkpoint. Cheap: two interpreters that import torch only."""
    launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(tmp_path / "worker-")], stdout=subprocess.PIPE,
                                text=True, cwd=tmp_path, start_new_session=True)
    workers = [int(pid) for pid in launcher.stdout.readline().split()]
    try:
        logs = [tmp_path / f"worker-{kind}" for kind in ("training", "stopping")]
        deadline = time.monotonic() + 60
        while not all(log.exists() and "watching" in log.read_text() for log in logs):
            assert time.monotonic() < deadline, [log.read_text() for log in logs if log.exists()]
            time.sleep(0.05)
        launcher.kill()
        launcher.wait(10)
        killed = time.monotonic()
        while _alive(workers[0]) and time.monotonic() - killed < 10:
            time.sleep(0.02)
        assert not _alive(workers[0]) and time.monotonic() - killed < 3
        time.sleep(1.5)  # the other has seen it too by now
        gone = f"train.py: rank 1 on node 1 ({HOST}): this node's torchrun (pid {launcher.pid}) is gone"
        assert logs[0].read_text() == (
            f"watching\n{gone}, so this process stops instead of training on without it; the other nodes stop when "
            "they miss it. Run the same command on every node again to resume from the last complete checkpoint.\n")
        assert _alive(workers[1])
        assert logs[1].read_text() == (
            f"watching\n{gone}; finishing the checkpoint a stop signal asked for, then stopping.\n")
    finally:
        for pid in [launcher.pid, *workers]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


# A worker whose heartbeat is inside the job's store when its training ends: a store that takes a second to answer.
_BEATING_AT_EXIT = """\
import datetime, os, sys, time, types
import torch.distributed as dist
from alpaca_lib.training import nodes
store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(store.port))
beats = []

class SlowStore:
    def __init__(self, real):
        self.real = real

    def add(self, key, amount):
        beats.append(key)
        try:  # a second inside the store's C++ code, as a store under load takes
            self.real.wait(["never-set"], datetime.timedelta(seconds=1))
        except Exception:
            pass
        return self.real.add(key, amount)

make = nodes._job_store
nodes._job_store = lambda timeout_s: SlowStore(make(timeout_s))
with nodes.NodeWatch(types.SimpleNamespace(world_size=2, process_index=0)):
    while not beats:
        time.sleep(0.01)
print("trained", flush=True)
"""


def test_a_run_that_ends_while_its_heartbeat_is_in_the_store_exits_cleanly(tmp_path):
    """The watch's thread is joined when training ends: a daemon thread left inside the store's C++ code while
    Python shuts down is unwound by force there, which aborts the process (SIGABRT, "terminate called without an
    active exception") after a run that succeeded. Cheap: one interpreter that imports torch only."""
    proc = subprocess.run([sys.executable, "-c", _BEATING_AT_EXIT], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120, env={**os.environ, "TORCH_CPP_LOG_LEVEL": "ERROR"})  # not the wait's timeout
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "trained\n", "")


@pytest.mark.slow
def test_two_nodes_under_fsdp_train_as_one_process(setup, single, tiny_llama_dir, jobs):
    """FSDP2 (full_shard auto_wrap) over 2 nodes x 1 process: each node holds half of the weights; losses and the
    gathered final model equal one process's. Slow: a third job of about 25 s."""
    root, four, _ = setup
    out = root / "fsdp"
    flags = _flags(tiny_llama_dir, four, out, root / "cache-fsdp", 2, [*SHORT, *FSDP])
    logs = _run_job(jobs(root, "fsdp", [flags] * 2))
    assert "training with FSDP over 2 nodes x 1 process on cpu" in logs[0]
    _assert_like_one_process(out, single, tiny_llama_dir)


@pytest.mark.slow
def test_two_nodes_under_deepspeed_zero3_train_as_one_process(setup, single, tiny_llama_dir, jobs):
    """DeepSpeed ZeRO-3 with CPU offload (configs/default_offload_opt_param.json) over 2 nodes x 1 process. Its
    scheduler runs the first steps at a learning rate of 0 (test_distributed.py says why), so over 4 steps its losses
    are the one process's first loss three times, then its second; its final weights are those of DeepSpeed in one
    process with the same global batch (its fourth step differs from a plain one's: another learning rate, Adam's
    moments after four gradients). Slow: two jobs of about 25 s, once DeepSpeed's CPU Adam is compiled (as
    test_distributed.py's setup does)."""
    root, four, _ = setup
    out, one_process = root / "deepspeed", root / "deepspeed-single"
    deepspeed = ["--max_steps", "4", "--save_strategy", "no", "--deepspeed",
                 str(REPO_ROOT / "configs" / "default_offload_opt_param.json")]
    logs = _run_job(jobs(root, "deepspeed", [_flags(tiny_llama_dir, four, out, root / "cache-ds", 2, deepspeed)] * 2))
    assert "training with DeepSpeed over 2 nodes x 1 process on cpu" in logs[0]
    reference = _losses(single)
    # Measured: equal to 1e-9 (the same first steps, Adam's state after three equal gradients that of one).
    assert _losses(out) == pytest.approx([reference[0]] * 3 + [reference[1]], abs=1e-5)
    run_script([*TORCHRUN, "--standalone", "--nproc_per_node", "1", LAUNCH, TRAIN,
                *_flags(tiny_llama_dir, four, one_process, root / "cache-ds", 4, deepspeed)], cwd=root)
    losses = [_losses(out), _losses(one_process)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    # Measured: 1.4e-6 in the loss, 1.2e-7 in the weights after 4 steps; a missed or doubled step moves weights by
    # 1e-3, as above.
    difference = _max_weight_difference(out, one_process)
    print(f"deepspeed: largest loss difference {max(abs(a - b) for a, b in zip(*losses)):.3g}, largest weight "
          f"difference {difference:.3g} to one process")
    assert difference < 2e-5
    saved, before = load_file(out / "model.safetensors"), load_file(tiny_llama_dir / "model.safetensors")
    assert all((saved[k][: w.shape[0]] - w).abs().max() > 1e-4 for k, w in before.items())


# ---- faults: a lost node, SIGTERM to one node ----


@pytest.fixture(scope="module")
def uninterrupted(setup, tiny_llama_dir):
    """An uninterrupted two-node DDP run of TOTAL_STEPS steps, checkpointing every SAVE_STEPS (made once)."""
    root, _, sixteen = setup
    out = root / "uninterrupted"
    job = Job(root, "uninterrupted", [_flags(tiny_llama_dir, sixteen, out, root / "cache-faults", 2, SAVING)] * 2)
    try:
        _run_job(job)
    finally:
        job.kill()
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == TOTAL_STEPS
    return out


def _wait_for_step(job: Job, out: Path, at_step: int, timeout_s: float = JOB_TIMEOUT_S) -> None:
    """Until node 0 has logged `at_step` steps and --output_dir holds a complete checkpoint."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if logged_steps(job.log(0)) >= at_step and any(problem_with(p) is None for _, p in list_checkpoints(out)):
            return
        assert all(p.poll() is None for p in job.procs), f"the job ended before step {at_step}:\n{job.tails()}"
        time.sleep(0.05)
    raise AssertionError(f"no step {at_step} after {timeout_s} s:\n{job.tails()}")


def _resume_and_compare(job_flags, root: Path, name: str, out: Path, reference: Path, jobs, context: str) -> int:
    """Runs both nodes' commands again: returns the step they resumed from, after checking that they trained only the
    steps after it and ended with the uninterrupted run's weights."""
    logs = _run_job(jobs(root, name, job_flags))
    found = re.findall(r"resuming from (\S+)/checkpoint-(\d+) \(step (\d+)\)", logs[0])
    assert found and found[0][1] == found[0][2], context + "\n" + logs[0][-3000:]
    step = int(found[0][1])
    assert logged_steps(logs[0]) == TOTAL_STEPS - step, context
    # The resumed run repeats the interrupted one's operations: the same losses and weights (atol as test_resume.py).
    assert _losses(out) == pytest.approx(_losses(reference), rel=1e-6), context
    difference = _max_weight_difference(out, reference)
    print(f"{context}: resumed from step {step}; largest weight difference to the uninterrupted run {difference:.3g}")
    assert difference <= 1e-5, context
    return step


def _saving_job(setup, tiny_llama_dir, jobs, name: str, fault: str):
    """A started two-node job over the 16 examples that saves every SAVE_STEPS steps, and a random step after its
    first save at which to inflict `fault`: (out, flags, at_step, context for messages, job)."""
    root, _, sixteen = setup
    out = root / name
    flags = [_flags(tiny_llama_dir, sixteen, out, root / "cache-faults", 2, SAVING)] * 2
    at_step = random.Random(time.time_ns()).randint(SAVE_STEPS + 1, TOTAL_STEPS - 4)
    return out, flags, at_step, f"{fault} after step {at_step}", jobs(root, name, flags).start()


@pytest.mark.slow
def test_a_killed_launcher_stops_the_other_node_at_once_and_the_rerun_resumes(setup, uninterrupted, tiny_llama_dir,
                                                                              jobs):
    """kill -9 of node 1's torchrun mid-run: its worker must not train on (it sees its parent gone and exits), node 0
    stops within seconds naming node 1, and running both commands again resumes from the last complete checkpoint
    and ends with the uninterrupted run's weights. Before, the orphaned worker trained to the end with node 0, and
    node 0's torchrun then waited 300 s for node 1's at its exit. Slow: two jobs of about 30 s."""
    root = setup[0]
    out, flags, at_step, context, job = _saving_job(setup, tiny_llama_dir, jobs, "lost-node",
                                                    "node 1's launcher killed")
    orphan = job.worker(1)
    _wait_for_step(job, out, at_step)
    os.kill(job.procs[1].pid, signal.SIGKILL)
    killed = time.monotonic()
    with contextlib.suppress(subprocess.TimeoutExpired):
        job.procs[0].wait(timeout=60)
    stopped_s = time.monotonic() - killed
    deadline = time.monotonic() + 10
    while _alive(orphan) and time.monotonic() < deadline:
        time.sleep(0.05)
    print(f"{context}: node 0 stopped {stopped_s:.1f} s after the kill")
    assert job.procs[0].returncode == 1 and stopped_s < 30, f"{context}: node 0 ran on\n{job.tails()}"
    assert not _alive(orphan), f"{context}: node 1's worker trains on without its launcher"
    assert (f"train.py: rank 1 on node 1 ({HOST}): this node's torchrun (pid {job.procs[1].pid}) is gone, so this "
            "process stops instead of training on without it") in job.log(1)
    errors = [line for line in job.log(0).splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.fullmatch(
        rf"error: lost node 1 \({re.escape(HOST)}, rank 1\): its processes stopped \(no heartbeat for 3 s\), and a "
        rf"collective operation of rank 0 on node 0 \({re.escape(HOST)}\) failed at step \d+ \(.*\)\. Training "
        rf"stopped on every node; the last complete checkpoint in {re.escape(str(out))} is checkpoint-\d+\. Run the "
        r"same command on every node again to resume\.", errors[0]), errors
    last = max(s for s, p in list_checkpoints(out) if problem_with(p) is None)
    assert f"is checkpoint-{last}." in errors[0]
    assert _resume_and_compare(flags, root, "lost-node-rerun", out, uninterrupted, jobs, context) == last


@pytest.mark.slow
def test_a_killed_launcher_of_node_0_is_named_as_the_lost_store(setup, tiny_llama_dir, jobs):
    """kill -9 of node 0's torchrun, which holds the job's store: node 1 cannot read the heartbeats any more and says
    that the store's node is gone, with the last complete checkpoint (or node 1's torchrun, noticing first, stops
    its worker with SIGTERM; the tiny job may also be over by then). Slow: a job of about 25 s (no rerun: the
    resume is the same as after losing node 1, test_a_killed_launcher_stops_the_other_node_...)."""
    root, _, sixteen = setup
    out = root / "lost-store"
    job = jobs(root, "lost-store", [_flags(tiny_llama_dir, sixteen, out, root / "cache-faults", 2, SAVING)] * 2)
    job.start()
    _wait_for_step(job, out, SAVE_STEPS + 1)
    os.kill(job.procs[0].pid, signal.SIGKILL)
    killed = time.monotonic()
    worker = job.worker(1)
    while _alive(worker) and time.monotonic() - killed < 60:
        time.sleep(0.05)
    stopped_s = time.monotonic() - killed
    print(f"node 0's launcher killed: node 1's worker stopped {stopped_s:.1f} s later")
    assert not _alive(worker), f"node 1 runs on 60 s after node 0 was lost:\n{job.tails()}"
    errors = [line for line in job.log(1).splitlines() if line.startswith("error: ")]
    last = max(s for s, p in list_checkpoints(out) if problem_with(p) is None)
    if not errors:
        # Node 1's own torchrun saw the rendezvous go first and stopped its worker as a scheduler would (SIGTERM: a
        # checkpoint, or the end if the 12 steps were done by then). A race with the worker's own notice; either way
        # node 1 stopped at once, which is what is asserted above. When the worker noticed first, its line is exact:
        return
    assert len(errors) == 1 and re.fullmatch(
        r"error: lost the job's store at \S+:\d+: the node whose torchrun holds it \(the rendezvous host\) is gone, "
        rf"and a collective operation of rank 1 on node 1 \({re.escape(HOST)}\) failed at step \d+ \(.*\)\. "
        rf"Training stopped on every node; the last complete checkpoint in {re.escape(str(out))} is "
        rf"checkpoint-{last}\. Run the same command on every node again to resume\.", errors[0]), job.tails()


@pytest.mark.slow
def test_sigterm_to_one_node_saves_one_checkpoint_for_both(setup, uninterrupted, tiny_llama_dir, jobs):
    """SIGTERM to node 1's torchrun only: both nodes stop at the same step after writing their parts of one
    checkpoint, and the rerun resumes from it. Slow: two jobs of about 30 s."""
    root = setup[0]
    out, flags, at_step, context, job = _saving_job(setup, tiny_llama_dir, jobs, "sigterm", "SIGTERM to node 1")
    _wait_for_step(job, out, at_step)
    os.kill(job.procs[1].pid, signal.SIGTERM)
    codes = job.wait()
    assert codes == [1, 1], context + "\n" + job.tails()  # torchrun reports a worker's exit 143 as a failure
    stopped = re.findall(r"train\.py: stopped by SIGTERM: saved (\S+)/checkpoint-(\d+) at step (\d+)\.", job.log(0))
    assert stopped and stopped[0][1] == stopped[0][2], context + "\n" + job.tails()
    step = int(stopped[0][1])
    assert at_step <= step <= at_step + 3, context
    folder = out / f"checkpoint-{step}"
    assert problem_with(folder) is None and list_checkpoints(out)[-1][1] == folder, context
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in folder.iterdir()}, context  # both nodes' parts
    assert _resume_and_compare(flags, root, "sigterm-rerun", out, uninterrupted, jobs, context) == step


# ---- the Slurm script, with stand-ins for srun, scontrol and torchrun ----

SBATCH = REPO_ROOT / "configs" / "slurm_alpaca_7b.sbatch"

# srun: starts its command once per node (SLURM_NODEID 0..SLURM_NNODES-1), passes SIGTERM on to them (as srun does
# to its tasks), and exits with the worst status.
FAKE_SRUN = """\
import os, signal, subprocess, sys
args = sys.argv[1:]
while args and args[0].startswith("-"):
    args.pop(0)
procs = [subprocess.Popen(args, env={**os.environ, "SLURM_NODEID": str(n), "SLURM_PROCID": str(n)})
         for n in range(int(os.environ["SLURM_NNODES"]))]
signal.signal(signal.SIGTERM, lambda *_: [p.send_signal(signal.SIGTERM) for p in procs])
sys.exit(max(abs(p.wait()) for p in procs))
"""
# scontrol: `show hostnames` lists the allocation's nodes (loopback twice); `requeue ID` is noted in SCONTROL_LOG.
# A closed pipe (`| head -n 1`) ends it quietly, as it does a program written in C.
FAKE_SCONTROL = """\
import os, signal, sys
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
if sys.argv[1:3] == ["show", "hostnames"]:
    print("127.0.0.1\\n127.0.0.1")
else:
    with open(os.environ["SCONTROL_LOG"], "a") as f:
        f.write(" ".join(sys.argv[1:]) + "\\n")
"""
# torchrun: the real one, with train.py run through tests/multinode_launch.py (FSDP on CPU).
FAKE_TORCHRUN = f"""\
import os, sys
args = [part for a in sys.argv[1:] for part in ([{LAUNCH!r}, a] if a == "train.py" else [a])]
os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", *args])
"""


def _sbatch_options(text: str) -> dict:
    """The #SBATCH options: name -> value (True for a bare flag such as --requeue)."""
    found = [re.match(r"#SBATCH --([\w-]+)(?:=(\S+))?(\s|$)", line) for line in text.splitlines()
             if line.startswith("#SBATCH")]
    assert all(found)
    return {m[1]: m[2] or True for m in found}


def test_the_slurm_script_asks_for_two_nodes_of_four_gpus_with_preemption():
    """What Slurm reads: 2 nodes x 4 GPUs, one torchrun per node, USR1 before the time limit, requeueable."""
    text = SBATCH.read_text()
    options = _sbatch_options(text)
    assert {k: options.get(k) for k in ("nodes", "ntasks-per-node", "gpus-per-node", "signal", "requeue")} == {
        "nodes": "2", "ntasks-per-node": "1", "gpus-per-node": "4", "signal": "B:USR1@600", "requeue": True}
    assert re.search(r"^GPUS_PER_NODE=4 ", text, flags=re.M)
    assert f'"$OUTPUT_DIR/{FINISHED_NAME}"' in text  # the mark train.py writes when the run is finished
    assert "--config configs/alpaca_7b.yaml --gradient_accumulation_steps" in text and "ACCUMULATION=4" in text


@pytest.mark.slow
def test_the_slurm_script_trains_requeues_at_the_time_limit_and_resumes(setup, tiny_llama_dir, tmp_path):
    """configs/slurm_alpaca_7b.sbatch as Slurm runs it, on loopback: GPUS_PER_NODE 4 -> 1, the tiny model, srun and
    scontrol stand-ins. USR1 (what --signal sends before the time limit) makes it stop at a checkpoint and requeue
    the job; the requeued job resumes and finishes. Slow: two FSDP jobs of about 30 s."""
    root, _, sixteen = setup
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("torchrun", FAKE_TORCHRUN)):
        (bin_dir / name).write_text(f"#!{sys.executable}\n{body}")
        (bin_dir / name).chmod(0o755)
    script = tmp_path / "job.sbatch"
    text = SBATCH.read_text()
    assert text.count("GPUS_PER_NODE=4 ") == 1
    script.write_text(text.replace("GPUS_PER_NODE=4 ", "GPUS_PER_NODE=1 "))
    out, scontrol_log = tmp_path / "out", tmp_path / "scontrol.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1",
           "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_ID": "4242",
           "SLURM_SUBMIT_DIR": str(REPO_ROOT), "MODEL": str(tiny_llama_dir), "OUTPUT_DIR": str(out),
           "RDZV_PORT": str(_free_port()), "SCONTROL_LOG": str(scontrol_log)}
    # The recipe's flags, made to fit the tiny model on CPU (the command line wins over configs/alpaca_7b.yaml).
    overrides = ["--data_path", str(sixteen), "--bf16", "False", "--tf32", "False", "--per_device_train_batch_size",
                 "2", "--gradient_accumulation_steps", "1", "--max_steps", "8", "--save_steps", "2",
                 "--model_max_length", "192", "--preprocessing_cache_dir", str(tmp_path / "cache"),
                 "--report_to", "none", "--disable_tqdm", "True", "--learning_rate", "1e-3"]

    def submit(log: Path) -> subprocess.Popen:
        return subprocess.Popen(["bash", str(script), *overrides], stdin=subprocess.DEVNULL, stdout=log.open("w"),
                                stderr=subprocess.STDOUT, cwd=tmp_path, env=env, start_new_session=True)

    def finish(proc: subprocess.Popen, log: Path) -> int:
        try:
            return proc.wait(timeout=JOB_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the job still runs after {JOB_TIMEOUT_S} s:\n{log.read_text()[-4000:]}") from None

    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    procs = []
    try:
        procs.append(submit(first_log))
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while not (logged_steps(first_log.read_text()) >= 3 and (out / "checkpoint-2" / MANIFEST_NAME).exists()):
            assert procs[0].poll() is None and time.monotonic() < deadline, first_log.read_text()[-4000:]
            time.sleep(0.05)
        os.kill(procs[0].pid, signal.SIGUSR1)  # --signal=B:USR1@600: to the batch shell only
        assert finish(procs[0], first_log) == 0, first_log.read_text()[-4000:]
        first = first_log.read_text()
        assert "training with FSDP over 2 nodes x 1 process on cpu" in first
        stopped = re.findall(r"train\.py: stopped by SIGTERM: saved \S+/checkpoint-(\d+) at step \1\.", first)
        assert stopped and scontrol_log.read_text() == "requeue 4242\n", first[-4000:]
        assert not (out / FINISHED_NAME).exists()
        procs.append(submit(second_log))  # the requeued job: the same script, the same command
        assert finish(procs[1], second_log) == 0, second_log.read_text()[-4000:]
        second = second_log.read_text()
        assert f"resuming from {out}/checkpoint-{stopped[0]} (step {stopped[0]})" in second
        assert json.loads((out / FINISHED_NAME).read_text())["step"] == 8
        # Each step logged once over both jobs: the first trained up to the checkpoint, the requeued one from it.
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        assert [h["step"] for h in history if "loss" in h] == list(range(1, 9))
        assert scontrol_log.read_text() == "requeue 4242\n"  # a finished job is not requeued
    finally:
        for proc in procs:
            for pid in [proc.pid, *descendants(proc.pid)]:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
