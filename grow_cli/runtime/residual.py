"""The residual stream of megatron-core's GPTModel, captured during an ordinary forward.

Layer diagnostics (`grow eval`) and self-distillation (`grow distill`, spec §2) both need the
PRE-NORM residual stream: the output of the embedding (h_{-1}) and of every decoder layer, before
the final RMSNorm mixes in. Forward hooks on `model.embedding` and on each `TransformerLayer`
capture exactly those tensors ([s, b, h] in megatron) during the same forward that produces the
output; `states[i]` is the input of layer i, `states[L]` the input of the final norm. Evaluation
detaches them; distillation keeps their autograd graph, because its loss is a function of them.

`final_hidden` makes the same forward stop after the decoder (whose last step is the final norm)
instead of running the LM head: distillation reads every state through the head with the fused
kernel (grow_kernels), which never materialises [tokens, vocab] logits, so computing the model's
own logits would be an [N, V] tensor nobody uses. GPTModel reads its `post_process` flag at
forward time (`_postprocess` returns the hidden states when it is off), so flipping it for one
call is megatron's own code path for a stage that does not own the head.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def residual_stream(model, sink: list[torch.Tensor], *, detach: bool = True):
    """Append the embedding output and each decoder layer's output ([s, b, h]) to `sink` during
    the forwards inside the block; `detach=False` keeps them differentiable."""

    def keep(_module, _inputs, output):
        state = output[0] if isinstance(output, tuple) else output
        sink.append(state.detach() if detach else state)

    handles = [model.embedding.register_forward_hook(keep)]
    handles += [layer.register_forward_hook(keep) for layer in model.decoder.layers]
    try:
        yield sink
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def final_hidden(model):
    """Inside the block, `model(...)` returns final_norm(h_L) [s, b, h] instead of logits."""
    saved = model.post_process
    model.post_process = False
    try:
        yield
    finally:
        model.post_process = saved


def output_weight(model) -> torch.Tensor:
    """This rank's LM head [V / tp, h] (the embedding when they are tied), as a parameter."""
    if model.share_embeddings_and_output_weights:
        return model.shared_embedding_or_output_weight()
    return model.output_layer.weight
