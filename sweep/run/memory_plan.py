"""Per-trial memory plan: GPU and host bytes by part, from config.json and safetensors headers.

    plan = plan_trial(spec, infos)          # infos: merge.checkpoint.CheckpointInfo per role
    print(plan.table())                     # what `sweep validate` prints
    if not plan.fits: print(plan.refusal()) # names the settings that would make it fit

Nothing here reads a weight. A trial holds, at its peak (the probe's update step):

  sources       the three source models (merge.source_device: same -> on the trial's
                device; cpu -> host memory, pinned when the trial has a GPU)
  live model    the candidate being evaluated and probed, in the merge dtype
  reference     the probe's frozen copy for the KL term (0 with update: lora, where
                the reference is the live model with its adapters off), or the model
                evals.probe.reference names (full: the starting weights then wait in
                host memory, "start copy")
  master        fp32 master weights of a full update of a bf16/fp16 model
  gradients     fp32, one per trainable parameter
  optimizer     Adam's two fp32 moments per trainable parameter
  activations   saved for backward, per micro-batch (checkpointing: one layer's worth
                plus each layer's input)
  logits        per micro-batch: chunked (evals.probe.logprobs) or the full [B, T, V]
  rollout cache the HF generator's KV cache for a step's rollouts
  vllm          the engine's weights and KV cache (gpu_memory_utilization of the GPU)
  reward model  a reward model's weights, in the trial's dtype
  runtime       CUDA context and allocator slack; the host process (python, torch)

The estimate is checked against measured peaks in tests/sweep/test_memory_plan.py
(peak RSS of a CPU trial step, within 25%). See docs/scale.md for 7B-32B shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from evals.probe.config import ProbeConfig
from merge.config import MergeConfig
from sweep.run.model_shape import ModelShape

if TYPE_CHECKING:
    from sweep.config.schema import SweepSpec

GIB = 1024**3
GB = 1e9
# bytes: the host process before any model (python, torch, transformers, lm-eval, ray
# worker), measured 0.27 GB RSS for the imports alone here, more with Ray and loaded tasks; a CUDA context plus allocator slack ~1 GB.
HOST_RUNTIME_BYTES = int(0.5 * GB)
PEFT_HOST_BYTES = int(0.13 * GB)  # RSS that importing peft adds beside lm-eval (measured: 0.13 GB)
GPU_RUNTIME_BYTES = int(1.0 * GB)
# tokens: prompt length assumed when the plan cannot know it (probe prompts are short
# questions; chat templates add ~50-150 tokens).
DEFAULT_PROMPT_TOKENS = 256
# Saved activations per token per decoder layer of an HF Llama/Qwen2 forward, in units
# of (hidden, intermediate) elements of the compute dtype, plus the two fp32 RMSNorm
# inputs: q, k, v, rotated q and k, attention output, o_proj input, two norm outputs and
# residuals (~10 x hidden), gate, up, silu(gate), product (4 x intermediate).
ACT_HIDDEN_FACTOR = 10
ACT_INTERMEDIATE_FACTOR = 4
NAMED_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


_PROBE = ProbeConfig.model_fields
# Settings that are the probe's own keys, under the same names (settings_from_spec copies them).
PROBE_KEYS = (
    "micro_batch_size",
    "mini_batches",
    "logprob_chunk",
    "activation_checkpointing",
    "update",
    "lora_rank",
    "vllm_lora",
    "generator",
)


@dataclass(frozen=True)
class TrialSettings:
    """The spec settings the plan reads; `fixes` edit copies of this. Defaults are the
    sections' own (evals.probe.config.ProbeConfig, merge.config.MergeConfig)."""

    device: str = "cpu"  # where the trial computes: cuda or cpu
    dtype_bytes: int = 2  # live model / cache dtype
    source_device: str = MergeConfig.model_fields["source_device"].default  # cpu | same
    # completions per probe step (group_size x prompts_per_step)
    rollouts: int = _PROBE["group_size"].default * _PROBE["prompts_per_step"].default
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS
    new_tokens: int = _PROBE["max_new_tokens"].default
    micro_batch_size: int | None = _PROBE["micro_batch_size"].default  # None: all rollouts at once
    mini_batches: int = _PROBE["mini_batches"].default  # optimizer steps per probe step
    logprob_chunk: int | None = _PROBE["logprob_chunk"].default  # None: full [B, T, V] fp32
    activation_checkpointing: bool = _PROBE["activation_checkpointing"].default
    update: str = _PROBE["update"].default  # full | lora
    lora_rank: int = _PROBE["lora_rank"].default
    vllm_lora: str = _PROBE["vllm_lora"].default  # merged | requests: the adapter also lives in the engine
    generator: str = _PROBE["generator"].default  # hf | vllm
    probe: bool = True
    vllm: bool = False  # an engine lives in the worker (lm_eval backend vllm or generator vllm)
    vllm_utilization: float | None = None
    vllm_max_model_len: int = 4096
    vllm_max_num_seqs: int = 256
    gpu_memory_gb: float | None = None
    reward_params: int = 0
    reward_name: str = ""
    reference_params: int = 0  # evals.probe.reference's parameters; 0: the reference is the candidate

    @property
    def update_rows(self) -> int:
        """Rollouts per forward/backward of the update: the micro-batch, at most a mini-batch."""
        per_mini = max(1, self.rollouts // self.mini_batches)
        return min(self.micro_batch_size or per_mini, per_mini)


@dataclass(frozen=True)
class Part:
    name: str
    gpu: int  # bytes
    host: int  # bytes
    note: str = ""
    phase: str = "held"  # held: all trial long; update / generate / merge: only during that phase


def _peak(parts: list[Part], attr: str) -> int:
    """Held parts plus the largest phase (rollouts are freed before the update, and so on)."""
    held = sum(getattr(p, attr) for p in parts if p.phase == "held")
    phases = [sum(getattr(p, attr) for p in parts if p.phase == ph) for ph in ("update", "generate", "merge")]
    return held + max(phases)


@dataclass(frozen=True)
class MemoryPlan:
    parts: list[Part]
    settings: TrialSettings
    shape: ModelShape
    fixes: list[str] = field(default_factory=list)  # settings that would make it fit (when it does not)

    @property
    def gpu_bytes(self) -> int:
        """Peak GPU bytes: held parts + max(update phase, generate phase)."""
        return _peak(self.parts, "gpu")

    @property
    def host_bytes(self) -> int:
        return _peak(self.parts, "host")

    @property
    def fits(self) -> bool:
        limit = self.settings.gpu_memory_gb
        return limit is None or self.gpu_bytes <= limit * GB

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)

    def table(self) -> str:
        s = self.settings
        head = (
            f"  memory     per trial, {param_count(self.shape.params)} params, {s.rollouts} rollouts x "
            f"{s.prompt_tokens}+{s.new_tokens} tokens, micro-batch {s.update_rows}, update {s.update}"
            + (f" r{s.lora_rank}" if s.update == "lora" else "")
            + f", generator {s.generator}"
        )
        lines = [head, f"    {'part':<14}{'GPU GB':>9}{'host GB':>9}  note"]
        for p in self.parts:
            if p.gpu or p.host:
                when = "" if p.phase == "held" else f" ({p.phase} only)"
                lines.append(f"    {p.name:<14}{p.gpu / GB:>9.2f}{p.host / GB:>9.2f}  {p.note}{when}")
        limit = f" of {s.gpu_memory_gb:g} GB" if s.gpu_memory_gb is not None else ""
        verdict = "" if s.gpu_memory_gb is None else ("  fits" if self.fits else "  DOES NOT FIT")
        lines.append(f"    {'peak':<14}{self.gpu_bytes / GB:>9.2f}{self.host_bytes / GB:>9.2f}  GPU{limit}{verdict}")
        return "\n".join(lines)

    def refusal(self) -> str:
        s = self.settings
        msg = (
            f"resources.gpu_memory_gb: the trial needs about {self.gpu_bytes / GB:.1f} GB of GPU memory, more than "
            f"{s.gpu_memory_gb:g} GB (largest parts: "
            + ", ".join(f"{p.name} {p.gpu / GB:.1f}" for p in sorted(self.parts, key=lambda p: -p.gpu)[:3])
            + ")"
        )
        if self.fixes:
            msg += "; it would fit with: " + ", ".join(self.fixes)
        else:
            msg += "; no combination of the plan's settings fits: use a larger GPU or a smaller model"
        return msg


