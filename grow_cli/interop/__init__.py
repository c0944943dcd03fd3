"""`grow export` / `grow import`: Hugging Face Llama directories <-> grow's torch_dist checkpoints.

hf_config (ModelShape <-> config.json), mapping (megatron keys <-> HF keys, QKV/fc1 packing),
safetensors_io (shards written and read tensor by tensor), tokenizer_files (GPT-2's HF tokenizer
from tiktoken ranks), export, import_, cli.
"""
