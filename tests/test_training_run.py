"""The train stage end to end on the demo student: resume after SIGKILL, DDP with 2 CPU processes,
LoRA + gradient checkpointing + accumulation + bf16, and the span-logit shortcut.

Real torch training throughout (the demo student base, 0.7M parameters); the distributed test runs
two real gloo processes under ``torch.distributed.run``. Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from data_schemas import TRAINSET, write_table
from mcckd.demo_world.assets import STUDENT_BASE_DIR
from mcckd.demo_world.problems import generate_split, write_rationale
from mcckd.rendering import Renderer
from mcckd.stages import execute, output, work_dir_for
from mcckd.stages.materialize import with_answer_sentence
from mcckd.stages.train import TrainSettings, examples_from_trainset
from mcckd.store import fingerprint
from mcckd.training.config import LoraSettings, TrainConfig
from mcckd.training.data import encode_groups
from mcckd.training.loop import forward_loss, train_causal_lm
from mcckd.training.loss import gather_span
from tasks.stages import run_here, stage_command, stage_log

REPO = Path(__file__).resolve().parents[1]


def write_trainset(path: Path, questions: int, seed: int = 0) -> Path:
    """Two correct rationales per demo question (different CoT formats), as materialize writes them."""
    rng = random.Random(seed)
    rows = []
    for i, p in enumerate(generate_split("id", questions, seed)):
        texts, spans = [], []
        for fmt in ("plain", "symbolic"):
            text, (start, end), _ = with_answer_sentence(write_rationale(p, fmt, 2, rng), str(p.answer))
            texts.append(text)
            spans.append({"start": start, "end": end})
        rows.append(
            {
                "question_id": f"q{i}",
                "question": p.question,
                "answer": str(p.answer),
                "rationales": texts,
                "answer_spans": spans,
                "teachers": ["demo", "demo"],
                "sample_indices": [0, 1],
            }
        )
    write_table(rows, path, TRAINSET)
    return path


EPOCHS, STEPS_PER_EPOCH = 3, 25  # the reference run: 99 training questions (110 less the dev tenth), 4 a step


def settings(**loop: object) -> TrainSettings:
    base = dict(alpha=0.05, epochs=EPOCHS, questions_per_batch=4, learning_rate=3e-3, checkpoint_every=10)
    return TrainSettings(base_model=STUDENT_BASE_DIR, loop=TrainConfig(**{**base, **loop}))


def train_command(out: Path, trainset: Path, cfg: TrainSettings) -> list[str]:
    return [
        "-m",
        "mcckd",
        "train",
        "--out",
        str(out),
        "--settings",
        cfg.model_dump_json(),
        "--in",
        f"trainset={trainset}",
    ]


def run_train(out: Path, trainset: Path, cfg: TrainSettings) -> dict:
    done = subprocess.run([sys.executable, *train_command(out, trainset, cfg)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def losses(out: Path) -> list[tuple[int, float, float]]:
    log = pq.read_table(output("train", out, "train_log")).to_pylist()
    return [(r["step"], r["cross_entropy"], r["consistency"]) for r in log]


@pytest.fixture(scope="module")
def trainset(tmp_path_factory) -> Path:
    return write_trainset(tmp_path_factory.mktemp("trainset") / "trainset_in.parquet", questions=110)


@pytest.fixture(scope="module")
def small_trainset(tmp_path_factory) -> Path:
    """22 questions: one epoch is 6 steps of 4, 4, 4, 4, 3 and 3 questions (an odd batch splits unevenly
    over two ranks, so the rank weights are exercised)."""
    return write_trainset(tmp_path_factory.mktemp("small-trainset") / "trainset_in.parquet", questions=22)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, trainset) -> tuple[Path, dict]:
    """An uninterrupted single-process run: what the resumed and the DDP runs must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    return out, run_train(out, trainset, settings(dev_fraction=0.1, eval_every=20))


