"""SNN against ANN on a GPU: wall time, peak memory and kernel launches per forward of converted
Llama decoders with random weights (the 135M, 1.1B and 6.7B shapes: weights do not change the
speed) and of SmolLM2-135M when its asset is installed, at T in {4, 8, 16}, in float32 and bfloat16.

    python benchmarks/gpu_bench.py                          # every model, T and dtype (needs CUDA)
    python benchmarks/gpu_bench.py --models 135m,1b --T 16 --dtypes bf16
    python benchmarks/gpu_bench.py --cpu-interpret          # seconds: a tiny Llama, CPU tensors, Triton interpreter

The operators run on the backend ``SPIKINGJELLY_MBE_BACKEND`` picks (by default ``triton`` on CUDA;
:mod:`spikingjelly_mbe.kernels.backend`). Batch 4 x 256 tokens. Time: the minimum over repeats
of a synchronised forward. Peak memory: the forward's peak allocation, the SNN's less the ANN's
weights (which stay resident). Launches: CUDA kernels in the profiler's trace of one forward; under
``--cpu-interpret`` the ops dispatched instead (each custom op once), and the SNN's output is
compared with the ``torch`` backend's. Without a CUDA device (and without ``--cpu-interpret``) it
says so and exits 0. The table goes to ``--out`` (``results/gpu``) as markdown and CSV.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments.tables import Row, markdown, write_csv  # noqa: E402

SHAPES: Dict[str, Dict[str, int]] = {
    "tiny": dict(hidden_size=64, intermediate_size=160, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=256),
    "135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, vocab_size=49152),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=32000),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000),
}
PRETRAINED = "smollm2"  # the real SmolLM2-135M, when its asset is installed
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
COLUMNS = ("model", "dtype", "T", "backend", "ann_ms", "snn_ms", "snn_over_ann", "ann_peak_GiB", "snn_peak_GiB",
           "memory_snn_over_ann", "ann_launches", "snn_launches", "cos_min", "same_as_torch", "error")
NO_CUDA = "gpu_bench: no CUDA device, nothing to measure (use --cpu-interpret for the CPU smoke run)"


class DispatchCount(TorchDispatchMode):
    """Ops dispatched inside the block (a custom op once: what it runs inside is not seen)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(forward: Callable[[], object], device: torch.device, repeats: int) -> float:
    """The fastest of ``repeats`` synchronised calls, after one warm-up when ``repeats > 1``."""
    if repeats > 1:
        forward()
        synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        forward()
        synchronize(device)
        best = min(best, time.perf_counter() - began)
    return best


def peak_gib(forward: Callable[[], object], device: torch.device) -> Optional[float]:
    """The peak allocation of one forward (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    forward()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2 ** 30


def launches(forward: Callable[[], object], device: torch.device) -> int:
    """CUDA kernels launched by one forward, or the ops dispatched on the CPU."""
    if device.type != "cuda":
        with DispatchCount() as count:
            forward()
        return count.ops
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        forward()
        synchronize(device)
    return sum(1 for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA)


def build(name: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A random-init Llama of shape ``name``, or the pretrained SmolLM2-135M, on ``device`` in ``dtype``."""
    if name == PRETRAINED:
        from spikingjelly_mbe.models.smollm2 import load_smollm2
        model = load_smollm2()[0]
    else:
        from transformers import LlamaConfig, LlamaForCausalLM
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(max_position_embeddings=1024, **SHAPES[name]))
    return model.to(device=device, dtype=dtype).eval()