def plan_parts(shape: ModelShape, s: TrialSettings) -> list[Part]:
    """Bytes by part for one trial with these settings (see the module docstring)."""
    on_gpu = s.device == "cuda"
    P, b = shape.params, s.dtype_bytes

    def put(name: str, nbytes: int | float, note: str = "", *, gpu: bool = on_gpu, phase: str = "held") -> Part:
        nbytes = int(nbytes)
        return Part(name, nbytes if gpu else 0, 0 if gpu else nbytes, note, phase)

    sources_on_gpu = on_gpu and s.source_device == "same"
    pinned = " pinned" if on_gpu and not sources_on_gpu else ""
    parts = [
        put("sources", 3 * P * b, f"3 models{pinned}, merge.source_device {s.source_device}", gpu=sources_on_gpu),
        put("live model", P * b, "the candidate, merge dtype"),
    ]
    if (
        on_gpu and not sources_on_gpu
    ):  # one tensor's three sources on the device at a time (the embedding is the largest)
        parts.append(
            put(
                "source stream",
                3 * shape.vocab * shape.hidden * b,
                "largest tensor x 3, during the build",
                phase="merge",
            )
        )
    if s.probe:
        parts += _probe_parts(shape, s, put)
    if s.vllm:
        parts.append(_vllm_part(shape, s, put))
    if s.reward_params:
        parts.append(put("reward model", s.reward_params * b, s.reward_name))
    parts.append(
        Part(
            "runtime",
            GPU_RUNTIME_BYTES if on_gpu else 0,
            HOST_RUNTIME_BYTES,
            "CUDA context, process" if on_gpu else "process",
        )
    )
    return parts


