"""Benchmark: `grow data prepare` tokens/s against the tokenizer library called directly.

For each tokenizer (GPT-2 through tiktoken; a byte-level BPE trained here on the same corpus,
through `tokenizers`) it times, on the shipped Shakespeare corpus under .cache/assets:

* `direct`: the library itself in one process, one document at a time, nothing written
  (tiktoken `encode_ordinary`, tokenizers `encode`) - the baseline;
* `prepare -w N`: the full `grow data prepare` pipeline (reading, worker processes, megatron's
  indexed-dataset writer, the sidecar) for each worker count.

The corpus is small (42 works, ~5.5 MB), so process start-up weighs on the multi-worker rows;
the table says what a user gets on it. Results are printed and appended to docs/benchmarks.md.

    python bench/tokenize_throughput.py [--workers 1,2] [--repeat 2] [--no-doc]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from benchdoc import append_section

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _direct(tokenizer, texts: list[str], repeat: int) -> tuple[int, float]:
    """(tokens, best seconds) of the library's own encoder, one process, one text at a time."""
    backend = getattr(tokenizer, "encoding", None)
    if backend is not None:
        encode = backend.encode_ordinary
    else:
        encode = lambda text: tokenizer.backend.encode(text, add_special_tokens=False).ids  # noqa: E731
    best, tokens = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        tokens = sum(len(encode(text)) for text in texts)
        best = min(best, time.perf_counter() - start)
    return tokens, best


def _prepare(spec: str, workers: int, scratch: Path, repeat: int) -> tuple[int, float]:
    from grow_cli.data.prepare import PrepareConfig, prepare, prepare_job

    best, tokens = float("inf"), 0
    for attempt in range(repeat):
        config = PrepareConfig(inputs=("shakespeare",), out=str(scratch / f"w{workers}-{attempt}"), tokenizer=spec,
                               workers=workers, force=True)
        start = time.perf_counter()
        info = prepare(prepare_job(config)).info
        best = min(best, time.perf_counter() - start)
        tokens = info.train.tokens + info.valid.tokens - info.train.documents - info.valid.documents  # no EOS
    return tokens, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--bpe-vocab", type=int, default=8192)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from grow_cli.data.bpe import BPETrainingConfig, train_bpe
    from grow_cli.data.corpus import shakespeare_files
    from grow_cli.data.tokenizer import load_tokenizer

    texts = [path.read_text(encoding="utf-8") for path in shakespeare_files()]
    megabytes = sum(len(text.encode("utf-8")) for text in texts) / 1e6
    rows = []
    with tempfile.TemporaryDirectory(prefix="grow-bench-tok-") as scratch:
        scratch = Path(scratch)
        train_bpe(BPETrainingConfig(inputs=("shakespeare",), out=str(scratch / "bpe"), vocab_size=args.bpe_vocab))
        for label, spec in (("gpt2 (tiktoken)", "gpt2"), (f"BPE {args.bpe_vocab} (tokenizers)", str(scratch / "bpe"))):
            tokens, seconds = _direct(load_tokenizer(spec), texts, args.repeat)
            rows.append((label, "direct, 1 process", tokens, seconds))
            for workers in (int(w) for w in args.workers.split(",")):
                prepared, seconds = _prepare(spec, workers, scratch, args.repeat)
                assert prepared == tokens, (prepared, tokens)  # the same ids, whatever the path
                rows.append((label, f"grow data prepare -w {workers}", prepared, seconds))
    table = ["| tokenizer | path | tokens | seconds | tokens/s |", "|---|---|---:|---:|---:|"]
    table += [f"| {a} | {b} | {t:,} | {s:.2f} | {t / s:,.0f} |" for a, b, t, s in rows]
    section = "\n".join(
        [
            f"## Tokenizing throughput ({datetime.date.today().isoformat()})",
            "",
            f"`python bench/tokenize_throughput.py --workers {args.workers} --repeat {args.repeat}` on "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s) (shared), Shakespeare corpus "
            f"({len(texts)} works, {megabytes:.1f} MB); best of {args.repeat}. `prepare` includes reading, "
            "worker start-up, writing the indexed datasets and the sidecar.",
            "",
            *table,
        ]
    )
    print(section)
    if not args.no_doc:
        append_section(section)


if __name__ == "__main__":
    main()
