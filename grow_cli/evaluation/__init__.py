"""`grow eval`: perplexity, zero-shot tasks through lm-evaluation-harness, and layer-wise
convergence diagnostics (movement, C_model, logit lens, block influence, angular distance).

Modules: forward (megatron forward + residual-stream capture), text (validation token streams),
perplexity, lens (logit lens over `grow_kernels.linear_divergence`), diagnostics (residual-stream geometry),
harness (the lm-eval adapter), tasks (lm-eval configs on local data), runner (one checkpoint),
command (the whole request), report (tables), plots, series (training runs and loss curves), cli.
"""