def _probe_parts(shape: ModelShape, s: TrialSettings, put) -> list[Part]:
    P, b = shape.params, s.dtype_bytes
    parts = []
    R = s.reference_params
    if R:  # a fixed model for the KL term (full: the starting weights wait in host memory)
        parts.append(put("reference", R * b, "evals.probe.reference, frozen, for the KL term"))
        if s.update == "full":
            parts.append(Part("start copy", 0, P * b, "the starting weights, for the restore"))
    if s.update == "full":
        if not R:
            parts.append(put("reference", P * b, "frozen copy for the KL term"))
        if b < 4:
            parts.append(put("master", P * 4, "fp32 master weights"))
        trainable = P
    else:
        trainable = shape.lora_params_per_rank * s.lora_rank
        off = "" if R else "; reference = adapters off"
        parts.append(put("lora", trainable * 4, f"fp32 adapters, rank {s.lora_rank}{off}"))
        parts.append(Part("peft", 0, PEFT_HOST_BYTES, "peft's modules, host only"))
    parts.append(put("gradients", trainable * 4, "fp32"))
    parts.append(put("optimizer", trainable * 8, "Adam moments, fp32"))
    mb = s.update_rows
    tokens = mb * (s.prompt_tokens + s.new_tokens)
    per_layer_token = (
        b * (ACT_HIDDEN_FACTOR * shape.hidden + ACT_INTERMEDIATE_FACTOR * shape.intermediate) + 8 * shape.hidden
    )
    attn_scores = (
        mb * shape.heads * (s.prompt_tokens + s.new_tokens) ** 2 * 4 if s.device == "cpu" else 0
    )  # CPU SDPA saves them
    if s.activation_checkpointing:
        act = tokens * shape.hidden * b * shape.layers + tokens * per_layer_token + attn_scores // max(shape.layers, 1)
        note = f"checkpointed, micro-batch {mb}"
    else:
        act = tokens * per_layer_token * shape.layers + attn_scores
        note = f"micro-batch {mb}"
    parts.append(put("activations", act, note, phase="update"))
    V = shape.vocab
    if s.logprob_chunk is None:
        # bf16 logits kept for backward, fp32 copy, fp32 log-softmax and its gradient
        logits = tokens * V * (b + 4 + 4 + 4)
        note = "full [B,T,V] + fp32 log-softmax"
    else:
        chunk = min(s.logprob_chunk, tokens)
        logits = chunk * V * (b + 4 + 4 + 4) + tokens * shape.hidden * b
        note = f"chunks of {chunk} tokens"
    parts.append(put("logits", logits, note, phase="update"))
    if s.generator == "hf":
        rollout = s.rollouts * (s.prompt_tokens + s.new_tokens) * shape.kv_bytes_per_token(b) + s.rollouts * V * 4
        parts.append(put("rollout cache", rollout, "HF generate KV cache", phase="generate"))
    return parts


