rule uptrain:
    """Uptrain a variant (all parameters), optionally distilling from its full-size base.
    Checkpoints live in results/train/{variant}/checkpoints, outside the declared outputs,
    so an interrupted job resumes from the last one when rerun."""
    input:
        model=init_dir,
        data=lambda wc: f"results/data/tokens/{variant(wc).base}",
        teacher=lambda wc: [base_dir(variant(wc).base)] if variant(wc).kd else [],
    output:
        final=directory("results/train/{variant}/final"),
        loss="results/train/{variant}/loss.csv",
        summary="results/train/{variant}/train_summary.json",
    params:
        out="results/train/{variant}",
        tokens=lambda wc: train_tokens(variant(wc)),
        t=config["train"],
        kd=lambda wc: (
            "--teacher {} --kd-loss {loss} --kd-weight {weight} --kd-temperature {temperature}".format(
                base_dir(variant(wc).base), **config["train"]["kd"])
            if variant(wc).kd else ""
        ),
        deepspeed=optional_args(deepspeed=config["train"]["deepspeed"]),
    log:
        "results/logs/uptrain/{variant}.log",
    benchmark:
        "results/benchmarks/uptrain/{variant}.tsv"
    threads: res("train", "threads", 2)
    resources:
        gpus=res("train", "gpus", 0),
        mem_mb=res("train", "mem_mb", 8000),
        runtime=res("train", "runtime", 60),
    conda:
        "../../envs/model.yaml"
    shell:
        "OMP_NUM_THREADS={threads} {params.t[launcher]} rrt train --model {input.model} --data {input.data}/train "
        "--out {params.out} --max-tokens {params.tokens} --batch-tokens {params.t[batch_tokens]} "
        "--micro-batch-size {params.t[micro_batch_size]} --lr {params.t[lr]} --warmup-steps {params.t[warmup_steps]} "
        "--weight-decay {params.t[weight_decay]} --save-steps {params.t[save_steps]} --seed {params.t[seed]} "
        "{params.kd} {params.deepspeed} > {log} 2>&1"
