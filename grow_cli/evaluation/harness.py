"""lm-evaluation-harness adapter: a grow checkpoint as an in-process `lm_eval` language model.

`GrowLM` subclasses lm-eval's `TemplateLM`, which owns the request conventions (the
context/continuation split, trailing spaces moved into the continuation, EOS as the context of an
empty prompt); this class only turns token ids into scores with the megatron model:

* loglikelihood: Σ log p(continuation tokens | context), and whether greedy decoding reproduces
  the continuation. Inputs longer than the model's seq_len keep their last seq_len + 1 tokens.
* loglikelihood_rolling: lm-eval's own rolling windows (`get_rolling_token_windows`, EOS prefix,
  every token predicted once with as much context as fits), summed per document.
* generate_until: greedy decoding until a stop string, EOS or `max_gen_toks`.

Under tensor parallelism every rank runs the same evaluation in lockstep (each forward is a
collective) and lm-eval builds results on rank 0 only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM

from grow_cli.data.tokenizer import Tokenizer
from grow_cli.evaluation.forward import EvalModel

DEFAULT_MAX_GEN_TOKS = 256

# progress(label, total) -> advance(n): how the CLI shows a bar without the adapter knowing rich
ProgressFactory = Callable[[str, int], Callable[[int], None]]


class GrowLM(TemplateLM):
    """lm-eval model over an `EvalModel` and the tokenizer it was trained with."""

    backend = "causal"

    def __init__(self, model: EvalModel, tokenizer: Tokenizer, batch_size: int = 8, progress: ProgressFactory | None = None):
        super().__init__()
        self.model = model
        self.grow_tokenizer = tokenizer
        self.batch_size = batch_size
        self.progress = progress

    # ---- what lm-eval asks of a model --------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.grow_tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self.model.seq_len

    @property
    def tokenizer_name(self) -> str:
        return self.grow_tokenizer.name

    def get_model_info(self) -> dict:
        return {"checkpoint": str(self.model.path), "shape": self.model.shape.describe(), "tp": self.model.tp}

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.grow_tokenizer.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.grow_tokenizer.decode(tokens)

    def encode_request(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Token ids of one (context, continuation) request, encoded as `TemplateLM.loglikelihood`
        encodes it (so per-layer readouts score exactly what lm-eval scores)."""
        if context:
            return self._encode_pair(context, continuation)
        tokens = self.tok_encode(continuation)
        if tokens and tokens[0] == self.prefix_token_id:
            return tokens[:1], tokens[1:]
        return [self.prefix_token_id], tokens

    # ---- scoring -----------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """TemplateLM's encoding, without its tqdm bar (progress comes through `progress`)."""
        return super().loglikelihood(requests, disable_tqdm=True)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """requests: ((context, continuation) or None, context ids, continuation ids)."""
        pairs = [(list(context), list(continuation)) for _, context, continuation in requests]
        return self.score_pairs(pairs, label="loglikelihood")

    def score_pairs(self, pairs: list[tuple[list[int], list[int]]], label: str = "scoring") -> list[tuple[float, bool]]:
        """(log p(continuation | context), greedy) for token-id pairs, batched longest first."""
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        advance = self.progress(label, len(pairs)) if self.progress else None
        for start in range(0, len(order), self.batch_size):
            indices = order[start : start + self.batch_size]
            windows = [(pairs[i][0] + pairs[i][1])[-(self.max_length + 1) :][:-1] for i in indices]
            width = max(len(w) for w in windows)
            tokens = torch.full((len(windows), width), self.eot_token_id, dtype=torch.long)
            for row, window in enumerate(windows):
                tokens[row, : len(window)] = torch.tensor(window)
            logits = self.model.forward(tokens).logits
            for row, index in enumerate(indices):
                end = len(windows[row])
                continuation = pairs[index][1][-end:]  # a continuation longer than the window: its tail
                scored = logits[row, end - len(continuation) : end].log_softmax(dim=-1)
                target = torch.tensor(continuation, device=scored.device)
                loglik = float(scored.gather(1, target[:, None]).double().sum())
                greedy = bool((scored.argmax(dim=-1) == target).all())
                results[index] = (loglik, greedy)
            if advance:
                advance(len(indices))
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows_per_doc = []
        pairs: list[tuple[list[int], list[int]]] = []
        for (string,) in (request.args for request in requests):
            windows = [
                lm_utils.make_disjoint_window(window)
                for window in lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            windows_per_doc.append(len(windows))
            pairs.extend(windows)
        scores = self.score_pairs(pairs, label="loglikelihood_rolling")
        totals, cursor = [], 0
        for count in windows_per_doc:
            totals.append(sum(score for score, _ in scores[cursor : cursor + count]))
            cursor += count
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        advance = self.progress("generate_until", len(requests)) if self.progress else None
        outputs = []
        for context, gen_kwargs in (request.args for request in requests):
            outputs.append(self._greedy(context, dict(gen_kwargs or {})))
            if advance:
                advance(1)
        return outputs

    def _greedy(self, context: str, gen_kwargs: dict) -> str:
        """Greedy continuation of `context` (sampling options are ignored: greedy by design)."""
        until = gen_kwargs.get("until") or [self.tok_decode([self.eot_token_id])]
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(gen_kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        budget = max(1, self.max_length - max_new)
        tokens = self.tok_encode(context)[-budget:] or [self.eot_token_id]
        generated: list[int] = []
        text = ""
        for _ in range(max_new):
            window = (tokens + generated)[-self.max_length :]
            logits = self.model.forward(torch.tensor([window])).logits
            next_token = int(logits[0, -1].argmax())
            if next_token == self.eot_token_id:
                break
            generated.append(next_token)
            text = self.tok_decode(generated)
            if any(stop in text for stop in until):
                break
        for stop in until:
            text = text.split(stop)[0]
        return text
