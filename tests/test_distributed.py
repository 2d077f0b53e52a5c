"""Data-parallel training: shards, buckets, launch, and K ranks against one process.

The multi-rank tests start ``mpiexec -n K`` on tests/dist_worker.py (the CPU path: MPI
Allreduce) and compare with the same script run as one process at the same global batch;
they are skipped where mpi4py or mpiexec is missing (``.ci/install`` installs both).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from gpuconv import distributed as dist
from gpuconv.checkpoint import load_checkpoint
from gpuconv.data import BatchIterator
from gpuconv.zoo import get_model

HERE = Path(__file__).resolve().parent
WORKER = HERE / "dist_worker.py"
# float32 summation order: the per-rank gradient sums and the reduction add the same terms in
# another order.  Measured: at most 1.2e-7 absolute on parameters of size ~1 after 6 steps.
RTOL, ATOL = 1e-5, 1e-6


def _mpi_ready() -> str | None:
    if importlib.util.find_spec("mpi4py") is None:
        return "mpi4py is not installed (pip install -e '.[mpi]')"
    try:
        dist.mpiexec_path()
    except dist.DistributedError:
        return "mpiexec is not installed"
    return None


needs_mpi = pytest.mark.skipif(_mpi_ready() is not None, reason=str(_mpi_ready()))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in dist.LAUNCH_ENV}
    # K ranks share 2 cores; the numbers do not depend on the thread counts
    env.update(GPUCONV_CPU_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return env


def _run(ranks: int, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The worker alone (ranks=0), or on K ranks through :func:`gpuconv.distributed.launch`
    (in a child Python, so its output and exit status are the launcher's)."""
    if ranks:
        code = ("import sys; from gpuconv import distributed as d; "
                f"sys.exit(d.launch({ranks}, sys.argv[1:], program=[sys.executable, {str(WORKER)!r}]))")
        cmd = [sys.executable, "-c", code, *args]
    else:
        cmd = [sys.executable, str(WORKER), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=HERE.parent)


def _train(tmp_path: Path, ranks: int, net: str, *extra: str) -> dict[str, np.ndarray]:
    out = tmp_path / f"{net}-{ranks}-{zlib.crc32(' '.join(extra).encode()):08x}.npz"
    r = _run(ranks, ["--net", net, "--out", str(out), *extra])
    assert r.returncode == 0, f"ranks={ranks}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


