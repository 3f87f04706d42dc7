rule base_model:
    output:
        directory("results/models/base/{base}"),
    params:
        args=lambda wc: base_model_args(config["base_models"][wc.base]),
    log:
        "results/logs/base_model/{base}.log",
    benchmark:
        "results/benchmarks/base_model/{base}.tsv"
    threads: threads_of("data")
    resources:
        **resources_of("data"),
    conda:
        "../../envs/model.yaml"
    shell:
        "rrt base-model {params.args} --out {output} > {log} 2>&1"


rule corpus:
    output:
        directory("results/data/corpus"),
    params:
        source=config["data"]["source"],
        hub_chars=config["data"]["hub_train_chars"],
    log:
        "results/logs/corpus.log",
    benchmark:
        "results/benchmarks/corpus.tsv"
    threads: threads_of("data")
    resources:
        **resources_of("data"),
    conda:
        "../../envs/model.yaml"
    shell:
        "rrt corpus --source {params.source} --hub-train-chars {params.hub_chars} --out {output} > {log} 2>&1"


rule tokenize:
    input:
        corpus="results/data/corpus",
        tokenizer=lambda wc: base_dir(wc.base),
    output:
        directory("results/data/tokens/{base}"),
    params:
        block=config["data"]["block_size"],
        caps=lambda wc: optional_args(
            max_train_tokens=config["data"]["max_train_tokens"],
            heldout_max_tokens=config["data"]["heldout_max_tokens"],
        ),
    log:
        "results/logs/tokenize/{base}.log",
    benchmark:
        "results/benchmarks/tokenize/{base}.tsv"
    threads: threads_of("data")
    resources:
        **resources_of("data"),
    conda:
        "../../envs/model.yaml"
    shell:
        "rrt tokenize --corpus {input.corpus} --tokenizer {input.tokenizer} --out {output} "
        "--block-size {params.block} {params.caps} > {log} 2>&1"
