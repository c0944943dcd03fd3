"""`grow export` / `grow import`: Hugging Face Llama directories <-> grow's torch_dist checkpoints.

hf_config (ModelShape <-> config.json), mapping (megatron keys <-> HF keys, QKV/fc1 packing),
safetensors_io (shards written and read tensor by tensor), tokenizer_files (HF tokenizer files of
any grow tokenizer), export, import_, cli.
"""
