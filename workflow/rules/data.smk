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
        "OMP_NUM_THREADS={threads} rrt base-model {params.args} --out {output} > {log} 2>&1"


rule corpus:
    """Held-out perplexity sets (embedded: also the train set, in SlimPajama's file layout)."""
    output:
        directory("results/data/corpus"),
    params:
        settings=corpus_settings(),
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
        "OMP_NUM_THREADS={threads} rrt corpus --settings {params.settings:q} --out {output} > {log} 2>&1"


rule tokenize_shard:
    """Scatter: shard {shard} of {shards} reads every {shards}-th of the first train files
    (as many as the base's largest budget needs) (SlimPajama on the hub or a local mirror; embedded: the corpus's own), drops
    documents that share an n-gram with a held-out set or an evaluation item, and writes a
    token store. A killed job leaves no output; a rerun redoes that shard only."""
    input:
        corpus="results/data/corpus",
        tokenizer=lambda wc: base_dir(wc.base),
    output:
        directory("results/data/shards/{base}/{shard}-of-{shards}"),
    params:
        location=train_location(),
        files=lambda wc: train_files(wc.base),
    log:
        "results/logs/tokenize_shard/{base}/{shard}-of-{shards}.log",
    benchmark:
        "results/benchmarks/tokenize_shard/{base}/{shard}-of-{shards}.tsv"
    threads: threads_of("data")
    resources:
        **resources_of("data"),
    conda:
        "../../envs/model.yaml"
    shell:
        "OMP_NUM_THREADS={threads} rrt tokenize-shard --location {params.location} --files {params.files} --shard {wildcards.shard} "
        "--shards {wildcards.shards} --tokenizer {input.tokenizer} --corpus {input.corpus} "
        "--processes {threads} --out {output} > {log} 2>&1"


rule tokenize:
    """Gather: the shards' files in canonical order as one stream of block_size blocks
    (train/index.json, nothing copied), and the held-out sets as token stores."""
    input:
        corpus="results/data/corpus",
        tokenizer=lambda wc: base_dir(wc.base),
        shards=lambda wc: shard_dirs(wc.base),
    output:
        directory("results/data/tokens/{base}"),
    params:
        settings=tokenize_settings(),
        least=lambda wc: optional_args(min_train_tokens=min_train_tokens(wc.base)),
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
        "OMP_NUM_THREADS={threads} rrt tokenize --corpus {input.corpus} --shard-dirs {input.shards} --tokenizer {input.tokenizer} "
        "--out {output} --settings {params.settings:q} {params.least} > {log} 2>&1"