def measure(name: str, dtype_name: str, T: int, device: torch.device, batch: int, length: int,
            repeats: int) -> Row:
    """One row: ANN and SNN of model ``name`` in ``dtype_name`` at ``T`` steps."""
    from spikingjelly_mbe import convert
    from spikingjelly_mbe.kernels import backend
    row: Row = {"model": name, "dtype": dtype_name, "T": T, "backend": backend.configured() or backend.default_for(device)}
    model = build(name, device, DTYPES[dtype_name])
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    calib = [{"input_ids": torch.randint(0, vocab, (batch, length), generator=g).to(device)} for _ in range(2)]
    inputs = {"input_ids": torch.randint(0, vocab, (batch, length), generator=g).to(device)}
    with torch.no_grad():
        ann = lambda: model(**inputs).logits  # noqa: E731
        row["ann_ms"] = 1e3 * seconds(ann, device, repeats)
        row["ann_peak_GiB"] = peak_gib(ann, device)
        row["ann_launches"] = launches(ann, device)
        reference = ann().float()
        snn_model = convert(model, T=T, calib_data=calib)
        snn = lambda: snn_model(**inputs).logits  # noqa: E731
        row["snn_ms"] = 1e3 * seconds(snn, device, repeats)
        peak = peak_gib(snn, device)
        if peak is not None:
            weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2 ** 30
            row["snn_peak_GiB"] = peak - weights
            row["memory_snn_over_ann"] = row["snn_peak_GiB"] / row["ann_peak_GiB"]
        row["snn_launches"] = launches(snn, device)
        out = snn().float()
        row["cos_min"] = float(F.cosine_similarity(out.flatten(1), reference.flatten(1), dim=1).min())
        if device.type == "cpu":
            with backend.use("torch"):
                row["same_as_torch"] = bool(torch.equal(snn(), out.to(DTYPES[dtype_name])))
    row["snn_over_ann"] = row["snn_ms"] / row["ann_ms"]
    return row


def parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=f"135m,1b,7b,{PRETRAINED}", help="comma-separated: tiny, 135m, 1b, 7b, smollm2")
    p.add_argument("--T", default="4,8,16", help="comma-separated timesteps")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cpu-interpret", action="store_true",
                   help="smoke run: the tiny Llama at T=8 in float32 on CPU tensors, the triton backend in the "
                        "Triton interpreter, 1 x 8 tokens")
    p.add_argument("--out", type=Path, default=Path("results/gpu"))
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> List[Row]:
    args = parse(argv)
    from spikingjelly_mbe.kernels import backend
    chosen = contextlib.nullcontext()
    if args.cpu_interpret:
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("gpu_bench --cpu-interpret: triton was imported before the interpreter was switched on; "
                             "run with TRITON_INTERPRET=1 in the environment")
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
        chosen = backend.use("triton")
        device, models, steps, dtypes = torch.device("cpu"), ["tiny"], [8], ["fp32"]
        args.batch, args.length, args.repeats = 1, 8, 1
    elif not torch.cuda.is_available():
        print(NO_CUDA)
        return []
    else:
        device = torch.device("cuda")
        models, steps, dtypes = args.models.split(","), [int(t) for t in args.T.split(",")], args.dtypes.split(",")
    unknown = sorted(set(models) - set(SHAPES) - {PRETRAINED}) + sorted(set(dtypes) - set(DTYPES))
    if unknown:
        raise SystemExit(f"gpu_bench: unknown model or dtype {unknown}; models: {[*SHAPES, PRETRAINED]}, dtypes: "
                         f"{list(DTYPES)}")
    rows: List[Row] = []
    for name in models:
        for dtype_name in dtypes:
            for T in steps:
                try:
                    with chosen:
                        row = measure(name, dtype_name, T, device, args.batch, args.length, args.repeats)
                except Exception as err:  # a missing asset or a failed conversion is a row, not the end of the run
                    row = {"model": name, "dtype": dtype_name, "T": T, "error": f"{type(err).__name__}: {err}"[:300]}
                rows.append(row)
                print(markdown([row], COLUMNS), flush=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_bench.md").write_text(markdown(rows, COLUMNS))
    write_csv(rows, args.out / "gpu_bench.csv")
    return rows


if __name__ == "__main__":
    logging.getLogger("spikingjelly_mbe").setLevel(logging.ERROR)  # clamp warnings of random-init models
    main()
