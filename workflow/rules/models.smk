rule convert:
    """A recursive (or relaxed recursive) variant, initialised from its base model."""
    input:
        base=lambda wc: base_dir(variant(wc).base),
    output:
        directory("results/models/init/{variant}"),
    wildcard_constraints:
        variant="|".join(v.name for v in EXPERIMENT if v.converted and v.kind == "recursive") or "^$",
    params:
        # the columns this job uses (the whole row would rerun it when any other column changes)
        row=lambda wc: {k: getattr(variant(wc), k) for k in ("init", "loops", "sharing", "rank")},
        ablations=lambda wc: convert_flags(variant(wc)),  # lora_init, rank_attn, ... ("" when none)
    log:
        "results/logs/convert/{variant}.log",
    benchmark:
        "results/benchmarks/convert/{variant}.tsv"
    priority: chain_priority
    threads: threads_of("convert")
    resources:
        **resources_of("convert"),
    conda:
        "../../envs/model.yaml"
    shell:
        "OMP_NUM_THREADS={threads} rrt convert --base {input.base} --out {output} --init {params.row[init]} --loops {params.row[loops]} "
        "--sharing {params.row[sharing]} --rank {params.row[rank]}{params.ablations} > {log} 2>&1"


rule reduce:
    """Reduced-size baseline: L/loops layers, the first ones or random; with loops 1 and
    random weights, the start of a from-scratch run (the untied baseline, a DLT `scratch` row)."""
    input:
        base=lambda wc: base_dir(variant(wc).base),
    output:
        directory("results/models/init/{variant}"),
    wildcard_constraints:
        variant="|".join(v.name for v in EXPERIMENT if v.converted and v.kind in ("reduced", "dlt")) or "^$",
    params:
        row=lambda wc: {k: getattr(variant(wc), k) for k in ("init", "loops")},
    log:
        "results/logs/reduce/{variant}.log",
    benchmark:
        "results/benchmarks/reduce/{variant}.tsv"
    priority: chain_priority
    threads: threads_of("convert")
    resources:
        **resources_of("convert"),
    conda:
        "../../envs/model.yaml"
    shell:
        "OMP_NUM_THREADS={threads} rrt reduce --base {input.base} --out {output} --loops {params.row[loops]} --init {params.row[init]} > {log} 2>&1"

