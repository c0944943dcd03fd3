"""`grow distill`: self-distillation for hidden-state convergence (spec §2), on `grow pretrain`'s loop."""
