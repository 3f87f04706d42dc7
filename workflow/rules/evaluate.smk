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
        settings=lambda wc: eval_settings(wc.variant),
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
        "--settings {params.settings:q} --workdir results/eval/tasks {params.data_cache}{params.exits} > {log} 2>&1"


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
        settings=settings_json("throughput", THROUGHPUT_JOB_KEYS),
        exits=lambda wc: throughput_exit_args(wc.variant),
        heldout=throughput_heldout(),
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
        "--heldout {input.data}/heldout_{params.heldout} --out {output} --settings {params.settings:q} "
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
        settings=json.dumps(config["throughput"]["simulate"]),
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
        "--eval {input.eval} --heldout-set {params.heldout} --out {output} --settings {params.settings:q} "
        "{params.exits} > {log} 2>&1"
