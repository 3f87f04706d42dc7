rule evaluate:
    """Perplexity on each held-out set and the 7 few-shot tasks, one JSON per variant;
    early-exit variants and their parents also at every loop's exit and at confidence
    thresholds (`rrt eval --exits`)."""
    input:
        model=final_dir,
        data=lambda wc: f"results/data/tokens/{variant(wc).base}",
    output:
        "results/eval/{variant}.json",
    params:
        ppl=lambda wc, input: " ".join(f"--ppl {s}={input.data}/heldout_{s}" for s in heldout_sets()),
        # the keys this job uses (a whole-section param would rerun every job when one key changes)
        eval_cfg={k: config["eval"][k] for k in ("source", "batch_size", "prompt_format", "precision")},
        tasks=",".join(config["eval"]["tasks"]) or "none",
        limit=optional_args(limit=config["eval"]["limit"]),
        exits=lambda wc: exit_eval_args(wc.variant),
        # harness tasks from a cache filled by `rrt fetch-eval-data`: read offline, never the hub
        offline=harness_cache_env(),
        data_cache=harness_cache_args(),
    log:
        "results/logs/evaluate/{variant}.log",
    benchmark:
        "results/benchmarks/evaluate/{variant}.tsv"
    priority: chain_priority
    threads: threads_of("evaluate")
    resources:
        **resources_of("evaluate"),
    conda:
        "../../envs/eval.yaml"
    shell:
        "{params.offline}OMP_NUM_THREADS={threads} rrt eval --model {input.model} --out {output} {params.ppl} "
        "--tasks {params.tasks} --source {params.eval_cfg[source]} {params.limit} "
        "--batch-size {params.eval_cfg[batch_size]} --prompt-format {params.eval_cfg[prompt_format]} "
        "--precision {params.eval_cfg[precision]} --workdir results/eval/tasks {params.data_cache}{params.exits} "
        "> {log} 2>&1"


rule throughput:
    """Serving throughput of the variants whose `throughput` column is true: the depth-wise
    batching engine (early-exit variants also exiting at each task threshold) against the
    full-size original's `generate`, side by side in one job (`rrt throughput`)."""
    input:
        model=final_dir,
        original=lambda wc: base_dir(variant(wc).base),
        data=lambda wc: f"results/data/tokens/{variant(wc).base}",
    output:
        "results/throughput/{variant}.json",
    params:
        # the keys this job uses, so editing the others reruns nothing
        cfg={k: config["throughput"][k] for k in ("prompts", "max_new_tokens", "max_batch", "exit_kv", "same_memory", "seed")},
        prompt_tokens=",".join(str(n) for n in config["throughput"]["prompt_tokens"]),
        exits=lambda wc: throughput_exit_args(wc.variant),
        heldout=throughput_heldout(),
        memory="" if config["throughput"]["same_memory"] else "no-",
    log:
        "results/logs/throughput/{variant}.log",
    benchmark:
        "results/benchmarks/throughput/{variant}.tsv"
    priority: chain_priority
    threads: threads_of("evaluate")
    resources:
        **resources_of("evaluate"),
    conda:
        "../../envs/eval.yaml"
    shell:
        "OMP_NUM_THREADS={threads} rrt throughput --model {input.model} --original {input.original} "
        "--heldout {input.data}/heldout_{params.heldout} --out {output} --prompts {params.cfg[prompts]} "
        "--prompt-tokens {params.prompt_tokens} --max-new-tokens {params.cfg[max_new_tokens]} "
        "--max-batch {params.cfg[max_batch]} --exit-kv {params.cfg[exit_kv]} --seed {params.cfg[seed]} "
        "--{params.memory}same-memory "
        "{params.exits} > {log} 2>&1"


rule simulate:
    """The paper's throughput procedure for the variants whose `throughput` column is true:
    decoding steps timed at each batch size on dummy inputs (the model and its full-size
    original side by side), then vanilla, continuous sequence-wise and depth-wise batching
    simulated with the exits the evaluation measured (oracle; early-exit variants also each
    task threshold) (`rrt simulate`)."""
    input:
        model=final_dir,
        original=lambda wc: base_dir(variant(wc).base),
        eval="results/eval/{variant}.json",
    output:
        "results/simulate/{variant}.json",
    params:
        cfg=config["throughput"]["simulate"],
        memory=optional_args(memory_mb=config["throughput"]["simulate"]["memory_mb"]),
        exits=lambda wc: throughput_exit_args(wc.variant),
        heldout=throughput_heldout(),
    log:
        "results/logs/simulate/{variant}.log",
    benchmark:
        "results/benchmarks/simulate/{variant}.tsv"
    priority: chain_priority
    threads: threads_of("evaluate")
    resources:
        **resources_of("evaluate"),
    conda:
        "../../envs/eval.yaml"
    shell:
        "OMP_NUM_THREADS={threads} rrt simulate --model {input.model} --original {input.original} "
        "--eval {input.eval} --heldout-set {params.heldout} --out {output} "
        "--prefix-tokens {params.cfg[prefix_tokens]} --new-tokens {params.cfg[new_tokens]} "
        "--max-batch {params.cfg[max_batch]} --requests {params.cfg[requests]} --seed {params.cfg[seed]} "
        "{params.memory} {params.exits} > {log} 2>&1"