def _vllm_part(shape: ModelShape, s: TrialSettings, put) -> Part:
    b = s.dtype_bytes
    weights = shape.params * b
    if s.probe and s.update == "lora" and s.vllm_lora == "requests" and s.generator == "vllm":
        weights += shape.lora_params_per_rank * s.lora_rank * b  # the one adapter slot (max_loras 1)
    if s.device == "cuda":
        if s.vllm_utilization is not None and s.gpu_memory_gb is not None:
            # vLLM reserves utilization x the GPU (its weights inside); it needs room for at
            # least one max_model_len sequence or it refuses to start.
            least = weights + s.vllm_max_model_len * shape.kv_bytes_per_token(b)
            total = max(s.vllm_utilization * s.gpu_memory_gb * GB - GPU_RUNTIME_BYTES, least)
            return Part(
                "vllm",
                int(total),
                0,
                f"gpu_memory_utilization {s.vllm_utilization:g}: weights {weights / GB:.1f} + KV cache",
            )
        seqs = min(s.vllm_max_num_seqs, max(s.rollouts, 1))
        kv = seqs * s.vllm_max_model_len * shape.kv_bytes_per_token(b)
        return Part("vllm", int(weights + kv), 0, f"weights + KV for {seqs} x {s.vllm_max_model_len} tokens")
    return Part("vllm", 0, int(weights + 1 * GIB), "weights + VLLM_CPU_KVCACHE_SPACE=1 GiB")


def settings_from_spec(
    spec: SweepSpec, shape: ModelShape, *, reward_params: int = 0, reference_params: int = 0
) -> TrialSettings:
    """TrialSettings for a SweepSpec (its merge, evals and resources sections)."""
    res = spec.resources
    on_gpu = res.gpus_per_trial > 0 and spec.merge.device != "cpu"
    dtype_bytes = NAMED_DTYPE_BYTES.get(spec.merge.dtype, shape.stored_bytes)
    probe = spec.evals.probe
    lm = spec.evals.lm_eval
    vllm_args = dict(lm.vllm) if lm is not None else {}
    generator = probe.generator if probe is not None else "hf"
    uses_vllm = (lm is not None and lm.backend == "vllm") or generator == "vllm"
    kwargs: dict[str, Any] = {}
    if probe is not None:
        kwargs = {key: getattr(probe, key) for key in PROBE_KEYS}
        kwargs.update(rollouts=probe.group_size * probe.prompts_per_step, new_tokens=probe.max_new_tokens)
    util = vllm_args.get("gpu_memory_utilization")
    return TrialSettings(
        device="cuda" if on_gpu else "cpu",
        dtype_bytes=dtype_bytes,
        source_device=spec.merge.source_device,
        probe=probe is not None,
        vllm=uses_vllm,
        vllm_utilization=float(util) if util is not None else (0.9 if uses_vllm and on_gpu else None),
        vllm_max_model_len=int(vllm_args.get("max_model_len", 4096)),
        vllm_max_num_seqs=int(vllm_args.get("max_num_seqs", 256)),
        gpu_memory_gb=res.gpu_memory_gb,
        reward_params=reward_params,
        reward_name="evals.probe.reward.model" if reward_params else "",
        reference_params=reference_params,
        **kwargs,
    )


