"""The memory plan: its parts for real shapes, `validate` printing and refusing, and the
estimate against a measured peak RSS (a ~110M-parameter CPU trial step, within 25%)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from sweep.cli import main
from sweep.run.memory_plan import GB, MemoryPlan, ModelShape, TrialSettings, find_fixes, plan_parts

REPO = Path(__file__).resolve().parents[2]
SPACES = REPO / "search_spaces"

QWEN25_7B = dict(hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944, vocab=152064)


def write_header_only_checkpoint(path: Path, *, hidden, layers, heads, kv_heads, intermediate, vocab) -> Path:
    """A Qwen2-layout bf16 checkpoint whose safetensors file is a header plus a sparse hole."""
    head_dim = hidden // heads
    shapes = {"model.embed_tokens.weight": [vocab, hidden]}
    for i in range(layers):
        pre = f"model.layers.{i}."
        shapes |= {
            pre + "self_attn.q_proj.weight": [heads * head_dim, hidden],
            pre + "self_attn.q_proj.bias": [heads * head_dim],
            pre + "self_attn.k_proj.weight": [kv_heads * head_dim, hidden],
            pre + "self_attn.k_proj.bias": [kv_heads * head_dim],
            pre + "self_attn.v_proj.weight": [kv_heads * head_dim, hidden],
            pre + "self_attn.v_proj.bias": [kv_heads * head_dim],
            pre + "self_attn.o_proj.weight": [hidden, heads * head_dim],
            pre + "mlp.gate_proj.weight": [intermediate, hidden],
            pre + "mlp.up_proj.weight": [intermediate, hidden],
            pre + "mlp.down_proj.weight": [hidden, intermediate],
            pre + "input_layernorm.weight": [hidden],
            pre + "post_attention_layernorm.weight": [hidden],
        }
    shapes |= {"model.norm.weight": [hidden], "lm_head.weight": [vocab, hidden]}
    header, offset = {}, 0
    for name, shape in shapes.items():
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "model.safetensors", "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + offset)  # sparse: no data written
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "intermediate_size": intermediate,
        "vocab_size": vocab,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "max_position_embeddings": 32768,
    }
    (path / "config.json").write_text(json.dumps(config))
    (path / "tokenizer_config.json").write_text("{}")
    return path


@pytest.fixture(scope="module")
def qwen7b_trio(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("q7b")
    return {
        role: write_header_only_checkpoint(root / role, **QWEN25_7B) for role in ("pretrained", "instruct", "reasoning")
    }


def _cluster_spec(tmp_path: Path, trio, **edits) -> Path:
    text = (SPACES / "bai-7b.yaml").read_text()
    text = text.replace("/ckpt/qwen2.5-7b-base", str(trio["pretrained"])).replace(
        "/ckpt/qwen2.5-7b-instruct", str(trio["instruct"])
    )
    text = text.replace("/ckpt/qwen2.5-7b-distill-r1", str(trio["reasoning"]))
    text = text.replace("include_paths: [tasks]", f"include_paths: [{SPACES / 'tasks'}]")
    text = text.replace("prompts: tasks/probe_prompts.jsonl", f"prompts: {SPACES / 'tasks' / 'probe_prompts.jsonl'}")
    text = text.replace("storage: /shared/sweeps/bai-7b.journal", f"storage: {tmp_path / 'study.journal'}")
    for old, new in edits.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "bai-7b.yaml"
    path.write_text(text)
    return path


def test_shipped_cluster_spec_fits_one_80gb_gpu_and_validate_prints_the_plan(qwen7b_trio, tmp_path, capsys):
    code = main(["validate", str(_cluster_spec(tmp_path, qwen7b_trio))])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "7.62B params" in out.out and "of 80 GB  fits" in out.out
    for part in ("sources", "live model", "lora", "gradients", "optimizer", "activations", "logits", "vllm", "runtime"):
        assert f"    {part} " in out.out, part
    sources = next(line for line in out.out.splitlines() if line.strip().startswith("sources"))
    assert sources.split()[1:3] == ["0.00", "45.69"]  # 3 x 7.62B x 2 bytes, in host memory


def test_validate_refuses_a_spec_that_does_not_fit_and_names_the_fixes(qwen7b_trio, tmp_path, capsys):
    path = _cluster_spec(
        tmp_path,
        qwen7b_trio,
        **{
            "  source_device: cpu ": "  source_device: same ",
            "    update: lora ": "    update: full ",
            "    activation_checkpointing: true": "    activation_checkpointing: false",
        },
    )
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "resources.gpu_memory_gb: the trial needs about" in err and "more than 80 GB" in err
    assert "it would fit with:" in err
    for fix in ("merge.source_device: cpu", "evals.probe.update: lora"):
        assert fix in err
    assert "Traceback" not in err


def test_parts_for_a_7b_shape_follow_the_settings():
    shape = ModelShape.llama(**QWEN25_7B, tie=False)
    assert shape.params == pytest.approx(7.6e9, rel=0.01)
    base = TrialSettings(
        device="cuda", dtype_bytes=2, rollouts=128, prompt_tokens=256, new_tokens=2048, logprob_chunk=None
    )
    old = MemoryPlan(parts=plan_parts(shape, base), settings=base, shape=shape)
    # the arithmetic: 128 x 2304 x 152k logits, bf16 plus fp32 copies: hundreds of GB
    assert old.part("logits").gpu > 500 * GB
    assert old.part("sources").gpu == 3 * shape.params * 2 and old.part("master").gpu == shape.params * 4
    new = MemoryPlan(
        parts=plan_parts(shape, s := TrialSettings(**{**base.__dict__, "logprob_chunk": 1024, "micro_batch_size": 4})),
        settings=s,
        shape=shape,
    )
    assert new.part("logits").gpu < 3 * GB and new.part("activations").gpu < old.part("activations").gpu / 30
    assert (
        find_fixes(shape, TrialSettings(**{**base.__dict__, "gpu_memory_gb": 10.0})) == []
    )  # 15 GB of weights never fit 10


def test_a_kl_reference_costs_one_model_on_the_device_whatever_the_update():
    """evals.probe.reference at 7B: full swaps the frozen candidate copy for the reference
    on the device and keeps the starting weights in host memory (the GPU peak is the
    same); LoRA, whose reference was free (adapters off), now holds the model: +15 GB."""
    shape = ModelShape.llama(**QWEN25_7B, tie=False)
    P = shape.params
    for update in ("full", "lora"):
        own = TrialSettings(device="cuda", dtype_bytes=2, update=update)
        fixed = TrialSettings(device="cuda", dtype_bytes=2, update=update, reference_params=P)
        a = MemoryPlan(parts=plan_parts(shape, own), settings=own, shape=shape)
        b = MemoryPlan(parts=plan_parts(shape, fixed), settings=fixed, shape=shape)
        assert b.part("reference").gpu == P * 2
        if update == "full":
            assert b.gpu_bytes == a.gpu_bytes and b.part("start copy").host == P * 2
            assert b.host_bytes == a.host_bytes + P * 2
        else:
            assert b.gpu_bytes == a.gpu_bytes + P * 2 and b.host_bytes == a.host_bytes
            assert "adapters off" in a.part("lora").note and "adapters off" not in b.part("lora").note


def test_the_work_plan_counts_the_reference_forward_at_the_references_size():
    from sweep.run.work_plan import WorkPlan

    own = WorkPlan(
        params=10**9, steps=2, rollouts=4, prompt_tokens=100, new_tokens=50, update="full", checkpointing=False
    )
    assert own.update_flops == own.trained_tokens * 10**9 * 8  # forward 2, backward 4, reference 2
    bigger = WorkPlan(**{**own.__dict__, "reference_params": 3 * 10**9})
    assert bigger.update_flops == own.update_flops + own.trained_tokens * 2 * 2 * 10**9


def test_mini_batches_add_the_sampling_forward_and_shrink_the_update_batch():
    """mini_batches M: the update's forward/backward holds at most a mini-batch (the
    activations of 4 rollouts, not 16), and the M - 1 later mini-batches cost one more
    no-grad forward for their sampling log-probs."""
    from sweep.run.work_plan import WorkPlan

    shape = ModelShape.llama(**QWEN25_7B, tie=False)
    whole = TrialSettings(device="cuda", dtype_bytes=2, rollouts=16)
    split = TrialSettings(device="cuda", dtype_bytes=2, rollouts=16, mini_batches=4)
    assert (whole.update_rows, split.update_rows) == (16, 4)
    assert TrialSettings(rollouts=16, mini_batches=4, micro_batch_size=2).update_rows == 2
    a = MemoryPlan(parts=plan_parts(shape, whole), settings=whole, shape=shape)
    b = MemoryPlan(parts=plan_parts(shape, split), settings=split, shape=shape)
    assert b.part("activations").gpu * 4 == pytest.approx(a.part("activations").gpu, rel=0.01)
    one = WorkPlan(
        params=10**9, steps=2, rollouts=16, prompt_tokens=100, new_tokens=50, update="full", checkpointing=False
    )
    four = WorkPlan(**{**one.__dict__, "mini_batches": 4})
    assert four.update_flops == one.update_flops + one.trained_tokens * 2 * 10**9 * 3 / 4
    assert "4 mini-batches" in four.line() and "mini-batches" not in one.line()


@pytest.fixture(scope="module")
def plan_checks(tmp_path_factory) -> dict[str, tuple[int, str, str]]:
    """bench/memory_plan_check.py for both updates on one ~110M trio, built once: the two
    checks then run side by side (each child is one torch thread; the peak RSS each reads
    is its own process's), which halves their wall time on a 2-core box."""
    root = tmp_path_factory.mktemp("plan-check")
    build = f"from pathlib import Path; from bench.memory_plan_check import build_trio; build_trio(Path({str(root)!r}), layers=12)"
    subprocess.run([sys.executable, "-c", build], cwd=REPO, check=True, timeout=1200)
    logs = {update: (root / f"{update}.out", root / f"{update}.err") for update in ("full", "lora")}
    procs = {}
    for update, (out, err) in logs.items():
        command = [sys.executable, str(REPO / "bench" / "memory_plan_check.py"), "--root", str(root)]
        with out.open("w") as stdout, err.open("w") as stderr:
            procs[update] = subprocess.Popen([*command, "--update", update, "--json"], stdout=stdout, stderr=stderr)
    try:
        codes = {update: proc.wait(timeout=1200) for update, proc in procs.items()}
    finally:  # one child past its timeout: stop both, so none outlives the test session
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {update: (codes[update], out.read_text(), err.read_text()) for update, (out, err) in logs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("update", ["full", "lora"])
def test_plan_is_within_25_percent_of_the_measured_peak_rss(plan_checks, update):
    code, stdout, stderr = plan_checks[update]
    assert code == 0, stderr[-3000:]
    result = json.loads(stdout.strip().splitlines()[-1])
    assert 100e6 <= result["params"] <= 400e6 and result["update"] == update
    assert 0.75 <= result["ratio"] <= 1.25, result
    if update == "lora":  # the plan counts adapters instead of a reference copy and full Adam state
        assert "reference" not in result["parts"] and result["parts"]["lora"] > 0


def test_validate_prints_the_work_of_a_7b_trial(qwen7b_trio, tmp_path, capsys):
    """The work line's numbers from the spec's own settings: 24 steps x 16 prompts x 8
    samples x 2048 tokens sampled; prompts as the memory plan assumes them (256 tokens)."""
    code = main(["validate", str(_cluster_spec(tmp_path, qwen7b_trio))])
    out = capsys.readouterr().out
    assert code == 0
    work = next(line for line in out.splitlines() if line.startswith("  work "))
    params = ModelShape.llama(**QWEN25_7B, tie=False).params
    sampled, trained = 24 * 128 * 2048, 24 * 128 * (256 + 2048)
    assert f"probe {sampled / 1e6:.2f}M tokens sampled (24 steps x 128 x 2048)" in work, work
    assert f"{trained / 1e6:.2f}M trained" in work
    # LoRA with checkpointing: forward 2 + activation-only backward 2 + reference 2 + recompute 2
    assert f"update ~{trained * params * 8 / 1e15:.1f} PFLOP, lora, checkpointed" in work
    assert "evals 819,200 tokens (1 task x 200 docs x 4096)" in work
    assert f"sampling ~{2 * params * (sampled + 819_200) / 1e15:.1f} PFLOP" in work
