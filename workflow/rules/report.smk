rule resolved_config:
    """The config as the rules see it (schema defaults filled in, --config overrides
    included), for `rrt plan` and `rrt aggregate`. A changed config changes the param,
    which reruns this."""
    output:
        "results/config.json",
    params:
        config=json.dumps(config, indent=1, sort_keys=True),
    localrule: True
    run:
        with open(output[0], "w") as f:
            f.write(params.config + "\n")


rule aggregate:
    """Summary table, comparison with the paper, paper coverage, early-exit tables, and the
    report's figures."""
    input:
        evals=expand("results/eval/{variant}.json", variant=VARIANTS.index),
        train=[f"results/train/{v}/train_summary.json" for v in VARIANTS.index if needs_training(v)],
        throughput=expand("results/throughput/{variant}.json", variant=throughput_variants()),
        simulate=expand("results/simulate/{variant}.json", variant=throughput_variants()),
        paper_throughput=config["paper_throughput"] or [],
        variants=config["variants"],
        paper=config["paper_reference"] or [],
        dlt_reference=config["dlt_reference"] or [],
        benchmarks=benchmark_files(),
        config=rules.resolved_config.output[0],
    output:
        summary=report("results/tables/summary.csv", caption="../report/summary.rst", category="1. Results",
                       labels={"table": "summary"}),
        summary_md="results/tables/summary.md",
        paper=report("results/tables/paper_comparison.csv", caption="../report/paper_comparison.rst",
                     category="1. Results", labels={"table": "comparison with the paper"}),
        paper_md="results/tables/paper_comparison.md",
        coverage=report("results/tables/paper_coverage.csv", caption="../report/paper_coverage.rst",
                        category="1. Results", labels={"table": "paper coverage"}),
        coverage_md="results/tables/paper_coverage.md",
        stage_times=report("results/tables/stage_times.csv", caption="../report/stage_times.rst",
                           category="1. Results", labels={"table": "stage times"}),
        stage_times_md="results/tables/stage_times.md",
        fig_params=report("results/figures/accuracy_vs_params.png", caption="../report/accuracy_vs_params.rst",
                          category="2. Figures", labels={"figure": "accuracy vs size"}),
        fig_init=report("results/figures/init_comparison.png", caption="../report/init_comparison.rst",
                        category="2. Figures", labels={"figure": "initialisation"}),
        fig_rank=report("results/figures/relaxed_rank.png", caption="../report/relaxed_rank.rst",
                        category="2. Figures", labels={"figure": "relaxation rank"}),
        fig_loss=report("results/figures/loss_curves.png", caption="../report/loss_curves.rst",
                        category="2. Figures", labels={"figure": "training loss"}),
        fig_speed=report("results/figures/train_throughput.png", caption="../report/train_throughput.rst",
                         category="2. Figures", labels={"figure": "training throughput"}),
        dlt_comparison=report("results/tables/dlt_comparison.csv", caption="../report/dlt_comparison.rst",
                              category="1. Results", labels={"table": "DLT: learned vs fixed tying"}),
        dlt_comparison_md="results/tables/dlt_comparison.md",
        dlt_reference=report("results/tables/dlt_reference.csv", caption="../report/dlt_reference.rst",
                             category="1. Results", labels={"table": "DLT: the paper's numbers"}),
        dlt_reference_md="results/tables/dlt_reference.md",
        fig_dlt_tying=report("results/figures/dlt_tying.png", caption="../report/dlt_tying.rst",
                             category="2. Figures", labels={"figure": "DLT: tying map over training"}),
        fig_dlt_params=report("results/figures/dlt_params.png", caption="../report/dlt_params.rst",
                              category="2. Figures", labels={"figure": "DLT: trainable parameters"}),
        early_exit=report("results/tables/early_exit.csv", caption="../report/early_exit.rst",
                          category="1. Results", labels={"table": "early exit: every exit"}),
        early_exit_md="results/tables/early_exit.md",
        exit_thresholds=report("results/tables/exit_thresholds.csv", caption="../report/exit_thresholds.rst",
                               category="1. Results", labels={"table": "early exit: thresholds"}),
        exit_thresholds_md="results/tables/exit_thresholds.md",
        fig_exit_rates=report("results/figures/exit_rates.png", caption="../report/exit_rates.rst",
                              category="2. Figures", labels={"figure": "exit rate vs threshold"}),
        fig_exit_tradeoff=report("results/figures/exit_tradeoff.png", caption="../report/exit_tradeoff.rst",
                                 category="2. Figures", labels={"figure": "accuracy vs exit rate"}),
        throughput_table=report("results/tables/throughput.csv", caption="../report/throughput.rst",
                                category="1. Results", labels={"table": "throughput"}),
        throughput_md="results/tables/throughput.md",
        throughput_simulated=report("results/tables/throughput_simulated.csv",
                                    caption="../report/throughput_simulated.rst", category="1. Results",
                                    labels={"table": "throughput: simulated vs measured vs paper"}),
        throughput_simulated_md="results/tables/throughput_simulated.md",
        fig_throughput=report("results/figures/throughput_accuracy.png", caption="../report/throughput_accuracy.rst",
                              category="2. Figures", labels={"figure": "throughput vs accuracy"}),
    params:
        paper=optional_args(paper=config["paper_reference"]),
        paper_throughput=optional_args(paper_throughput=config["paper_throughput"]),
        dlt_reference=optional_args(dlt_reference=config["dlt_reference"]),
        train_settings=lambda wc: train_settings_json(),
    log:
        "results/logs/aggregate.log",
    threads: threads_of("report")
    resources:
        **resources_of("report"),
    conda:
        "../../envs/report.yaml"
    shell:
        "rrt aggregate --variants {input.variants} {params.paper} --eval-dir results/eval "
        "--train-dir results/train --throughput-dir results/throughput --simulate-dir results/simulate "
        "{params.paper_throughput} {params.dlt_reference} --tables results/tables "
        "--figures results/figures --benchmarks results/benchmarks --train-settings '{params.train_settings}' "
        "--resolved-config {input.config} "
        "> {log} 2>&1"


rule plan:
    """What the experiment costs on GPUs: FLOPs, GPU-hours, time-limited jobs, memory per GPU
    and disk per variant (`rrt plan`; the config's `plan` section sets GPU and MFU)."""
    input:
        config=rules.resolved_config.output[0],
        variants=config["variants"],
    output:
        plan=report("results/tables/plan.csv", caption="../report/plan.rst", category="3. Cost",
                    labels={"table": "cost plan"}),
        data=report("results/tables/plan_data.csv", caption="../report/plan_data.rst", category="3. Cost",
                    labels={"table": "data cost"}),
    log:
        "results/logs/plan.log",
    threads: threads_of("report")
    resources:
        **resources_of("report"),
    conda:
        "../../envs/report.yaml"
    shell:
        "rrt plan --resolved-config {input.config} --out {output.plan} --data-out {output.data} > {log} 2>&1"