# What the refusal may suggest, tried in this order and kept cumulatively until the plan
# fits: (spec setting as the user writes it, how it changes the settings).
def _fix_candidates(s: TrialSettings) -> list[tuple[str, TrialSettings]]:
    out = []
    if s.device == "cuda" and s.source_device == "same":
        out.append(("merge.source_device: cpu", replace(s, source_device="cpu")))
    if s.logprob_chunk is None or s.logprob_chunk > 1024:
        out.append(("evals.probe.logprob_chunk: 1024", replace(s, logprob_chunk=1024)))
    for mb in (8, 4, 2, 1):
        if s.update_rows > mb:
            out.append((f"evals.probe.micro_batch_size: {mb}", replace(s, micro_batch_size=mb)))
            break
    if not s.activation_checkpointing and s.probe:
        out.append(("evals.probe.activation_checkpointing: true", replace(s, activation_checkpointing=True)))
    if s.update == "full" and s.probe:
        out.append(("evals.probe.update: lora", replace(s, update="lora")))
    if s.vllm and s.vllm_utilization is not None:
        for util in (0.4, 0.3, 0.25, 0.2):
            if util < s.vllm_utilization:
                out.append((f"evals.lm_eval.vllm.gpu_memory_utilization: {util}", replace(s, vllm_utilization=util)))
    return out


def find_fixes(shape: ModelShape, s: TrialSettings) -> list[str]:
    """The fewest leading settings from _fix_candidates that together make the plan fit."""
    if s.gpu_memory_gb is None:
        return []
    chosen: list[str] = []
    current = s
    for _ in range(12):
        if _peak(plan_parts(shape, current), "gpu") <= s.gpu_memory_gb * GB:
            return chosen
        options = _fix_candidates(current)
        if not options:
            return []
        # take the option that saves the most GPU memory
        best = min(options, key=lambda o: _peak(plan_parts(shape, o[1]), "gpu"))
        chosen = [c for c in chosen if not c.startswith(best[0].split(":")[0] + ":")] + [best[0]]
        current = best[1]
    return []


def plan_trial(spec: Any, infos: dict[str, Any], *, prompt_tokens: int | None = None) -> MemoryPlan:
    """The memory plan of one trial of `spec`; `infos` from merge.checkpoint (headers only)."""
    shape = ModelShape.from_info(infos["pretrained"])
    probe = spec.evals.probe
    reward_params = _params_of(probe.reward.model if probe is not None else None)
    reference_params = _params_of(probe.reference if probe is not None else None)
    settings = settings_from_spec(spec, shape, reward_params=reward_params, reference_params=reference_params)
    if prompt_tokens is not None:
        settings = replace(settings, prompt_tokens=prompt_tokens)
    parts = plan_parts(shape, settings)
    plan = MemoryPlan(parts=parts, settings=settings, shape=shape)
    if not plan.fits:
        plan = replace(plan, fixes=find_fixes(shape, settings))
    return plan


def _params_of(folder: str | None) -> int:
    """The parameters of the checkpoint at `folder` (headers only); 0 for None or one that
    cannot be read (its problems are reported by the spec checks)."""
    if not folder:
        return 0
    try:
        from merge.checkpoint import inspect_checkpoint

        return ModelShape.from_info(inspect_checkpoint(folder)).params
    except Exception:
        return 0


def param_count(params: int) -> str:
    """7.62B, 0.81M, 85.0K: billions from 1e9, millions from 1e5, else thousands."""
    if params >= 1e9:
        return f"{params / 1e9:.2f}B"
    return f"{params / 1e6:.2f}M" if params >= 1e5 else f"{params / 1e3:.1f}K"