@pytest.mark.slow  # python -m mcckd train, twice
def test_killed_run_resumes_and_its_loss_curve_continues(tmp_path, trainset, reference):
    ref_out, ref_summary = reference
    cfg = settings(dev_fraction=0.1, eval_every=20)
    out = tmp_path / "run"
    checkpoints = work_dir_for(out) / "checkpoints"
    proc = subprocess.Popen([sys.executable, *train_command(out, trainset, cfg)], stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # only a stall guard: a loaded machine is slow to get there
    while not (checkpoints / "step-30").is_dir():  # mid-epoch (25 steps an epoch), between dev evaluations
        assert proc.poll() is None and time.time() < deadline, "training ended or stalled before step 30"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()

    summary = run_train(out, trainset, cfg)
    assert 30 <= summary["resumed_from_step"] < ref_summary["steps"]
    assert summary["steps"] == ref_summary["steps"] == EPOCHS * STEPS_PER_EPOCH
    resumed, uninterrupted = losses(out), losses(ref_out)
    assert [s for s, *_ in resumed] == list(range(1, summary["steps"] + 1))  # no step lost or repeated
    assert torch.allclose(torch.tensor([r[1:] for r in resumed]), torch.tensor([r[1:] for r in uninterrupted]))
    assert summary["best_step"] == ref_summary["best_step"]
    assert summary["weight_hashes"] == ref_summary["weight_hashes"]  # bit-identical final weights
    assert not work_dir_for(out).exists()  # checkpoints removed once the output is complete


@pytest.mark.slow  # a 2-process DDP training run
def test_ddp_with_two_cpu_processes_ends_with_identical_weights(tmp_path, trainset, reference):
    _, ref_summary = reference
    out = tmp_path / "ddp"
    cfg = settings(dev_fraction=0.1, eval_every=20).model_copy(update={"processes": 2})
    command = stage_command("train", cfg, {"trainset": str(trainset)}, str(out))  # what the flow's task runs
    assert command[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert summary["processes"] == 2
    assert summary["allocator"] == "mimalloc"  # each rank re-executed itself under the caching allocator
    assert summary["weight_hashes"][0] == summary["weight_hashes"][1]
    # Each rank takes its share of every batch, weighted, and DDP averages gradients: the same
    # optimisation as one process up to float summation order. Over 8 epochs those 1e-7 differences
    # grew as between two seeds (up to 31% by the end); over these 3 epochs, whose cosine schedule
    # decays sooner, they stay small. Measured (this file's settings, DDP vs one process, CE per
    # step, seeds 0-4): at most 2.6e-5 apart in epoch 1 and 2.2e-4 in epochs 2-3, the last epoch's
    # mean CE 0.31-0.34 of the first's in both. A batch or shuffle that differs from the single
    # process's shows as a median 4-9% a step (two seeds' runs, epochs 1-2), so every step is
    # compared: epoch 1 to 1e-4, the rest to 1e-3, and the run must have learned.
    ddp = torch.tensor([r[1] for r in losses(out)])
    single = torch.tensor([r[1] for r in losses(reference[0])])
    assert len(ddp) == len(single) == ref_summary["steps"]
    epoch = STEPS_PER_EPOCH
    assert torch.allclose(ddp[:epoch], single[:epoch], rtol=1e-4)
    assert torch.allclose(ddp[epoch:], single[epoch:], rtol=1e-3)
    assert ddp[-epoch:].mean() < 0.4 * ddp[:epoch].mean()


@pytest.mark.slow  # train_causal_lm
def test_lora_checkpointing_accumulation_bf16(tmp_path, demo_tokenizer):
    from transformers import AutoModelForCausalLM

    path = write_trainset(tmp_path / "trainset_in.parquet", questions=4, seed=3)
    rows = pq.read_table(path).to_pylist()

    groups, rejected = encode_groups(demo_tokenizer, examples_from_trainset(rows, Renderer(demo_tokenizer)), 256)
    assert not rejected
    base = AutoModelForCausalLM.from_pretrained(str(STUDENT_BASE_DIR))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    cfg = TrainConfig(
        alpha=0.05,
        epochs=2,
        questions_per_batch=2,
        gradient_accumulation_steps=2,
        precision="bf16",
        gradient_checkpointing=True,
        lora=LoraSettings(r=4, alpha=8),
        learning_rate=1e-2,
    )
    result = train_causal_lm(base, demo_tokenizer.pad_token_id, groups, cfg, tmp_path / "work")
    assert len(result.log) == 2 * 1  # 2 batches an epoch, 2 per optimizer step
    assert result.log[-1]["consistency"] > 0
    merged = result.model.state_dict()
    assert not any("lora" in k for k in merged)  # merged: loads as a plain model
    changed = [k for k in before if not torch.equal(before[k], merged[k])]
    assert changed and all(k.endswith("proj.weight") for k in changed)  # only adapted linears moved


def test_span_logits_from_hidden_states_equal_gathered_logits(demo_tokenizer, trainset):
    """The trainer's shortcut (LM head on the span's hidden states) is the gather of full logits."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from mcckd.training.data import collate
    from mcckd.training.loss import answer_consistency, question_pairs

    rows = pq.read_table(trainset).to_pylist()[:4]
    groups, _ = encode_groups(demo_tokenizer, examples_from_trainset(rows, Renderer(demo_tokenizer)), 256)
    model = AutoModelForCausalLM.from_pretrained(str(STUDENT_BASE_DIR))
    cfg = TrainConfig(alpha=1.0)
    parts = forward_loss(model, groups, cfg, demo_tokenizer.pad_token_id, None, Accelerator())
    t = collate(groups, demo_tokenizer.pad_token_id)
    logits = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits
    pairs = question_pairs(t["group_ids"], "all")
    expected = answer_consistency(gather_span(logits, t["span_positions"]), t["span_mask"], pairs)
    assert parts.consistency.item() > 0
    assert torch.allclose(parts.consistency, expected, atol=1e-6)


def one_epoch_settings() -> TrainSettings:
    """One epoch of the small training set, with a resumable checkpoint (every rank's RNG state) mid-run."""
    return settings(epochs=1, checkpoint_every=3)


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory, small_trainset) -> Path:
    """One epoch in one process (this one: the train stage as ``python -m mcckd train`` runs it, without
    starting another interpreter): what the runs on two nodes must reproduce, step by step."""
    out = tmp_path_factory.mktemp("one-epoch") / "run"
    summary = execute("train", one_epoch_settings(), out, {"trainset": small_trainset})
    assert summary["processes"] == 1 and summary["steps"] == 6
    return out


def assert_same_steps(two: list[tuple[int, float, float]], one: list[tuple[int, float, float]]) -> None:
    assert [s for s, *_ in two] == [s for s, *_ in one] == list(range(1, len(one) + 1))
    for (step, ce2, kl2), (_, ce1, kl1) in zip(two, one, strict=True):
        print(f"step {step:2d}: one process CE {ce1:.7f} KL {kl1:.7f} | two nodes CE {ce2:.7f} KL {kl2:.7f}")
    assert torch.allclose(torch.tensor([r[1:] for r in two]), torch.tensor([r[1:] for r in one]), rtol=0, atol=1e-5)


@pytest.mark.slow  # two torchrun launchers, one rank each, meeting at a c10d rendezvous
def test_two_nodes_at_a_c10d_rendezvous_train_as_one_process(tmp_path, small_trainset, one_epoch):
    cfg = one_epoch_settings()
    two_nodes = cfg.model_copy(update={"nodes": 2})
    assert fingerprint(two_nodes) == fingerprint(cfg)  # where it runs is not what it makes
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two-nodes"
    # What the flow runs on each node (mcckd.cluster.launch_on_nodes): the same command everywhere.
    command = stage_command("train", two_nodes, {"trainset": str(small_trainset)}, str(out), f"127.0.0.1:{port}")
    assert command[1:7] == [
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=1",
        "--nnodes=2",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{port}",
    ]
    # Each "node" gets one of this machine's cores, as the Ray test's nodes (num_cpus=1) do: with
    # nproc_per_node=1 torchrun leaves the thread count alone, and two ranks of two threads each on
    # two cores spin against each other (twice the CPU time, measured).
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    launchers = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"
    ]
    ended = [launcher.communicate(timeout=600) for launcher in launchers]
    assert [launcher.returncode for launcher in launchers] == [0, 0], ended[0][1][-3000:] + ended[1][1][-3000:]
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert summary["processes"] == 2 and summary["weight_hashes"][0] == summary["weight_hashes"][1]
    assert_same_steps(losses(out), losses(one_epoch))


@pytest.mark.slow  # a two-node Ray cluster of this machine, a torchrun launcher on each node
def test_the_train_task_launches_torchrun_on_two_nodes_of_a_ray_cluster(tmp_path, small_trainset, one_epoch):
    import ray
    from ray.cluster_utils import Cluster

    cfg = one_epoch_settings().model_copy(update={"nodes": 2})
    out = tmp_path / "on-ray"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    try:
        assert len({n["NodeID"] for n in ray.nodes() if n["Alive"]}) == 2
        run_here("train", cfg, {"trainset": str(small_trainset)}, str(out), fingerprint(cfg))  # the flow's task body
    finally:
        ray.shutdown()
        cluster.shutdown()
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert summary["processes"] == 2 and summary["weight_hashes"][0] == summary["weight_hashes"][1]
    assert all(Path(f"{stage_log(out)}.node{i}").is_file() for i in (0, 1))
    assert_same_steps(losses(out), losses(one_epoch))


def test_the_launcher_each_node_runs():
    one, cfg = settings(), settings().model_copy(update={"processes": 2})
    assert stage_command("train", one, {}, "/s/train/abc")[1:4] == ["-m", "mcckd", "train"]
    assert stage_command("train", cfg, {}, "/s/train/abc")[1:5] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
    ]
    nodes = cfg.model_copy(update={"nodes": 3})
    with pytest.raises(ValueError, match="nodes = 3 needs a rendezvous endpoint"):
        stage_command("train", nodes, {}, "/s/train/abc")
    command = stage_command("train", nodes, {}, "/s/train/abc", "10.0.0.1:29400", hosts_store=False)
    assert command[3:9] == [
        "--nproc_per_node=2",
        "--nnodes=3",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=10.0.0.1:29400",
        "--rdzv_id=abc",
        "--rdzv_conf=is_host=0",
    ]
    given = nodes.model_copy(update={"rendezvous": "head:29400"})
    assert "--rdzv_endpoint=head:29400" in stage_command("train", given, {}, "/s/train/abc")