# ------------------------------------------------------------------------------------ shards
def test_shards_cover_each_global_batch_in_order() -> None:
    perm = np.random.default_rng(0).permutation(50)
    B = 12
    for K in (1, 2, 3, 4):
        shards = [dist.shard_indices(perm, r, K, B) for r in range(K)]
        b = B // K
        for j in range(50 // B):
            rows = np.concatenate([s[j * b:(j + 1) * b] for s in shards])
            np.testing.assert_array_equal(rows, perm[j * B:(j + 1) * B])
        assert all(len(s) == (50 // B) * b for s in shards)      # the partial batch (2 rows) is dropped
    np.testing.assert_array_equal(dist.shard_indices(perm, 0, 1, B), perm[:48])


def test_global_batch_must_split_evenly() -> None:
    with pytest.raises(dist.DistributedError, match=r"global batch 10 does not split evenly over 3 ranks.*"
                                                    r"multiple of 3 \(e\.g\. --batch-size 9 or 12\)"):
        dist.local_batch(10, 3)
    with pytest.raises(dist.DistributedError, match="over 4 ranks"):
        dist.shard_indices(np.arange(20), 0, 4, 2)
    with pytest.raises(ValueError, match="rank 3 outside 0..2"):
        dist.shard_indices(np.arange(20), 3, 3, 6)
    assert dist.local_batch(12, 3) == 4


def test_shard_iterator_reads_the_single_process_batches() -> None:
    """K ranks' batches, stacked rank by rank, are the one-process iterator's batches (same seed)."""
    x = np.arange(40, dtype=np.float32).reshape(40, 1, 1, 1)
    y = np.arange(40, dtype=np.int32)
    ref = BatchIterator(x, y, 8, seed=3, drop_last=True).for_epoch(2, start_batch=1)
    for K in (2, 4):
        its = [dist.ShardIterator(x, y, 8, rank=r, size=K, seed=3).for_epoch(2, start_batch=1) for r in range(K)]
        assert all(len(it) == len(ref) == 5 for it in its)
        got = [np.concatenate([yb for _, yb in batch]) for batch in zip(*its)]
        want = [yb for _, yb in ref]
        assert len(got) == len(want) == 4
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


# ------------------------------------------------------------------------------------ buckets
def _check_partition(net, plan: dist.BucketPlan) -> None:
    covered = np.zeros(net.num_params, dtype=np.int32)
    for b in plan.buckets:
        for off, n in b.segments:
            covered[off:off + n] += 1
    assert (covered == 1).all(), "every gradient in exactly one bucket"
    readies = [b.ready_after for b in plan.buckets]
    assert readies == sorted(readies, reverse=True), "buckets in backward order"
    for b in plan.buckets:
        assert b.nbytes == 4 * sum(n for _, n in b.segments)
        assert list(b.layers) == sorted(b.layers, reverse=True)
        assert len(b.segments) <= 2      # the layers' weights, and their biases: two ranges at most


def test_buckets_follow_backward_and_partition_the_buffer() -> None:
    net = get_model("vgg16")
    cap = 25 << 20
    plan = dist.plan_buckets(net, cap)
    _check_partition(net, plan)
    assert plan.extra_bytes == 0 and plan.grad_bytes == 138_357_544 * 4
    # fc6 (102.8M weights, 411 MB) is a bucket of its own; every bucket but the last reaches the cap
    assert any(b.nbytes > 400e6 and len(b.layers) == 1 for b in plan.buckets)
    assert all(b.nbytes >= cap for b in plan.buckets[:-1])
    assert plan.buckets[0].layers[0] == max(s.layer for s in net.slots)      # the classifier goes first
    small = dist.plan_buckets(net, cap, first_bucket_bytes=1 << 20)
    _check_partition(net, small)
    assert small.buckets[0].nbytes < plan.buckets[0].nbytes or len(small.buckets[0].layers) == 1
    one = dist.plan_buckets(net, 1 << 40)
    assert len(one.buckets) == 1 and one.buckets[0].segments == ((0, net.num_params),)
    assert "reduced in place" in plan.describe()


class _Recorder:
    """A transport that records which ranges of the gradient buffer each launch reduces."""

    def __init__(self, net) -> None:
        self.net, self.calls, self.joins = net, [], 0

    def __call__(self, views) -> None:
        base = self.net.grad_buffer.__array_interface__["data"][0]
        self.calls.append(tuple(((v.__array_interface__["data"][0] - base) // 4, v.size) for v in views))

    def join(self) -> None:
        self.joins += 1


def test_reducer_launches_each_bucket_when_backward_finishes_it() -> None:
    from dist_worker import branching

    net = branching()
    net.bind("cpu", seed=0)
    plan = dist.plan_buckets(net, 600)   # a few hundred bytes: several buckets in this small net
    assert len(plan.buckets) >= 3
    _check_partition(net, plan)
    rec = _Recorder(net)
    red = dist.GradReducer(dist.World(), net, 600, transport=rec, join=rec.join)
    red.start()
    launched_at: dict[int, int] = {}
    for i in range(len(net.layers) - 1, -1, -1):      # backward's order
        before = len(rec.calls)
        red.layer_done(i)
        for c in rec.calls[before:]:
            launched_at[[b.segments for b in plan.buckets].index(c)] = i
    red.finish()
    assert len(rec.calls) == len(plan.buckets) and rec.joins == 1
    assert launched_at == {b.index: b.ready_after for b in plan.buckets}
    # without the backward hook (or overlap off), finish launches every bucket, in backward order
    rec2 = _Recorder(net)
    red2 = dist.GradReducer(dist.World(), net, 600, overlap=False, transport=rec2, join=rec2.join)
    red2.layer_done(len(net.layers) - 1)
    assert rec2.calls == []
    red2.finish()
    assert rec2.calls == [b.segments for b in plan.buckets]


def test_nccl_overhead_estimate() -> None:
    assert dist.nccl_overhead_bytes(channels=1, peers=1, buffsize=1 << 20) == (2 << 20) + (1 << 16)


# ------------------------------------------------------------------------------------ one process
def test_single_process_world_needs_no_mpi(monkeypatch) -> None:
    for k in dist.LAUNCH_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(dist, "_world", None)
    w = dist.get_world()
    assert (w.rank, w.size, w.local_rank, w.is_root, w.distributed) == (0, 1, 0, True, False)
    g = np.arange(6, dtype=np.float32)
    assert w.allreduce_mean_(g) is g and g[5] == 5
    assert w.metrics(6.0, 3, 4) == (1.5, 0.75, 4)
    assert w.in_sync(g)
    assert w.root_stream(sys.stderr) is sys.stderr and w.describe() == "1 rank"
    with pytest.raises(ZeroDivisionError):      # one process: the guard lets the error through
        with w.guard():
            1 / 0  # noqa: B018


# ------------------------------------------------------------------------------------ launch
def test_launch_command_per_mpi_flavor(monkeypatch) -> None:
    for var in ("GPUCONV_CPU_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    argv = ["train", "--ranks", "3", "--model", "small", "--ranks=3", "--epochs", "1"]
    assert dist.strip_ranks(argv) == ["train", "--model", "small", "--epochs", "1"]
    cmd, env = dist.launch_command(3, argv, mpiexec="/x/mpiexec", flavor="mpich")
    assert cmd == ["/x/mpiexec", "-n", "3", sys.executable, "-m", "gpuconv.cli", "train", "--model", "small",
                   "--epochs", "1"]
    assert "OMPI_ALLOW_RUN_AS_ROOT" not in env
    assert env["GPUCONV_CPU_THREADS"] == env["OMP_NUM_THREADS"] == env["OPENBLAS_NUM_THREADS"] \
        == str(max(1, (os.cpu_count() or 1) // 3))
    cmd, env = dist.launch_command(2, ["train"], mpiexec="/x/mpirun", flavor="openmpi")
    assert cmd[:4] == ["/x/mpirun", "-n", "2", "--oversubscribe"]
    assert env["OMPI_ALLOW_RUN_AS_ROOT"] == env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] == "1"
    with pytest.raises(dist.DistributedError, match="--ranks must be >= 1"):
        dist.launch_command(0, [], mpiexec="/x/mpiexec", flavor="mpich")


@needs_mpi
def test_launch_runs_the_cli_on_k_ranks(capfd, monkeypatch) -> None:
    for k in dist.LAUNCH_ENV:
        monkeypatch.delenv(k, raising=False)
    assert dist.launch(2, ["--version", "--ranks", "2"]) == 0
    out = capfd.readouterr().out
    assert out.count("gpuconv") == 2, out


# ------------------------------------------------------------------------------------ K ranks
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    cache: dict[str, dict[str, np.ndarray]] = {}

    def get(net: str) -> dict[str, np.ndarray]:
        if net not in cache:
            cache[net] = _train(tmp, 0, net)
        return cache[net]

    return get


@needs_mpi
@pytest.mark.parametrize("net", ["chain", "branch"])
@pytest.mark.parametrize("ranks", [2, 3])
def test_k_ranks_match_one_process(tmp_path, reference, net, ranks) -> None:
    """6 momentum steps over 2 epochs at global batch 12: K ranks of 12/K rows each give the
    one-process parameters and per-step losses, and every replica is identical."""
    ref = reference(net)
    got = _train(tmp_path, ranks, net)
    assert int(got["size"]) == ranks and bool(got["in_sync"])
    assert sorted(got["local_ranks"]) == list(range(ranks))   # one machine: local rank = rank
    np.testing.assert_allclose(got["params"], ref["params"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got["accs"], ref["accs"], atol=1e-12)
    # the tolerance is far below what a different global batch (or a wrong shard) changes
    if ranks == 2:
        other = _train(tmp_path, 0, net, "--batch", "6", "--examples", "36")
        assert np.abs(other["params"] - ref["params"]).max() > 1000 * ATOL


@needs_mpi
@pytest.mark.parametrize("net,ranks", [("chain", 3), ("branch", 2)])
def test_planned_step_on_k_ranks_matches_one_process(tmp_path, reference, net, ranks) -> None:
    """The same through the planned arena (at the local batch) and TrainStep."""
    ref = reference(net)
    got = _train(tmp_path, ranks, net, "--planned")
    assert bool(got["in_sync"])
    np.testing.assert_allclose(got["params"], ref["params"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=RTOL, atol=ATOL)


@needs_mpi
def test_k_ranks_match_one_process_with_adam(tmp_path, reference) -> None:
    ref = _train(tmp_path, 0, "branch", "--optimizer", "adam", "--lr", "0.01")
    got = _train(tmp_path, 3, "branch", "--optimizer", "adam", "--lr", "0.01")
    assert bool(got["in_sync"])
    np.testing.assert_allclose(got["params"], ref["params"], rtol=RTOL, atol=ATOL)


@needs_mpi
def test_batch_norm_statistics_are_per_rank(tmp_path) -> None:
    """With BN the ranks normalize by their own batch's statistics (PyTorch's default), so K ranks are
    not one process at the global batch; the replicas still stay identical."""
    model = ["--model", "INPUT[12x12x2] -> CONV3-6 -> BN -> RELU -> POOL2 -> FC-5"]
    one = _train(tmp_path, 0, "chain", *model)
    two = _train(tmp_path, 2, "chain", *model)
    assert bool(two["in_sync"])
    assert np.abs(two["params"] - one["params"]).max() > 100 * ATOL


# ------------------------------------------------------------------------------------ faults
@needs_mpi
def test_a_rank_that_raises_aborts_the_others(tmp_path) -> None:
    t0 = time.monotonic()
    r = _run(3, ["--epochs", "50", "--fail-rank", "1", "--fail-step", "4"], timeout=90)
    took = time.monotonic() - t0
    text = r.stdout + r.stderr
    assert r.returncode != 0, text
    assert "rank 1 of 3 failed (RuntimeError: injected failure at step 4); aborting all 3 ranks" in text, text
    assert took < 60


@needs_mpi
def test_a_killed_rank_ends_the_run_and_the_checkpoint_survives(tmp_path) -> None:
    ckpt = tmp_path / "ck.npz"
    t0 = time.monotonic()
    r = _run(2, ["--epochs", "50", "--fail-rank", "1", "--fail-step", "5", "--fail-mode", "kill",
                 "--checkpoint", str(ckpt)], timeout=90)
    took = time.monotonic() - t0
    text = r.stdout + r.stderr
    assert r.returncode != 0, text
    assert took < 60
    # named by rank: from mpiexec's pid (MPICH) through the ranks' pid files, or by Open MPI itself
    assert "gpuconv: rank 1 of 2 (pid" in text or "process rank 1" in text, text
    arrays, meta = load_checkpoint(ckpt)          # rank 0's last atomic checkpoint is intact
    assert 1 <= int(meta["step"]) <= 5 and meta["ranks"] == 2
    assert arrays["params"].shape[0] > 0 and np.isfinite(arrays["params"]).all()


# ------------------------------------------------------------------------------------ NCCL id
@needs_mpi
def test_nccl_unique_id_reaches_every_rank(tmp_path) -> None:
    """The GPU path's handshake without a GPU: rank 0's NCCL id, broadcast over MPI, is every rank's."""
    from gpuconv import nccl

    if not nccl.available():
        pytest.skip(nccl.why_unavailable())
    script = tmp_path / "uid.py"
    script.write_text(
        "from gpuconv.distributed import get_world\nfrom gpuconv import nccl\nimport hashlib\n"
        "w = get_world()\nuid = w.bcast(nccl.unique_id() if w.is_root else None)\n"
        "assert isinstance(uid, bytes) and len(uid) == 128\n"
        f"open({str(tmp_path)!r} + f'/uid{{w.rank}}', 'w').write(hashlib.sha256(uid).hexdigest())\n")
    mpiexec = dist.mpiexec_path()
    r = subprocess.run([mpiexec, "-n", "2", sys.executable, str(script)], capture_output=True, text=True,
                       timeout=60, env=_env())
    assert r.returncode == 0, r.stdout + r.stderr
    digests = [(tmp_path / f"uid{rank}").read_text() for rank in (0, 1)]
    assert len(digests[0]) == 64 and digests[0] == digests[1]


# ------------------------------------------------------------------------------------ the GPU path
class _FakeNccl:
    """Stands in for gpuconv.nccl.Communicator: records what would be reduced, and how."""

    def __init__(self) -> None:
        self.reduces: list[tuple[list, bool]] = []
        self.joins = 0

    def allreduce_mean_(self, views, *, overlap=True) -> None:
        self.reduces.append((list(views), overlap))

    def join(self) -> None:
        self.joins += 1


def test_device_buffers_go_through_nccl() -> None:
    """Device arrays (the emulator's count as such) are reduced by the NCCL communicator, host
    arrays by MPI; a device buffer on several ranks without a communicator is refused."""
    from types import SimpleNamespace

    from gpuconv import emu

    with emu.emulated() as xp:
        buf = xp.asarray(np.arange(8, dtype=np.float32))
        w = dist.World()
        assert w.allreduce_mean_(buf) is buf           # one rank, no communicator: nothing to do
        w.size = 2
        with pytest.raises(dist.DistributedError, match="init_nccl"):
            w.allreduce_mean_(buf)
        w.nccl = _FakeNccl()
        w.allreduce_mean_(buf)
        assert w.nccl.reduces == [([buf], False)]      # ordered on the compute stream
        # the reducer on a GPU net: buckets through NCCL on its stream, one join before the update
        from dist_worker import branching

        real = branching()
        net = SimpleNamespace(layers=real.layers, slots=real.slots, dtype=real.dtype, num_params=real.num_params,
                              grad_buffer=xp.zeros(real.num_params, dtype=np.float32),
                              device=SimpleNamespace(is_gpu=True))
        w.nccl = _FakeNccl()
        red = dist.GradReducer(w, net, 600)
        for i in range(len(net.layers) - 1, -1, -1):
            red.layer_done(i)
        red.finish()
        assert len(w.nccl.reduces) == len(red.plan.buckets) and all(ov for _, ov in w.nccl.reduces)
        assert w.nccl.joins == 1


@pytest.mark.gpu  # the real device only: NCCL on one GPU
def test_gpu_one_rank_nccl_step_matches_the_plain_step() -> None:
    """One rank's NCCL all-reduce (buckets on NCCL's stream, overlapped, then joined) is an identity:
    4 steps give the plain step's parameters bit for bit."""
    from dist_worker import CHAIN, data

    from gpuconv import device, nccl
    from gpuconv.optim import Optimizer

    if not nccl.available():
        pytest.skip(nccl.why_unavailable())
    x, y = data(48, (2, 12, 12), 5)
    out = []
    for reduce in (False, True):
        net = get_model(CHAIN)
        net.bind("cuda", seed=0)
        opt = Optimizer("momentum", 0.05).bind(net)
        world = dist.World()
        red = None
        if reduce:
            world.init_nccl()
            red = dist.GradReducer(world, net, 600)
            assert len(red.plan.buckets) >= 3
        for s in range(4):
            xb, yb = device.get_device("cuda").asarray(x[s * 12:(s + 1) * 12]), \
                device.get_device("cuda").asarray(y[s * 12:(s + 1) * 12])
            scores = net.forward(xb, train=True)
            _, dscores = net.loss_and_grad(scores, yb)
            net.backward(dscores)
            if red is not None:
                red.start()
                for i in range(len(net.layers) - 1, -1, -1):
                    red.layer_done(i)
                red.finish()
                world.allreduce_mean_(net.grad_buffer)      # and the one-call path
            opt.step()
        out.append(device.to_host(net.param_buffer))
    np.testing.assert_array_equal(out[0], out[1])


# ------------------------------------------------------------------------------------ through the CLI
# `gpuconv train --ranks K` against `gpuconv train` at the same global batch, on the synthetic set
# (48 training images: 4 global batches of 12 per epoch).  A chain and a branching net (a residual
# add and a concat), no BN: BN statistics are per rank by design (see test_batch_norm_statistics_are_per_rank).
CLI_NETS = {
    "chain": "INPUT[32x32x3] -> CONV3-4 -> RELU -> POOL2 -> CONV3-6 -> RELU -> FC-10",
    "branch": "INPUT[32x32x3] -> CONV3-4 -> RELU -> { CONV3-4 -> RELU -> CONV3-4 | }+ -> "
              "{ CONV1-4 | CONV3-4 -> RELU } -> POOL2 -> FC-10",
}
CLI_BASE = ("--dataset", "synthetic", "--limit-train", "48", "--limit-test", "24", "--batch-size", "12",
            "--optimizer", "momentum", "--lr", "0.02", "--device", "cpu", "--log-every", "2")


def _cli(cwd: Path, *args: str, ranks: int | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "gpuconv.cli", "train", *args] + (["--ranks", str(ranks)] if ranks else [])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=cwd)


def _cli_run(cwd: Path, out: str, *args: str, ranks: int | None = None) -> tuple[np.ndarray, list[dict], str]:
    """(final parameters, metrics.jsonl records, stderr) of a finished run into ``cwd/out``."""
    import json

    r = _cli(cwd, "--out", out, *args, ranks=ranks)
    assert r.returncode == 0, f"ranks={ranks}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    arrays, _ = load_checkpoint(cwd / out / "checkpoint.npz")
    records = [json.loads(line) for line in (cwd / out / "metrics.jsonl").read_text().splitlines()]
    return arrays["params"], records, r.stderr


def _same_history(got: list[dict], want: list[dict]) -> None:
    assert [g["epoch"] for g in got] == [w["epoch"] for w in want]
    for g, w in zip(got, want):
        for k in ("train_loss", "test_loss"):
            np.testing.assert_allclose(g[k], w[k], rtol=RTOL, atol=ATOL)
        for k in ("train_acc", "test_acc"):     # totals over every rank, not one rank's
            assert g[k] == w[k], (k, g, w)


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    cache: dict[tuple[str, ...], tuple[np.ndarray, list[dict], str]] = {}

    def get(*args: str) -> tuple[np.ndarray, list[dict], str]:
        if args not in cache:
            cache[args] = _cli_run(tmp, f"ref{len(cache)}", *args)
        return cache[args]

    return get


@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("net", ["chain", "branch"])
def test_cli_k_ranks_match_one_process(tmp_path, cli_reference, net, ranks) -> None:
    """`gpuconv train --ranks K` (planned arena, K ranks of 12/K rows) gives one process's parameters
    (within float32 summation order) and its metrics, averaged over the ranks, after 8 steps."""
    args = (*CLI_BASE, "--model", CLI_NETS[net], "--epochs", "2")
    ref, ref_hist, _ = cli_reference(*args)
    got, hist, err = _cli_run(tmp_path, "run", *args, ranks=ranks)
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)
    _same_history(hist, ref_hist)
    # one header and one progress line per epoch for the whole run (rank 0's), naming the ranks
    assert err.count("gpuconv: training") == 1 and f", {ranks} ranks (0: pid " in err, err
    assert err.count("img/s") == 2, err


@needs_mpi
@pytest.mark.parametrize("mode", ["planned", "unplanned"])
def test_cli_ranks_with_augmentation_match_one_process(tmp_path, cli_reference, mode) -> None:
    """Each rank crops and flips its rows as one process does (its rows of the global batch's draws),
    planned (gathered into the arena) and unplanned."""
    extra = ("--unplanned",) if mode == "unplanned" else ()
    args = (*CLI_BASE, "--model", CLI_NETS["chain"], "--epochs", "1", "--augment", *extra)
    ref, ref_hist, _ = cli_reference(*args)
    got, hist, _ = _cli_run(tmp_path, "run", *args, ranks=2)
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)
    _same_history(hist, ref_hist)
    plain, _, _ = cli_reference(*(a for a in args if a != "--augment"))
    assert np.abs(plain - ref).max() > 1000 * ATOL     # augmentation changed the run: the check can fail


@needs_mpi
def test_cli_resume_on_another_number_of_ranks(tmp_path, cli_reference) -> None:
    """Epoch 1 on 2 ranks, epoch 2 resumed on 3: the parameters and history of 2 epochs in one process."""
    args = (*CLI_BASE, "--model", CLI_NETS["branch"], "--epochs", "2")
    ref, ref_hist, _ = cli_reference(*args)
    first = [a for a in args]
    first[first.index("--epochs") + 1] = "1"
    _cli_run(tmp_path, "run", *first, ranks=2)
    r = _cli(tmp_path, "--resume", "run", "--epochs", "2", ranks=3)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming" in r.stderr and "3 ranks" in r.stderr
    arrays, meta = load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    np.testing.assert_allclose(arrays["params"], ref, rtol=RTOL, atol=ATOL)
    assert int(meta["step"]) == 8 and int(meta["epoch"]) == 2
    import json

    _same_history([json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()], ref_hist)
    # and on one process again
    r = _cli(tmp_path, "--resume", "run", "--epochs", "3")
    assert r.returncode == 0 and "resuming" in r.stderr, r.stdout + r.stderr


@needs_mpi
def test_cli_a_killed_rank_stops_the_run_and_the_checkpoint_survives(tmp_path) -> None:
    """Rank 1 killed mid-epoch: the run ends (no rank left waiting), the message names rank 1, and
    rank 0's last checkpoint (an epoch's end) is intact and resumes."""
    import signal

    cmd = [sys.executable, "-m", "gpuconv.cli", "train", *CLI_BASE, "--model", CLI_NETS["chain"],
           "--limit-train", "480", "--epochs", "100", "--out", "run", "--ranks", "2"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path)
    ckpt = tmp_path / "run" / "checkpoint.npz"
    try:
        header = ""
        while "ranks (0: pid" not in header:
            line = proc.stderr.readline()
            assert line, "the run ended before its header"
            header = line
        pids = {int(r): int(p) for r, p in
                __import__("re").findall(r"(\d+): pid (\d+)", header[header.index("ranks ("):])}
        while not ckpt.exists():                  # the end of epoch 1
            assert proc.poll() is None and time.monotonic() - t0 < 60, "no checkpoint"
            time.sleep(0.05)
        time.sleep(0.15)                          # into epoch 2 (20 steps of ~10 ms)
        os.kill(pids[1], signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out + err
    assert proc.returncode != 0, text
    assert f"gpuconv: rank 1 of 2 (pid {pids[1]}) died" in text or "process rank 1" in text, text
    assert "continue with: gpuconv train --resume run" in err, err
    assert time.monotonic() - t0 < 90
    arrays, meta = load_checkpoint(ckpt)         # atomic: the last one written is whole
    assert int(meta["epoch"]) >= 1 and np.isfinite(arrays["params"]).all()
    r = _cli(tmp_path, "--resume", "run", "--epochs", str(int(meta["epoch"]) + 1))
    assert r.returncode == 0 and "resuming" in r.stderr, r.stdout + r.stderr


@needs_mpi
def test_cli_ctrl_c_stops_every_rank_at_one_batch_and_rank_0_saves_it(tmp_path) -> None:
    """Ctrl-C (SIGINT to the launcher's process group, as a terminal sends it) mid-epoch: every rank
    stops after the same batch, rank 0 saves that point, exit status 130; resumed on one process,
    the run ends where an uninterrupted one does."""
    import json
    import re
    import signal

    args = [*CLI_BASE, "--model", CLI_NETS["chain"], "--limit-train", "480", "--log-every", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "gpuconv.cli", "train", *args, "--epochs", "100", "--out", "run",
                             "--ranks", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            cwd=tmp_path, start_new_session=True)
    t0 = time.monotonic()
    try:
        while not (tmp_path / "run" / "checkpoint.npz").exists():     # the training loop is running
            assert proc.poll() is None and time.monotonic() - t0 < 60, "no checkpoint"
            time.sleep(0.05)
        time.sleep(0.15)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out + err
    m = re.search(r"interrupted: saved run/checkpoint\.npz \(epoch (\d+), (\d+) batches done\)", err)
    assert m and err.count("continue with: gpuconv train --resume run") == 1, err
    assert "abort" not in err.replace("force abort", "").lower(), err
    _, meta = load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    assert (int(meta["epoch"]) + 1, int(meta["next_batch"])) == (int(m[1]), int(m[2]))
    assert int(meta["step"]) == 40 * int(meta["epoch"]) + int(meta["next_batch"])
    epochs = str(int(meta["epoch"]) + 1)
    r = _cli(tmp_path, "--resume", "run", "--epochs", epochs)
    assert r.returncode == 0, r.stdout + r.stderr
    ref, ref_hist, _ = _cli_run(tmp_path, "ref", *args, "--epochs", epochs)
    arrays, _ = load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    np.testing.assert_allclose(arrays["params"], ref, rtol=RTOL, atol=ATOL)
    hist = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [h["epoch"] for h in ref_hist]


def test_cli_refuses_bad_rank_settings(tmp_path, monkeypatch, capsys) -> None:
    """One line, exit status 2, before any rank starts (nothing written)."""
    from gpuconv import cli

    for k in dist.LAUNCH_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)
    base = ["train", *CLI_BASE, "--model", CLI_NETS["chain"], "--epochs", "1", "--out", "run"]
    cases = [
        (["--ranks", "0"], "--ranks must be >= 1, got 0"),
        (["--ranks", "5"], r"the global batch 12 does not split evenly over 5 ranks: choose a multiple of 5 "
                           r"\(e\.g\. --batch-size 10 or 15\)"),
        (["--ranks", "2", "--cuda-graph"], "--cuda-graph cannot run on 2 ranks yet .NCCL's all-reduce inside a "
                                           "captured CUDA graph is not verified"),
    ]
    import re

    for extra, msg in cases:
        assert cli.main(base + extra) == 2, extra
        err = capsys.readouterr().err
        assert re.search(msg, err) and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()
    # no MPI launcher: say what to install
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python3"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert cli.main(base + ["--ranks", "2"]) == 2
    err = capsys.readouterr().err
    assert "--ranks needs MPI's launcher (mpiexec), which is not installed: pip install -e '.[mpi]'" in err, err
    assert not (tmp_path / "run").exists()


@needs_mpi
def test_mpirun_with_a_bad_setting_says_it_once(tmp_path) -> None:
    """Under your own mpiexec every rank checks the settings; rank 0 alone prints the message and
    every rank exits with status 2 (none is left waiting, nothing is written)."""
    argv = ["train", *CLI_BASE, "--model", CLI_NETS["chain"], "--out", "run"]
    for extra, msg in ((["--batch-size", "13"], "gpuconv train: the global batch 13 does not split evenly over 2 ranks"),
                       (["--ranks", "2"], "gpuconv train: --ranks starts the ranks itself: drop it when running "
                                          "under mpirun/mpiexec")):
        cmd, extra_env = dist.launch_command(2, argv + extra)
        cmd = cmd[:cmd.index("gpuconv.cli") + 1] + argv + extra     # launch_command drops --ranks: keep it here
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**_env(), **extra_env}, cwd=tmp_path)
        assert r.returncode == 2, r.stdout + r.stderr
        assert r.stderr.count(msg) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


@needs_mpi
def test_cli_a_plan_that_does_not_fit_stops_every_rank_with_one_message(tmp_path) -> None:
    """Each rank plans its share of the batch; when it does not fit, every rank stops together (no
    abort) and rank 0 alone says so, per rank, with exit status 1 (it ran and failed)."""
    r = _cli(tmp_path, *CLI_BASE, "--model", CLI_NETS["chain"], "--budget", "100KiB", "--out", "run", ranks=2)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.count("gpuconv train: custom at batch 6 per rank (2 ranks) does not fit the budget 100KiB") == 1
    assert "abort" not in r.stderr.lower() and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


@needs_mpi
def test_cli_a_diverged_loss_stops_every_rank_with_one_message(tmp_path) -> None:
    """Every rank sees the same summed loss, so all stop at the same batch: one message, exit 1."""
    r = _cli(tmp_path, *CLI_BASE, "--model", CLI_NETS["chain"], "--optimizer", "sgd", "--lr", "1e30",
             "--log-every", "1", "--out", "run", ranks=2)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.count("gpuconv train: loss became nan at epoch 1, batch ") == 1, r.stderr
    assert "abort" not in r.stderr.lower() and "Traceback" not in r.stderr, r.stderr


class _TwoRanks:
    """A communicator stand-in for World.settle: allgather returns what the two ranks give."""

    def __init__(self, other: list) -> None:
        self.other = list(other)   # the other rank's contributions, in call order

    def allgather(self, mine):  # noqa: ANN001, ANN201
        theirs = self.other.pop(0)
        return [mine, theirs] if self.rank == 0 else [theirs, mine]


def _world_of_two(rank: int, other: list) -> dist.World:
    w = dist.World()
    w.comm = _TwoRanks(other)
    w.comm.rank = rank
    w.rank, w.size = rank, 2
    return w


def test_settle_stops_every_rank_with_the_reported_status() -> None:
    status = lambda e: 2 if isinstance(e, ValueError) else 1  # noqa: E731
    w = _world_of_two(0, [None, 0])
    w.settle(None, status)                                   # nobody failed: nothing happens
    assert not w.together
    # only rank 1 failed: rank 0 reports it, naming the rank, with rank 1's status; rank 1 stops quietly
    w = _world_of_two(0, ["ValueError: bad data", 2])
    with pytest.raises(dist.RankFailed, match="rank 1 of 2: ValueError: bad data") as e:
        w.settle(None, status)
    assert e.value.status == 2 and w.together
    w = _world_of_two(1, [None, 0])
    with pytest.raises(dist.StopRank) as stop:
        w.settle(ValueError("bad data"), status)
    assert stop.value.status == 2
    # both failed: rank 0 raises its own error, rank 1 exits with rank 0's status
    w = _world_of_two(0, ["RuntimeError: x", 1])
    with pytest.raises(ValueError, match="mine"):
        w.settle(ValueError("mine"), status)
    w = _world_of_two(1, ["ValueError: mine", 2])
    with pytest.raises(dist.StopRank) as stop:
        w.settle(RuntimeError("x"), status)
    assert stop.value.status == 2
    # the guard lets an error through without aborting once the ranks stop together
    with pytest.raises(ValueError):
        with w.guard():
            raise ValueError("together")


def test_dropout_masks_per_rank() -> None:
    """Rank 0 keeps the one-process dropout seeds (its rows' masks are one process's); other ranks
    get distinct seeds, the same on every run."""
    from gpuconv.ops.dropout import dropout_forward
    from gpuconv.train import per_rank_dropout

    seeds = []
    for rank in range(3):
        net = get_model("INPUT[4x4x1] -> FC-8 -> DROPOUT0.5 -> FC-8 -> DROPOUT0.5 -> FC-2")
        net.bind("cpu", seed=3)
        per_rank_dropout(net, rank)
        seeds.append([layer.seed for layer in net.layers if layer.kind == "DROPOUT"])
    one = get_model("INPUT[4x4x1] -> FC-8 -> DROPOUT0.5 -> FC-8 -> DROPOUT0.5 -> FC-2")
    one.bind("cpu", seed=3)
    assert seeds[0] == [layer.seed for layer in one.layers if layer.kind == "DROPOUT"]
    assert len({s for ss in seeds for s in ss}) == 6
    x = np.ones((4, 8), dtype=np.float32)
    masks = [dropout_forward(x, 0.5, s[0], 7)[1] for s in seeds]
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])


def test_the_rank_that_vanished_first_without_an_exit_file_is_named(tmp_path) -> None:
    """mpiexec does not always name a killed rank: the launcher's watch does, from the order in which
    the ranks' processes disappear and which of them left an exit file (a rank that said why it
    stopped leaves one)."""
    from gpuconv.distributed import _VanishWatch

    ranks = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) for _ in range(3)]
    try:
        for r, p in enumerate(ranks):
            (tmp_path / f"rank{r}.pid").write_text(str(p.pid))
        watch = _VanishWatch(str(tmp_path), period=0.01)
        (tmp_path / "rank2.exit").write_text("")      # rank 2 stops first, but said why
        ranks[2].kill()
        ranks[2].wait()
        time.sleep(0.1)
        ranks[1].kill()                               # rank 1 is killed outright
        ranks[1].wait()
        time.sleep(0.1)
        ranks[0].kill()                               # then the launcher stops rank 0
        ranks[0].wait()
        time.sleep(0.1)
        watch.stop()
        assert watch.gone == [ranks[2].pid, ranks[1].pid, ranks[0].pid]
        assert watch.killed() == [ranks[1].pid]
    finally:
        for p in ranks:
            p.kill()


@needs_mpi
def test_cli_ranks_on_one_machine_share_its_memory_budget(tmp_path) -> None:
    """On the CPU the ranks of one machine share its memory: a budget that holds one rank's plan
    but not two is refused on 2 ranks (one message, before training), and accepted on 1."""
    from gpuconv.memory import make_plan
    from gpuconv.memory.budget import DEFAULT_SAFETY, resolve_overheads
    from gpuconv.spec import net_from_spec

    ctx, extra, _ = resolve_overheads(None, None, None, "cpu")
    per_rank = make_plan(net_from_spec(CLI_NETS["chain"]), 6, optimizer="momentum").total_bytes + ctx + extra
    whole = make_plan(net_from_spec(CLI_NETS["chain"]), 12, optimizer="momentum").total_bytes + ctx + extra
    assert 2 * per_rank > whole      # each rank holds the parameters, gradients and state in full
    usable = (whole + 2 * per_rank) // 2          # holds one process's plan, not two ranks' plans
    budget = f"{int(usable / (1 - DEFAULT_SAFETY))}B"
    base = [*CLI_BASE, "--model", CLI_NETS["chain"], "--epochs", "1", "--budget", budget]
    r = _cli(tmp_path, *base, "--out", "two", ranks=2)
    assert r.returncode == 1 and "shared by the 2 ranks on this machine" in r.stderr, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "two" / "checkpoint.npz").exists()
    r = _cli(tmp_path, *base, "--out", "one")
    assert r.returncode == 0, r.stdout + r.stderr
