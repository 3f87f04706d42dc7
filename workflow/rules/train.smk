rule uptrain:
    """Uptrain a variant (all parameters), optionally distilling from its full-size base;
    with an `early_exit` recipe, every loop's exit is trained (co-training from a fresh
    conversion, or post-training from its `parent`'s trained model).
    Checkpoints live in results/train/{variant}/checkpoints, outside the declared outputs,
    so an interrupted job resumes from the last one when rerun. On SLURM, a run longer than
    the job's `runtime` checkpoints `stop_margin_s` before the limit and requeues its job,
    which continues from there (Snakemake sees one job). `rrt launch` starts the processes
    (torchrun per node, srun across nodes) from the allocation; one process runs `rrt train` itself. The log has one line per
    logged step (loss, tokens/s, model FLOP/s or MFU, ETA); `train.report_to: tensorboard`
    also writes them to results/train/{variant}/tensorboard (`tensorboard --logdir results/train`)."""
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
        settings=lambda wc: train_settings(variant(wc)),
        teacher=lambda wc: f"--teacher {base_dir(variant(wc).base)}" if variant(wc).kd else "",
        launch=lambda wc: launch_prefix(variant(wc)),
    log:
        "results/logs/uptrain/{variant}.log",
    benchmark:
        "results/benchmarks/uptrain/{variant}.tsv"
    priority: chain_priority
    threads: threads_of("train")
    resources:
        **resources_of("train"),
    conda:
        "../../envs/model.yaml"
    shell:
        "OMP_NUM_THREADS={threads} {params.launch}rrt train --model {input.model} --data {input.data}/train --out {params.out} --settings {params.settings:q} "
        "{params.teacher} --requeue > {log} 2>&1"
