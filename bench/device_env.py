"""What a benchmark ran on: GPU, driver, torch, CUDA, Triton, megatron-core, and two measured ceilings.

The datasheet's peak is a lead, not a ceiling (the device notes measured 770-800 TFLOP/s bf16 on
an H200 rated 989), so on CUDA this also times a large bf16 matrix product on random data and a
device-to-device copy: MFU read against both tells the kernel gap from the datasheet gap.
Prints and appends a markdown section (benchdoc) and writes `--json` for the GPU check's record.

    python bench/device_env.py [--json env.json] [--no-doc]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from benchdoc import append_section

MATMUL_N = 8192
COPY_BYTES = 4 << 30


@dataclass(frozen=True)
class DeviceEnv:
    device: str
    driver: str
    python: str
    torch: str
    cuda: str
    triton: str
    megatron_core: str
    datasheet_tflops: float | None  # grow_cli.planning.hardware's peak dense bf16 for this device
    matmul_tflops: float | None  # measured: bf16 MATMUL_N^3 product on random data
    copy_tb_s: float | None  # measured: device-to-device copy, bytes read + written


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def _driver() -> str:
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "no nvidia-smi"
    return proc.stdout.strip() or "unknown"


def _median_ms(fn, repeats: int = 10) -> float:
    """Median of `repeats` CUDA-event timings of `fn` after three warm-ups."""
    import torch

    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def ceilings() -> tuple[float, float]:
    """(bf16 matmul TFLOP/s, copy TB/s) measured on the current CUDA device."""
    import torch

    a, b = (torch.randn(MATMUL_N, MATMUL_N, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    matmul = 2 * MATMUL_N**3 / (_median_ms(lambda: a @ b) * 1e-3) / 1e12
    del a, b
    src = torch.randn(COPY_BYTES // 4, device="cuda")
    dst = torch.empty_like(src)
    copy = 2 * COPY_BYTES / (_median_ms(lambda: dst.copy_(src)) * 1e-3) / 1e12
    del src, dst
    torch.cuda.empty_cache()
    return matmul, copy


def probe() -> DeviceEnv:
    import torch

    from grow_cli.training.metrics import device_peak_flops

    name, peak = device_peak_flops()
    cuda = torch.cuda.is_available()
    matmul, copy = ceilings() if cuda else (None, None)
    triton = _version("triton")
    return DeviceEnv(
        device=name,
        driver=_driver() if cuda else "-",
        python=platform.python_version(),
        torch=torch.__version__,
        cuda=torch.version.cuda or "none",
        triton=triton,
        megatron_core=_version("megatron-core"),
        datasheet_tflops=None if peak is None else peak / 1e12,
        matmul_tflops=matmul,
        copy_tb_s=copy,
    )


def render(env: DeviceEnv) -> str:
    def number(value: float | None, unit: str) -> str:
        return "-" if value is None else f"{value:.0f} {unit}" if value >= 10 else f"{value:.2f} {unit}"

    return "\n".join([
        f"## Device environment: {env.device} ({datetime.date.today().isoformat()})",
        "",
        "| device | driver | Python | torch | CUDA | Triton | megatron-core | datasheet bf16 | measured bf16 matmul | measured copy |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {env.device} | {env.driver} | {env.python} | {env.torch} | {env.cuda} | {env.triton} | {env.megatron_core} | "
        f"{number(env.datasheet_tflops, 'TFLOP/s')} | {number(env.matmul_tflops, 'TFLOP/s')} | {number(env.copy_tb_s, 'TB/s')} |",
        "",
        *([f"- measured: median of 10 CUDA-event timings after 3 warm-ups; {MATMUL_N}^3 bf16 product on random data; "
           f"{COPY_BYTES >> 30} GiB fp32 device-to-device copy counting bytes read plus written", ""]
          if env.matmul_tflops is not None else []),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write the environment as JSON here")
    parser.add_argument("--no-doc", action="store_true", help="do not append to docs/benchmarks.md")
    args = parser.parse_args()
    env = probe()
    report = render(env)
    print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(env), indent=1))
    if not args.no_doc:
        append_section(report)


if __name__ == "__main__":
    main()
