"""`grow data prepare`, `grow data tokenizer` (bpe.py) and the training-side dataset API.

Text goes in once (`prepare`: tokenize with worker processes, write megatron-core's indexed
dataset plus a JSON sidecar); training, eval and export read it back through `datasets`
(megatron-core's GPTDataset, deterministic and resumable) and `tokenizer` (the same encoding, named by the `tokenizer_record` the sidecar and checkpoint keep).
"""
