"""`grow series`: the whole series (pretrain, expand, pretrain, ..., eval, report) as one resumable command."""
